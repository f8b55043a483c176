// Data movement of the MoE engine on the CPU: dispatch (gather), combine and their adjoints.
// Every output row is owned by one task; sums run in a fixed order, so results do not depend on
// the thread count.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/acc_type.h"
#include "kernels/cpu/kernels.h"

namespace moe::kernels::cpu {

template <typename T>
void gather_rows(const T* src, const int64_t* index, int64_t n, int64_t d, T* dst) {
  at::parallel_for(0, n, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      std::memcpy(dst + i * d, src + index[i] * d, sizeof(T) * d);
    }
  });
}

template <typename T, typename A>
void scatter_add_rows(const T* src, const int64_t* index, const T* w, int64_t n, int64_t d,
                      A* dst) {
  // Blocks of 16 columns (one 64-byte line of floats) are the unit of work.
  constexpr int64_t kBlock = 16;
  const int64_t blocks = (d + kBlock - 1) / kBlock;
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, n * kBlock));
  at::parallel_for(0, blocks, grain, [&](int64_t b0, int64_t b1) {
    const int64_t c0 = b0 * kBlock, c1 = std::min(d, b1 * kBlock);
    for (int64_t i = 0; i < n; ++i) {
      const A wi = w ? static_cast<A>(w[i]) : A(1);
      const T* s = src + i * d;
      A* o = dst + index[i] * d;
      for (int64_t c = c0; c < c1; ++c) o[c] += wi * static_cast<A>(s[c]);
    }
  });
}

// g = w·g·[a > 0] over one row. A multiply by the 0/1 mask vectorises; a branch or a select on the
// sign of a did not (GCC kept it scalar, and the branch mispredicts half the time). Unlike a
// select, a non-finite g where a <= 0 gives NaN, not 0.
template <typename T, typename A>
void relu_scale_row(T* __restrict__ g, const T* __restrict__ a, A w, int64_t h) {
  for (int64_t c = 0; c < h; ++c) {
    const A mask = static_cast<A>(static_cast<A>(a[c]) > A(0));
    g[c] = static_cast<T>(w * static_cast<A>(g[c]) * mask);
  }
}

template <typename T>
void hidden_output_backward(T* g, const T* a, const T* w, int64_t n, int64_t h, T* dot,
                            HiddenGrad mode, T* f, const T* u) {
  using A = acc_t<T>;
  // Eight independent partial sums: the compiler vectorises them, where one running sum would be a
  // chain of dependent adds.
  constexpr int64_t kLanes = 8;
  at::parallel_for(0, n, row_grain(h), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* gi = g + i * h;
      const T* ai = a + i * h;
      A part[kLanes] = {};
      int64_t c = 0;
      for (; c + kLanes <= h; c += kLanes)
        for (int64_t l = 0; l < kLanes; ++l)
          part[l] += static_cast<A>(gi[c + l]) * static_cast<A>(ai[c + l]);
      A acc = 0;
      for (int64_t l = 0; l < kLanes; ++l) acc += part[l];
      for (; c < h; ++c) acc += static_cast<A>(gi[c]) * static_cast<A>(ai[c]);
      dot[i] = static_cast<T>(acc);
      const A wi = static_cast<A>(w[i]);
      switch (mode) {
        case HiddenGrad::kPlain:
          for (c = 0; c < h; ++c) gi[c] = static_cast<T>(wi * static_cast<A>(gi[c]));
          break;
        case HiddenGrad::kReLU:
          relu_scale_row(gi, ai, wi, h);
          break;
        case HiddenGrad::kGated: {
          T* fi = f + i * h;
          const T* ui = u + i * h;
          for (c = 0; c < h; ++c) {
            const A da = wi * static_cast<A>(gi[c]);
            fi[c] = static_cast<T>(static_cast<A>(fi[c]) * da);
            gi[c] = static_cast<T>(da * static_cast<A>(ui[c]));
          }
          break;
        }
      }
    }
  });
}

#define MOE_INSTANTIATE(T)                                                                 \
  template void gather_rows<T>(const T*, const int64_t*, int64_t, int64_t, T*);            \
  template void scatter_add_rows<T, acc_t<T>>(const T*, const int64_t*, const T*, int64_t, \
                                              int64_t, acc_t<T>*);                         \
  template void hidden_output_backward<T>(T*, const T*, const T*, int64_t, int64_t, T*,    \
                                          HiddenGrad, T*, const T*);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
MOE_INSTANTIATE(c10::BFloat16)
#undef MOE_INSTANTIATE

}  // namespace moe::kernels::cpu
