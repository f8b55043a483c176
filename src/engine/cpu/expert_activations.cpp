// The engine's elementwise activation passes (expert_activations.h).
#include "engine/cpu/expert_activations.h"

#include <ATen/ATen.h>

namespace moe::engine::cpu {

void act_out(Activation act, at::Tensor& out, const at::Tensor& h) {
  switch (act) {
    case Activation::kReLU:
      at::clamp_min_out(out, h, 0);
      break;
    case Activation::kGELU:
    case Activation::kGEGLU:
      at::gelu_out(out, h);
      break;
    case Activation::kSiLU:
    case Activation::kSwiGLU:
      at::silu_out(out, h);
      break;
  }
}

void activation_forward(Activation act, const at::Tensor& h, const at::Tensor& g, at::Tensor& a) {
  if (is_gated(act) && h.scalar_type() == at::kBFloat16) {
    // f(h)·g with one bf16 rounding instead of two: f(h) stays float32 until the product.
    auto f = h.to(at::kFloat);
    act_out(act, f, f);
    at::mul_out(a, f, g);
    return;
  }
  act_out(act, a, h);
  if (is_gated(act)) a.mul_(g);
}

// da = f'(h) · da in place: the derivative of a smooth activation (ReLU's is applied from its
// output by hidden_output_backward).
void activation_derivative(Activation act, const at::Tensor& h, at::Tensor& da) {
  switch (act) {
    case Activation::kReLU:
      TORCH_INTERNAL_ASSERT(false, "ReLU's derivative is fused into hidden_output_backward");
      break;
    case Activation::kGELU:
    case Activation::kGEGLU:
      at::gelu_backward_out(da, da, h);
      break;
    case Activation::kSiLU:
    case Activation::kSwiGLU:
      at::silu_backward_out(da, da, h);
      break;
  }
}

}  // namespace moe::engine::cpu
