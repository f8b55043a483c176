// Auxiliary losses (see include/moe/losses.h).
#include "moe/losses.h"

#include <ATen/ATen.h>

#include "moe/gating.h"

namespace moe {

torch::Tensor cv_squared(const torch::Tensor& v) {
  constexpr double eps = 1e-10;
  if (v.numel() == 0) return at::zeros({}, v.options());
  const double n = static_cast<double>(v.numel()) + eps;
  const auto mean = v.sum() / n;
  const auto var = (v - mean).pow(2).sum() / n;  // population variance (t2t CVSquared)
  return var / (mean * mean + eps);
}

torch::Tensor balance_loss(const torch::Tensor& probs, const torch::Tensor& expert_index) {
  const int64_t T = probs.size(0), E = probs.size(1);
  if (T == 0) return probs.sum() * 0;
  const auto f = assignment_counts(expert_index, E, probs.options()) / static_cast<double>(T);
  const auto P = probs.mean(0);
  return static_cast<double>(E) * (f * P).sum();
}

torch::Tensor router_z_loss(const torch::Tensor& logits) {
  if (logits.size(0) == 0) return logits.sum() * 0;
  return at::logsumexp(logits, -1).pow(2).mean();
}

}  // namespace moe
