// The CPU backend's matrix products (gemm.h).
#include "engine/cpu/gemm.h"

#include <ATen/ATen.h>

#include "moe/cpu.h"

namespace moe::engine::cpu {

// Where bf16 runs natively, LibTorch still sends a product of at most 16³ multiply-adds to its
// generic loop, which accumulates in bf16 (a 1×4096·4096×1 product measured 18% off): such tiny
// products (an expert with a few rows) are computed in float32 and rounded once.
void gemm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias,
              bool accumulate) {
  if (out.scalar_type() == at::kBFloat16 &&
      !moe::cpu::bf16_product_native(a.size(0), b.size(1), a.size(1))) {
    auto r = at::mm(a.to(at::kFloat), b.to(at::kFloat));
    if (bias.defined()) r.add_(bias);
    if (accumulate) r.add_(out);
    out.copy_(r);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else if (bias.defined()) {
    at::addmm_out(out, bias, a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

at::ScalarType compute_dtype(at::ScalarType storage) {
  return storage == at::kBFloat16 && moe::cpu::bf16_gemm() == moe::cpu::Bf16Gemm::kFloat32
             ? at::kFloat
             : storage;
}

at::Tensor in_dtype(const at::Tensor& t, at::ScalarType c) {
  return t.defined() && t.scalar_type() != c ? t.to(c) : t;
}

}  // namespace moe::engine::cpu
