// A hand-written top-any router for the tests (docs/algorithms.md §2.2), with explicit loops in
// float64. Nothing here calls the library.
#pragma once

#include <torch/types.h>

namespace moe::testing {

struct TopAnyReference {
  torch::Tensor scores;        // [T, E] s
  torch::Tensor fired;         // [T, E] bool, s > theta
  torch::Tensor expert_index;  // [T, E] e or -1 (after the inference fallback when eval)
  torch::Tensor gate;          // [T, E] float64 combine weights
  torch::Tensor k;             // [T] experts per token after the fallback
};

/// x [T, d]; weight [E, d]; threshold [E]; active [E]; lambda the logit scale. `eval` applies the
/// argmax fallback with weight 1 (or the raw score when `raw_score`).
TopAnyReference top_any_reference(const torch::Tensor& x, const torch::Tensor& weight,
                                  const torch::Tensor& threshold, const torch::Tensor& active,
                                  double lambda, bool eval, bool raw_score = false);

}  // namespace moe::testing
