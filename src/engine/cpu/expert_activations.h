// The CPU engine's elementwise activation passes (used by the CPU backend): a = f(h) (or f(h)·g
// for gated units) and f'(h), on ATen's vectorised kernels, run over fixed row blocks so that
// results do not depend on the thread count.
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>

#include <algorithm>

#include "kernels/cpu/acc_type.h"
#include "moe/types.h"

namespace moe::engine::cpu {

// a = f(h) into out. GELU is the exact (erf) form. For gated units f alone (no product).
void act_out(Activation act, at::Tensor& out, const at::Tensor& h);

// a = f(h), or f(h)·g for gated units (bf16: one rounding, f(h) kept in float32 until the product).
void activation_forward(Activation act, const at::Tensor& h, const at::Tensor& g, at::Tensor& a);

// da = f'(h) · da in place: the derivative of a smooth activation (ReLU's is applied from its
// output by hidden_output_backward).
void activation_derivative(Activation act, const at::Tensor& h, at::Tensor& da);

// t's rows [r0, r1); undefined stays undefined.
inline at::Tensor row_slice(const at::Tensor& t, int64_t r0, int64_t r1) {
  return t.defined() ? t.narrow(0, r0, r1 - r0) : t;
}

// Runs fn(r0, r1) over fixed blocks of the rows of an [n, width] elementwise pass, in parallel
// unless already inside a parallel region (the parallel schedule). ATen splits a large elementwise
// op into one chunk per thread, and each chunk ends in a scalar loop whose exp and erf round
// differently from the vectorised body: left to ATen, SiLU's and GELU's results moved with the
// thread count. Blocks of at most ATen's grain size are one chunk each, at any thread count.
template <typename F>
void in_row_blocks(int64_t n, int64_t width, F&& fn) {
  const int64_t rows = kernels::cpu::row_grain(width);
  const int64_t blocks = (n + rows - 1) / rows;
  auto run = [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) fn(b * rows, std::min(n, (b + 1) * rows));
  };
  if (blocks <= 1 || at::in_parallel_region()) {
    run(0, blocks);
    return;
  }
  const at::ThreadLocalState state;  // see schedule::for_each_expert
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    at::ThreadLocalStateGuard guard(state);
    run(b0, b1);
  });
}

}  // namespace moe::engine::cpu
