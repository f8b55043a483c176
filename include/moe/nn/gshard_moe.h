// moe::nn::GShardMoE: GShard / Mesh-TF top-2 gating with group capacity and a second-expert policy,
// one level or two (moe/routers/gshard_router.h, docs/algorithms.md §1.10 and §5.2), on the shared
// engine. It is the layer behind the Python drop-in for lucidrains/mixture-of-experts
// (moe.compat.MoE and moe.compat.HeirarchicalMoE, docs/python.md).
//
// Parameters: router.weight [E, d] (one level) or router.outer_weight [E_o, d] and
// router.inner_weight [E_o, E_i, d] (two levels), experts.w1 [E, d, h], experts.w2 [E, h, d]
// (E = E_o·E_i; expert o·E_i + i is expert i of group o), no expert biases by default.
#pragma once

#include <torch/arg.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <vector>

#include "moe/experts.h"
#include "moe/nested_options.h"
#include "moe/nn/routed_moe.h"
#include "moe/routers/gshard_router.h"

namespace moe::nn {

/// Example (lucidrains' HeirarchicalMoE(dim=512, num_experts=(4, 4))):
///   GShardMoE m(GShardMoEOptions(512, {4, 4}));
///   auto out = m(x);   // x [b, n, 512]: each sequence is a group
struct GShardMoEOptions {
  GShardMoEOptions(int64_t d_model, std::vector<int64_t> experts)
      : router_options_(GShardRouterOptions(d_model, experts).name("GShardMoE")),
        expert_options_(total(experts), d_model, 4 * d_model) {}
  int64_t d_model() const { return router_options_.d_model(); }
  const std::vector<int64_t>& experts() const { return router_options_.experts(); }

  /// The gate's options (its name in error messages is "GShardMoE"). group_size 0 (the default)
  /// makes each sequence of a [b, n, d] input a group, and a [T, d] input one group.
  TORCH_ARG(GShardRouterOptions, router_options);
  /// The experts' options; hidden_size defaults to 4·d_model.
  TORCH_ARG(ExpertBankOptions, expert_options);
  // Gate settings (GShardRouterOptions).
  MOE_NESTED_ARG(int64_t, group_size, router_options_, group_size)
  MOE_NESTED_ARG(SecondPolicy, second_policy_train, router_options_, second_policy_train)
  MOE_NESTED_ARG(SecondPolicy, second_policy_eval, router_options_, second_policy_eval)
  MOE_NESTED_ARG(double, second_threshold_train, router_options_, second_threshold_train)
  MOE_NESTED_ARG(double, second_threshold_eval, router_options_, second_threshold_eval)
  MOE_NESTED_ARG(double, capacity_factor_train, router_options_, capacity_factor_train)
  MOE_NESTED_ARG(double, capacity_factor_eval, router_options_, capacity_factor_eval)
  MOE_NESTED_ARG(int64_t, min_capacity, router_options_, min_capacity)
  MOE_NESTED_ARG(double, loss_coef, router_options_, loss_coef)
  MOE_NESTED_ARG(double, router_init_std, router_options_, init_std)
  MOE_NESTED_ARG(NonFinitePolicy, non_finite, router_options_, non_finite)
  // Expert settings (ExpertBankOptions).
  MOE_EXPERT_SHORT_NAMES(expert_options_)

 private:
  static int64_t total(const std::vector<int64_t>& e) {
    int64_t n = 1;
    for (const auto v : e) n *= v;
    return n;
  }
};

class GShardMoEImpl : public RoutedMoEImpl {
 public:
  explicit GShardMoEImpl(GShardMoEOptions options);
  void pretty_print(std::ostream& stream) const override;
  /// x: [b, n, d] (groups of n tokens unless group_size is set) or [T, d]. The auxiliary loss is
  /// computed in training and evaluation alike (Mesh-TF). It sets the router's group size for x
  /// first: call it, not RoutedMoEImpl::forward (which keeps the group size of the last call),
  /// and not from two threads at once.
  MoEOutput forward(const torch::Tensor& x);
  /// The gate's decision for x, grouped as forward() groups it, without running the experts (for
  /// experts of one's own, as lucidrains' `experts=` argument).
  RoutingResult route(const torch::Tensor& x);
  const GShardMoEOptions& layer_options() const { return layer_options_; }

  GShardRouter router = nullptr;

 protected:
  std::shared_ptr<RoutedMoEImpl> make_copy() const override;

 private:
  /// Groups of n tokens for x [b, n, d] unless group_size is set.
  void set_groups_for(const torch::Tensor& x);
  GShardMoEOptions layer_options_;
};
TORCH_MODULE(GShardMoE);

}  // namespace moe::nn
