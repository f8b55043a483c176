// Expert capacity with first-choice priority (docs/algorithms.md §5.2: all first choices are placed
// before any second choice; within one choice rank, earlier tokens win): a loop on the host, or
// device operations on the portable path.
#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

#include "engine/backend.h"
#include "moe/gating.h"

namespace moe {

int64_t expert_capacity(int64_t num_tokens, int64_t k, int64_t num_experts, double capacity_factor,
                        int64_t min_capacity) {
  TORCH_CHECK_VALUE(std::isfinite(capacity_factor) && capacity_factor > 0,
                    "expert_capacity: capacity_factor must be finite and > 0, got ",
                    capacity_factor);
  TORCH_CHECK_VALUE(min_capacity >= 0, "expert_capacity: min_capacity must be >= 0, got ",
                    min_capacity);
  const double c = std::ceil(static_cast<double>(num_tokens) * static_cast<double>(k) /
                             static_cast<double>(num_experts) * capacity_factor);
  TORCH_CHECK_VALUE(c <= static_cast<double>(std::numeric_limits<int32_t>::max()),
                    "expert_capacity: capacity_factor ", capacity_factor, " implies ", c,
                    " rows per expert, more than 2^31");
  return std::max<int64_t>(min_capacity, static_cast<int64_t>(c));
}

namespace {

// The host loop: slot by slot, tokens in order, each expert's fill counted up.
std::tuple<torch::Tensor, torch::Tensor> capacity_on_host(const torch::Tensor& expert_index,
                                                          int64_t num_experts, int64_t capacity,
                                                          const torch::Tensor& fill_before) {
  auto idx = expert_index.contiguous().clone();
  const int64_t T = idx.size(0), K = idx.size(1);
  const auto before = fill_before.defined() ? fill_before.to(at::kLong).contiguous() : at::Tensor();
  int64_t* p = idx.data_ptr<int64_t>();
  std::vector<int64_t> fill(num_experts, 0);
  int64_t dropped = 0;
  for (int64_t s = 0; s < K; ++s) {
    if (before.defined()) {
      const int64_t* b = before.data_ptr<int64_t>() + s * num_experts;
      fill.assign(b, b + num_experts);
    }
    for (int64_t t = 0; t < T; ++t) {
      int64_t& e = p[t * K + s];
      if (e < 0) continue;
      if (fill[e] < capacity) {
        ++fill[e];
      } else {
        e = -1;
        ++dropped;
      }
    }
  }
  return {idx, at::full({}, dropped, idx.options())};
}

// The same queue positions with device operations only: a pair's position in its expert's queue
// is the fill before its slot plus its rank among the slot's pairs of that expert, found by a
// stable sort of the slot-major table by (slot, expert).
std::tuple<torch::Tensor, torch::Tensor> capacity_on_device(const torch::Tensor& expert_index,
                                                            int64_t num_experts, int64_t capacity,
                                                            const torch::Tensor& fill_before) {
  const int64_t T = expert_index.size(0), K = expert_index.size(1), E = num_experts;
  const auto opts = expert_index.options();
  const auto idx = expert_index.t().reshape({-1});  // slot-major: (s, t) at s·T + t
  const auto used = idx >= 0;
  const auto slot = at::arange(K, opts).unsqueeze(1).expand({K, T}).reshape({-1});
  const auto group = slot * (E + 1) + at::where(used, idx, at::full({}, E, opts));
  const auto sorted = at::sort(group, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const auto& in_order = std::get<1>(sorted);
  const auto sizes = at::zeros({K * (E + 1)}, opts).scatter_add_(0, group, at::ones_like(group));
  const auto starts = sizes.cumsum(0) - sizes;
  const auto rank_sorted = at::arange(K * T, opts) - starts.index_select(0, std::get<0>(sorted));
  const auto rank = at::empty_like(rank_sorted).scatter_(0, in_order, rank_sorted);
  // Fill before slot s: the given one, or this table's own earlier slots.
  const auto counts = sizes.view({K, E + 1}).narrow(1, 0, E);
  const auto before = fill_before.defined() ? fill_before.to(opts) : counts.cumsum(0) - counts;
  const auto flat_before = at::cat({before, at::zeros({K, 1}, opts)}, 1).reshape({-1});
  const auto kept = used & (rank + flat_before.index_select(0, group) < capacity);
  const auto out = at::where(kept, idx, at::full({}, -1, opts)).view({K, T}).t().contiguous();
  return {out, (used & ~kept).sum()};
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> apply_capacity(const torch::Tensor& expert_index,
                                                        int64_t num_experts, int64_t capacity,
                                                        const torch::Tensor& fill_before) {
  const int64_t K = expert_index.size(1);
  TORCH_CHECK(!fill_before.defined() || fill_before.sizes() == at::IntArrayRef({K, num_experts}),
              "apply_capacity: fill_before must be [K=", K, ", E=", num_experts, "], got ",
              fill_before.sizes());
  return engine::portable_path(expert_index.device())
             ? capacity_on_device(expert_index, num_experts, capacity, fill_before)
             : capacity_on_host(expert_index, num_experts, capacity, fill_before);
}

}  // namespace moe
