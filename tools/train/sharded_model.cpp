// `moe train` on several processes (tools/train/sharded_model.h).
#include "train/sharded_model.h"

#include <torch/torch.h>

#include <algorithm>
#include <stdexcept>

#include "moe/nn/routed_moe.h"

namespace moe::train {

ShardedModel::ShardedModel(std::unique_ptr<Model> model, std::shared_ptr<dist::ProcessGroup> group)
    : model_(std::move(model)), group_(std::move(group)) {}

ModelOutput ShardedModel::forward(const torch::Tensor& input) {
  // Rows split as evenly as possible, the first B % W ranks one more (a rank may have none).
  const int64_t B = input.size(0), W = group_->size(), r = group_->rank();
  const int64_t base = B / W, extra = B % W;
  const int64_t n = base + (r < extra ? 1 : 0), offset = r * base + std::min(r, extra);
  model_->set_batch_shard(offset, B);
  ModelOutput out = model_->forward(input.narrow(0, offset, n));
  if (out.logits.defined()) out.logits = dist::all_gather_rows(group_, out.logits);
  for (auto& o : out.outputs) o = dist::all_gather_rows(group_, o);
  // The routed layers' statistics and auxiliary losses are the global batch's already; a
  // multi-task gate's mean gate weight is this shard's: weighted by its rows and summed.
  for (auto& p : out.probes) {
    if (!p.gate_mass.defined()) continue;
    auto sum = (p.gate_mass.to(torch::kDouble) * static_cast<double>(n)).contiguous();
    group_->all_reduce_sum(sum);
    p.gate_mass = (sum / static_cast<double>(std::max<int64_t>(B, 1))).to(p.gate_mass.dtype());
  }
  return out;
}

void check_experts_divide(torch::nn::Module& module, int world_size) {
  for (const auto& item : module.named_modules()) {
    const auto* layer = dynamic_cast<const nn::RoutedMoEImpl*>(item.value().get());
    if (layer == nullptr) continue;
    const int64_t E = layer->global_experts();
    if (E % world_size != 0)
      throw std::invalid_argument("moe train: layer " + item.key() + " has " + std::to_string(E) +
                                  " experts, which " + std::to_string(world_size) +
                                  " processes cannot share: the expert count must be a multiple "
                                  "of the number of processes");
  }
}

void distribute_experts(torch::nn::Module& module, const std::shared_ptr<dist::ProcessGroup>& group,
                        torch::optim::Optimizer* optimizer) {
  check_experts_divide(module, group->size());
  for (const auto& item : module.named_modules()) {
    auto* layer = dynamic_cast<nn::RoutedMoEImpl*>(item.value().get());
    if (layer != nullptr) layer->distribute_experts(group, optimizer);
  }
}

void gather_experts(torch::nn::Module& module, torch::optim::Optimizer* optimizer) {
  for (const auto& item : module.named_modules()) {
    auto* layer = dynamic_cast<nn::RoutedMoEImpl*>(item.value().get());
    if (layer != nullptr && layer->expert_group() != nullptr) layer->gather_experts(optimizer);
  }
}

}  // namespace moe::train
