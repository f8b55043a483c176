// The CPU backend's working memory: per-worker scratch rows, one expert's weight blocks and
// gradient targets in the compute dtype, and the rows one expert works on.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "kernels/cpu/kernels.h"

namespace moe::engine::cpu {

/// Per-expert scratch rows: the first n rows of a [max_rows, cols] buffer.
struct Scratch {
  at::Tensor buf;
  at::Tensor rows(int64_t n) const { return buf.narrow(0, 0, n); }
};

/// Per-worker scratch, in the compute dtype. Forward: xg [rows, d]; h, g when the hidden layer is
/// not kept in the compute dtype; a when it is kept and a cannot overwrite it. Backward: xg [rows,
/// d] and dy [rows, out]; h, g when not kept; a (not for ReLU, whose hidden layer already holds a);
/// da; f(h) for gated units. When the experts compute in another dtype than their weights are
/// stored in (bf16 on the float32 path), w1, w2, w3 hold one expert's blocks converted, and in
/// backward receive its weight gradients before they are rounded into the stored dtype.
struct Work {
  Scratch xg, dy, hs, gs, as, das, fhs;
  at::Tensor w1, w2, w3;
};

struct WorkShape {
  int64_t rows, d, h;
  bool keep_h, gated, relu, backward;
  bool convert;  // computing in another dtype than the stored one
  int64_t out;   // the output width: w2's last dimension, or h for one-layer experts
  bool has_w2;   // two layers (false: one-layer experts)
};

/// One Work per worker: one per intra-op thread on the parallel schedule, else one.
std::vector<Work> make_workspace(bool parallel, const WorkShape& s, const at::TensorOptions& opts);

/// The stacked weights as the kernels read them: w1, w2, w3 as stored (undefined when absent),
/// b1, b2 whole in the compute dtype (undefined when absent).
struct StackedWeights {
  at::Tensor w1, w2, w3, b1, b2;
};

/// One expert's weights in the compute dtype: views of the stacked weights, or the worker's
/// converted copies (Work::w1, w2, w3). Undefined where absent.
struct ExpertBlocks {
  at::Tensor w1, w2, w3, b1, b2;
};
ExpertBlocks expert_blocks(const StackedWeights& w, int64_t e, Work& wk);

/// Where one expert's gradients go: its weight gradients (slices of the stored gradients or, when
/// converting, the worker's scratch), its bias gradients (undefined without biases) and its pair
/// weights' gradients.
struct ExpertGrads {
  at::Tensor w1, w2, w3, b1, b2, pw;
};

/// Expert e's weight gradient target: its slice of the stored gradient `g`, or, when converting,
/// the worker's scratch `conv` (then rounded into the slice by store_grad).
inline at::Tensor grad_target(const at::Tensor& g, int64_t e, const at::Tensor& conv) {
  return conv.defined() ? conv : g[e];
}
inline void store_grad(at::Tensor& g, int64_t e, const at::Tensor& computed) {
  if (computed.data_ptr() != g[e].data_ptr()) g[e].copy_(computed);
}

/// The rows one expert works on: its inputs xg [n, d] (worker scratch or x's rows), its hidden
/// pre-activations h (and g for gated units) in the compute dtype, and the rows of the saved
/// [P, h] tensors (undefined when nothing is kept). h and g are those saved rows when they are
/// stored in the compute dtype, else worker scratch.
struct ExpertRows {
  at::Tensor xg, h, g, h_kept, g_kept;
};

/// Rows tok[0..n) of src [T, cols] (contiguous), read only: a view of src when the tokens are
/// consecutive (an expert that every token of a range goes to, as in a dense plan), else gathered
/// into the first n rows of `scratch`.
template <typename T>
at::Tensor token_rows(const at::Tensor& src, const int64_t* tok, int64_t n,
                      const Scratch& scratch) {
  int64_t i = 1;
  while (i < n && tok[i] == tok[0] + i) ++i;
  if (n > 0 && i == n) return src.narrow(0, tok[0], n);
  auto rows = scratch.rows(n);
  kernels::cpu::gather_rows<T>(src.data_ptr<T>(), tok, n, src.size(1), rows.data_ptr<T>());
  return rows;
}

/// The rows of the expert whose pairs are [s, s+n): xg from x (token_rows); fills nothing else.
template <typename T>
ExpertRows expert_rows(const Work& wk, const at::Tensor& x, const int64_t* tok, int64_t s,
                       int64_t n, const at::Tensor& hall, const at::Tensor& gall, bool gated) {
  ExpertRows r;
  r.xg = token_rows<T>(x, tok + s, n, wk.xg);
  if (hall.defined()) {
    r.h_kept = hall.narrow(0, s, n);
    if (gated) r.g_kept = gall.narrow(0, s, n);
  }
  const bool in_place = hall.defined() && !wk.hs.buf.defined();
  r.h = in_place ? r.h_kept : wk.hs.rows(n);
  if (gated) r.g = in_place ? r.g_kept : wk.gs.rows(n);
  return r;
}

}  // namespace moe::engine::cpu
