// ATen's activations and their derivatives, as the portable backend's two paths use them.
#pragma once

#include <ATen/ATen.h>

#include "moe/types.h"

namespace moe::engine::portable {

// f(h), ATen's own activations (GELU in its exact erf form, as the CPU backend).
inline at::Tensor activation(Activation act, const at::Tensor& h) {
  switch (act) {
    case Activation::kReLU:
      return at::relu(h);
    case Activation::kGELU:
    case Activation::kGEGLU:
      return at::gelu(h);
    case Activation::kSiLU:
    case Activation::kSwiGLU:
      return at::silu(h);
  }
  TORCH_CHECK(false, "portable backend: unknown activation");
}

// da · f'(h).
inline at::Tensor activation_backward(Activation act, const at::Tensor& da, const at::Tensor& h) {
  switch (act) {
    case Activation::kReLU:
      return at::threshold_backward(da, h, 0);
    case Activation::kGELU:
    case Activation::kGEGLU:
      return at::gelu_backward(da, h);
    case Activation::kSiLU:
    case Activation::kSwiGLU:
      return at::silu_backward(da, h);
  }
  TORCH_CHECK(false, "portable backend: unknown activation");
}

}  // namespace moe::engine::portable
