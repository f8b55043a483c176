// What an MoE layer returns besides its output: auxiliary loss and routing statistics.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moe {

/// Named auxiliary loss terms ("importance", "load", "balance", "z", "diversity", ...): unweighted,
/// detached 0-dim tensors in the order the router computed them.
using LossTerms = std::vector<std::pair<std::string, torch::Tensor>>;

/// The term called `name`, or an undefined tensor when the router did not compute it.
torch::Tensor find_loss_term(const LossTerms& terms, const std::string& name);

/// Routing statistics of one forward pass, as detached tensors on the layer's device: computing
/// them never waits for the device. The methods turn them into numbers; each of those reads the
/// device, so call them only where a number is wanted (a log line, a test).
struct RoutingStats {
  torch::Tensor tokens_per_expert;  ///< [E] int64: pairs each expert computed (after capacity)
  torch::Tensor importance;         ///< [E] Σ_x G(x)_e, the gate mass per expert (Shazeer Eq. 6)
  torch::Tensor load;  ///< [E] smooth load Σ_x P(x,e) for noisy gates, else assignment counts
  torch::Tensor experts_per_token;  ///< [T] int64: experts each token used
  torch::Tensor assigned;           ///< 0-dim int64: choices the router made (before capacity)
  torch::Tensor dropped;            ///< 0-dim int64: choices dropped by capacity
  torch::Tensor skipped;  ///< 0-dim int64: tokens routed nowhere by NonFinitePolicy::kSkip
  /// 0-dim int64: tokens that chose no expert by the router's own rule (top-any, expert choice);
  /// undefined for routers that route every token.
  torch::Tensor unrouted;
  torch::Tensor num_active_experts;  ///< 0-dim int64: experts that may receive tokens
  /// The router's unweighted auxiliary terms by name (see RoutingResult::loss_terms).
  LossTerms loss_terms;

  double dropped_fraction() const;  ///< dropped / assigned (0 when nothing was assigned)
  int64_t skipped_tokens() const;
  double experts_per_token_mean() const;
  int64_t experts_per_token_min() const;
  int64_t experts_per_token_max() const;
  double cv_importance() const;  ///< coefficient of variation std/mean (population std)
  double cv_load() const;        ///< same for load
  int64_t active_experts() const;
  int64_t tokens_without_expert() const;  ///< 0 for routers that route every token
  /// The named loss term as a number, or NaN when the router did not compute it.
  double loss_term(const std::string& name) const;
};

/// The routing decision of a forward pass, for inspection and tests.
struct Routing {
  torch::Tensor expert_index;  ///< [T, K] int64, -1 = unused choice (dropped or skipped)
  torch::Tensor gate;          ///< [T, K] combine weight per choice (router dtype), 0 where unused
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
