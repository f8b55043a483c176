// Options of moe::nn::TopAnyMoE (DynMoE, docs/algorithms.md §2).
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>

#include "moe/experts.h"
#include "moe/nested_options.h"
#include "moe/nn/expert_schedule.h"
#include "moe/routers/top_any_router.h"
#include "moe/types.h"

namespace moe::nn {

/// How the layer holds a changing set of experts.
enum class ExpertStorage {
  /// The reference: max_experts experts are allocated; a mask switches them on and off.
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
        router_options_(TopAnyRouterOptions(d_model, max_experts).name("TopAnyMoE")),
        expert_options_(max_experts, d_model, 4 * d_model) {}

  /// The router and expert-bank options for a layer of `num_experts` experts (the pool in pool
  /// mode, the active experts in resize mode).
  TopAnyRouterOptions router_options_for(int64_t num_experts) const;
  ExpertBankOptions expert_options_for(int64_t num_experts) const;

  /// The Tutel loss set: diversity + simplicity only.
  TopAnyMoEOptions& tutel_losses() {
    router_options_.tutel_losses();
    return *this;
  }

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, max_experts);      ///< E_max
  TORCH_ARG(int64_t, initial_experts);  ///< E_0, default max_experts / 2 as in the shipped configs
  TORCH_ARG(ExpertStorage, storage) = ExpertStorage::kPoolMask;
  TORCH_ARG(ExpertSchedule, schedule) = ExpertSchedule::manual();
  /// Every expert starts as a copy of one network (the reference deep-copies the FFN); false:
  /// independent initialisations.
  TORCH_ARG(bool, copy_initial_expert) = true;
  TORCH_ARG(NewExpertInit, new_expert_init) = NewExpertInit::kKeep;
  /// The router's settings (moe/routers/top_any_router.h); its sizes are set per layer.
  TORCH_ARG(TopAnyRouterOptions, router_options);
  /// The experts' settings (moe/experts.h); hidden_size defaults to 4·d_model.
  TORCH_ARG(ExpertBankOptions, expert_options);

  // Router settings (TopAnyRouterOptions).
  MOE_NESTED_ARG(TopAnyTemperature, temperature, router_options_, temperature)
  MOE_NESTED_ARG(c10::optional<double>, init_temperature, router_options_, init_temperature)
  MOE_NESTED_ARG(TopAnyFallback, fallback, router_options_, fallback)
  MOE_NESTED_ARG(double, aux_loss_coef, router_options_, aux_loss_coef)
  MOE_NESTED_ARG(bool, diversity_loss, router_options_, diversity_loss)
  MOE_NESTED_ARG(bool, simplicity_loss, router_options_, simplicity_loss)
  MOE_NESTED_ARG(bool, balance_loss, router_options_, balance_loss)
  MOE_NESTED_ARG(bool, efficiency_loss, router_options_, efficiency_loss)
  MOE_NESTED_ARG(bool, aux_loss_in_eval, router_options_, aux_loss_in_eval)
  MOE_NESTED_ARG(NonFinitePolicy, non_finite, router_options_, non_finite)
  // Expert settings (ExpertBankOptions).
  MOE_EXPERT_SHORT_NAMES(expert_options_)
};

}  // namespace moe::nn
