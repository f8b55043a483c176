// Auxiliary losses of sparse MoE layers (docs/algorithms.md §1.3, §1.4, §5.1, §5.3).
#pragma once

#include <torch/types.h>

namespace moe {

/// Squared coefficient of variation exactly as t2t's CVSquared (§1.3):
/// population variance, eps = 1e-10 in the count and the denominator; an empty vector gives 0.
torch::Tensor cv_squared(const torch::Tensor& v);

/// Switch / GShard balance loss E · Σ_e f_e · P_e (§5.1), where f_e is the fraction of the T tokens
/// that chose e (over all router slots, so Σ f = k: balanced routing with uniform probabilities
/// gives exactly k) and P_e the mean router probability. expert_index: the router's choices before
/// capacity, [T, K]; probs: [T, E]. T = 0 gives 0.
torch::Tensor balance_loss(const torch::Tensor& probs, const torch::Tensor& expert_index);

/// ST-MoE router z-loss mean_x (logsumexp_e logits)^2 (§5.3). T = 0 gives 0.
torch::Tensor router_z_loss(const torch::Tensor& logits);

}  // namespace moe
