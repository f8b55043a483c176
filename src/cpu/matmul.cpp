// bf16-safe matrix products (include/moe/matmul.h).
#include "moe/matmul.h"

#include <ATen/ATen.h>

#include "moe/cpu.h"

namespace moe::ops {
namespace {

// Runs `f` on the operands, converted to float32 first when bf16 products run in float32; the
// result is then rounded back to bf16.
template <typename F>
at::Tensor compute(const std::vector<at::Tensor>& operands, F&& f) {
  bool up = false;
  for (const auto& t : operands) up = up || (t.defined() && products_in_float32(t.scalar_type()));
  if (!up) return f(operands);
  std::vector<at::Tensor> converted;
  converted.reserve(operands.size());
  for (const auto& t : operands)
    converted.push_back(t.defined() && t.scalar_type() == at::kBFloat16 ? t.to(at::kFloat) : t);
  return f(converted).to(at::kBFloat16);
}

}  // namespace

bool products_in_float32(at::ScalarType dtype) {
  return dtype == at::kBFloat16 && cpu::bf16_gemm() == cpu::Bf16Gemm::kFloat32;
}

at::Tensor mm(const at::Tensor& a, const at::Tensor& b) {
  return compute({a, b}, [](const auto& t) { return at::mm(t[0], t[1]); });
}

at::Tensor bmm(const at::Tensor& a, const at::Tensor& b) {
  return compute({a, b}, [](const auto& t) { return at::bmm(t[0], t[1]); });
}

at::Tensor matmul(const at::Tensor& a, const at::Tensor& b) {
  return compute({a, b}, [](const auto& t) { return at::matmul(t[0], t[1]); });
}

at::Tensor addmm(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b) {
  return compute({bias, a, b}, [](const auto& t) { return at::addmm(t[0], t[1], t[2]); });
}

at::Tensor baddbmm(const at::Tensor& bias, const at::Tensor& a, const at::Tensor& b) {
  return compute({bias, a, b}, [](const auto& t) { return at::baddbmm(t[0], t[1], t[2]); });
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& bias) {
  return compute({x, w, bias}, [](const auto& t) { return at::linear(t[0], t[1], t[2]); });
}

at::Tensor einsum(const std::string& equation, const std::vector<at::Tensor>& operands) {
  return compute(operands, [&](const auto& t) { return at::einsum(equation, t); });
}

}  // namespace moe::ops
