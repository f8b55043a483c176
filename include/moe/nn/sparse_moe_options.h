// Options of moe::nn::SparseMoE (one router of any top-k kind + one expert bank).
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>

#include "moe/experts.h"
#include "moe/nested_options.h"
#include "moe/router_options.h"
#include "moe/routers/hyper_router.h"
#include "moe/types.h"

namespace moe::nn {

/// The options nest the router's (moe/router_options.h) and the experts' (moe/experts.h); each
/// setting is stored once, in the nested struct, and the short names below set it there.
///
/// Example:
///   SparseMoE layer(SparseMoEOptions(/*d_model=*/512, /*num_experts=*/16)
///                       .hidden_size(2048).top_k(2).router(RouterKind::kNoisyTopK)
///                       .activation(Activation::kReLU));
///   // the same, nested:
///   auto o = SparseMoEOptions(512, 16);
///   o.router_options().kind(RouterKind::kNoisyTopK).top_k(2);
///   o.expert_options().hidden_size(2048);
/// Unset loss coefficients take the router kind's defaults.
struct SparseMoEOptions {
  SparseMoEOptions(int64_t d_model, int64_t num_experts)
      : router_options_(RouterOptions(d_model, num_experts).name("SparseMoE")),
        expert_options_(num_experts, d_model, 4 * d_model) {}
  /// The HyperRouter these settings describe (RouterKind::kHyper).
  HyperRouterOptions hyper_router_options() const;

  /// d_model and num_experts, of the router and the experts alike.
  SparseMoEOptions& d_model(int64_t d) {
    router_options_.d_model(d);
    expert_options_.d_model(d);
    return *this;
  }
  int64_t d_model() const { return router_options_.d_model(); }
  SparseMoEOptions& num_experts(int64_t e) {
    router_options_.num_experts(e);
    expert_options_.num_experts(e);
    return *this;
  }
  int64_t num_experts() const { return router_options_.num_experts(); }

  /// The router's options (its name in error messages is "SparseMoE").
  TORCH_ARG(RouterOptions, router_options);
  /// The experts' options; hidden_size defaults to 4·d_model.
  TORCH_ARG(ExpertBankOptions, expert_options);
  /// RouterKind::kHyper: the hyper-network's hidden width h and the embedding width d_e (default
  /// d_model). See moe/routers/hyper_router.h.
  TORCH_ARG(int64_t, hyper_hidden) = 256;
  TORCH_ARG(c10::optional<int64_t>, embedding_dim) = c10::nullopt;

  // Router settings (RouterOptions).
  MOE_NESTED_ARG(RouterKind, router, router_options_, kind)
  MOE_NESTED_ARG(int64_t, top_k, router_options_, top_k)
  MOE_NESTED_ARG(double, capacity_factor, router_options_, capacity_factor)  ///< 0 = dropless
  MOE_NESTED_ARG(int64_t, min_capacity, router_options_, min_capacity)
  MOE_NESTED_ARG(bool, normalize_top_k, router_options_, normalize_top_k)
  MOE_NESTED_ARG(bool, router_bias, router_options_, bias)
  MOE_NESTED_ARG(bool, noisy_gating, router_options_, noisy_gating)  ///< kNoisyTopK: noise on
  MOE_NESTED_ARG(double, noise_epsilon, router_options_, noise_epsilon)
  MOE_NESTED_ARG(double, jitter, router_options_, jitter)
  MOE_NESTED_ARG(c10::optional<double>, importance_coef, router_options_, importance_coef)
  MOE_NESTED_ARG(c10::optional<double>, load_coef, router_options_, load_coef)
  MOE_NESTED_ARG(c10::optional<double>, balance_coef, router_options_, balance_coef)
  MOE_NESTED_ARG(c10::optional<double>, z_loss_coef, router_options_, z_loss_coef)
  MOE_NESTED_ARG(bool, aux_loss_in_eval, router_options_, aux_loss_in_eval)
  MOE_NESTED_ARG(NonFinitePolicy, non_finite, router_options_, non_finite)
  MOE_NESTED_ARG(c10::optional<bool>, router_zero_init, router_options_, zero_init)
  MOE_NESTED_ARG(double, router_init_std, router_options_, router_init_std)
  /// Keep the router at its initialisation (RouterKind::kFrozenRandom implies it).
  MOE_NESTED_ARG(bool, freeze_router, router_options_, frozen)
  // Expert settings (ExpertBankOptions).
  MOE_EXPERT_SHORT_NAMES(expert_options_)
};

}  // namespace moe::nn
