// Gradient averaging for data + expert parallelism (include/moe/nn/data_parallel.h).
#include "moe/nn/data_parallel.h"

#include <ATen/ATen.h>

#include <cmath>
#include <unordered_set>
#include <vector>

#include "moe/nn/routed_moe.h"

namespace moe::nn {

namespace {

// The parameters of the experts of the model's layers distributed over `group`.
std::unordered_set<const void*> distributed_experts(
    const std::shared_ptr<dist::ProcessGroup>& group, torch::nn::Module& model, const char* who) {
  std::unordered_set<const void*> out;
  for (const auto& module : model.modules(/*include_self=*/true)) {
    const auto* layer = dynamic_cast<const RoutedMoEImpl*>(module.get());
    if (layer == nullptr || layer->expert_group() == nullptr) continue;
    TORCH_CHECK_VALUE(layer->expert_group()->id() == group->id(), who, ": layer ",
                      layer->options.name(),
                      " spreads its experts over another process group than the one given; "
                      "experts replicated over several ranks are not supported");
    for (const auto& p : layer->experts->parameters()) out.insert(p.unsafeGetTensorImpl());
  }
  return out;
}

}  // namespace

double clip_gradient_norm(const std::shared_ptr<dist::ProcessGroup>& group,
                          torch::nn::Module& model, double max_norm) {
  TORCH_CHECK_VALUE(group != nullptr, "clip_gradient_norm: no process group");
  const auto experts = distributed_experts(group, model, "clip_gradient_norm");
  auto sums = at::zeros({2}, at::kDouble);  // replicated, this rank's experts
  std::vector<at::Tensor> grads;
  for (const auto& p : model.parameters()) {
    if (!p.grad().defined()) continue;
    grads.push_back(p.grad());
    const int i = experts.count(p.unsafeGetTensorImpl()) ? 1 : 0;
    sums[i] += p.grad().detach().to(at::kDouble).pow(2).sum();
  }
  auto expert_sum = sums.narrow(0, 1, 1).clone();
  group->all_reduce_sum(expert_sum);
  const double norm = std::sqrt(sums[0].item<double>() + expert_sum.item<double>());
  const double coef = max_norm / (norm + 1e-6);
  if (max_norm > 0 && coef < 1) {
    torch::NoGradGuard no_grad;
    for (auto& g : grads) g.mul_(coef);
  }
  return norm;
}

int64_t synchronize_gradients(const std::shared_ptr<dist::ProcessGroup>& group,
                              torch::nn::Module& model, int64_t bucket_bytes) {
  TORCH_CHECK_VALUE(group != nullptr, "synchronize_gradients: no process group");
  const double scale = 1.0 / static_cast<double>(group->size());
  const auto expert_params = distributed_experts(group, model, "synchronize_gradients");
  std::vector<at::Tensor> replicated;
  torch::NoGradGuard no_grad;
  for (const auto& p : model.parameters()) {
    if (expert_params.count(p.unsafeGetTensorImpl()) == 0) {
      replicated.push_back(p);
    } else if (p.grad().defined()) {
      p.mutable_grad().mul_(scale);
    }
  }
  return dist::all_reduce_gradients(group, replicated, scale, bucket_bytes);
}

}  // namespace moe::nn
