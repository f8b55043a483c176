// The non-finite-input policy shared by the linear routers (RELIABILITY.md §3.3).
#pragma once

#include <torch/types.h>

#include <functional>
#include <string>

#include "moe/types.h"

namespace moe::detail {

/// Checks the [T, E] logits computed from xr by `logits_of`. With non-finite rows: under kError
/// raises an error naming `who` and the count; under kSkip zeroes those rows of xr, recomputes the
/// logits (which must then be finite) and returns the [T] mask of valid tokens (undefined when all
/// are valid) and the number skipped.
torch::Tensor apply_non_finite_policy(
    torch::Tensor& xr, torch::Tensor& logits,
    const std::function<torch::Tensor(const torch::Tensor&)>& logits_of, NonFinitePolicy policy,
    const std::string& who, int64_t& skipped);

}  // namespace moe::detail
