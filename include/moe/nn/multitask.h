// Multi-task models (Ma et al. KDD 2018; Tang et al. RecSys 2020; docs/algorithms.md §4), each
// returning one output per task:
//   SharedBottom  y_k = t_k(f(x))
//   MMoE          y_k = t_k(Σ_i g_k(x)_i f_i(x)),  g_k = softmax(W_k x)    (OMoE: one gate for all)
//   PLE / CGC     levels of task-specific + shared experts; task k's gate mixes its own and the
//                 shared experts, the shared gate (not on the last level) mixes all of them (§4.4)
//
// Experts of one group are stacked ([E, in, out] weights) and run on the library's expert engine
// (functional::expert_mlp, the function behind ExpertBank) over a RoutingPlan: every token to every
// expert for dense gates, the gates' selections for sparse (top-k) gates. Experts of one layer are
// mixed by the engine itself, the gate's weights being its pair weights; deeper experts run once
// and each gate weighs their outputs (mix_experts says why).
//
// Parameter names (l counts an expert's layers from 1, as ExpertBank's w1, w2; i counts the Linear
// layers of an MLP from 0, not the ReLUs between them):
//   MMoE          experts.w{l} [E, in, out], experts.b{l} [E, out]; gates.{k}.weight [E, in]
//                 (.bias, .hidden.{i}.weight/bias); towers.{k}.{i}.weight/bias
//   PLE           levels.{j}.task_experts.{k}.w{l}/b{l}, levels.{j}.shared_experts.w{l}/b{l},
//                 levels.{j}.task_gates.{k}.*, levels.{j}.shared_gate.*, towers.{k}.{i}.*
//   SharedBottom  bottom.{i}.weight/bias, towers.{k}.{i}.weight/bias
// Legacy names (README changelog): expert layers were w{l-1}, b{l-1}, and the Linear layers of
// towers, bottoms and gate hidden layers were numbered with the ReLUs between them ({2i}).
// StackedMLP and MLP declare them (io::LegacyNames), so io::load_module and io::load_checkpoint
// read checkpoints written with those names.
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <iosfwd>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moe/io/checkpoint.h"
#include "moe/nn/multitask_options.h"
#include "moe/plan.h"

namespace moe {

/// What a multi-task model returns.
struct MultiTaskOutput {
  std::vector<torch::Tensor> outputs;  ///< one [T, task_output_dim] per task (raw: logits for BCE)
  torch::Tensor aux_loss;              ///< 0-dim; non-zero only with sparse gates (balance loss)
  /// Expert utilisation: gate_mass[level][gate] = mean gate weight per expert, [E_gate]. Gates are
  /// the task gates in task order, then the shared gate where the level has one.
  std::vector<std::vector<torch::Tensor>> gate_mass;
};

namespace nn {

/// E MLPs of the same shape, stacked: layer l (from 1) has w{l} [E, in_l, out_l] and b{l} [E,
/// out_l]; ReLU after every layer (the experts of the papers are Linear + ReLU). Init:
/// U(±1/sqrt(in_l)) as torch::nn::Linear. Evaluated on the expert engine (functional::expert_mlp),
/// one call per two layers (a lone last layer as the engine's one-layer experts).
class StackedMLPImpl : public torch::nn::Cloneable<StackedMLPImpl>, public io::LegacyNames {
 public:
  StackedMLPImpl(int64_t num_experts, int64_t in, std::vector<int64_t> hidden);
  void reset() override;
  /// w{l-1} → w{l}, b{l-1} → b{l}.
  std::map<std::string, std::string> legacy_names() const override;
  /// Every expert on every row: x [T, in] → [E, T, out].
  torch::Tensor forward(const torch::Tensor& x);
  /// Only the pairs of a plan: expert e(p) on row x[token_index[p]] for every pair p → [rows, out]
  /// in plan order (expert-major); the padding rows of a padded plan are 0.
  torch::Tensor forward_pairs(const torch::Tensor& x, const RoutingPlan& plan);
  int64_t num_experts() const { return num_experts_; }
  int64_t out_dim() const { return hidden_.back(); }

  std::vector<torch::Tensor> weights, biases;  ///< weights[l - 1] is w{l}

