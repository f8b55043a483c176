// moe::nn::SparseMoE: a router (softmax top-k, Switch, Shazeer noisy top-k, SMoE-Dropout's frozen
// random router or HyperRouter) and an expert bank
// behind the engine's RoutingPlan (docs/design.md §1, §3), built as a RoutedMoE.
//
// Parameters: router.weight [E, d], router.noise_weight [E, d] (noisy), router.bias [E] (optional),
//             or router.embedding / router.hypernet_* (kHyper, see moe/routers/hyper_router.h),
//             experts.w1 [E, d, h], experts.w2 [E, h, d], experts.w3 [E, d, h] (gated units),
//             experts.b1 [E, h], experts.b2 [E, d] (optional).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "moe/nn/routed_moe.h"
#include "moe/nn/sparse_moe_options.h"
#include "moe/router.h"
#include "moe/routers/hyper_router.h"

namespace moe::nn {

/// A named constructor of RoutedMoE (moe/nn/routed_moe.h): one TopKRouter (or a HyperRouter for
/// RouterKind::kHyper) and one expert bank.
class SparseMoEImpl : public RoutedMoEImpl {
 public:
  explicit SparseMoEImpl(SparseMoEOptions options);
  void pretty_print(std::ostream& stream) const override;

  /// The options this layer was built from.
  const SparseMoEOptions& layer_options() const { return layer_options_; }

  TopKRouter router = nullptr;         ///< every kind but kHyper
  HyperRouter hyper_router = nullptr;  ///< kHyper (registered as "router" too)

 protected:
  std::shared_ptr<RoutedMoEImpl> make_copy() const override;

 private:
  SparseMoEOptions layer_options_;
};
TORCH_MODULE(SparseMoE);

}  // namespace moe::nn
