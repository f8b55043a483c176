// TopKRouter: softmax top-k, Switch and Shazeer noisy top-k routing (docs/ALGORITHMS.md §1, §5).
#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>
#include <ostream>

#include "moe/gating.h"
#include "moe/losses.h"
#include "moe/router.h"
#include "routers/finite_logits.h"

namespace moe {

c10::ScalarType router_dtype(c10::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

LossCoefficients resolve_coefficients(const RouterOptions& o) {
  const bool noisy = o.kind() == RouterKind::kNoisyTopK;
  LossCoefficients c;
  c.importance = o.importance_coef().value_or(noisy ? 1e-2 : 0.0);
  c.load = o.load_coef().value_or(noisy ? 1e-2 : 0.0);
  // SMoE-Dropout trains without an auxiliary loss (§3.1).
  const bool none = o.kind() == RouterKind::kFrozenRandom;
  c.balance = o.balance_coef().value_or(noisy || none ? 0.0 : 1e-2);
  c.z = o.z_loss_coef().value_or(0.0);
  return c;
}

void check_router_options(const RouterOptions& o, const char* who) {
  TORCH_CHECK_VALUE(o.d_model() >= 1, who, ": d_model must be >= 1, got ", o.d_model());
  TORCH_CHECK_VALUE(o.num_experts() >= 1, who, ": num_experts must be >= 1, got ", o.num_experts());
  TORCH_CHECK_VALUE(o.kind() != RouterKind::kHyper, who,
                    ": RouterKind::kHyper is not a TopKRouter kind; use moe::HyperRouter (or "
                    "SparseMoE / HyperRouterMoE, which build it)");
  TORCH_CHECK_VALUE(o.top_k() >= 1 && o.top_k() <= o.num_experts(), who, ": top_k must be in [1, ",
                    "num_experts=", o.num_experts(), "], got ", o.top_k());
  TORCH_CHECK_VALUE(std::isfinite(o.capacity_factor()) && o.capacity_factor() >= 0, who,
                    ": capacity_factor must be finite and >= 0 (0 = dropless), got ",
                    o.capacity_factor());
  TORCH_CHECK_VALUE(o.min_capacity() >= 0, who, ": min_capacity must be >= 0, got ",
                    o.min_capacity());
  TORCH_CHECK_VALUE(std::isfinite(o.noise_epsilon()) && o.noise_epsilon() >= 0, who,
                    ": noise_epsilon must be finite and >= 0, got ", o.noise_epsilon());
  TORCH_CHECK_VALUE(std::isfinite(o.jitter()) && o.jitter() >= 0 && o.jitter() < 1, who,
                    ": jitter must be in [0, 1), got ", o.jitter());
  TORCH_CHECK_VALUE(std::isfinite(o.router_init_std()) && o.router_init_std() >= 0, who,
                    ": router_init_std must be finite and >= 0, got ", o.router_init_std());
  auto check_coef = [&](const c10::optional<double>& c, const char* name) {
    TORCH_CHECK_VALUE(!c || (std::isfinite(*c) && *c >= 0), who, ": ", name,
                      " must be finite and >= 0, got ", c.value_or(0.0));
  };
  check_coef(o.importance_coef(), "importance_coef");
  check_coef(o.load_coef(), "load_coef");
  check_coef(o.balance_coef(), "balance_coef");
  check_coef(o.z_loss_coef(), "z_loss_coef");
}

TopKRouterImpl::TopKRouterImpl(RouterOptions options_) : options(std::move(options_)) {
  check_router_options(options, options.name().c_str());
  reset();
}

void TopKRouterImpl::reset() {
  const int64_t E = options.num_experts(), d = options.d_model();
  const bool smoe_dropout = options.kind() == RouterKind::kFrozenRandom;
  const bool train = !options.frozen() && !smoe_dropout;
  weight = register_parameter("weight", torch::empty({E, d}), train);
  if (options.kind() == RouterKind::kNoisyTopK) {
    noise_weight = register_parameter("noise_weight", torch::empty({E, d}), train);
  } else {
    noise_weight = torch::Tensor();
  }
  if (options.bias() || smoe_dropout) {
    bias = register_parameter("bias", torch::empty({E}), train);
  } else {
    bias = torch::Tensor();
  }
  reset_parameters();
}

void TopKRouterImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  const bool zero = options.zero_init().value_or(options.kind() == RouterKind::kNoisyTopK);
  if (zero) {
    weight.zero_();
  } else {
    weight.normal_(0.0, options.router_init_std());
  }
  if (noise_weight.defined()) noise_weight.zero_();  // Shazeer §1.5: W_noise starts at zero
  if (bias.defined()) bias.zero_();
}

void TopKRouterImpl::pretty_print(std::ostream& stream) const {
  const auto c = resolve_coefficients(options);
  stream << "moe::TopKRouter(kind=" << to_string(options.kind())
         << ", d_model=" << options.d_model() << ", num_experts=" << options.num_experts()
         << ", top_k=" << options.top_k() << ", capacity_factor=" << options.capacity_factor()
         << ", importance=" << c.importance << ", load=" << c.load << ", balance=" << c.balance
         << ", z=" << c.z << ")";
}

RouterOutput TopKRouterImpl::route(const torch::Tensor& x) {
  const auto& who = options.name();
  TORCH_CHECK(x.dim() == 2 && x.size(1) == options.d_model(), who,
              ": expected router input of shape [T, ", options.d_model(), "], got ", x.sizes());
  const int64_t T = x.size(0), E = options.num_experts(), k = options.top_k();
  const auto rd = router_dtype(x.scalar_type());
  auto xr = x.to(rd);
  if (is_training() && options.jitter() > 0) {
    xr = xr * at::empty_like(xr).uniform_(1.0 - options.jitter(), 1.0 + options.jitter());
  }
  const auto W = weight.to(rd);
  const auto b = bias.defined() ? bias.to(rd) : torch::Tensor();
  auto logits = at::linear(xr, W, b);

  int64_t skipped = 0;
  const auto valid = detail::apply_non_finite_policy(
      xr, logits, [&](const torch::Tensor& v) { return at::linear(v, W, b); }, options.non_finite(),
      who, skipped);

  TopKGate g;
  if (options.kind() == RouterKind::kNoisyTopK) {
    const auto noise_logits = at::linear(xr, noise_weight.to(rd));
    const auto noise = is_training() ? at::randn_like(logits) : torch::Tensor();
    g = noisy_top_k_gating(logits, noise_logits, noise, k, options.noise_epsilon(), valid);
  } else {
    // SMoE-Dropout: softmax over the k selected logits = the renormalised probabilities.
    const bool normalize =
        options.kind() == RouterKind::kFrozenRandom ||
        (options.kind() == RouterKind::kSoftmaxTopK && options.normalize_top_k());
    g = softmax_top_k_gating(logits, k, normalize, valid);
  }

  RouterOutput out;
  out.skipped_tokens = skipped;
  out.assigned = (T - skipped) * k;
  out.importance = importance(g.expert_index, g.gate, E);
  out.load = g.load;
  out.expert_index = g.expert_index;
  out.gate = g.gate;
  if (options.capacity_factor() > 0) {
    const int64_t cap = expert_capacity(T, k, E, options.capacity_factor(), options.min_capacity());
    std::tie(out.expert_index, out.dropped) = apply_capacity(g.expert_index, E, cap);
    out.gate = out.gate * (out.expert_index >= 0).to(out.gate.scalar_type());
  }

  const auto c = resolve_coefficients(options);
  // Every parameter stays in the graph (a zero-token batch still gets zero, not undefined, grads).
  auto aux = logits.sum() * 0.0;
  if (is_training() || options.aux_loss_in_eval()) {
    if (c.importance > 0) aux = aux + c.importance * cv_squared(out.importance);
    if (c.load > 0) aux = aux + c.load * cv_squared(out.load);
    if (c.balance > 0) {
      const auto probs = at::softmax(logits, -1);
      const auto kept = valid.defined() ? probs.index({valid}) : probs;
      const auto chosen = valid.defined() ? g.expert_index.index({valid}) : g.expert_index;
      aux = aux + c.balance * balance_loss(kept, chosen);
    }
    if (c.z > 0) aux = aux + c.z * router_z_loss(valid.defined() ? logits.index({valid}) : logits);
  }
  out.aux_loss = aux;
  return out;
}

namespace detail {

torch::Tensor apply_non_finite_policy(
    torch::Tensor& xr, torch::Tensor& logits,
    const std::function<torch::Tensor(const torch::Tensor&)>& logits_of, NonFinitePolicy policy,
    const std::string& who, int64_t& skipped) {
  // Check the E-wide logits: NaN must never reach the top-k indices.
  const int64_t T = logits.size(0);
  const auto finite = at::isfinite(logits).all(1);
  const int64_t bad = T - finite.sum().item<int64_t>();
  skipped = 0;
  if (bad == 0) return {};
  TORCH_CHECK(policy == NonFinitePolicy::kSkip, who, ": router logits are non-finite for ", bad,
              " of ", T, " tokens (NaN or Inf in the input or the router weights); use ",
              "non_finite(NonFinitePolicy::kSkip) to give such tokens a zero output");
  skipped = bad;
  xr = xr.masked_fill(~finite.unsqueeze(1), 0.0);
  logits = logits_of(xr);
  TORCH_CHECK(at::isfinite(logits).all().item<bool>(), who,
              ": router logits are non-finite for finite inputs: the router weights contain NaN "
              "or Inf");
  return finite;
}

}  // namespace detail
}  // namespace moe
