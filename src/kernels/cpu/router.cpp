// Fused softmax top-k router kernels: one pass per token over its E logits for the log-sum-exp, the
// top-k selection and the gates, instead of a softmax over [T, E], a top-k, a gather and a
// division.
#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/acc_type.h"
#include "kernels/cpu/kernels.h"

namespace moe::kernels::cpu {

template <typename T>
void topk_softmax_forward(const T* logits, int64_t rows, int64_t cols, int64_t k, bool normalize,
                          int64_t* idx, T* gate, T* lse) {
  // Selection reuses topk_rows (the tie rule lives in one place); the values it returns are the
  // kept logits, from which the gates follow.
  std::vector<T> kept(static_cast<size_t>(rows * k));
  topk_rows<T>(logits, rows, cols, k, idx, kept.data());
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* l = logits + r * cols;
      const T* kv = kept.data() + r * k;
      const T m = kv[0];  // the row maximum is the first kept value
      T s = 0;
      for (int64_t c = 0; c < cols; ++c) s += std::exp(l[c] - m);
      lse[r] = m + std::log(s);
      T* g = gate + r * k;
      T kept_sum = 0;
      for (int64_t j = 0; j < k; ++j) {
        g[j] = std::exp(kv[j] - m);
        kept_sum += g[j];
      }
      const T denom = normalize ? kept_sum : s;
      for (int64_t j = 0; j < k; ++j) g[j] /= denom;
    }
  });
}

template <typename T>
void topk_softmax_backward(const T* logits, const T* lse, const int64_t* idx, const T* gate,
                           const T* dgate, const T* dlse, int64_t rows, int64_t cols, int64_t k,
                           bool normalize, T* dlogits) {
  at::parallel_for(0, rows, row_grain(cols), [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* l = logits + r * cols;
      const T* g = gate + r * k;
      const T* dg = dgate + r * k;
      const int64_t* ix = idx + r * k;
      T* dl = dlogits + r * cols;
      T dot = 0;
      for (int64_t j = 0; j < k; ++j) dot += dg[j] * g[j];
      const T dz = dlse ? dlse[r] : T(0);
      if (normalize) {
        // Softmax over the kept logits: only they get a gradient from the gates.
        const bool need_p = dz != T(0);
        for (int64_t c = 0; c < cols; ++c) dl[c] = need_p ? dz * std::exp(l[c] - lse[r]) : T(0);
        for (int64_t j = 0; j < k; ++j) dl[ix[j]] += g[j] * (dg[j] - dot);
      } else {
        for (int64_t c = 0; c < cols; ++c) {
          const T p = std::exp(l[c] - lse[r]);
          dl[c] = p * (dz - dot);
        }
        // For a kept expert p = gate.
        for (int64_t j = 0; j < k; ++j) dl[ix[j]] += g[j] * dg[j];
      }
    }
  });
}

template void topk_softmax_forward<float>(const float*, int64_t, int64_t, int64_t, bool, int64_t*,
                                          float*, float*);
template void topk_softmax_forward<double>(const double*, int64_t, int64_t, int64_t, bool, int64_t*,
                                           double*, double*);
template void topk_softmax_backward<float>(const float*, const float*, const int64_t*, const float*,
                                           const float*, const float*, int64_t, int64_t, int64_t,
                                           bool, float*);
template void topk_softmax_backward<double>(const double*, const double*, const int64_t*,
                                            const double*, const double*, const double*, int64_t,
                                            int64_t, int64_t, bool, double*);

}  // namespace moe::kernels::cpu
