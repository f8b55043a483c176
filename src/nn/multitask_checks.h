// Size checks shared by the multi-task modules (include/moe/nn/multitask.h).
#pragma once

#include <c10/util/Exception.h>

#include <cstdint>
#include <vector>

namespace moe::nn::detail {

/// Every entry of `v` (a list of layer widths, called `what`) is >= 1; `who` starts the message.
inline void check_sizes(const std::vector<int64_t>& v, const char* who, const char* what) {
  for (auto s : v)
    TORCH_CHECK_VALUE(s >= 1, who, ": every entry of ", what, " must be >= 1, got ", s);
}

}  // namespace moe::nn::detail
