// GShardRouter (include/moe/routers/gshard_router.h, docs/algorithms.md §5.2): dense one-hot
// positions per group, as Mesh-TF computes them; ATen operations only, nothing read back from the
// device under NonFinitePolicy::kSkip.
#include "moe/routers/gshard_router.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <ostream>

#include "moe/gating.h"
#include "routers/non_finite.h"
#include "routers/top_k_routing.h"

namespace moe {

SecondPolicy second_policy_from_string(const std::string& name, const std::string& who) {
  if (name == "all") return SecondPolicy::kAll;
  if (name == "none") return SecondPolicy::kNone;
  if (name == "threshold") return SecondPolicy::kThreshold;
  if (name == "random") return SecondPolicy::kRandom;
  TORCH_CHECK_VALUE(
      false, who, ": second policy must be one of all, none, threshold, random; got '", name, "'");
}

const char* to_string(SecondPolicy p) {
  switch (p) {
    case SecondPolicy::kAll:
      return "all";
    case SecondPolicy::kNone:
      return "none";
    case SecondPolicy::kThreshold:
      return "threshold";
    case SecondPolicy::kRandom:
      return "random";
  }
  return "?";
}

namespace {

/// One gate's top-2 decision over groups: every tensor is [G·S] (token s of group g at g·S + s).
struct Top2Gate {
  at::Tensor expert[2];    ///< int64: first and second choice
  at::Tensor proposed[2];  ///< bool: the choice is made (after the policy, before capacity)
  at::Tensor weight[2];    ///< the renormalised weight, 0 unless used (graph kept)
  at::Tensor used[2];      ///< bool: the choice holds a place and a non-zero weight
  at::Tensor position[2];  ///< int64: its place in the expert's buffer of the group (where used)
  at::Tensor loss;         ///< 0-dim balance loss (unweighted)
};

struct GateRule {
  SecondPolicy policy;
  double threshold;
  int64_t capacity;
};

/// Exclusive running count over the tokens of each group of the one-hot rows `hot` [G, S, E],
/// read at each token's own expert ([G, S]).
at::Tensor places(const at::Tensor& hot) { return ((hot.cumsum(1) - hot) * hot).sum(-1); }

/// GShard top-2 over `probs` [G, S, E] (docs/algorithms.md §1.10). `importance` [G, S] (or
/// undefined = all 1): 1 takes part fully, 0.5 only with its second choice, 0 not at all.
Top2Gate top2_gate(const at::Tensor& probs, const at::Tensor& importance, const GateRule& rule) {
  const int64_t G = probs.size(0), S = probs.size(1), E = probs.size(2);
  const auto flat = probs.reshape({G * S, E});
  Top2Gate out;
  auto first = topk_lowest_index(flat, 1);
  out.expert[0] = std::get<0>(first).squeeze(1);
  auto g1 = std::get<1>(first).squeeze(1);
  auto hot1 = at::one_hot(out.expert[0], E).to(flat.scalar_type());
  auto proxy = flat;
  at::Tensor chosen1, chosen2;
  if (importance.defined()) {
    const auto imp = importance.reshape({G * S});
    chosen1 = imp == 1;
    chosen2 = imp > 0;
    const auto c1 = chosen1.to(flat.scalar_type());
    hot1 = hot1 * c1.unsqueeze(1);
    g1 = g1 * c1;
    proxy = proxy * c1.unsqueeze(1);
  } else {
    chosen1 = at::ones({G * S}, probs.options().dtype(at::kBool));
    chosen2 = chosen1;
  }
  // The second choice: the best expert but the first (a first choice left out above frees nothing).
  auto second = topk_lowest_index(flat * (1 - hot1), 1);
  out.expert[1] = std::get<0>(second).squeeze(1);
  auto g2 = std::get<1>(second).squeeze(1);
  const auto denominator = g1 + g2 + 1e-9;
  g1 = g1 / denominator;
  g2 = g2 / denominator;

  // Balance loss before the policy and the capacity: the fraction of first choices times the mean
  // probability, per group and expert.
  const auto density = hot1.reshape({G, S, E}).mean(1);
  const auto density_proxy = proxy.reshape({G, S, E}).mean(1);
  // (An empty batch has no groups: its loss is 0, with the graph kept.)
  out.loss = G * S == 0 ? flat.sum() * 0.0 : (density * density_proxy).mean() * double(E * E);

  const auto g2_value = g2.detach();
  switch (rule.policy) {
    case SecondPolicy::kAll:
      break;
    case SecondPolicy::kNone:
      chosen2 = at::zeros_like(chosen2);
      break;
    case SecondPolicy::kThreshold:
      chosen2 = chosen2 & (g2_value > rule.threshold);
      break;
    case SecondPolicy::kRandom: {
      // One draw per token of every group, empty or not, as Mesh-TF and lucidrains draw it.
      const auto u = at::rand({G, S}, probs.options()).reshape({G * S});
      chosen2 = chosen2 & (u < g2_value / std::max(rule.threshold, 1e-9));
      break;
    }
  }
  out.proposed[0] = chosen1;
  out.proposed[1] = chosen2;

  // Places: every first choice of a group in token order, then every second choice after them.
  const auto hot_first = at::one_hot(out.expert[0], E) * chosen1.unsqueeze(1);
  const auto pos1 = places(hot_first.reshape({G, S, E})).reshape({G * S});
  const auto kept1 = chosen1 & (pos1 < rule.capacity);
  const auto first_count = (hot_first * kept1.unsqueeze(1)).reshape({G, S, E}).sum(1, true);
  const auto hot_second = (at::one_hot(out.expert[1], E) * chosen2.unsqueeze(1)).reshape({G, S, E});
  const auto pos2 = ((places(hot_second).unsqueeze(-1) + first_count) * hot_second).sum(-1);
  const auto kept2 = chosen2 & (pos2.reshape({G * S}) < rule.capacity);
  out.position[0] = pos1;
  out.position[1] = pos2.reshape({G * S});

  out.weight[0] = g1 * kept1.to(g1.scalar_type());
  out.weight[1] = g2 * kept2.to(g2.scalar_type());
  for (int j = 0; j < 2; ++j) out.used[j] = out.weight[j].detach() != 0;
  return out;
}

at::Tensor minus_one_unless(const at::Tensor& used, const at::Tensor& index) {
  return at::where(used, index, at::full({}, -1, index.options()));
}

}  // namespace

void check_gshard_router_options(const GShardRouterOptions& o) {
  const auto& who = o.name();
  TORCH_CHECK_VALUE(o.d_model() >= 1, who, ": d_model must be >= 1, got ", o.d_model());
  TORCH_CHECK_VALUE(o.experts().size() == 1 || o.experts().size() == 2, who,
                    ": experts must hold one count (one level) or two (outer, inner), got ",
                    o.experts().size(), " counts");
  for (const auto e : o.experts())
    TORCH_CHECK_VALUE(e >= 1, who, ": every expert count must be >= 1, got ", e);
  TORCH_CHECK_VALUE(o.group_size() >= 0, who,
                    ": group_size must be >= 0 (0 = the whole batch), got ", o.group_size());
  for (const auto& [name, value] :
       {std::pair{"second_threshold_train", o.second_threshold_train()},
        std::pair{"second_threshold_eval", o.second_threshold_eval()},
        std::pair{"loss_coef", o.loss_coef()}, std::pair{"init_std", o.init_std()}})
    TORCH_CHECK_VALUE(std::isfinite(value) && value >= 0, who, ": ", name,
                      " must be finite and >= 0, got ", value);
  for (const auto& [name, value] : {std::pair{"capacity_factor_train", o.capacity_factor_train()},
                                    std::pair{"capacity_factor_eval", o.capacity_factor_eval()}})
    TORCH_CHECK_VALUE(std::isfinite(value) && value > 0, who, ": ", name,
                      " must be finite and > 0, got ", value);
  TORCH_CHECK_VALUE(o.min_capacity() >= 0, who, ": min_capacity must be >= 0, got ",
                    o.min_capacity());
}

GShardRouterImpl::GShardRouterImpl(GShardRouterOptions options_) : options(std::move(options_)) {
  check_gshard_router_options(options);
  reset();
}

void GShardRouterImpl::reset() {
  const int64_t d = options.d_model();
  const auto& e = options.experts();
  if (two_level()) {
    outer_weight = register_parameter("outer_weight", torch::empty({e[0], d}));
    inner_weight = register_parameter("inner_weight", torch::empty({e[0], e[1], d}));
  } else {
    weight = register_parameter("weight", torch::empty({e[0], d}));
  }
  reset_parameters();
}

void GShardRouterImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  for (auto& p : parameters()) p.normal_(0.0, options.init_std());
}

