// Benchmark workloads: the shapes of docs/benchmarks.md (C0-C5) and docs/gpu.md (G1-G6), and
// the routing distributions.
#pragma once

#include <torch/types.h>

#include <string>
#include <vector>

#include "moe/functional.h"
#include "moe/types.h"

namespace moe::bench {

struct Shape {
  std::string id;
  int64_t T, d, d_ff, E, k;
  Activation act;
  /// Weight matrices per expert: 2 for an MLP, 3 for SwiGLU.
  int64_t matrices() const { return is_gated(act) ? 3 : 2; }
  /// Useful forward FLOPs 2·m·T·k·d·d_ff (docs/benchmarks.md, "Metrics and timing").
  double forward_flops() const { return 2.0 * matrices() * T * k * d * d_ff; }
};

/// C0-C5 of docs/benchmarks.md, "Shapes".
const std::vector<Shape>& cpu_shapes();
/// G1-G6 (docs/gpu.md): published layer shapes for a GPU; G6 without DeepSeek's 2 shared experts.
const std::vector<Shape>& gpu_shapes();
const Shape& shape_by_id(const std::string& id);

/// Routing distributions (docs/benchmarks.md): "balanced" (round robin), "uniform" (top-k of normal
/// logits), "skewed" (k distinct experts drawn with Zipf(1.2) probabilities).
const std::vector<std::string>& distributions();

/// A routing table drawn from a distribution: expert_index [T, k] int64, gate [T, k] float32
/// (softmax over the k), and the imbalance max load / mean load. Seeds the generator with `seed`.
struct Routing {
  torch::Tensor expert_index, gate;
  double imbalance = 1.0;
};
Routing make_routing(const Shape& s, const std::string& dist, uint64_t seed);

/// One benchmark case: inputs, weights and a fixed routing table shared by every implementation.
struct Workload {
  Shape shape;
  std::string dist;
  c10::ScalarType dtype;
  torch::Tensor x;             ///< [T, d]
  torch::Tensor expert_index;  ///< [T, k] int64
  torch::Tensor gate;          ///< [T, k] float32, renormalised over the k
  functional::ExpertWeights w;
  /// The same weights as separate per-expert leaves, as an eager model with one module per expert
  /// holds them (a slice of a stacked leaf would make every expert's backward write a full-size
  /// grad).
  std::vector<torch::Tensor> w1s, w2s, w3s;
  torch::Tensor grad_out;  ///< [T, d], fixed upstream gradient for the backward pass
  double imbalance = 1.0;  ///< max expert load / mean load
};

Workload make_workload(const Shape& s, const std::string& dist, c10::ScalarType dtype,
                       uint64_t seed);

/// Sets requires_grad on x, gate and the weights (fwd+bwd), or clears it (forward only), and drops
/// grads.
void set_requires_grad(Workload& w, bool on);

}  // namespace moe::bench
