// Data movement of the MoE engine on the CPU: dispatch (gather), combine and their adjoints.
// Every output row is owned by one task; sums run in a fixed order, so results do not depend on
// the thread count.
#include <ATen/Parallel.h>

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

template <typename T>
void combine_rows(const T* rows, const T* w, const int64_t* offsets, const int64_t* pairs,
                  int64_t num_tokens, int64_t d, T* out) {
  using A = acc_t<T>;
  at::parallel_for(0, num_tokens, row_grain(d), [&](int64_t begin, int64_t end) {
    std::vector<A> acc(d);
    for (int64_t t = begin; t < end; ++t) {
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t j = offsets[t]; j < offsets[t + 1]; ++j) {
        const int64_t p = pairs[j];
        const A wp = w ? static_cast<A>(w[p]) : A(1);
        const T* r = rows + p * d;
        for (int64_t c = 0; c < d; ++c) acc[c] += wp * static_cast<A>(r[c]);
      }
      T* o = out + t * d;
      for (int64_t c = 0; c < d; ++c) o[c] = static_cast<T>(acc[c]);
    }
  });
}

template <typename T>
void gather_scale_rows(const T* src, const int64_t* index, const T* w, int64_t n, int64_t d,
                       T* dst) {
  using A = acc_t<T>;
  at::parallel_for(0, n, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const A wi = static_cast<A>(w[i]);
      const T* s = src + index[i] * d;
      T* o = dst + i * d;
      for (int64_t c = 0; c < d; ++c) o[c] = static_cast<T>(wi * static_cast<A>(s[c]));
    }
  });
}

template <typename T>
void gather_dot_rows(const T* src, const int64_t* index, const T* rows, int64_t n, int64_t d,
                     T* out) {
  using A = acc_t<T>;
  at::parallel_for(0, n, row_grain(d), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* s = src + index[i] * d;
      const T* r = rows + i * d;
      A acc = 0;
      for (int64_t c = 0; c < d; ++c) acc += static_cast<A>(s[c]) * static_cast<A>(r[c]);
      out[i] = static_cast<T>(acc);
    }
  });
}

#define MOE_INSTANTIATE(T)                                                                      \
  template void gather_rows<T>(const T*, const int64_t*, int64_t, int64_t, T*);                 \
  template void combine_rows<T>(const T*, const T*, const int64_t*, const int64_t*, int64_t,    \
                                int64_t, T*);                                                   \
  template void gather_scale_rows<T>(const T*, const int64_t*, const T*, int64_t, int64_t, T*); \
  template void gather_dot_rows<T>(const T*, const int64_t*, const T*, int64_t, int64_t, T*);
MOE_INSTANTIATE(float)
MOE_INSTANTIATE(double)
MOE_INSTANTIATE(c10::BFloat16)
#undef MOE_INSTANTIATE

}  // namespace moe::kernels::cpu
