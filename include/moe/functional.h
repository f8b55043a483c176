// Functional form of the expert computation over a RoutingPlan (the engine's hot path).
#pragma once

#include <torch/types.h>

#include "moe/plan.h"
#include "moe/types.h"

namespace moe::functional {

/// Stacked expert parameters; w3, b1, b2 may be undefined (w3 is required for gated activations).
/// w2 may be undefined too (then b2 as well): one-layer experts, o = act(x·w1 + b1), out = h. The
/// output width `out` is w2's last dimension (usually d, as in ExpertBank) or h without w2.
struct ExpertWeights {
  torch::Tensor w1;  ///< [E, d, h]
  torch::Tensor w2;  ///< [E, h, out] or undefined (one-layer experts)
  torch::Tensor w3;  ///< [E, d, h] or undefined
  torch::Tensor b1;  ///< [E, h] or undefined
  torch::Tensor b2;  ///< [E, out] or undefined
};

/// dispatch → per-expert MLP (grouped GEMMs over the plan's segments) → weighted combine, as one
/// autograd function with gradients for x, pair_weight and every weight.
///   x [T, d], pair_weight [P] (plan order), returns y [T, out].
/// Deterministic: y[t] sums the pairs of t in expert order, whatever the thread count (a
/// multi-threaded BLAS GEMM may still round by its own thread count: OpenBLAS's OpenMP build).
/// Empty experts get zero weight gradients. All tensors must share x's dtype (float32, float64 or
/// bfloat16) and device; bf16 sums into float32 and rounds once. Memory: for backward the function
/// keeps the hidden layer [P, h] (for ReLU its output; for other activations the pre-activation,
/// twice for gated units) and no expert output: the gradient of a pair weight is computed from the
/// hidden layer's gradient. With recompute_hidden it keeps nothing of size P and recomputes the
/// hidden layer in backward (one more GEMM per expert, two for gated units). Nothing is kept when
/// no input requires grad or grad mode is off. The other working memory is scratch of a few
/// experts' rows, never [P, out]. Backward computes dL/dx and dL/dpair_weight only where autograd
/// needs them (not for an input that does not require grad).
torch::Tensor expert_mlp(const torch::Tensor& x, const RoutingPlan& plan,
                         const torch::Tensor& pair_weight, const ExpertWeights& weights,
                         Activation activation, bool recompute_hidden = false);

}  // namespace moe::functional
