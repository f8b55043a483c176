// The CPU backend's matrix products and the dtype its experts compute in.
#pragma once

#include <ATen/core/Tensor.h>

namespace moe::engine::cpu {

/// out = a · b (+ bias), or out += a · b when `accumulate`; out is a view into a preallocated
/// buffer. bf16 products that LibTorch would accumulate in bf16 are computed in float32 (gemm.cpp).
void gemm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
              const at::Tensor& bias = {}, bool accumulate = false);

/// The dtype the experts compute in: the storage dtype, except bf16 where the CPU has no bf16 dot
/// products (include/moe/cpu.h): there every product runs in float32 on float32 copies of the bf16
/// operands, and the hidden layers stay float32 between the GEMMs. Stored tensors (the weights,
/// the saved hidden layer, inputs, outputs and gradients) keep their dtype.
at::ScalarType compute_dtype(at::ScalarType storage);

/// `t` in the compute dtype `c` (a copy only when they differ); undefined stays undefined.
at::Tensor in_dtype(const at::Tensor& t, at::ScalarType c);

}  // namespace moe::engine::cpu
