// The implementations the benchmark compares (docs/benchmarks.md), all on one Workload's inputs,
// weights and routing table. Each returns the layer output [T, d] (with a graph when grads are on).
#pragma once

#include <torch/types.h>

#include "workload.h"

namespace moe::bench {

/// This library: routing plan (counting sort) + the fused expert autograd function; with
/// recompute_hidden, the hidden layer is recomputed in backward instead of kept.
torch::Tensor lib_forward(const Workload& w, bool recompute_hidden = false);

/// The common Mixtral-style eager loop over experts with LibTorch ops (HF MixtralSparseMoeBlock):
/// per expert, find its (token, slot) pairs, index_select, MLP, scale by the gate, index_add_.
torch::Tensor naive_loop_forward(const Workload& w);

/// GShard / Mesh-TF dense one-hot dispatch and combine (lucidrains' formulation, generalised to
/// top-k): groups of `group` tokens, capacity C = ceil(cf·k·group/E), first choices placed first,
/// einsum dispatch [G, n, E, C] and combine, padded bmm experts.
struct DenseDispatch {
  torch::Tensor output;
  torch::Tensor kept_index;  ///< [T, k]: the routing table with dropped assignments set to -1
  double drop_rate = 0.0;
};
DenseDispatch dense_dispatch_forward(const Workload& w, int64_t group = 1024, double cf = 1.25);

/// The roofline denominator: one expert's MLP on a contiguous [T·k, d] copy of the tokens.
torch::Tensor dense_equiv_forward(const Workload& w, const torch::Tensor& x_rep);

/// Elementwise activation (and gating) with ATen ops, for the baselines.
torch::Tensor activate(Activation act, const torch::Tensor& h, const torch::Tensor& g);

}  // namespace moe::bench
