// The non-finite-token policy of the routers (src/routers/non_finite.h).
#include "routers/non_finite.h"

#include <ATen/ATen.h>

#include "engine/backend.h"

namespace moe::detail {

FiniteTokens check_finite_tokens(const torch::Tensor& rows, NonFinitePolicy policy,
                                 const std::string& who, const char* what) {
  const int64_t T = rows.size(0);
  const auto finite = at::isfinite(rows).all(1);
  const auto bad = T - finite.sum();
  FiniteTokens out;
  out.skipped = at::zeros({}, finite.options().dtype(at::kLong));
  if (policy == NonFinitePolicy::kSkip && engine::portable_path(rows.device())) {
    // Nothing is read back: the mask is always there.
    out.valid = finite;
    out.skipped = bad;
    return out;
  }
  const int64_t n_bad = bad.item<int64_t>();
  if (n_bad == 0) return out;
  TORCH_CHECK_VALUE(policy == NonFinitePolicy::kSkip, who, ": ", what, " are non-finite for ",
                    n_bad, " of ", T,
                    " tokens (NaN or Inf in the input or the router weights); use "
                    "non_finite(NonFinitePolicy::kSkip) to give such tokens a zero output");
  out.valid = finite;
  out.skipped = bad;
  return out;
}

torch::Tensor zero_invalid_rows(const torch::Tensor& x, const torch::Tensor& valid) {
  return valid.defined() ? x.masked_fill(~valid.unsqueeze(1), 0.0) : x;
}

}  // namespace moe::detail
