// route_top_k: the shared tail of the top-k routers (src/routers/top_k_routing.h).
#include "routers/top_k_routing.h"

#include <ATen/ATen.h>

#include "moe/gating.h"
#include "moe/losses.h"
#include "routers/non_finite.h"

namespace moe::detail {
namespace {

// The weighted auxiliary loss of a top-k router and its unweighted terms.
void add_aux_losses(RoutingResult& out, const torch::Tensor& logits, const torch::Tensor& valid,
                    const torch::Tensor& chosen, const LossCoefficients& c) {
  // Every parameter stays in the graph (a zero-token batch still gets zero, not undefined, grads).
  auto aux = logits.sum() * 0.0;
  auto term = [&](const char* name, double coef, const torch::Tensor& value) {
    aux = aux + coef * value;
    out.loss_terms.emplace_back(name, value.detach());
  };
  if (c.importance > 0) term("importance", c.importance, cv_squared(out.importance));
  if (c.load > 0) term("load", c.load, cv_squared(out.load));
  const auto kept = valid.defined() ? logits.index({valid}) : logits;
  if (c.balance > 0) {
    const auto kept_chosen = valid.defined() ? chosen.index({valid}) : chosen;
    term("balance", c.balance, balance_loss(at::softmax(kept, -1), kept_chosen));
  }
  if (c.z > 0) term("z", c.z, router_z_loss(kept));
  out.aux_loss = aux;
}

}  // namespace

void check_router_input(const torch::Tensor& x, int64_t d_model, const std::string& who) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model, who, ": expected router input of shape [T, ",
              d_model, "], got ", x.sizes());
}

RoutingResult route_top_k(torch::Tensor xr, const LogitsOf& logits_of,
                          const LogitsOf& noise_logits_of, const TopKRule& rule, bool training) {
  const int64_t T = xr.size(0), E = rule.num_experts, k = rule.top_k;
  auto logits = logits_of(xr);
  const FiniteTokens finite =
      check_finite_tokens(logits, rule.non_finite, rule.who, "router logits");
  const auto& valid = finite.valid;
  if (valid.defined()) {
    xr = zero_invalid_rows(xr, valid);
    logits = logits_of(xr);
    TORCH_CHECK_VALUE(at::isfinite(logits).all().item<bool>(), rule.who,
                      ": router logits are non-finite for finite inputs: the router weights "
                      "contain NaN or Inf");
  }

  TopKGate g;
  if (rule.kind == RouterKind::kNoisyTopK) {
    // Without noise (inference, or noisy gating off) the gate is the clean top-k: the noise
    // logits are not computed at all.
    const bool noisy = training && noise_logits_of;
    const auto noise_logits = noisy ? noise_logits_of(xr) : torch::Tensor();
    const auto noise = noisy ? at::randn_like(logits) : torch::Tensor();
    g = noisy_top_k_gating(logits, noise_logits, noise, k, rule.noise_epsilon, valid);
  } else {
    g = softmax_top_k_gating(logits, k, rule.normalize, valid);
  }

  RoutingResult out;
  out.skipped_tokens = finite.skipped;
  out.assigned = (T - finite.skipped) * k;
  out.importance = importance(g.expert_index, g.gate, E);
  out.load = g.load;
  out.expert_index = g.expert_index;
  out.gate = g.gate;
  out.dropped = at::zeros({}, out.assigned.options());
  if (rule.capacity_factor > 0) {
    const int64_t cap = expert_capacity(T, k, E, rule.capacity_factor, rule.min_capacity);
    int64_t dropped = 0;
    std::tie(out.expert_index, dropped) = apply_capacity(g.expert_index, E, cap);
    out.dropped.fill_(dropped);
    out.gate = out.gate * (out.expert_index >= 0).to(out.gate.scalar_type());
  }
  if (training || rule.aux_loss_in_eval) {
    add_aux_losses(out, logits, valid, g.expert_index, rule.coefficients);
  } else {
    out.aux_loss = logits.sum() * 0.0;
  }
  return out;
}

}  // namespace moe::detail
