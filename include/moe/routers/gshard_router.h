// GShardRouter: GShard / Mesh-TensorFlow top-2 gating with group capacity and second-expert
// policies (Lepikhin et al. 2020; docs/algorithms.md §5.2), flat or two-level, as
// lucidrains/mixture-of-experts computes it (docs/algorithms.md §1.10, docs/python.md).
//
// Per group of S tokens (group_size; the whole batch when 0), with P = softmax(x·Wᵀ) [S, E]:
//   e1 = argmax P, e2 = argmax of P without e1; (g1, g2) = (P[e1], P[e2]) / (P[e1] + P[e2] + 1e-9)
//   loss = E² · mean_e( mean_s P[s, e] · mean_s [e1(s) = e] )       (before policy and capacity)
//   second policy: all | none | threshold (keep g2 > θ) | random (keep when U(0,1) < g2 / θ)
//   capacity C = max(min(S, ⌊S·cf/E⌋), min_capacity); places in token order, every first choice
//   before every second choice; a dropped choice gets weight 0, the kept ones are not
//   renormalised; a choice whose weight is exactly 0 is not used.
// The policy, threshold and capacity factor have a training and an evaluation value; the loss is
// computed in both modes, times loss_coef.
//
// Two levels (experts = {E_o, E_i}): the outer gate above sends each token to up to two of E_o
// groups of experts, into slots [E_o, groups, C_o]. The inner gate of outer expert o
// (inner_weight[o], [E_i, d]) then routes the C_o slots of each group as a group of its own: a
// slot holding a token's first choice takes part as above, a slot holding a second choice only
// through its second expert (which is then its arg-max, weight ≈ 1), an empty slot not at all; C_i
// = max(min(C_o, ⌊C_o·cf/E_i⌋), min_capacity). Expert o·E_i + i gets the token with the product of
// the two weights. aux = (outer loss + inner loss) · loss_coef.
//
// Parameters: flat: router.weight [E, d]; two levels: router.outer_weight [E_o, d],
// router.inner_weight [E_o, E_i, d]; all N(0, init_std²), no bias (init_std = 1 as lucidrains).
// Result: flat K = 2 (first, second choice); two levels K = 4 (outer choice × inner choice).
// The random policy draws U(0,1) with at::rand on the router's dtype: [groups, S] for the outer
// gate, then [E_o, groups, C_o] for the inner one.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <string>
#include <vector>

#include "moe/router.h"

namespace moe {

/// What becomes of the second choice (Mesh-TF's second_policy).
enum class SecondPolicy {
  kAll,        ///< always kept
  kNone,       ///< never kept (top-1 routing with top-2 weights)
  kThreshold,  ///< kept when its weight g2 > threshold
  kRandom,     ///< kept with probability min(1, g2 / threshold)
};

/// The policy called `name` ("all", "none", "threshold", "random"); a c10::ValueError otherwise.
SecondPolicy second_policy_from_string(const std::string& name, const std::string& who);
const char* to_string(SecondPolicy p);

/// Example: GShardRouter r(GShardRouterOptions(/*d_model=*/512,
/// /*experts=*/{16}).group_size(1024));
struct GShardRouterOptions {
  GShardRouterOptions(int64_t d_model, std::vector<int64_t> experts)
      : d_model_(d_model), experts_(std::move(experts)) {}
  TORCH_ARG(int64_t, d_model);
  /// {E}: one level; {E_o, E_i}: two levels of E_o·E_i experts.
  TORCH_ARG(std::vector<int64_t>, experts);
  /// Tokens per group; 0 = the whole batch is one group. The batch must be whole groups.
  TORCH_ARG(int64_t, group_size) = 0;
  TORCH_ARG(SecondPolicy, second_policy_train) = SecondPolicy::kRandom;
  TORCH_ARG(SecondPolicy, second_policy_eval) = SecondPolicy::kRandom;
  TORCH_ARG(double, second_threshold_train) = 0.2;
  TORCH_ARG(double, second_threshold_eval) = 0.2;
  TORCH_ARG(double, capacity_factor_train) = 1.25;
  TORCH_ARG(double, capacity_factor_eval) = 2.0;
  TORCH_ARG(int64_t, min_capacity) = 4;
  TORCH_ARG(double, loss_coef) = 1e-2;
  TORCH_ARG(double, init_std) = 1.0;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  TORCH_ARG(std::string, name) = "GShardRouter";  ///< the layer named in error messages
};

/// Validates the options (c10::ValueError naming the field and the value).
void check_gshard_router_options(const GShardRouterOptions& o);

class GShardRouterImpl : public torch::nn::Cloneable<GShardRouterImpl>, public RouterInterface {
 public:
  explicit GShardRouterImpl(GShardRouterOptions options);
  void reset() override;
  void reset_parameters() override;
  void pretty_print(std::ostream& stream) const override;
  using RouterInterface::route;
  /// x: [T, d] with T a multiple of the group size. A batch split over processes is an error (the
  /// groups are local; docs/python.md).
  RoutingResult route(const torch::Tensor& x, const BatchShards& batch) override;
  RoutingResult forward(const torch::Tensor& x) { return route(x); }
  int64_t num_experts() const override;
  int64_t top_k() const override { return 2; }
  std::string kind() const override { return "gshard_top2"; }
  /// Sets the group size from now on (e.g. the sequence length of each batch).
  void set_group_size(int64_t tokens);
  bool two_level() const { return options.experts().size() == 2; }
  /// C for groups of `group_tokens` tokens over `experts` experts in the current mode.
  int64_t capacity(int64_t group_tokens, int64_t experts) const;

  GShardRouterOptions options;
  torch::Tensor weight;                      ///< one level: [E, d]
  torch::Tensor outer_weight, inner_weight;  ///< two levels: [E_o, d], [E_o, E_i, d]
};
TORCH_MODULE(GShardRouter);

}  // namespace moe
