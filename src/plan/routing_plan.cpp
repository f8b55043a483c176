// RoutingPlan construction and validation (counting sort; see include/moe/plan.h).
#include <ATen/ATen.h>

#include "kernels/cpu/kernels.h"
#include "moe/plan.h"

namespace moe {

torch::Tensor RoutingPlan::tokens_per_expert() const {
  return expert_offsets.slice(0, 1) - expert_offsets.slice(0, 0, num_experts);
}

torch::Tensor RoutingPlan::experts_per_token() const {
  return token_offsets.slice(0, 1) - token_offsets.slice(0, 0, num_tokens);
}

RoutingPlan build_routing_plan(const torch::Tensor& expert_index, int64_t num_experts) {
  TORCH_CHECK(expert_index.defined() && expert_index.dim() == 2,
              "build_routing_plan: expert_index must be a [T, K] tensor, got ",
              expert_index.defined() ? expert_index.sizes() : at::IntArrayRef{});
  TORCH_CHECK_TYPE(expert_index.scalar_type() == at::kLong,
                   "build_routing_plan: expert_index must be int64, got ",
                   expert_index.scalar_type());
  TORCH_CHECK(num_experts >= 1, "build_routing_plan: num_experts must be >= 1, got ", num_experts);
  const auto idx = expert_index.to(at::kCPU).contiguous();
  const int64_t T = idx.size(0);
  const int64_t K = idx.size(1);
  const int64_t S = T * K;
  if (S > 0) {
    const int64_t lo = idx.min().item<int64_t>();
    const int64_t hi = idx.max().item<int64_t>();
    TORCH_CHECK_INDEX(lo >= -1 && hi < num_experts,
                      "build_routing_plan: expert ids must be in [0, ", num_experts,
                      ") or -1 (unused slot), got values in [", lo, ", ", hi, "]");
  }

  RoutingPlan plan;
  plan.num_tokens = T;
  plan.num_experts = num_experts;
  plan.slots_per_token = K;
  const auto opts = idx.options();
  plan.expert_offsets = at::empty({num_experts + 1}, opts);
  auto pair_slot = at::empty({S}, opts);
  auto slot_pair = at::empty({S}, opts);
  const int64_t P = kernels::cpu::build_expert_major(
      idx.data_ptr<int64_t>(), S, num_experts, plan.expert_offsets.data_ptr<int64_t>(),
      pair_slot.data_ptr<int64_t>(), slot_pair.data_ptr<int64_t>());
  plan.pair_slot = pair_slot.slice(0, 0, P);
  plan.token_index = K > 0 ? at::div(plan.pair_slot, K, "floor") : plan.pair_slot.clone();

  // Token-major view: the used slots in flat order are grouped by token already.
  plan.token_offsets = at::empty({T + 1}, opts);
  plan.token_pairs = at::empty({P}, opts);
  const int64_t* sp = slot_pair.data_ptr<int64_t>();
  int64_t* to = plan.token_offsets.data_ptr<int64_t>();
  int64_t* tp = plan.token_pairs.data_ptr<int64_t>();
  int64_t j = 0;
  to[0] = 0;
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t s = 0; s < K; ++s) {
      const int64_t p = sp[t * K + s];
      if (p >= 0) tp[j++] = p;
    }
    to[t + 1] = j;
  }
  TORCH_INTERNAL_ASSERT(j == P, "build_routing_plan: token-major view has ", j, " pairs, expected ",
                        P);
  return plan;
}

torch::Tensor pair_weights(const RoutingPlan& plan, const torch::Tensor& gate) {
  TORCH_CHECK(
      gate.dim() == 2 && gate.size(0) == plan.num_tokens && gate.size(1) == plan.slots_per_token,
      "pair_weights: gate must be [T, K] = [", plan.num_tokens, ", ", plan.slots_per_token,
      "], got ", gate.sizes());
  return gate.reshape({-1}).index_select(0, plan.pair_slot.to(gate.device()));
}

void validate_routing_plan(const RoutingPlan& plan) {
  const int64_t T = plan.num_tokens, E = plan.num_experts, K = plan.slots_per_token;
  TORCH_CHECK(T >= 0 && E >= 1 && K >= 0, "RoutingPlan: need T >= 0, E >= 1, K >= 0, got T=", T,
              ", E=", E, ", K=", K);
  auto check_vec = [](const torch::Tensor& t, const char* name, int64_t n) {
    TORCH_CHECK(t.defined() && t.dim() == 1 && t.scalar_type() == at::kLong && t.size(0) == n &&
                    t.device().is_cpu(),
                "RoutingPlan: ", name, " must be a CPU int64 vector of length ", n, ", got ",
                t.defined() ? t.sizes() : at::IntArrayRef{});
  };
  check_vec(plan.expert_offsets, "expert_offsets", E + 1);
  const int64_t P = plan.token_index.defined() ? plan.token_index.size(0) : -1;
  check_vec(plan.token_index, "token_index", P);
  check_vec(plan.pair_slot, "pair_slot", P);
  check_vec(plan.token_offsets, "token_offsets", T + 1);
  check_vec(plan.token_pairs, "token_pairs", P);
  TORCH_CHECK(P <= T * K, "RoutingPlan: ", P, " pairs exceed T*K = ", T * K);

  const auto eo = plan.expert_offsets.contiguous();
  const auto to = plan.token_offsets.contiguous();
  const int64_t* e = eo.data_ptr<int64_t>();
  const int64_t* o = to.data_ptr<int64_t>();
  TORCH_CHECK(e[0] == 0 && e[E] == P, "RoutingPlan: expert_offsets must run from 0 to P=", P,
              ", got ", e[0], " .. ", e[E]);
  TORCH_CHECK(o[0] == 0 && o[T] == P, "RoutingPlan: token_offsets must run from 0 to P=", P,
              ", got ", o[0], " .. ", o[T]);
  for (int64_t i = 0; i < E; ++i)
    TORCH_CHECK(e[i] <= e[i + 1], "RoutingPlan: expert_offsets decreases at expert ", i);
  for (int64_t i = 0; i < T; ++i)
    TORCH_CHECK(o[i] <= o[i + 1], "RoutingPlan: token_offsets decreases at token ", i);

  const auto ti = plan.token_index.contiguous();
  const auto ps = plan.pair_slot.contiguous();
  const auto tp = plan.token_pairs.contiguous();
  const int64_t* tip = ti.data_ptr<int64_t>();
  const int64_t* psp = ps.data_ptr<int64_t>();
  const int64_t* tpp = tp.data_ptr<int64_t>();
  std::vector<char> seen(P, 0);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t j = o[t]; j < o[t + 1]; ++j) {
      const int64_t p = tpp[j];
      TORCH_CHECK(p >= 0 && p < P && !seen[p], "RoutingPlan: token_pairs[", j, "] = ", p,
                  " is out of range or repeated");
      seen[p] = 1;
      TORCH_CHECK(tip[p] == t, "RoutingPlan: pair ", p, " is listed under token ", t,
                  " but token_index says ", tip[p]);
    }
  }
  for (int64_t p = 0; p < P; ++p) {
    TORCH_CHECK(psp[p] >= 0 && psp[p] < T * K && psp[p] / std::max<int64_t>(K, 1) == tip[p],
                "RoutingPlan: pair_slot[", p, "] = ", psp[p], " does not belong to token ", tip[p]);
  }
}

}  // namespace moe
