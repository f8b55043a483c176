// RoutingPlan construction and validation (include/moe/plan.h): the compact plan by counting sort
// on the host, the padded plan by device operations only.
#include <ATen/ATen.h>

#include "engine/backend.h"
#include "kernels/cpu/kernels.h"
#include "moe/plan.h"

namespace moe {

torch::Tensor RoutingPlan::tokens_per_expert() const {
  return expert_offsets.slice(0, 1) - expert_offsets.slice(0, 0, num_experts);
}

torch::Tensor RoutingPlan::experts_per_token() const {
  return token_offsets.slice(0, 1) - token_offsets.slice(0, 0, num_tokens);
}

namespace {

void check_slot_table(const torch::Tensor& expert_index, int64_t num_experts) {
  TORCH_CHECK(expert_index.defined() && expert_index.dim() == 2,
              "build_routing_plan: expert_index must be a [T, K] tensor, got ",
              expert_index.defined() ? expert_index.sizes() : at::IntArrayRef{});
  TORCH_CHECK_TYPE(expert_index.scalar_type() == at::kLong,
                   "build_routing_plan: expert_index must be int64, got ",
                   expert_index.scalar_type());
  TORCH_CHECK(num_experts >= 1, "build_routing_plan: num_experts must be >= 1, got ", num_experts);
}

// The ids' range, checked on the host with the values in the message.
void check_ids_on_host(const torch::Tensor& idx, int64_t num_experts) {
  if (idx.numel() == 0) return;
  const int64_t lo = idx.min().item<int64_t>();
  const int64_t hi = idx.max().item<int64_t>();
  TORCH_CHECK_INDEX(lo >= -1 && hi < num_experts, "build_routing_plan: expert ids must be in [0, ",
                    num_experts, ") or -1 (unused slot), got values in [", lo, ", ", hi, "]");
}

RoutingPlan compact_plan(const torch::Tensor& expert_index, int64_t num_experts) {
  const auto idx = expert_index.to(at::kCPU).contiguous();
  check_ids_on_host(idx, num_experts);
  const int64_t T = idx.size(0);
  const int64_t K = idx.size(1);
  const int64_t S = T * K;

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
  plan.pair_expert = idx.view({-1}).index_select(0, plan.pair_slot);

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

// Every step is a device operation of a size known on the host (S, E, T): nothing is read back.
RoutingPlan padded_plan(const torch::Tensor& expert_index, int64_t num_experts) {
  const int64_t T = expert_index.size(0), K = expert_index.size(1), S = T * K, E = num_experts;
  if (!engine::portable_path(expert_index.device())) {
    check_ids_on_host(expert_index, E);  // the CPU's own path: free there, and it names the values
  } else if (S > 0) {
    // A device-side assertion: nothing is read back on a GPU.
    at::_assert_async(((expert_index >= -1) & (expert_index < E)).all());
  }
  const auto flat = expert_index.reshape({-1});
  const auto opts = flat.options();
  // Unused slots get key E, so that a stable sort puts them last and keeps slot order within an
  // expert.
  const auto key = at::where(flat < 0, at::full({}, E, opts), flat);
  const auto sorted = at::sort(key, /*stable=*/true, /*dim=*/0, /*descending=*/false);

  RoutingPlan plan;
  plan.num_tokens = T;
  plan.num_experts = E;
  plan.slots_per_token = K;
  plan.padded = true;
  plan.pair_expert = std::get<0>(sorted);
  plan.pair_slot = std::get<1>(sorted);
  plan.token_index = K > 0 ? at::div(plan.pair_slot, K, "floor") : plan.pair_slot.clone();
  const auto counts = at::zeros({E + 1}, opts).scatter_add_(0, key, at::ones({S}, opts));
  const auto zero = at::zeros({1}, opts);
  plan.expert_offsets = at::cat({zero, counts.narrow(0, 0, E).cumsum(0)});

  // Token-major: slot j's row is slot_row[j]; the used slots in flat order are grouped by token,
  // so their rows, in that order, are the token-major list; the unused slots' rows follow.
  const auto used = flat >= 0;
  const auto slot_row = at::empty({S}, opts).scatter_(0, plan.pair_slot, at::arange(S, opts));
  // Slot j is the used_before[j]-th used slot (inclusive count), or the (j - used_before[j])-th
  // unused one, counted from 0.
  const auto used_before = used.to(at::kLong).cumsum(0);
  const auto P = plan.expert_offsets.narrow(0, E, 1);
  const auto position = at::where(used, used_before - 1, P + at::arange(S, opts) - used_before);
  plan.token_pairs = at::empty({S}, opts).scatter_(0, position, slot_row);
  plan.token_offsets = at::cat({zero, used.view({T, K}).to(at::kLong).sum(1).cumsum(0)});
  return plan;
}

}  // namespace

RoutingPlan build_routing_plan(const torch::Tensor& expert_index, int64_t num_experts,
                               PlanLayout layout) {
  check_slot_table(expert_index, num_experts);
  if (layout == PlanLayout::kForDevice)
    layout =
        engine::portable_path(expert_index.device()) ? PlanLayout::kPadded : PlanLayout::kCompact;
  return layout == PlanLayout::kPadded ? padded_plan(expert_index, num_experts)
                                       : compact_plan(expert_index, num_experts);
}

torch::Tensor pair_weights(const RoutingPlan& plan, const torch::Tensor& gate) {
  TORCH_CHECK(
      gate.dim() == 2 && gate.size(0) == plan.num_tokens && gate.size(1) == plan.slots_per_token,
      "pair_weights: gate must be [T, K] = [", plan.num_tokens, ", ", plan.slots_per_token,
      "], got ", gate.sizes());
  const auto w = gate.reshape({-1}).index_select(0, plan.pair_slot.to(gate.device()));
  // Padding rows name unused slots, whose gate need not be 0.
  return plan.padded ? at::where(plan.pair_expert.to(w.device()) < plan.num_experts, w,
                                 at::zeros({}, w.options()))
                     : w;
}

void validate_routing_plan(const RoutingPlan& plan) {
  const int64_t T = plan.num_tokens, E = plan.num_experts, K = plan.slots_per_token;
  TORCH_CHECK(T >= 0 && E >= 1 && K >= 0, "RoutingPlan: need T >= 0, E >= 1, K >= 0, got T=", T,
              ", E=", E, ", K=", K);
  auto check_vec = [](const torch::Tensor& t, const char* name, int64_t n) {
    TORCH_CHECK(t.defined() && t.dim() == 1 && t.scalar_type() == at::kLong && t.size(0) == n,
                "RoutingPlan: ", name, " must be an int64 vector of length ", n, ", got ",
                t.defined() ? t.sizes() : at::IntArrayRef{});
  };
  const int64_t rows = plan.num_rows();
  check_vec(plan.expert_offsets, "expert_offsets", E + 1);
  check_vec(plan.token_index, "token_index", rows);
  check_vec(plan.pair_slot, "pair_slot", rows);
  check_vec(plan.pair_expert, "pair_expert", rows);
  check_vec(plan.token_offsets, "token_offsets", T + 1);
  check_vec(plan.token_pairs, "token_pairs", rows);
  TORCH_CHECK(rows <= T * K, "RoutingPlan: ", rows, " pairs exceed T*K = ", T * K);
  TORCH_CHECK(!plan.padded || rows == T * K, "RoutingPlan: a padded plan has T*K = ", T * K,
              " rows, got ", rows);

  const auto host = [](const torch::Tensor& t) { return t.to(at::kCPU).contiguous(); };
  const auto eo = host(plan.expert_offsets), to = host(plan.token_offsets);
  const auto ti = host(plan.token_index), ps = host(plan.pair_slot), pe = host(plan.pair_expert),
             tp = host(plan.token_pairs);
  const int64_t* e = eo.data_ptr<int64_t>();
  const int64_t* o = to.data_ptr<int64_t>();
  const int64_t P = e[E];
  TORCH_CHECK(e[0] == 0 && (plan.padded ? P <= rows : P == rows),
              "RoutingPlan: expert_offsets must run from 0 to the number of pairs (", rows,
              plan.padded ? " rows at most" : "", "), got ", e[0], " .. ", P);
  TORCH_CHECK(o[0] == 0 && o[T] == P, "RoutingPlan: token_offsets must run from 0 to P=", P,
              ", got ", o[0], " .. ", o[T]);
  for (int64_t i = 0; i < E; ++i)
    TORCH_CHECK(e[i] <= e[i + 1], "RoutingPlan: expert_offsets decreases at expert ", i);
  for (int64_t i = 0; i < T; ++i)
    TORCH_CHECK(o[i] <= o[i + 1], "RoutingPlan: token_offsets decreases at token ", i);

  const int64_t* tip = ti.data_ptr<int64_t>();
  const int64_t* psp = ps.data_ptr<int64_t>();
  const int64_t* pep = pe.data_ptr<int64_t>();
  const int64_t* tpp = tp.data_ptr<int64_t>();
  std::vector<char> seen(rows, 0);
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
  for (int64_t p = 0; p < rows; ++p) {
    TORCH_CHECK(psp[p] >= 0 && psp[p] < T * K && psp[p] / std::max<int64_t>(K, 1) == tip[p],
                "RoutingPlan: pair_slot[", p, "] = ", psp[p], " does not belong to token ", tip[p]);
  }
  for (int64_t i = 0; i < E; ++i)
    for (int64_t p = e[i]; p < e[i + 1]; ++p)
      TORCH_CHECK(pep[p] == i, "RoutingPlan: pair_expert[", p, "] = ", pep[p], " but pair ", p,
                  " is in expert ", i, "'s segment");
  // Padding rows: each an unused slot, once, listed after the pairs in token_pairs.
  for (int64_t p = P; p < rows; ++p) {
    TORCH_CHECK(pep[p] == E, "RoutingPlan: padding row ", p, " has pair_expert ", pep[p],
                ", expected ", E);
    TORCH_CHECK(tpp[p] >= P && tpp[p] < rows && !seen[tpp[p]], "RoutingPlan: token_pairs[", p,
                "] = ", tpp[p], " must name a padding row once");
    seen[tpp[p]] = 1;
  }
  std::vector<char> slot_seen(T * K, 0);
  for (int64_t p = 0; p < rows; ++p) {
    TORCH_CHECK(!slot_seen[psp[p]], "RoutingPlan: slot ", psp[p], " appears twice in pair_slot");
    slot_seen[psp[p]] = 1;
  }
}

}  // namespace moe