void GShardRouterImpl::pretty_print(std::ostream& stream) const {
  const auto& e = options.experts();
  stream << "moe::GShardRouter(d_model=" << options.d_model() << ", experts="
         << (two_level() ? std::to_string(e[0]) + "x" + std::to_string(e[1]) : std::to_string(e[0]))
         << ", group_size=" << options.group_size()
         << ", second_policy=" << to_string(options.second_policy_train()) << "/"
         << to_string(options.second_policy_eval()) << ")";
}

int64_t GShardRouterImpl::num_experts() const {
  const auto& e = options.experts();
  return two_level() ? e[0] * e[1] : e[0];
}

void GShardRouterImpl::set_group_size(int64_t tokens) {
  TORCH_CHECK_VALUE(tokens >= 0, options.name(),
                    ": group_size must be >= 0 (0 = the whole batch), got ", tokens);
  options.group_size(tokens);
}

int64_t GShardRouterImpl::capacity(int64_t group_tokens, int64_t experts) const {
  const double cf =
      is_training() ? options.capacity_factor_train() : options.capacity_factor_eval();
  const auto c = static_cast<int64_t>(std::floor(double(group_tokens) * cf / double(experts)));
  return std::max(std::min(group_tokens, c), options.min_capacity());
}

RoutingResult GShardRouterImpl::route(const torch::Tensor& x, const BatchShards& batch) {
  const auto& o = options;
  const auto& who = o.name();
  detail::check_router_input(x, o.d_model(), who);
  TORCH_CHECK_VALUE(batch.whole(), who,
                    ": GShard gating routes whole groups; a batch split over processes is not "
                    "supported (split the groups instead: each process routes its own)");
  const auto rd = router_dtype(x.scalar_type());
  const auto& w0 = two_level() ? outer_weight : weight;
  TORCH_CHECK_TYPE(w0.scalar_type() == rd, who, ": router parameters are ", w0.scalar_type(),
                   " but inputs of dtype ", x.scalar_type(), " need ", rd);
  const int64_t T = x.size(0), E = num_experts();
  const int64_t S = o.group_size() > 0 ? o.group_size() : std::max<int64_t>(T, 1);
  TORCH_CHECK_VALUE(T % S == 0, who, ": a batch of ", T,
                    " tokens is not a whole number of groups of group_size=", S);
  const int64_t G = T / S;
  const bool training = is_training();
  const GateRule rule{training ? o.second_policy_train() : o.second_policy_eval(),
                      training ? o.second_threshold_train() : o.second_threshold_eval(), 0};

  auto xr = x.to(rd);
  auto logits = at::linear(xr, w0);
  const auto finite = detail::check_finite_tokens(logits, o.non_finite(), who, "router logits");
  at::Tensor outer_importance;  // the skipped tokens take no part
  if (finite.valid.defined()) {
    xr = detail::zero_invalid_rows(xr, finite.valid);
    logits = at::linear(xr, w0);
    outer_importance = finite.valid.to(rd).reshape({G, S});
  }
  const int64_t E0 = o.experts()[0];
  auto outer = top2_gate(at::softmax(logits, -1).reshape({G, S, E0}), outer_importance,
                         {rule.policy, rule.threshold, capacity(S, E0)});

  RoutingResult out;
  out.skipped_tokens = finite.skipped;
  const auto long_opts = x.options().dtype(at::kLong);
  if (!two_level()) {
    out.expert_index = at::stack({minus_one_unless(outer.used[0], outer.expert[0]),
                                  minus_one_unless(outer.used[1], outer.expert[1])},
                                 1);
    out.gate = at::stack({outer.weight[0], outer.weight[1]}, 1);
    const auto load_w = [&](int j) { return outer.proposed[j].to(rd); };
    out.load = at::zeros({E}, xr.options())
                   .index_add(0, outer.expert[0], load_w(0))
                   .index_add(0, outer.expert[1], load_w(1));
    out.importance = at::zeros({E}, xr.options())
                         .index_add(0, outer.expert[0], outer.weight[0].detach())
                         .index_add(0, outer.expert[1], outer.weight[1].detach());
    out.assigned = outer.proposed[0].sum() + outer.proposed[1].sum();
    out.dropped = out.assigned - outer.used[0].sum() - outer.used[1].sum();
    out.aux_loss = outer.loss * o.loss_coef();
    out.loss_terms.emplace_back("balance", outer.loss.detach());
    return out;
  }

  // Two levels: the outer choices fill the slots [E_o, G, C_o] of each group's buffers.
  const int64_t Ei = o.experts()[1], Co = capacity(S, E0), slots = E0 * G * Co;
  const auto group_of = at::arange(G, long_opts).unsqueeze(1).expand({G, S}).reshape({T});
  const auto token_ids = at::arange(T, long_opts);
  // A slot's importance is 1 for a token's first choice, 0.5 for a second choice, 0 when empty.
  // (lucidrains tells them apart by the weight, > 0.5 for a first choice, which takes a first
  // choice tied with the second for a second one; docs/python.md.)
  at::Tensor slot_of[2];
  auto slot_token = at::full({slots + 1}, -1, long_opts);  // the last entry takes unused choices
  auto slot_weight = at::zeros({slots + 1}, xr.options());
  auto importance = at::zeros({slots + 1}, xr.options());
  for (int j = 0; j < 2; ++j) {
    const auto s = (outer.expert[j] * G + group_of) * Co + outer.position[j];
    slot_of[j] = at::where(outer.used[j], s, at::full({}, slots, long_opts));
    slot_token.scatter_(0, slot_of[j], token_ids);
    slot_weight.scatter_(0, slot_of[j], outer.weight[j].detach());
    importance.scatter_(0, slot_of[j], j == 0 ? 1.0 : 0.5);
  }
  slot_token = slot_token.narrow(0, 0, slots);
  slot_weight = slot_weight.narrow(0, 0, slots);
  importance = importance.narrow(0, 0, slots);
  const auto occupied = slot_token >= 0;
  const auto slot_x = xr.index_select(0, slot_token.clamp_min(0)) * occupied.to(rd).unsqueeze(1);
  const auto inner_logits = at::bmm(slot_x.view({E0, G * Co, x.size(1)}),
                                    inner_weight.transpose(1, 2));  // [E_o, G·C_o, E_i]
  detail::check_finite_tokens(inner_logits.reshape({-1, Ei}), NonFinitePolicy::kError, who,
                              "inner router logits (of its weights, the inputs being finite)");
  auto inner =
      top2_gate(at::softmax(inner_logits, -1).reshape({E0 * G, Co, Ei}),
                importance.reshape({E0 * G, Co}), {rule.policy, rule.threshold, capacity(Co, Ei)});

  // Token t's choice j, inner choice m: expert e_j·E_i + f_m of its slot, weight w_j · h_m.
  const auto slot_expert =
      at::arange(E0, long_opts).unsqueeze(1).expand({E0, G * Co}).reshape({slots});
  std::vector<at::Tensor> index, gate;
  auto dropped = at::zeros({}, long_opts);
  for (int j = 0; j < 2; ++j) {
    const auto s = slot_of[j].clamp_max(slots - 1);
    at::Tensor any_inner = at::zeros({T}, x.options().dtype(at::kBool));
    for (int m = 0; m < 2; ++m) {
      const auto used = outer.used[j] & inner.used[m].index_select(0, s);
      any_inner = any_inner | used;
      const auto e = outer.expert[j] * Ei + inner.expert[m].index_select(0, s);
      index.push_back(minus_one_unless(used, e));
      gate.push_back(outer.weight[j] * inner.weight[m].index_select(0, s) * used.to(rd));
    }
    dropped = dropped + (outer.proposed[j] & ~any_inner).sum();
  }
  out.expert_index = at::stack(index, 1);
  out.gate = at::stack(gate, 1);
  out.assigned = outer.proposed[0].sum() + outer.proposed[1].sum();
  out.dropped = dropped;
  out.load = at::zeros({E}, xr.options());
  out.importance = at::zeros({E}, xr.options());
  for (int m = 0; m < 2; ++m) {
    const auto e = slot_expert * Ei + inner.expert[m];
    out.load.index_add_(0, e, inner.proposed[m].to(rd));
    out.importance.index_add_(0, e, slot_weight * inner.weight[m].detach());
  }
  out.aux_loss = (outer.loss + inner.loss) * o.loss_coef();
  out.loss_terms.emplace_back("balance_outer", outer.loss.detach());
  out.loss_terms.emplace_back("balance_inner", inner.loss.detach());
  return out;
}

}  // namespace moe
