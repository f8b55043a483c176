// moe::nn::SparseMoE: a router (softmax top-k, Switch, Shazeer noisy top-k, SMoE-Dropout's frozen
// random router or HyperRouter) and an expert bank
// behind the engine's RoutingPlan (DESIGN.md §1, §3).
//
// Parameters: router.weight [E, d], router.noise_weight [E, d] (noisy), router.bias [E] (optional),
//             or router.embedding / router.hypernet_* (kHyper, see moe/routers/hyper_router.h),
//             experts.w1 [E, d, h], experts.w2 [E, h, d], experts.w3 [E, d, h] (gated units),
//             experts.b1 [E, h], experts.b2 [E, d] (optional).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "moe/experts.h"
#include "moe/nn/sparse_moe_options.h"
#include "moe/router.h"
#include "moe/stats.h"

namespace moe::nn {

class SparseMoEImpl : public torch::nn::Cloneable<SparseMoEImpl> {
 public:
  explicit SparseMoEImpl(SparseMoEOptions options);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// x: [..., d_model] (any leading dims; float32, float64 or bfloat16 matching the experts).
  MoEOutput forward(const torch::Tensor& x);

  /// Changes k (1 <= k <= E) from now on: a k schedule during training (TopKSchedule), or another k
  /// at inference.
  void set_top_k(int64_t k);

  /// Converts the experts to `dtype`; the router stays float32 (float64 when dtype is float64), as
  /// routing in bf16 flips expert choices (RELIABILITY.md §2). Children of user modules get this
  /// too.
  using torch::nn::Module::to;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;

  SparseMoEOptions options;
  TopKRouter router = nullptr;         ///< every kind but kHyper
  HyperRouter hyper_router = nullptr;  ///< kHyper (registered as "router" too)
  ExpertBank experts = nullptr;
};
TORCH_MODULE(SparseMoE);

}  // namespace moe::nn
