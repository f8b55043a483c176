// Expert capacity with first-choice priority (docs/algorithms.md §5.2: all first choices are placed
// before any second choice; within one choice rank, earlier tokens win).
#include <ATen/ATen.h>

#include <cmath>
#include <limits>
#include <vector>

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

std::tuple<torch::Tensor, int64_t> apply_capacity(const torch::Tensor& expert_index,
                                                  int64_t num_experts, int64_t capacity,
                                                  const torch::Tensor& fill_before) {
  auto idx = expert_index.to(at::kCPU).contiguous().clone();
  const int64_t T = idx.size(0), K = idx.size(1);
  TORCH_CHECK(!fill_before.defined() || fill_before.sizes() == at::IntArrayRef({K, num_experts}),
              "apply_capacity: fill_before must be [K=", K, ", E=", num_experts, "], got ",
              fill_before.sizes());
  const auto before =
      fill_before.defined() ? fill_before.to(at::kCPU, at::kLong).contiguous() : at::Tensor();
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
  return {idx.to(expert_index.device()), dropped};
}

}  // namespace moe
