// route_top_k: the shared tail of the top-k routers (src/routers/top_k_routing.h).
#include "routers/top_k_routing.h"

#include <ATen/ATen.h>

#include "moe/gating.h"
#include "moe/losses.h"
#include "routers/non_finite.h"

namespace moe::detail {
namespace {

// The weighted auxiliary loss of a top-k router and its unweighted terms. `anchor` keeps every
// parameter in the graph (a zero-token batch still gets zero, not undefined, gradients); `logits`
// are needed by the balance and z losses only.
void add_aux_losses(RoutingResult& out, const torch::Tensor& anchor, const torch::Tensor& logits,
                    const torch::Tensor& valid, const torch::Tensor& chosen,
                    const LossCoefficients& c) {
  auto aux = anchor.sum() * 0.0;
  auto term = [&](const char* name, double coef, const torch::Tensor& value) {
    aux = aux + coef * value;
    out.loss_terms.emplace_back(name, value.detach());
  };
  if (c.importance > 0) term("importance", c.importance, cv_squared(out.importance));
  if (c.load > 0) term("load", c.load, cv_squared(out.load));
  if (c.balance > 0 || c.z > 0) {
    const auto kept = valid.defined() ? logits.index({valid}) : logits;
    if (c.balance > 0) {
      const auto kept_chosen = valid.defined() ? chosen.index({valid}) : chosen;
      term("balance", c.balance, balance_loss(at::softmax(kept, -1), kept_chosen));
    }
    if (c.z > 0) term("z", c.z, router_z_loss(kept));
  }
  out.aux_loss = aux;
}

// The unfused gate: the [T, E] logits first (the reference for the fused noisy gate, and what the
// balance and z losses need).
TopKGate gate_from_logits(torch::Tensor& xr, torch::Tensor& logits, FiniteTokens& finite,
                          const RouterWeights& w, const TopKRule& rule, bool training) {
  logits = at::linear(xr, w.weight, w.bias);
  finite = check_finite_tokens(logits, rule.non_finite, rule.who, "router logits");
  const auto& valid = finite.valid;
  if (valid.defined()) {
    xr = zero_invalid_rows(xr, valid);
    logits = at::linear(xr, w.weight, w.bias);
    TORCH_CHECK_VALUE(at::isfinite(logits).all().item<bool>(), rule.who,
                      ": router logits are non-finite for finite inputs: the router weights "
                      "contain NaN or Inf");
  }
  if (rule.kind != RouterKind::kNoisyTopK) {
    return softmax_top_k_gating(logits, rule.top_k, rule.normalize, valid);
  }
  // Without noise (inference, or noisy gating off) the gate is the clean top-k: the noise logits
  // are not computed at all.
  const bool noisy = training && w.noise_weight.defined();
  const auto noise_logits = noisy ? at::linear(xr, w.noise_weight) : torch::Tensor();
  const auto noise = noisy ? at::randn_like(logits) : torch::Tensor();
  return noisy_top_k_gating(logits, noise_logits, noise, rule.top_k, rule.noise_epsilon, valid);
}

}  // namespace

void check_router_input(const torch::Tensor& x, int64_t d_model, const std::string& who) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model, who, ": expected router input of shape [T, ",
              d_model, "], got ", x.sizes());
}

RoutingResult route_top_k(torch::Tensor xr, const RouterWeights& w, const TopKRule& rule,
                          bool training) {
  const int64_t T = xr.size(0), E = rule.num_experts, k = rule.top_k;
  const auto& c = rule.coefficients;
  const bool fused =
      rule.kind == RouterKind::kNoisyTopK && xr.device().is_cpu() && c.balance == 0 && c.z == 0;
  torch::Tensor logits;
  FiniteTokens finite;
  TopKGate g;
  if (fused) {
    // The input rows decide which tokens are valid: non-finite logits of finite inputs are an
    // error of the weights, raised by the fused gate.
    finite = check_finite_tokens(xr, rule.non_finite, rule.who, "router inputs");
    if (finite.valid.defined()) xr = zero_invalid_rows(xr, finite.valid);
    const bool noisy = training && w.noise_weight.defined();
    try {
      g = fused_noisy_top_k_gating(xr, w.weight, w.bias, noisy ? w.noise_weight : torch::Tensor(),
                                   k, rule.noise_epsilon, finite.valid);
    } catch (const c10::ValueError& e) {  // name the layer
      TORCH_CHECK_VALUE(false, rule.who, ": ", e.what_without_backtrace());
    }
  } else {
    g = gate_from_logits(xr, logits, finite, w, rule, training);
  }
  const auto& valid = finite.valid;

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
  const auto& anchor = fused ? g.gate : logits;
  if (training || rule.aux_loss_in_eval) {
    add_aux_losses(out, anchor, logits, valid, g.expert_index, c);
  } else {
    out.aux_loss = anchor.sum() * 0.0;
  }
  return out;
}

}  // namespace moe::detail