 private:
  /// Layers l and l + 1 (l alone when last) of every expert on rows h [P, in_l], one expert per
  /// row → [P, out]: layer l + 1 before its ReLU, or layer l after its ReLU.
  torch::Tensor layers_on_engine(size_t l, const torch::Tensor& h, const RoutingPlan& rows) const;
  int64_t num_experts_, in_;
  std::vector<int64_t> hidden_;
};
TORCH_MODULE(StackedMLP);

class Bf16SafeLinearImpl;  // torch::nn::Linear with float32 accumulation for bf16 (moe/matmul.h)

/// Linear layers with a ReLU after each hidden one: `hidden` widths, then (out > 0) a Linear to
/// `out` without activation. The towers (out = task_output_dim), the Shared-Bottom and a gate's
/// hidden layers (out = 0: a ReLU after every layer). Linear layer i is the child "{i}" with
/// weight [out_i, in_i] and bias [out_i], initialised as torch::nn::Linear.
class MLPImpl : public torch::nn::Cloneable<MLPImpl>, public io::LegacyNames {
 public:
  MLPImpl(int64_t in, std::vector<int64_t> hidden, int64_t out);
  void reset() override;
  torch::Tensor forward(const torch::Tensor& x);
  /// {2i}.weight → {i}.weight and .bias: this was a torch::nn::Sequential with a ReLU module
  /// after every hidden layer.
  std::map<std::string, std::string> legacy_names() const override;
  void pretty_print(std::ostream& os) const override;

 private:
  int64_t in_, out_;
  std::vector<int64_t> hidden_;
  std::vector<std::shared_ptr<Bf16SafeLinearImpl>> layers_;
};
TORCH_MODULE(MLP);

/// softmax(W x (+ b)) over `num_experts`, optionally after hidden ReLU layers, optionally sparse.
class TaskGateImpl : public torch::nn::Cloneable<TaskGateImpl> {
 public:
  TaskGateImpl(int64_t in, int64_t num_experts, TaskGateOptions options);
  void reset() override;
  /// Returns the [T, E] gate weights (rows sum to 1; zeros outside the top-k of a sparse gate) and
  /// adds the balance loss of a sparse gate to *aux.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* aux);
  /// The [T, E] logits (before the softmax).
  torch::Tensor logits(const torch::Tensor& x);

  TaskGateOptions options;
  int64_t num_experts;
  int64_t in;
  MLP hidden{nullptr};
  torch::Tensor weight, bias;
};
TORCH_MODULE(TaskGate);

/// Σ_e gate[t, e]·expert_e(x[t]) for every gate that reads the same experts, on the engine over
/// the pairs the gates use (every (token, expert) pair for dense gates, the selections for sparse
/// ones): one-layer experts with the gate's weights as the engine's pair weights (one pass per
/// gate), deeper experts once, with each gate weighing their outputs. Returns one [T, out] per
/// gate.
std::vector<torch::Tensor> mix_experts(StackedMLP& experts, const torch::Tensor& x,
                                       const std::vector<torch::Tensor>& gates, bool sparse);

class SharedBottomImpl : public torch::nn::Cloneable<SharedBottomImpl> {
 public:
  explicit SharedBottomImpl(SharedBottomOptions options);
  void reset() override;
  MultiTaskOutput forward(const torch::Tensor& x);
  SharedBottomOptions options;
  MLP bottom{nullptr};
  torch::nn::ModuleList towers{nullptr};  ///< one MLP per task
};
TORCH_MODULE(SharedBottom);

class MMoEImpl : public torch::nn::Cloneable<MMoEImpl> {
 public:
  explicit MMoEImpl(MMoEOptions options);
  void reset() override;
  MultiTaskOutput forward(const torch::Tensor& x);
  MMoEOptions options;
  StackedMLP experts{nullptr};
  torch::nn::ModuleList gates{nullptr};   ///< TaskGate per task (one for OMoE)
  torch::nn::ModuleList towers{nullptr};  ///< one MLP per task
};
TORCH_MODULE(MMoE);

/// One extraction level: per-task expert groups, a shared group, task gates and (unless last) the
/// shared gate.
class ExtractionLevelImpl : public torch::nn::Cloneable<ExtractionLevelImpl> {
 public:
  ExtractionLevelImpl(int64_t in, const PLEOptions& options, bool last);
  void reset() override;
  /// inputs: num_tasks task inputs followed by the shared input (all [T, in]). Returns the task
  /// outputs followed by the shared output (absent on the last level).
  std::vector<torch::Tensor> forward(const std::vector<torch::Tensor>& inputs, torch::Tensor* aux,
                                     std::vector<torch::Tensor>* gate_mass);
  PLEOptions options;
  int64_t in;
  bool last;
  torch::nn::ModuleList task_experts{nullptr};
  StackedMLP shared_experts{nullptr};
  torch::nn::ModuleList task_gates{nullptr};
  TaskGate shared_gate{nullptr};
};
TORCH_MODULE(ExtractionLevel);

class PLEImpl : public torch::nn::Cloneable<PLEImpl> {
 public:
  explicit PLEImpl(PLEOptions options);
  void reset() override;
  MultiTaskOutput forward(const torch::Tensor& x);
  PLEOptions options;
  torch::nn::ModuleList levels{nullptr};
  torch::nn::ModuleList towers{nullptr};  ///< one MLP per task
};
TORCH_MODULE(PLE);

/// CGC (§4.4) is one extraction level: PLE with levels(1).
inline PLE CGC(PLEOptions options) { return PLE(options.levels(1)); }

}  // namespace nn
}  // namespace moe
