// Routers turn token features into a slot table (expert id + combine weight per slot), auxiliary
// losses and statistics. Every router returns a RouterOutput; the engine does not care which one
// produced it (DESIGN.md §1).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "moe/router_options.h"

namespace moe {

struct RouterOutput {
  torch::Tensor expert_index;  ///< [T, K] int64; -1 = unused slot (dropped by capacity, or skipped)
  torch::Tensor gate;          ///< [T, K] combine weights in router precision; 0 at unused slots
  torch::Tensor importance;    ///< [E] Σ_x G(x) before capacity drops (differentiable)
  torch::Tensor load;          ///< [E] smooth or hard load (see gating.h)
  torch::Tensor aux_loss;      ///< 0-dim, weighted
  int64_t assigned = 0;        ///< assignments the router chose (before capacity)
  int64_t dropped = 0;         ///< assignments dropped by capacity
  int64_t skipped_tokens = 0;  ///< tokens with non-finite logits under NonFinitePolicy::kSkip
};

/// The interface every router module implements, next to torch::nn::Module.
class RouterInterface {
 public:
  virtual ~RouterInterface() = default;
  /// x: [T, d] (any float dtype; the router computes in float32, or float64 for float64 input).
  virtual RouterOutput route(const torch::Tensor& x) = 0;
  virtual int64_t num_experts() const = 0;
};

/// Softmax top-k, Switch and Shazeer noisy top-k routing. Parameters: weight [E, d],
/// noise_weight [E, d] (kNoisyTopK), bias [E] (with bias(true)).
class TopKRouterImpl : public torch::nn::Cloneable<TopKRouterImpl>, public RouterInterface {
 public:
  explicit TopKRouterImpl(RouterOptions options);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  RouterOutput route(const torch::Tensor& x) override;
  RouterOutput forward(const torch::Tensor& x) { return route(x); }
  int64_t num_experts() const override { return options.num_experts(); }

  RouterOptions options;
  torch::Tensor weight, noise_weight, bias;
};
TORCH_MODULE(TopKRouter);

/// The dtype routers compute in for input dtype `t`: float64 stays float64, everything else
/// float32.
c10::ScalarType router_dtype(c10::ScalarType t);

}  // namespace moe
