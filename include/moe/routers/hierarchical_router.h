// HierarchicalRouter: the two-level noisy gating of Shazeer et al. 2017, Appendix B
// (docs/algorithms.md §1.7).
//
// a groups of b experts. A primary noisy top-k gate picks k1 groups; the secondary noisy top-k gate
// of each picked group picks k2 of its b experts; the combine weight is the product of the two gate
// values (Eq. 12). Losses: CV² of Importance_H (Eq. 13) and of Load_H (Eq. 14), over the a·b
// entries. Expert g·b + j is expert j of group g. Secondary gate g runs only on the tokens that
// picked group g (a grouped product over the primary gate's plan): routing costs T·(a + k1·b)·d
// multiply-adds, and no tensor has T × a·b entries.
//
// Parameters (the names a routed layer registers): primary_router.weight / noise_weight [a, d],
// secondary_router.weight / noise_weight [a·b, d] (rows g·b .. g·b+b-1 belong to group g), all
// zero-initialised (Shazeer §1.5).
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <string>

#include "moe/router.h"

namespace moe {

struct HierarchicalRouterOptions {
  HierarchicalRouterOptions(int64_t d_model, int64_t groups, int64_t experts_per_group)
      : d_model_(d_model), groups_(groups), experts_per_group_(experts_per_group) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, groups);             ///< a
  TORCH_ARG(int64_t, experts_per_group);  ///< b
  TORCH_ARG(int64_t, primary_top_k) = 2;
  TORCH_ARG(int64_t, secondary_top_k) = 2;
  /// Draw the gating noise of both gates in training (as RouterOptions::noisy_gating). Off, the
  /// gates are clean and have no noise_weight.
  TORCH_ARG(bool, noisy_gating) = true;
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  TORCH_ARG(double, importance_coef) = 1e-2;
  TORCH_ARG(double, load_coef) = 1e-2;
  TORCH_ARG(bool, aux_loss_in_eval) = false;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  TORCH_ARG(std::string, name) = "HierarchicalRouter";
};

/// One noisy gate: weight and noise_weight [E, d] (noisy gating only), zero-initialised.
class HierarchicalGateImpl : public torch::nn::Cloneable<HierarchicalGateImpl> {
 public:
  HierarchicalGateImpl(int64_t d_model, int64_t num_experts, bool noisy = true);
  void reset() override;
  int64_t d_model, num_experts;
  bool noisy;
  torch::Tensor weight, noise_weight;
};
TORCH_MODULE(HierarchicalGate);

class HierarchicalRouterImpl : public torch::nn::Cloneable<HierarchicalRouterImpl>,
                               public RouterInterface {
 public:
  explicit HierarchicalRouterImpl(HierarchicalRouterOptions options);
  void reset() override;
  void pretty_print(std::ostream& stream) const override;

  /// expert_index / gate are [T, k1·k2]: choice (s1, s2) is expert g·b + j.
  using RouterInterface::route;
  RoutingResult route(const torch::Tensor& x, const BatchShards& batch) override;
  int64_t num_experts() const override { return options.groups() * options.experts_per_group(); }
  /// k1·k2, the choices per token.
  int64_t top_k() const override { return options.primary_top_k() * options.secondary_top_k(); }
  std::string kind() const override { return "hierarchical"; }
  std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> layer_modules() override;

  HierarchicalRouterOptions options;
  HierarchicalGate primary_router = nullptr;
  HierarchicalGate secondary_router = nullptr;
};
TORCH_MODULE(HierarchicalRouter);

}  // namespace moe
