// The one non-finite-token policy of every router (docs/reliability.md §3.3).
#pragma once

#include <torch/types.h>

#include <string>

#include "moe/types.h"

namespace moe::detail {

/// The tokens whose rows are all finite.
struct FiniteTokens {
  torch::Tensor valid;    ///< [T] bool; undefined when every token is known to be finite
  torch::Tensor skipped;  ///< 0-dim int64: tokens left out
};

/// Checks the rows of `rows` ([T, n]: a router's logits or its input). With non-finite rows, under
/// NonFinitePolicy::kError throws c10::ValueError "<who>: <what> are non-finite for N of T tokens
/// ..."; under kSkip returns the mask of valid tokens.
///
/// Under kError the check reads one count from the device: deciding between an error and a result
/// needs it, once per router call. Under kSkip on the portable path (engine/backend.h) nothing is
/// read: `valid` is always defined. Callers recompute their logits from the zeroed rows; logits
/// still non-finite then are the weights' fault, an error under either policy (on the portable
/// path a device-side assertion, which reads nothing back either).
FiniteTokens check_finite_tokens(const torch::Tensor& rows, NonFinitePolicy policy,
                                 const std::string& who, const char* what);

/// `x` with the rows of invalid tokens set to 0 (x itself when `valid` is undefined).
torch::Tensor zero_invalid_rows(const torch::Tensor& x, const torch::Tensor& valid);

}  // namespace moe::detail
