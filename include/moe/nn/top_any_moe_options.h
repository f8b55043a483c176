// Options of moe::nn::TopAnyMoE (DynMoE, docs/algorithms.md §2).
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>

#include "moe/experts.h"
#include "moe/nn/expert_schedule.h"
#include "moe/routers/top_any_router.h"
#include "moe/types.h"

namespace moe::nn {

/// How the layer holds a changing set of experts.
enum class ExpertStorage {
  /// The reference: max_experts slots are allocated; a mask switches them on and off.
  kPoolMask,
  /// The parameter tensors hold only the active experts and are shrunk and grown at each update
  /// (optimizer moments of surviving experts carried over). max_experts bounds the growth.
  kResize,
};

/// The FFN weights an added expert starts from (§2.4).
enum class NewExpertInit {
  /// The reference: pool mode keeps the slot's current weights (the initial network if the slot
  /// was never used, else its last trained weights); resize mode copies the initial network.
  kKeep,
  kReinit,  ///< fresh weights from the bank's initialiser (and zeroed optimizer moments)
};

/// Example:
///   TopAnyMoE layer(TopAnyMoEOptions(/*d_model=*/512, /*max_experts=*/16).initial_experts(8)
///                       .hidden_size(2048).schedule(ExpertSchedule::window(300, 900)));
struct TopAnyMoEOptions {
  TopAnyMoEOptions(int64_t d_model, int64_t max_experts)
      : d_model_(d_model),
        max_experts_(max_experts),
        initial_experts_(max_experts > 1 ? max_experts / 2 : 1),
        hidden_size_(4 * d_model) {}

  TopAnyRouterOptions router_options(int64_t num_slots) const;
  ExpertBankOptions expert_options(int64_t num_slots) const;

  /// The Tutel loss set: diversity + simplicity only.
  TopAnyMoEOptions& tutel_losses() {
    balance_loss_ = false;
    efficiency_loss_ = false;
    return *this;
  }

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, max_experts);      ///< E_max
  TORCH_ARG(int64_t, initial_experts);  ///< E_0, default max_experts / 2 as in the shipped configs
  TORCH_ARG(int64_t, hidden_size);      ///< expert hidden width, default 4·d_model
  TORCH_ARG(Activation, activation) = Activation::kReLU;
  TORCH_ARG(ExpertStorage, storage) = ExpertStorage::kPoolMask;
  TORCH_ARG(ExpertSchedule, schedule) = ExpertSchedule::manual();
  /// Every expert starts as a copy of one network (the reference deep-copies the FFN); false:
  /// independent initialisations.
  TORCH_ARG(bool, copy_initial_expert) = true;
  TORCH_ARG(NewExpertInit, new_expert_init) = NewExpertInit::kKeep;
  // Router (see TopAnyRouterOptions).
  TORCH_ARG(TopAnyTemperature, temperature) = TopAnyTemperature::kFrozen;
  TORCH_ARG(c10::optional<double>, init_temperature) = c10::nullopt;
  TORCH_ARG(TopAnyFallback, fallback) = TopAnyFallback::kArgmax;
  TORCH_ARG(double, aux_loss_coef) = 0.01;
  TORCH_ARG(bool, diversity_loss) = true;
  TORCH_ARG(bool, simplicity_loss) = true;
  TORCH_ARG(bool, balance_loss) = true;
  TORCH_ARG(bool, efficiency_loss) = true;
  TORCH_ARG(bool, aux_loss_in_eval) = false;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  // Experts (see ExpertBankOptions).
  TORCH_ARG(bool, expert_bias) = false;
  TORCH_ARG(ExpertInit, expert_init) = ExpertInit::kGlorotUniform;
  TORCH_ARG(double, expert_init_std) = 0.02;
  TORCH_ARG(bool, recompute_hidden) = false;
};

}  // namespace moe::nn
