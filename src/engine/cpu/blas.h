// Row-major GEMM on raw pointers through the BLAS that LibTorch itself calls (the Fortran sgemm_
// and dgemm_ of the process's libblas), for the engine's many-small-experts path: with a few rows
// per expert, the ATen call around each product (dispatch, output checks, the views it needs) costs
// as much as the product itself.
#pragma once

#include <cstdint>

namespace moe::engine::cpu::blas {

/// True when the process has the Fortran BLAS symbols (sgemm_ and dgemm_); else nothing here may
/// be called.
bool available();

/// C[m, n] = alpha · op(A) · op(B) + beta · C, row-major: op(A) is [m, k] (A itself with leading
/// dimension lda, or, when trans_a, the transpose of a [k, m] matrix), likewise op(B) [k, n].
/// T is float or double.
template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* A,
          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc);

}  // namespace moe::engine::cpu::blas
