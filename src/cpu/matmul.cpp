// bf16-safe matrix products (include/moe/matmul.h).
#include "moe/matmul.h"

#include <ATen/ATen.h>

#include "moe/cpu.h"

namespace moe::ops {
namespace {

// Runs `f` on the operands, converted to float32 first when some operand is bf16 and the product
// does not run natively (the float32 path, or `native_size` false: a product LibTorch would send
// to its bf16-accumulating loop); the result is then rounded back to bf16.
template <typename F>
at::Tensor compute(const std::vector<at::Tensor>& operands, bool native_size, F&& f) {
  bool bf16 = false;
  for (const auto& t : operands) bf16 = bf16 || (t.defined() && t.scalar_type() == at::kBFloat16);
  if (!bf16 || native_size) return f(operands);
  std::vector<at::Tensor> converted;
  converted.reserve(operands.size());
  for (const auto& t : operands)
    converted.push_back(t.defined() && t.scalar_type() == at::kBFloat16 ? t.to(at::kFloat) : t);
  return f(converted).to(at::kBFloat16);
}

// Whether one product [m, k]·[k, n] of a (possibly batched or 1-D) matmul is large enough to run
// natively (moe::cpu::kSmallestNativeBf16Product).
bool native_size(const at::Tensor& a, const at::Tensor& b) {
  const int64_t m = a.dim() >= 2 ? a.size(-2) : 1, k = a.size(-1);
  const int64_t n = b.dim() >= 2 ? b.size(-1) : 1;
  return cpu::bf16_product_native(m, n, k);
}

}  // namespace

bool products_in_float32(at::ScalarType dtype) {
  return dtype == at::kBFloat16 && cpu::bf16_gemm() == cpu::Bf16Gemm::kFloat32;
}

at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  return compute({a, b}, native_size(a, b), [](const auto& t) { return at::mm(t[0], t[1]); });
}

at::Tensor bmm(const at::Tensor& a, const at::Tensor& b) {
  return compute({a, b}, native_size(a, b), [](const auto& t) { return at::bmm(t[0], t[1]); });
}

at::Tensor matmul(const at::Tensor& a, const at::Tensor& b) {
  return compute({a, b}, native_size(a, b), [](const auto& t) { return at::matmul(t[0], t[1]); });
}

at::Tensor addmm(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b) {
  return compute({bias, a, b}, native_size(a, b),
                 [](const auto& t) { return at::addmm(t[0], t[1], t[2]); });
}

at::Tensor baddbmm(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b) {
  return compute({bias, a, b}, native_size(a, b),
                 [](const auto& t) { return at::baddbmm(t[0], t[1], t[2]); });
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  // at::linear folds the leading dimensions of x into the rows of one product.
  const int64_t k = x.size(-1), rows = k > 0 ? x.numel() / k : 0;
  const bool native = cpu::bf16_product_native(rows, w.size(0), k);
  return compute({x, w, bias}, native, [](const auto& t) { return at::linear(t[0], t[1], t[2]); });
}

// The products an einsum runs are not known from outside (a "te,eto->to" mix is T tiny products):
// bf16 einsums always take the float32 path.
at::Tensor einsum(const std::string& equation, const std::vector<at::Tensor>& operands) {
  return compute(operands, false, [&](const auto& t) { return at::einsum(equation, t); });
}

}  // namespace moe::ops
