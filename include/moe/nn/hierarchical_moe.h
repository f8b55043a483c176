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
#include "moe/nn/routed_moe.h"
#include "moe/routers/hierarchical_router.h"
#include "moe/types.h"

namespace moe::nn {

/// Example: HierarchicalMoE h(HierarchicalMoEOptions(512, /*groups=*/16, /*experts_per_group=*/16)
///                                .hidden_size(1024).top_k(2));
struct HierarchicalMoEOptions {
  HierarchicalMoEOptions(int64_t d_model, int64_t groups, int64_t experts_per_group)
      : d_model_(d_model),
        groups_(groups),
        experts_per_group_(experts_per_group),
        hidden_size_(4 * d_model) {}
  /// The router and expert-bank options these settings describe.
  HierarchicalRouterOptions router_options() const;
  ExpertBankOptions expert_options() const;
  /// Sets k for both levels (the paper uses k = 2 at each level).
  HierarchicalMoEOptions& top_k(int64_t k) {
    primary_top_k_ = k;
    secondary_top_k_ = k;
    return *this;
  }
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, groups);             ///< a
  TORCH_ARG(int64_t, experts_per_group);  ///< b
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(int64_t, primary_top_k) = 2;
  TORCH_ARG(int64_t, secondary_top_k) = 2;
  TORCH_ARG(Activation, activation) = Activation::kReLU;
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  TORCH_ARG(double, importance_coef) = 1e-2;
  TORCH_ARG(double, load_coef) = 1e-2;
  TORCH_ARG(bool, aux_loss_in_eval) = false;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  TORCH_ARG(bool, expert_bias) = false;
  TORCH_ARG(ExpertInit, expert_init) = ExpertInit::kGlorotUniform;
  TORCH_ARG(double, expert_init_std) = 0.02;
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
