// Accumulation type of the CPU kernels: float for bf16, the type itself otherwise.
#pragma once

#include <c10/util/BFloat16.h>

#include <algorithm>
#include <cstdint>

namespace moe::kernels::cpu {

template <typename T>
struct AccType {
  using type = T;
};
template <>
struct AccType<c10::BFloat16> {
  using type = float;
};
template <typename T>
using acc_t = typename AccType<T>::type;

/// Rows per parallel task for row-wise loops over rows of `width` elements: about 32k elements per
/// task (ATen's GRAIN_SIZE), at least one row.
inline int64_t row_grain(int64_t width) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, width));
}

}  // namespace moe::kernels::cpu
