// Raw row-major GEMM through the process's Fortran BLAS (blas.h).
#include "engine/cpu/blas.h"

#include <c10/util/Exception.h>
#include <dlfcn.h>

namespace moe::engine::cpu::blas {
namespace {

template <typename T>
using FortranGemm = void (*)(const char*, const char*, const int*, const int*, const int*, const T*,
                             const T*, const int*, const T*, const int*, const T*, T*, const int*);

// Looked up once: LibTorch links the BLAS it multiplies with (OpenBLAS on Debian), so the symbols
// are in the process whenever ATen's own GEMMs use a BLAS.
template <typename T>
FortranGemm<T> symbol() {
  static const auto f = reinterpret_cast<FortranGemm<T>>(
      dlsym(RTLD_DEFAULT, sizeof(T) == sizeof(float) ? "sgemm_" : "dgemm_"));
  return f;
}

int as_int(int64_t v) {
  TORCH_CHECK(v >= 0 && v <= INT32_MAX, "blas::gemm: dimension ", v, " does not fit the BLAS");
  return static_cast<int>(v);
}

}  // namespace

bool available() { return symbol<float>() != nullptr && symbol<double>() != nullptr; }

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: the Fortran call takes B first.
  const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
  const int M = as_int(n), N = as_int(m), K = as_int(k);
  const int LDA = as_int(ldb), LDB = as_int(lda), LDC = as_int(ldc);
  symbol<T>()(&tb, &ta, &M, &N, &K, &alpha, B, &LDA, A, &LDB, &beta, C, &LDC);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*, int64_t,
                           const double*, int64_t, double, double*, int64_t);

}  // namespace moe::engine::cpu::blas
