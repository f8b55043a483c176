// Input validation shared by the layers.
#pragma once

#include <torch/types.h>

namespace moe::detail {

/// Checks a layer input and returns it as [T, d_model] (any leading dims are flattened).
/// Errors name the layer (`who`), the argument and the value: wrong rank or last dim (c10::Error),
/// non-floating dtype or a dtype other than the experts' (c10::TypeError), device mismatch.
torch::Tensor tokens_2d(const torch::Tensor& x, int64_t d_model, const torch::Tensor& expert_param,
                        const char* who);

}  // namespace moe::detail
