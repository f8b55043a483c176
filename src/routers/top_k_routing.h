// The routing every top-k router shares once it has a way to compute logits: non-finite policy,
// gating (softmax or noisy top-k), importance and load, capacity, auxiliary losses
// (docs/algorithms.md §1, §3, §5). TopKRouter and HyperRouter differ only in where their linear
// map comes from.
#pragma once

#include <torch/types.h>

#include <functional>
#include <string>

#include "moe/router.h"

namespace moe::detail {

/// How a top-k router turns logits into a routing result.
struct TopKRule {
  RouterKind kind = RouterKind::kSoftmaxTopK;  ///< kNoisyTopK adds noise; others are softmax
  int64_t num_experts = 0;
  int64_t top_k = 1;
  bool normalize = true;  ///< softmax kinds: renormalise over the k kept
  double noise_epsilon = 1e-2;
  double capacity_factor = 0.0;  ///< 0 = dropless
  int64_t min_capacity = 0;
  LossCoefficients coefficients;
  bool aux_loss_in_eval = false;
  NonFinitePolicy non_finite = NonFinitePolicy::kError;
  std::string who;
};

/// The linear maps of a top-k router, in router precision.
struct RouterWeights {
  torch::Tensor weight;        ///< [E, d]
  torch::Tensor bias;          ///< [E] or undefined
  torch::Tensor noise_weight;  ///< [E, d], kNoisyTopK only; undefined = noisy gating off
};

/// Routes the router-dtype tokens `xr` [T, d] with the logits xr·weightᵀ + bias. `training` draws
/// the gating noise and computes the auxiliary losses. On the CPU, the noisy kind runs the fused
/// gate (fused_noisy_top_k_gating: no [T, E] tensor) unless a balance or z loss needs the logits.
/// `batch`: xr's place in a batch split over processes (moe/batch_shards.h).
RoutingResult route_top_k(torch::Tensor xr, const RouterWeights& weights, const TopKRule& rule,
                          bool training, const BatchShards& batch);

/// This shard's rows of one random draw over the global batch: `fill` draws a
/// [total_rows·rows_per_token, cols] tensor and the rows of the shard's tokens are returned
/// ([local_rows·rows_per_token, cols]). One draw of the global tensor, so that every world size
/// draws the same numbers for a token and the generators of all ranks stay in step.
at::Tensor shard_of_global_draw(const BatchShards& batch, int64_t local_rows,
                                int64_t rows_per_token, int64_t cols,
                                const at::TensorOptions& options,
                                const std::function<void(at::Tensor&)>& fill);

/// Checks a router input: [T, d_model].
void check_router_input(const torch::Tensor& x, int64_t d_model, const std::string& who);

}  // namespace moe::detail
