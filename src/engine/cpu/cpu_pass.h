// What one forward or backward of the CPU backend derives from its problem (sizes, the plan's
// host pointers, the schedule), shared by the per-expert driver (cpu_backend.cpp) and the path of
// many small experts (small_experts.cpp).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "engine/backend.h"
#include "engine/cpu/engine_schedule.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/workspace.h"
#include "moe/types.h"

namespace moe::engine::cpu {

// One dtype switch for the backend (float, double, bfloat16).
template <typename F>
inline void dispatch_dtype(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t, "expert_mlp", [&] { f(scalar_t(0)); });
}

// The zeroed accumulator of run_chunked for an output of type `opts`: the output itself, or a
// float32 buffer for bf16 (accumulation in float32, docs/routing.md).
inline at::Tensor make_accumulator(int64_t T, int64_t d, const at::TensorOptions& opts) {
  return at::zeros({T, d}, opts.dtype() == at::kBFloat16 ? opts.dtype(at::kFloat) : opts);
}

// The accumulator in the stored dtype.
inline at::Tensor stored(const at::Tensor& acc, at::ScalarType store) {
  return acc.scalar_type() == store ? acc : acc.to(store);
}

// What both passes derive from the problem: sizes, the plan's host pointers, the schedule.
struct Pass {
  int64_t T, d, h, E, P, out;
  at::ScalarType store, cdt;  // the stored and the compute dtype
  bool convert, gated, relu, parallel;
  const int64_t* offsets;
  const int64_t* tok;
  int64_t rows;  // of the largest expert
  at::TensorOptions copts;
  StackedWeights w;  // biases in the compute dtype

  explicit Pass(const ExpertProblem& p)
      : T(p.x.size(0)),
        d(p.x.size(1)),
        h(p.w1.size(2)),
        E(p.w1.size(0)),
        P(p.token_index.size(0)),
        out(output_width(p)),
        store(p.x.scalar_type()),
        cdt(compute_dtype(store)),
        convert(cdt != store),
        gated(is_gated(p.act)),
        relu(p.act == Activation::kReLU),
        offsets(p.expert_offsets.data_ptr<int64_t>()),
        tok(p.token_index.data_ptr<int64_t>()),
        rows(schedule::largest_segment(offsets, E)),
        copts(p.x.options().dtype(cdt)),
        w{p.w1, p.w2, p.w3, in_dtype(p.b1, cdt), in_dtype(p.b2, cdt)} {
    parallel = schedule::experts_in_parallel(offsets, E);
  }

  std::vector<Work> workspace(bool keep_h, bool backward) const {
    return make_workspace(
        parallel, {rows, d, h, keep_h, gated, relu, backward, convert, out, w.w2.defined()}, copts);
  }
  // Rows of `width` columns: the experts' outputs (out) or input gradients (d, or 0 for none).
  at::Tensor chunk_buffer(int64_t width) const {
    return at::empty({schedule::chunk_rows(parallel, rows, P), width}, copts);
  }
};

// The stored weight gradients, and the bias gradients in the compute dtype. Every expert with
// pairs writes its whole slice; the others are zeroed here (never left uninitialised).
ExpertGradients allocate_gradients(const ExpertProblem& p, const Pass& ps);

}  // namespace moe::engine::cpu
