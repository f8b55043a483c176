// Functional form of the expert computation over a RoutingPlan (the engine's hot path).
#pragma once

#include <torch/types.h>

#include "moe/plan.h"
#include "moe/types.h"

namespace moe::functional {

/// Stacked expert parameters; w3, b1, b2 may be undefined (w3 is required for gated activations).
struct ExpertWeights {
  torch::Tensor w1;  ///< [E, d, h]
  torch::Tensor w2;  ///< [E, h, d]
  torch::Tensor w3;  ///< [E, d, h] or undefined
  torch::Tensor b1;  ///< [E, h] or undefined
  torch::Tensor b2;  ///< [E, d] or undefined
};

/// dispatch → per-expert MLP (grouped GEMMs over the plan's segments) → weighted combine, as one
/// autograd function with gradients for x, pair_weight and every weight.
///   x [T, d], pair_weight [P] (plan order), returns y [T, d].
/// Deterministic: y[t] sums the pairs of t in slot order. Empty experts get zero weight gradients.
/// All tensors must share x's dtype (float32, float64 or bfloat16) and device.
/// Memory: for backward the function keeps the expert outputs [P, d] and the hidden pre-activations
/// [P, h] (twice for gated units); with recompute_hidden it keeps only the outputs and recomputes
/// the hidden layer in backward (one more GEMM per expert, two for gated units). Nothing is kept
/// when no input requires grad or grad mode is off.
torch::Tensor expert_mlp(const torch::Tensor& x, const RoutingPlan& plan,
                         const torch::Tensor& pair_weight, const ExpertWeights& weights,
                         Activation activation, bool recompute_hidden = false);

}  // namespace moe::functional
