// TopAnyRouter: DynMoE's top-any gating (Guo et al. 2024; docs/algorithms.md §2.1–§2.3).
//
// Each of E experts has a trainable representation (a row of router.weight) and a trainable
// threshold. A token activates every active expert whose sigmoid cosine score exceeds the expert's
// sigmoid threshold, so the number of experts per token k is not fixed; the combine weight is 1/k
// over the activated experts (not score-weighted). The 0/1 decision uses a straight-through sign.
//
// Parameters: router.weight [E, d] (orthogonal init; the transpose of the reference's sim_matrix),
//             router.threshold [E] (zeros), router.temperature [1] (kFrozen and kTrainable; it
//             holds log(1/t), the log of the logit scale; requires_grad only when trainable).
// Buffers:    router.active [E] (1 = active expert, 0 = free expert).
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "moe/router.h"
#include "moe/types.h"

namespace moe {

/// The logit scale λ = 1/t of the cosine scores (§2.6).
enum class TopAnyTemperature {
  kFrozen,     ///< DeepSpeed (the reference): t = 1, not trained
  kTrainable,  ///< Tutel gated_multi_gate_t: trained, init t = 0.1, λ clamped to <= 100
  kNone,       ///< Tutel gated_multi_gate: λ = 1, no tensor
};

/// What inference does with a token that activates no expert (§2.2, §2.6). Training always gives
/// such a token a zero output.
enum class TopAnyFallback {
  kArgmax,       ///< DeepSpeed: the highest-scoring active expert with weight 1 (default)
  kArgmaxScore,  ///< Tutel edge case: the highest-scoring active expert with its raw score s_max
  kZero,         ///< as in training: zero output
};

/// Example: TopAnyRouter r(TopAnyRouterOptions(/*d_model=*/512,
/// /*num_experts=*/16).initial_active(8));
struct TopAnyRouterOptions {
  TopAnyRouterOptions(int64_t d_model, int64_t num_experts)
      : d_model_(d_model), num_experts_(num_experts), initial_active_(num_experts) {}
  /// Selects the Tutel loss set (diversity + simplicity only).
  TopAnyRouterOptions& tutel_losses() {
    balance_loss_ = false;
    efficiency_loss_ = false;
    return *this;
  }
  /// t at initialisation after defaults.
  double resolved_init_temperature() const;

  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);     ///< E: allocated experts (the pool E_max in pool mode)
  TORCH_ARG(int64_t, initial_active);  ///< the first initial_active experts start active
  TORCH_ARG(TopAnyTemperature, temperature) = TopAnyTemperature::kFrozen;
  /// t at initialisation; unset: 1.0 (kFrozen), 0.1 (kTrainable). Ignored for kNone.
  TORCH_ARG(c10::optional<double>, init_temperature) = c10::nullopt;
  TORCH_ARG(TopAnyFallback, fallback) = TopAnyFallback::kArgmax;
  /// The weight of the summed auxiliary terms (0.01 in every shipped configuration, §2.3).
  TORCH_ARG(double, aux_loss_coef) = 0.01;
  /// The four terms of §2.3. The default is the DeepSpeed (reference) set; the Tutel set (used by
  /// the GLUE and DomainBed scripts) has balance and efficiency off.
  TORCH_ARG(bool, diversity_loss) = true;
  TORCH_ARG(bool, simplicity_loss) = true;
  TORCH_ARG(bool, balance_loss) = true;
  TORCH_ARG(bool, efficiency_loss) = true;
  TORCH_ARG(bool, aux_loss_in_eval) = false;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  TORCH_ARG(std::string, name) = "TopAnyRouter";  ///< the layer named in error messages
};

/// The routing decision of one forward pass of a TopAnyRouter, with its diagnostics.
struct TopAnyRouting {
  torch::Tensor expert_index;  ///< [T, E] int64: e where token t uses expert e, else -1
  torch::Tensor gate;          ///< [T, E] combine weights (1/k on used experts), differentiable
  torch::Tensor scores;        ///< [T, E] sigmoid scores s (0 at free experts), detached
  torch::Tensor fired;         ///< [T, E] bool: s > threshold (before the inference fallback)
  torch::Tensor unrouted;      ///< [T] bool: tokens that activated no expert (before the fallback)
  torch::Tensor aux_loss;      ///< 0-dim, weighted by aux_loss_coef; 0 in eval by default
  /// The unweighted terms that were computed ("diversity", "simplicity", "balance",
  /// "efficiency"), detached 0-dim tensors.
  LossTerms loss_terms;
  torch::Tensor skipped_tokens;  ///< 0-dim int64: non-finite tokens under NonFinitePolicy::kSkip
  torch::Tensor active_count;    ///< 0-dim int64: active experts

  /// The unweighted term `name` as a number, 0 when it was switched off or not computed.
  double term(const std::string& name) const;
  /// As the routed layer sees it (importance = gate mass, load = tokens per expert, over the
  /// global batch).
  RoutingResult result(const BatchShards& batch) const;
  RoutingResult result() const;
};

class TopAnyRouterImpl : public torch::nn::Cloneable<TopAnyRouterImpl>, public RouterInterface {
 public:
  explicit TopAnyRouterImpl(TopAnyRouterOptions options);
  void reset() override;
  void reset_parameters() override;
  void pretty_print(std::ostream& stream) const override;

  /// x: [T, d] (any float dtype; computed in float32, float64 for float64 input).
  TopAnyRouting decide(const torch::Tensor& x);
  /// x: this process's shard of a global batch (the balance and efficiency terms are global).
  TopAnyRouting decide(const torch::Tensor& x, const BatchShards& batch);
  using RouterInterface::route;
  RoutingResult route(const torch::Tensor& x, const BatchShards& batch) override {
    return decide(x, batch).result(batch);
  }
  TopAnyRouting forward(const torch::Tensor& x) { return decide(x); }
  std::string kind() const override { return "top_any"; }

  /// E: allocated experts (the pool E_max in pool mode).
  int64_t num_experts() const override { return weight.size(0); }
  int64_t num_active() const;
  /// λ = exp(min(log(1/t), log 100)) as a 0-dim tensor (1 for kNone).
  torch::Tensor logit_scale() const;

  TopAnyRouterOptions options;
  torch::Tensor weight, threshold, temperature, active;
};
TORCH_MODULE(TopAnyRouter);

/// The straight-through sign of DynMoE (§2.2): forward sign(x), backward the identity.
torch::Tensor sign_ste(const torch::Tensor& x);

/// L_div = ||(Wn·Wnᵀ − I) ∘ m·mᵀ||_F with Wn the row-normalised weight [E, d] (§2.3).
torch::Tensor top_any_diversity_loss(const torch::Tensor& weight, const torch::Tensor& active);
/// L_simple = mean over all E rows of ||weight[e]||_2 (§2.3).
torch::Tensor top_any_simplicity_loss(const torch::Tensor& weight);
/// L_bal = E²·mean_e(me·ce) over the tokens with k > 0, 0 if there are none (§2.3).
/// a: [T, E] the straight-through 0/1 activations (differentiable).
torch::Tensor top_any_balance_loss(const torch::Tensor& a);
/// L_eff = mean of a over all T·E entries (§2.3).
torch::Tensor top_any_efficiency_loss(const torch::Tensor& a);

}  // namespace moe
