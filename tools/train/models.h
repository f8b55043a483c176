// The models `moe train` builds from a TrainConfig: a decoder-only transformer language model and
// an MLP classifier whose feed-forward blocks are MoE layers of any router kind (or dense), and the
// multi-task models of the library. Each reports its MoE layers' statistics by name, so the trainer
// logs every model the same way.
#pragma once

#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/stats.h"
#include "train/train_config.h"

namespace moe::nn {
class TopAnyMoEImpl;
}

namespace moe::train {

/// What one MoE layer (or one gate of a multi-task model) did in a forward pass.
struct LayerProbe {
  std::string name;
  RoutingStats stats;       ///< sparse layers
  torch::Tensor gate_mass;  ///< multi-task gates: mean gate weight per expert [E]
};

/// A model's forward result: the task outputs, the summed auxiliary loss and the layer probes.
struct ModelOutput {
  torch::Tensor logits;                ///< lm: [B, L, V]; classify: [B, 10]
  std::vector<torch::Tensor> outputs;  ///< multitask: one per task
  torch::Tensor aux_loss;              ///< 0-dim
  std::vector<LayerProbe> probes;
};

/// The common interface of the three model families.
class Model {
 public:
  virtual ~Model() = default;
  virtual ModelOutput forward(const torch::Tensor& input) = 0;
  /// The next forwards see rows [offset, offset + n) of a batch of `total` rows split over
  /// processes (tools/train/sharded_model.h): the model's random draws (dropout) are made for the
  /// whole batch, so that every world size draws alike and the ranks' generators stay in step.
  virtual void set_batch_shard(int64_t /*offset*/, int64_t /*total*/) {}
  /// The module holding every parameter and buffer (for the optimizer and checkpoints).
  virtual torch::nn::Module& module() = 0;
  /// "moe"/"dense" for lm/classify, the model kind for multitask.
  virtual std::string description() const = 0;
};

/// Builds the model of `config`; `vocab_size` is the LM's alphabet (ignored otherwise), `input_dim`
/// the multitask feature width.
std::unique_ptr<Model> build_model(const TrainConfig& config, int64_t vocab_size,
                                   int64_t input_dim);

/// Parameters and the parameters one token uses (dense parts + top_k experts of each MoE layer,
/// top_any counted at one expert), for the log and the dense/MoE comparison.
struct ParameterCount {
  int64_t total = 0;
  int64_t active = 0;
};
ParameterCount count_parameters(const TrainConfig& config, Model& model);

/// The TopAnyMoE (DynMoE) layers of a model's module, by name: the trainer drives their recording
/// windows and expert updates, which are not module state.
std::vector<std::pair<std::string, nn::TopAnyMoEImpl*>> top_any_layers(torch::nn::Module& m);

/// `moe eval --top-k K`: every HyperRouterMoE layer (hyper, smoe_dropout, smoe) of `m` evaluates at
/// k = K; std::invalid_argument for a K outside [1, num_experts] or a model without such layers.
void set_inference_top_k(torch::nn::Module& m, const TrainConfig& config, int64_t k);

}  // namespace moe::train
