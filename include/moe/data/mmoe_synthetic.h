// The synthetic two-task regression data of MMoE (Ma et al. 2018 §3.2) with the parameters PLE
// supplies (§5.2.1); docs/algorithms.md §4.2:
//
//   u1 ⊥ u2 unit vectors;  w1 = c·u1,  w2 = c·(p·u1 + sqrt(1 − p²)·u2)      (cos(w1, w2) = p)
//   x ~ N(0, I_d);  y_k = w_kᵀx + Σ_{i=1..m} sin(α_i w_kᵀx + β_i) + ε_k,  α_i, β_i ~ N(0, 1)
#pragma once

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>

namespace moe::data {

struct MMoESyntheticOptions {
  TORCH_ARG(int64_t, dim) = 100;         ///< d (MMoE's experiments; PLE uses 512)
  TORCH_ARG(double, correlation) = 0.5;  ///< p in [−1, 1]
  TORCH_ARG(double, scale) = 1.0;        ///< c
  TORCH_ARG(int64_t, sine_terms) = 10;   ///< m
  /// ε ~ N(0, 0.01): the paper does not say whether 0.01 is the variance (std 0.1, the default
  /// here) or the standard deviation; set noise_std to choose.
  TORCH_ARG(double, noise_std) = 0.1;
  TORCH_ARG(uint64_t, seed) = 0;  ///< fixes u1, u2, α, β
};

struct MultiTaskBatch {
  torch::Tensor x;  ///< [n, d] float32
  torch::Tensor y;  ///< [n, 2] float32
};

class MMoESynthetic {
 public:
  explicit MMoESynthetic(MMoESyntheticOptions options);
  /// n samples with their own seed (the same seed gives the same samples).
  MultiTaskBatch sample(int64_t n, uint64_t seed) const;
  /// cos(w1, w2), which equals the requested p up to rounding.
  double weight_cosine() const;
  const torch::Tensor& w1() const { return w1_; }
  const torch::Tensor& w2() const { return w2_; }
  const MMoESyntheticOptions& options() const { return options_; }

 private:
  MMoESyntheticOptions options_;
  torch::Tensor w1_, w2_, alpha_, beta_;  // float64
};

}  // namespace moe::data
