// `moe train` on several processes (docs/distributed.md, "moe train on N processes"): the model of
// every rank wrapped so that a forward on the global batch computes this rank's rows only.
//
// Every rank draws the same global batch (the same generator state on all ranks) and gives it to
// ShardedModel::forward, which runs the wrapped model on the rank's rows [offset, offset + n) and
// gathers the outputs of all ranks (dist::all_gather_rows). The loss and the metrics are then the
// global batch's, the same on every rank, and the gathering's backward hands each rank the
// gradients of its rows. The MoE layers' experts are spread over the ranks
// (RoutedMoEImpl::distribute_experts), their auxiliary losses and statistics are the global
// batch's, and the random draws (gating noise, jitter, dropout) are made for the global batch:
// training equals the single-process run on the same batch, whatever the world size.
#pragma once

#include <memory>
#include <string>

#include "moe/distributed.h"
#include "train/models.h"

namespace torch::optim {
class Optimizer;
}

namespace moe::train {

class ShardedModel final : public Model {
 public:
  ShardedModel(std::unique_ptr<Model> model, std::shared_ptr<dist::ProcessGroup> group);
  ModelOutput forward(const torch::Tensor& input) override;
  torch::nn::Module& module() override { return model_->module(); }
  std::string description() const override { return model_->description(); }
  const std::shared_ptr<dist::ProcessGroup>& group() const { return group_; }

 private:
  std::unique_ptr<Model> model_;
  std::shared_ptr<dist::ProcessGroup> group_;
};

/// Throws std::invalid_argument naming the first routed MoE layer of `module` whose expert count
/// `world_size` processes cannot share (before anything is written).
void check_experts_divide(torch::nn::Module& module, int world_size);
/// Spreads the experts of every routed MoE layer of `module` over `group` (a collective; the
/// optimizer's state for them is cut alike). Throws std::invalid_argument naming the layer when
/// its expert count is not a multiple of the world size.
void distribute_experts(torch::nn::Module& module, const std::shared_ptr<dist::ProcessGroup>& group,
                        torch::optim::Optimizer* optimizer);
/// The inverse: every rank holds all experts again (before a checkpoint is saved).
void gather_experts(torch::nn::Module& module, torch::optim::Optimizer* optimizer);

}  // namespace moe::train
