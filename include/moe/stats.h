// What an MoE layer returns besides its output: auxiliary loss and routing statistics.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <vector>

namespace moe {

/// Routing statistics of one forward pass. Tensors are detached.
struct RoutingStats {
  torch::Tensor
      tokens_per_expert;     ///< [E] int64: pairs each expert computed (after capacity drops)
  torch::Tensor importance;  ///< [E] Σ_x G(x)_e, the gate mass per expert (Shazeer Eq. 6)
  torch::Tensor load;  ///< [E] smooth load Σ_x P(x,e) for noisy gates, else assignment counts
  double dropped_fraction = 0.0;  ///< assignments dropped by capacity / assignments chosen
  int64_t skipped_tokens = 0;     ///< tokens routed nowhere by NonFinitePolicy::kSkip
  double experts_per_token_mean = 0.0;
  int64_t experts_per_token_min = 0;
  int64_t experts_per_token_max = 0;
  double cv_importance = 0.0;  ///< coefficient of variation std/mean (population std) of importance
  double cv_load = 0.0;        ///< same for load
  int64_t active_experts = 0;  ///< experts that may receive tokens (E except for TopAnyMoE)
  int64_t tokens_without_expert = 0;  ///< TopAnyMoE: tokens that activated no expert
};

/// The routing decision of a forward pass, for inspection and tests.
struct Routing {
  torch::Tensor expert_index;  ///< [T, K] int64, -1 = unused slot (dropped or skipped)
  torch::Tensor gate;          ///< [T, K] combine weight per slot (router dtype), 0 where unused
};

/// Output of every single-task MoE layer.
struct MoEOutput {
  torch::Tensor output;  ///< same shape as the input
  torch::Tensor
      aux_loss;  ///< 0-dim, already weighted by the layer's coefficients; 0 in eval by default
  RoutingStats stats;
  Routing routing;
};

}  // namespace moe
