// A synthetic regression task made of M clusters, each with its own target function: the workload
// on which an MoE should find (about) one expert per cluster. Used by the DynMoE auto-tuning test
// and example (docs/dynmoe.md).
//
// Cluster m has a centre c_m = radius · u_m (u_m a random unit vector) and a teacher network
// f_m(x) = tanh(x·A_m / sqrt(d)) · B_m / sqrt(teacher_hidden), A_m, B_m ~ N(0, 1). A sample picks m
// uniformly, x = c_m + noise·N(0, I), y = f_m(x).
#pragma once

#include <torch/arg.h>
#include <torch/types.h>

#include <cstdint>

namespace moe::data {

struct ClusterRegressionOptions {
  TORCH_ARG(int64_t, clusters) = 6;
  TORCH_ARG(int64_t, dim) = 16;
  TORCH_ARG(int64_t, teacher_hidden) = 16;
  TORCH_ARG(double, radius) = 3.0;
  TORCH_ARG(double, noise) = 0.5;
  TORCH_ARG(uint64_t, seed) = 0;  ///< fixes the centres and the teachers
};

struct RegressionBatch {
  torch::Tensor x;        ///< [n, dim] float32
  torch::Tensor y;        ///< [n, dim] float32
  torch::Tensor cluster;  ///< [n] int64
};

class ClusterRegression {
 public:
  explicit ClusterRegression(ClusterRegressionOptions options);
  /// n samples drawn with their own seed (the same seed gives the same batch), from the first
  /// `clusters` clusters only when clusters > 0 (a shift of the input distribution).
  RegressionBatch sample(int64_t n, uint64_t seed, int64_t clusters = 0) const;
  const ClusterRegressionOptions& options() const { return options_; }

 private:
  ClusterRegressionOptions options_;
  torch::Tensor centres_;  // [M, d]
  torch::Tensor a_, b_;    // [M, d, th], [M, th, d]
};

}  // namespace moe::data
