// Options of moe::nn::SparseMoE (one router of any top-k kind + one expert bank).
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>

#include "moe/experts.h"
#include "moe/router_options.h"
#include "moe/routers/hyper_router.h"
#include "moe/types.h"

namespace moe::nn {

/// Example:
///   SparseMoE layer(SparseMoEOptions(/*d_model=*/512,
///   /*num_experts=*/16).hidden_size(2048).top_k(2)
///                       .router(RouterKind::kNoisyTopK).activation(Activation::kReLU));
/// Router settings are described in moe/router_options.h; unset loss coefficients take the router
/// kind's defaults.
struct SparseMoEOptions {
  SparseMoEOptions(int64_t d_model, int64_t num_experts)
      : d_model_(d_model), num_experts_(num_experts), hidden_size_(4 * d_model) {}
  /// The router and expert-bank options these settings describe.
  RouterOptions router_options() const;
  HyperRouterOptions hyper_router_options() const;
  ExpertBankOptions expert_options() const;

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, hidden_size);  ///< expert hidden width, default 4·d_model
  TORCH_ARG(int64_t, top_k) = 2;
  TORCH_ARG(RouterKind, router) = RouterKind::kSoftmaxTopK;
  TORCH_ARG(Activation, activation) = Activation::kReLU;
  TORCH_ARG(double, capacity_factor) = 0.0;  ///< 0 = dropless
  TORCH_ARG(int64_t, min_capacity) = 0;
  TORCH_ARG(bool, normalize_top_k) = true;
  TORCH_ARG(bool, router_bias) = false;
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  TORCH_ARG(double, jitter) = 0.0;
  TORCH_ARG(c10::optional<double>, importance_coef) = c10::nullopt;
  TORCH_ARG(c10::optional<double>, load_coef) = c10::nullopt;
  TORCH_ARG(c10::optional<double>, balance_coef) = c10::nullopt;
  TORCH_ARG(c10::optional<double>, z_loss_coef) = c10::nullopt;
  TORCH_ARG(bool, aux_loss_in_eval) = false;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  TORCH_ARG(c10::optional<bool>, router_zero_init) = c10::nullopt;
  TORCH_ARG(double, router_init_std) = 0.02;
  /// Keep the router at its initialisation (RouterKind::kFrozenRandom implies it).
  TORCH_ARG(bool, freeze_router) = false;
  /// RouterKind::kHyper: the hyper-network's hidden width h and the embedding width d_e (default
  /// d_model). See moe/routers/hyper_router.h.
  TORCH_ARG(int64_t, hyper_hidden) = 256;
  TORCH_ARG(c10::optional<int64_t>, embedding_dim) = c10::nullopt;
  TORCH_ARG(bool, expert_bias) = false;
  TORCH_ARG(ExpertInit, expert_init) = ExpertInit::kGlorotUniform;
  TORCH_ARG(double, expert_init_std) = 0.02;
  TORCH_ARG(bool, recompute_hidden) = false;  ///< see ExpertBankOptions::recompute_hidden
};

}  // namespace moe::nn
