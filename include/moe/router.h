// Routers turn token features into a routing result: a choice table (expert id + combine weight
// per choice), auxiliary losses and statistics. Every router implements RouterInterface and returns
// a RoutingResult; the routed layer (moe/nn/routed_moe.h) and the engine do not care which router
// produced it (docs/design.md §1, docs/routers.md on adding a router).
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/batch_shards.h"
#include "moe/router_options.h"
#include "moe/stats.h"

namespace moe {

/// What a router decided for one batch. Counts are 0-dim int64 tensors on the router's device so
/// that routing never waits for the device; read them with .item() only where a number is needed.
struct RoutingResult {
  /// [T, K] int64: the expert of choice s of token t, -1 for an unused choice (dropped by capacity,
  /// skipped, or not taken). K is fixed per router (k for top-k, E for top-any and expert choice).
  torch::Tensor expert_index;
  torch::Tensor gate;        ///< [T, K] combine weights in router precision; 0 at unused choices
  torch::Tensor importance;  ///< [E] Σ_x G(x) before capacity drops (differentiable)
  torch::Tensor load;        ///< [E] smooth or hard load (see gating.h)
  torch::Tensor aux_loss;    ///< 0-dim, weighted by the router's coefficients
  /// The unweighted auxiliary terms by name ("importance", "load", "balance", "z", "diversity",
  /// ...), detached 0-dim tensors, for logging. Only the terms the router computed.
  LossTerms loss_terms;
  torch::Tensor assigned;        ///< 0-dim int64: choices the router made (before capacity)
  torch::Tensor dropped;         ///< 0-dim int64: choices dropped by capacity
  torch::Tensor skipped_tokens;  ///< 0-dim int64: non-finite tokens under NonFinitePolicy::kSkip
  /// [T] bool: tokens the router sent to no expert by its own rule (top-any, expert choice);
  /// undefined for routers that always route every valid token.
  torch::Tensor unrouted;
  /// 0-dim int64: experts that could receive tokens; undefined = all E (only DynMoE's top-any
  /// router switches experts off).
  torch::Tensor active_experts;

  /// The named loss term, or an undefined tensor.
  torch::Tensor loss_term(const std::string& name) const;
};
/// The name of RoutingResult before the routed-layer refactor.
using RouterOutput = RoutingResult;

/// The interface every router implements, next to torch::nn::Module. A router is a module that
/// owns its parameters; a routed layer registers the router's modules under the names
/// layer_modules() gives (so parameter names are the router's choice: "router.weight", or
/// "primary_router.weight" for the two-level gate).
class RouterInterface {
 public:
  virtual ~RouterInterface() = default;
  /// x: [T, d] (any float dtype; routers compute in float32, or float64 for float64 input), the
  /// whole batch.
  RoutingResult route(const torch::Tensor& x);
  /// x: this process's shard of a batch split over processes (moe/batch_shards.h): the choices are
  /// those of x's tokens; importance, load, the auxiliary losses, the capacity and the gating noise
  /// are those of the global batch, so every world size routes alike.
  virtual RoutingResult route(const torch::Tensor& x, const BatchShards& batch) = 0;
  virtual int64_t num_experts() const = 0;
  /// k of a router that gives every token k choices; 0 for routers without one (top-any, expert
  /// choice).
  virtual int64_t top_k() const { return 0; }
  /// Changes k (1 <= k <= E); routers without a k raise an error naming the router.
  virtual void set_top_k(int64_t k);
  /// The router's kind as the configuration names it ("noisy_topk", "expert_choice", ...).
  virtual std::string kind() const = 0;
  /// New initial values for the router's parameters (default: none to reset).
  virtual void reset_parameters() {}
  /// The modules a routed layer registers, with their names. Default: the router itself, as
  /// "router".
  virtual std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>> layer_modules();
};

/// Softmax top-k, Switch and Shazeer noisy top-k routing. Parameters: weight [E, d],
/// noise_weight [E, d] (kNoisyTopK), bias [E] (with bias(true)).
class TopKRouterImpl : public torch::nn::Cloneable<TopKRouterImpl>, public RouterInterface {
 public:
  explicit TopKRouterImpl(RouterOptions options);
  void reset() override;
  void reset_parameters() override;
  void pretty_print(std::ostream& stream) const override;

  using RouterInterface::route;
  RoutingResult route(const torch::Tensor& x, const BatchShards& batch) override;
  RoutingResult forward(const torch::Tensor& x) { return route(x); }
  int64_t num_experts() const override { return options.num_experts(); }
  int64_t top_k() const override { return options.top_k(); }
  void set_top_k(int64_t k) override;
  std::string kind() const override { return to_string(options.kind()); }

  RouterOptions options;
  torch::Tensor weight, noise_weight, bias;
};
TORCH_MODULE(TopKRouter);

/// The dtype routers compute in for input dtype `t`: float64 stays float64, everything else
/// float32.
c10::ScalarType router_dtype(c10::ScalarType t);

}  // namespace moe
