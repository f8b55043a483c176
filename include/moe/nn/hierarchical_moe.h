// moe::nn::HierarchicalMoE: Shazeer et al. 2017 Appendix B (docs/algorithms.md §1.7).
//
// a groups of b experts. A primary noisy top-k gate picks k1 groups; the secondary noisy top-k gate
// of each picked group picks k2 of its b experts; the combine weight is the product of the two gate
// values (Eq. 12). Losses: CV² of Importance_H (Eq. 13) and of Load_H (Eq. 14), over the a·b
// entries.
//
// Parameters: primary_router.weight / noise_weight [a, d], secondary_router.weight / noise_weight
// [a·b, d] (rows g·b .. g·b+b-1 belong to group g), experts.* as in SparseMoE with E = a·b
// (expert g·b + j is expert j of group g). The routing is moe::HierarchicalRouter's.
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "moe/experts.h"
#include "moe/nested_options.h"
#include "moe/nn/routed_moe.h"
#include "moe/routers/hierarchical_router.h"
#include "moe/types.h"

namespace moe::nn {

/// The options nest the router's (moe/routers/hierarchical_router.h) and the experts'
/// (moe/experts.h); the short names below set them there.
///
/// Example: HierarchicalMoE h(HierarchicalMoEOptions(512, /*groups=*/16, /*experts_per_group=*/16)
///                                .hidden_size(1024).top_k(2));
struct HierarchicalMoEOptions {
  HierarchicalMoEOptions(int64_t d_model, int64_t groups, int64_t experts_per_group)
      : router_options_(
            HierarchicalRouterOptions(d_model, groups, experts_per_group).name("HierarchicalMoE")),
        expert_options_(groups * experts_per_group, d_model, 4 * d_model) {}
  /// Sets k for both levels (the paper uses k = 2 at each level).
  HierarchicalMoEOptions& top_k(int64_t k) {
    router_options_.primary_top_k(k).secondary_top_k(k);
    return *this;
  }
  int64_t d_model() const { return router_options_.d_model(); }
  int64_t groups() const { return router_options_.groups(); }                        ///< a
  int64_t experts_per_group() const { return router_options_.experts_per_group(); }  ///< b

  /// The two-level gate's options (its name in error messages is "HierarchicalMoE").
  TORCH_ARG(HierarchicalRouterOptions, router_options);
  /// The a·b experts' options; hidden_size defaults to 4·d_model.
  TORCH_ARG(ExpertBankOptions, expert_options);

  // Router settings (HierarchicalRouterOptions).
  MOE_NESTED_ARG(int64_t, primary_top_k, router_options_, primary_top_k)
  MOE_NESTED_ARG(int64_t, secondary_top_k, router_options_, secondary_top_k)
  MOE_NESTED_ARG(bool, noisy_gating, router_options_, noisy_gating)
  MOE_NESTED_ARG(double, noise_epsilon, router_options_, noise_epsilon)
  MOE_NESTED_ARG(double, importance_coef, router_options_, importance_coef)
  MOE_NESTED_ARG(double, load_coef, router_options_, load_coef)
  MOE_NESTED_ARG(bool, aux_loss_in_eval, router_options_, aux_loss_in_eval)
  MOE_NESTED_ARG(NonFinitePolicy, non_finite, router_options_, non_finite)
  // Expert settings (ExpertBankOptions).
  MOE_EXPERT_SHORT_NAMES(expert_options_)
};

/// A named constructor of RoutedMoE (moe/nn/routed_moe.h) with a HierarchicalRouter
/// (moe/routers/hierarchical_router.h).
class HierarchicalMoEImpl : public RoutedMoEImpl {
 public:
  explicit HierarchicalMoEImpl(HierarchicalMoEOptions options);
  void pretty_print(std::ostream& stream) const override;

  /// x: [..., d_model]. Stats are over the a·b experts (flattened group-major).
  using RoutedMoEImpl::forward;

  /// The options this layer was built from.
  const HierarchicalMoEOptions& layer_options() const { return layer_options_; }

  HierarchicalGate primary_router = nullptr;
  HierarchicalGate secondary_router = nullptr;

 protected:
  std::shared_ptr<RoutedMoEImpl> make_copy() const override;

 private:
  HierarchicalMoEOptions layer_options_;
};
TORCH_MODULE(HierarchicalMoE);

}  // namespace moe::nn
