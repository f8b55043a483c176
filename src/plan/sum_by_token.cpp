#include "plan/sum_by_token.h"

#include <ATen/ATen.h>

namespace moe::plan {

at::Tensor sum_by_token(const at::Tensor& rows, const at::Tensor& token_index,
                        const at::Tensor& pair_slot, int64_t slots_per_token, int64_t num_tokens) {
  const auto acc = rows.scalar_type() == at::kBFloat16 ? at::kFloat : rows.scalar_type();
  const int64_t width = rows.size(1);
  if (!pair_slot.defined()) {
    return at::zeros({num_tokens, width}, rows.options().dtype(acc))
        .index_add_(0, token_index.narrow(0, 0, rows.size(0)), rows.to(acc));
  }
  const auto slots = pair_slot.to(rows.device());
  const int64_t S = slots.size(0);
  TORCH_CHECK(S == num_tokens * slots_per_token && rows.size(0) <= S,
              "sum_by_token: pair_slot has ", S, " entries for ", num_tokens, " tokens of ",
              slots_per_token, " slots and ", rows.size(0), " rows");
  // row_of_slot[s]: the row holding slot s. pair_slot is a permutation, so every element is
  // written once and the scatter is deterministic.
  const auto row_of_slot = at::empty_like(slots).scatter_(0, slots, at::arange(S, slots.options()));
  const auto all_rows =
      rows.size(0) < S ? at::constant_pad_nd(rows, {0, 0, 0, S - rows.size(0)}) : rows;
  return all_rows.index_select(0, row_of_slot)
      .view({num_tokens, slots_per_token, width})
      .sum(1, /*keepdim=*/false, acc);
}

}  // namespace moe::plan
