// Routing-plan construction by counting sort: O(num_slots + E), stable, no global sort.
#include <algorithm>
#include <vector>

#include "kernels/cpu/kernels.h"

namespace moe::kernels::cpu {

int64_t build_expert_major(const int64_t* expert_index, int64_t num_slots, int64_t num_experts,
                           int64_t* expert_offsets, int64_t* pair_slot, int64_t* slot_pair) {
  std::fill(expert_offsets, expert_offsets + num_experts + 1, int64_t(0));
  for (int64_t s = 0; s < num_slots; ++s) {
    const int64_t e = expert_index[s];
    if (e >= 0) ++expert_offsets[e + 1];
  }
  for (int64_t e = 0; e < num_experts; ++e) expert_offsets[e + 1] += expert_offsets[e];
  // Scatter in slot order: pairs of one expert end up ascending in slot (hence token) order.
  std::vector<int64_t> cursor(expert_offsets, expert_offsets + num_experts);
  for (int64_t s = 0; s < num_slots; ++s) {
    const int64_t e = expert_index[s];
    if (e < 0) {
      slot_pair[s] = -1;
      continue;
    }
    const int64_t p = cursor[e]++;
    pair_slot[p] = s;
    slot_pair[s] = p;
  }
  return expert_offsets[num_experts];
}

}  // namespace moe::kernels::cpu
