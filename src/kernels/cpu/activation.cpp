// Expert activations on the CPU, forward and backward, elementwise.
// GELU is the exact (erf) form, as torch.nn.GELU's default.
#include <ATen/Parallel.h>

#include <cmath>

#include "kernels/cpu/acc_type.h"
#include "kernels/cpu/kernels.h"

namespace moe::kernels::cpu {
namespace {

constexpr double kInvSqrt2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;

// f(h) and f'(h) of the non-gated part of each activation.
template <typename A>
inline A act_value(Activation act, A h) {
  switch (act) {
    case Activation::kReLU:
      return h > A(0) ? h : A(0);
    case Activation::kGELU:
    case Activation::kGEGLU:
      return A(0.5) * h * (A(1) + std::erf(h * A(kInvSqrt2)));
    case Activation::kSiLU:
    case Activation::kSwiGLU:
      return h / (A(1) + std::exp(-h));
  }
  return A(0);
}

template <typename A>
inline A act_derivative(Activation act, A h) {
  switch (act) {
    case Activation::kReLU:
      return h > A(0) ? A(1) : A(0);
    case Activation::kGELU:
    case Activation::kGEGLU:
      return A(0.5) * (A(1) + std::erf(h * A(kInvSqrt2))) +
             h * A(kInvSqrt2Pi) * std::exp(A(-0.5) * h * h);
    case Activation::kSiLU:
    case Activation::kSwiGLU: {
      const A s = A(1) / (A(1) + std::exp(-h));
      return s * (A(1) + h * (A(1) - s));
    }
  }
  return A(0);
}

}  // namespace

template <typename T>
void activation_forward(Activation act, const T* h, const T* g, int64_t n, T* out) {
  using A = acc_t<T>;
  const bool gated = is_gated(act);
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      A v = act_value(act, static_cast<A>(h[i]));
      if (gated) v *= static_cast<A>(g[i]);
      out[i] = static_cast<T>(v);
    }
  });
}

template <typename T>
void activation_backward(Activation act, const T* h, const T* g, const T* dout, int64_t n, T* dh,
                         T* dg) {
  using A = acc_t<T>;
  const bool gated = is_gated(act);
  at::parallel_for(0, n, 32768, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const A hi = static_cast<A>(h[i]);
      const A d = static_cast<A>(dout[i]);
      if (gated) {
        const A gi = static_cast<A>(g[i]);
        dg[i] = static_cast<T>(d * act_value(act, hi));
        dh[i] = static_cast<T>(d * gi * act_derivative(act, hi));
      } else {
        dh[i] = static_cast<T>(d * act_derivative(act, hi));
      }
    }
  });
}

#define MOE_INSTANTIATE(T)                                                          \
  template void activation_forward<T>(Activation, const T*, const T*, int64_t, T*); \
  template void activation_backward<T>(Activation, const T*, const T*, const T*, int64_t, T*, T*);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
MOE_INSTANTIATE(c10::BFloat16)
#undef MOE_INSTANTIATE

}  // namespace moe::kernels::cpu
