// Expert parallelism over a process group (include/moe/distributed.h, docs/distributed.md).
//
// On each rank:
//   plan over the E global experts (expert-major: the pairs of rank j's experts are consecutive)
//   counts per expert → their ranks (all-to-all of E/W integers per pair of ranks)
//   pair rows x[token] → their experts' ranks (uneven all-to-all, differentiable)
//   the local experts on the rows received (a plan over the local experts, one pair per row)
//   outputs → back to the ranks they came from (the reverse all-to-all)
//   y[t] += w_p · output_p for the rank's own pairs
// Autograd runs each step backward: the all-to-alls reverse themselves (collectives.cpp).
#include <ATen/ATen.h>

#include <chrono>

#include "moe/distributed.h"
#include "moe/plan.h"

namespace moe::dist {

at::Tensor expert_parallel_mlp(const std::shared_ptr<ProcessGroup>& group, const at::Tensor& x,
                               const at::Tensor& expert_index, const at::Tensor& gate,
                               int64_t num_experts, const functional::ExpertWeights& local,
                               Activation activation, ExpertParallelProfile* profile) {
  using clock = std::chrono::steady_clock;
  auto t = clock::now();
  // Adds the time since the previous mark to `field` (when profiling).
  const auto mark = [&](double ExpertParallelProfile::*field) {
    if (profile == nullptr) return;
    const auto now = clock::now();
    profile->*field += std::chrono::duration<double>(now - t).count();
    t = now;
  };
  const char* who = "expert_parallel_mlp";
  TORCH_CHECK_VALUE(group != nullptr, who, ": no process group");
  const int W = group->size(), r = group->rank();
  const int64_t E = num_experts;
  TORCH_CHECK_VALUE(E >= W && E % W == 0, who, ": num_experts=", E,
                    " must be a multiple of the world size ", W);
  const int64_t El = E / W;
  TORCH_CHECK_VALUE(local.w1.defined() && local.w1.dim() == 3 && local.w1.size(0) == El, who,
                    ": rank ", r, " must hold E/W=", El, " experts (w1 [", El, ", d, h]), got w1 ",
                    local.w1.defined() ? local.w1.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(x.dim() == 2 && expert_index.dim() == 2 &&
                        gate.sizes() == expert_index.sizes() && expert_index.size(0) == x.size(0),
                    who, ": expected x [T, d], expert_index and gate [T, K], got ", x.sizes(), ", ",
                    expert_index.sizes(), ", ", gate.sizes());

  const RoutingPlan plan = build_routing_plan(expert_index, E);
  mark(&ExpertParallelProfile::combine_s);
  const auto offsets = plan.expert_offsets.accessor<int64_t, 1>();
  std::vector<int64_t> send_rows(W), recv_rows(W);
  for (int j = 0; j < W; ++j) send_rows[j] = offsets[(j + 1) * El] - offsets[j * El];

  // The pairs per expert, to the experts' ranks: rank j learns how many rows of each of its
  // experts come from every rank, in the order they will arrive.
  const auto counts = plan.tokens_per_expert().contiguous().view({E, 1});
  const auto got = group->all_to_all(counts, std::vector<int64_t>(W, El),
                                     std::vector<int64_t>(W, El));  // [W·El, 1]: source-major
  const auto got_a = got.accessor<int64_t, 2>();
  std::vector<int64_t> local_expert;  // of each row received, in arrival order
  for (int j = 0; j < W; ++j) {
    int64_t rows = 0;
    for (int64_t e = 0; e < El; ++e) {
      const int64_t n = got_a[j * El + e][0];
      local_expert.insert(local_expert.end(), n, e);
      rows += n;
    }
    recv_rows[j] = rows;
  }
  mark(&ExpertParallelProfile::counts_s);
  if (profile != nullptr) {
    for (int j = 0; j < W; ++j) {
      if (j == r) continue;
      profile->rows_sent += send_rows[j];
      profile->rows_received += recv_rows[j];
    }
  }

  // There and back again.
  const auto pair_rows = x.index_select(0, plan.token_index);
  mark(&ExpertParallelProfile::combine_s);
  const auto arrived = all_to_all_rows(group, pair_rows, send_rows, recv_rows);
  mark(&ExpertParallelProfile::dispatch_s);
  const int64_t R = static_cast<int64_t>(local_expert.size());
  const auto local_plan = build_routing_plan(at::tensor(local_expert, at::kLong).view({R, 1}), El);
  const auto ones = at::ones({R}, x.options().requires_grad(false));
  const auto out = functional::expert_mlp(arrived, local_plan, ones, local, activation);
  mark(&ExpertParallelProfile::experts_s);
  const auto returned = all_to_all_rows(group, out, recv_rows, send_rows);  // [P, out], plan order
  mark(&ExpertParallelProfile::return_s);

  // bfloat16 outputs are combined in float32 and rounded once, as the single-process engine does.
  const auto type = returned.scalar_type();
  const auto acc_type = type == at::kBFloat16 ? at::kFloat : type;
  const auto w = pair_weights(plan, gate).to(acc_type);
  auto y = at::zeros({x.size(0), returned.size(1)}, returned.options().dtype(acc_type))
               .index_add(0, plan.token_index, returned.to(acc_type) * w.unsqueeze(1))
               .to(type);
  mark(&ExpertParallelProfile::combine_s);
  return y;
}

}  // namespace moe::dist
