// Matrix products with float32 accumulation for bf16 on every CPU (include/moe/cpu.h): where bf16
// products run natively these are the ATen functions of the same name; on the float32 path, and
// for tiny products (at most 16³ multiply-adds each) and einsums everywhere, their bf16 operands
// are converted to float32, multiplied by the float32 BLAS, and the result is rounded to bf16 once.
// Autograd flows through both (the gradients of bf16 operands come back in bf16). Other dtypes go
// straight to ATen. The engine (expert_mlp) makes the same choice inside.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace moe::ops {

/// True when products of `dtype` operands are computed in float32 (bf16 on the float32 path).
bool products_in_float32(at::ScalarType dtype);

at::Tensor mm(const at::Tensor& a, const at::Tensor& b);
at::Tensor bmm(const at::Tensor& a, const at::Tensor& b);
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b);
/// bias + a·b (bias broadcast as by at::addmm).
at::Tensor addmm(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b);
/// bias + a·b batched (bias broadcast as by at::baddbmm).
at::Tensor baddbmm(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b);
/// x·wᵀ + bias, bias optional (undefined).
at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias = {});
at::Tensor einsum(const std::string& equation, const std::vector<at::Tensor>& operands);

}  // namespace moe::ops
