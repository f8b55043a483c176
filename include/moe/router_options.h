// Options of the top-k routers (softmax top-k, Switch, Shazeer noisy top-k).
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>
#include <string>

#include "moe/types.h"

namespace moe {

/// Example: TopKRouter r(RouterOptions(/*d_model=*/512,
/// /*num_experts=*/16).kind(RouterKind::kNoisyTopK).top_k(4));
///
/// Loss coefficients left unset take the defaults of the router's paper:
///   kNoisyTopK:            importance 1e-2, load 1e-2 (t2t moe_loss_coef), balance 0, z 0
///   kSoftmaxTopK, kSwitch: importance 0, load 0, balance 1e-2, z 0 (ST-MoE uses z = 1e-3)
///   kFrozenRandom:         all 0 (SMoE-Dropout; the router is frozen and has a bias)
struct RouterOptions {
  RouterOptions(int64_t d_model, int64_t num_experts)
      : d_model_(d_model), num_experts_(num_experts) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(RouterKind, kind) = RouterKind::kSoftmaxTopK;
  TORCH_ARG(int64_t, top_k) = 2;
  /// kSoftmaxTopK only: renormalise the k kept probabilities to sum to 1 (Mixtral, GShard).
  /// kSwitch never renormalises; kNoisyTopK takes the softmax over the k kept logits (Eq. 3).
  TORCH_ARG(bool, normalize_top_k) = true;
  TORCH_ARG(bool, bias) = false;  ///< router.bias [E]
  /// kNoisyTopK: draw the Gaussian gating noise in training (Eq. 4). Off, the gate is the clean
  /// H = x·W_g in training too, there is no router.noise_weight, and the load loss counts the hard
  /// assignments (it then has no gradient; the importance loss still balances). The noise is drawn
  /// in the router's dtype: float32 for float32 and bfloat16 layers (their router computes in
  /// float32), float64 for float64 layers.
  TORCH_ARG(bool, noisy_gating) = true;
  /// kNoisyTopK: the floor added to softplus(x·W_noise), 1e-2 in t2t.
  TORCH_ARG(double, noise_epsilon) = 1e-2;
  /// Multiplicative input jitter U(1-j, 1+j) in training (Switch uses 1e-2); 0 = off.
  TORCH_ARG(double, jitter) = 0.0;
  /// 0 = dropless (default). Otherwise capacity = max(min_capacity, ceil(T·k/E·capacity_factor)).
  TORCH_ARG(double, capacity_factor) = 0.0;
  TORCH_ARG(int64_t, min_capacity) = 0;
  TORCH_ARG(c10::optional<double>, importance_coef) = c10::nullopt;
  TORCH_ARG(c10::optional<double>, load_coef) = c10::nullopt;
  TORCH_ARG(c10::optional<double>, balance_coef) = c10::nullopt;
  TORCH_ARG(c10::optional<double>, z_loss_coef) = c10::nullopt;
  /// Auxiliary losses are computed in training only unless this is set.
  TORCH_ARG(bool, aux_loss_in_eval) = false;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  /// Zero-initialise router.weight and router.noise_weight (Shazeer §1.5). Default: zero for
  /// kNoisyTopK, N(0, router_init_std) otherwise.
  TORCH_ARG(c10::optional<bool>, zero_init) = c10::nullopt;
  TORCH_ARG(double, router_init_std) = 0.02;
  /// Freeze the router at its initialisation (requires_grad = false): SMoE-Dropout's random router.
  TORCH_ARG(bool, frozen) = false;
  /// The layer named in error messages (a layer sets its own name, e.g. "SparseMoE").
  TORCH_ARG(std::string, name) = "TopKRouter";
};

/// Loss coefficients after applying the per-kind defaults.
struct LossCoefficients {
  double importance = 0, load = 0, balance = 0, z = 0;
};
LossCoefficients resolve_coefficients(const RouterOptions& o);

/// Validates router options (ValueError naming the field and the value).
void check_router_options(const RouterOptions& o, const char* who);

}  // namespace moe
