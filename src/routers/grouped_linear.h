// grouped_linear: one linear map per group of rows, for a gate that sees only its own tokens (the
// secondary gates of hierarchical routing, docs/algorithms.md §1.7).
#pragma once

#include <torch/types.h>

namespace moe::detail {

/// y[r] = x[r] · weight[g]ᵀ for the rows r of group g, [offsets[g], offsets[g+1]).
///   x [P, d] (rows grouped), weight [G, n, d], offsets [G+1] int64 on the CPU; returns [P, n].
/// Differentiable w.r.t. x and weight. The weight gradient of a group without rows is zero. Cost
/// and memory are linear in P·n plus the weight: nothing of size P × G·n is formed.
torch::Tensor grouped_linear(const torch::Tensor& x, const torch::Tensor& weight,
                             const torch::Tensor& offsets);

}  // namespace moe::detail
