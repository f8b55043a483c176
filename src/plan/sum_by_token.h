// The sum of each token's rows of a routing plan (the engine's combine), in an order that does not
// depend on the device.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace moe::plan {

/// y[t] = Σ of the rows of token t's pairs: rows [R, w] in the plan's pair order (R = P pairs, or
/// all rows of a padded plan), token_index [R] (at least) their tokens. With a padded plan's
/// pair_slot ([T·K], a permutation of the slots t·K + s, include/moe/plan.h), the rows are
/// gathered into [T, K, w] in slot order, padding as zero, and summed over K: the same bits from
/// run to run on any device. Without it (a compact plan: the CPU) index_add sums them, which is
/// deterministic on the CPU only (on CUDA it adds with atomics). bf16 rows are summed in float32;
/// the result is float32 then, otherwise the rows' dtype.
at::Tensor sum_by_token(const at::Tensor& rows, const at::Tensor& token_index,
                        const at::Tensor& pair_slot, int64_t slots_per_token, int64_t num_tokens);

}  // namespace moe::plan
