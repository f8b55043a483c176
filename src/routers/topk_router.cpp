// TopKRouter: softmax top-k, Switch and Shazeer noisy top-k routing (docs/algorithms.md §1, §5).
#include <ATen/ATen.h>
#include <torch/nn/init.h>

#include <cmath>
#include <memory>
#include <ostream>

#include "moe/gating.h"
#include "moe/losses.h"
#include "moe/router.h"
#include "routers/top_k_routing.h"

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
  if (options.kind() == RouterKind::kNoisyTopK && options.noisy_gating()) {
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

void TopKRouterImpl::set_top_k(int64_t k) {
  TORCH_CHECK_VALUE(k >= 1 && k <= options.num_experts(), options.name(), ": top_k must be in [1, ",
                    "num_experts=", options.num_experts(), "], got ", k);
  options.top_k(k);
}

RoutingResult TopKRouterImpl::route(const torch::Tensor& x, const BatchShards& batch) {
  detail::check_router_input(x, options.d_model(), options.name());
  const auto rd = router_dtype(x.scalar_type());
  auto xr = x.to(rd);
  if (is_training() && options.jitter() > 0) {
    const double lo = 1.0 - options.jitter(), hi = 1.0 + options.jitter();
    xr = xr * detail::shard_of_global_draw(batch, xr.size(0), 1, xr.size(1), xr.options(),
                                           [&](at::Tensor& t) { t.uniform_(lo, hi); });
  }
  const auto W = weight.to(rd);
  const auto b = bias.defined() ? bias.to(rd) : torch::Tensor();
  detail::TopKRule rule;
  rule.kind = options.kind();
  rule.num_experts = options.num_experts();
  rule.top_k = options.top_k();
  // SMoE-Dropout: softmax over the k selected logits = the renormalised probabilities. Switch
  // never renormalises; noisy top-k takes the softmax over the k kept logits (Eq. 3).
  rule.normalize = options.kind() == RouterKind::kFrozenRandom ||
                   (options.kind() == RouterKind::kSoftmaxTopK && options.normalize_top_k());
  rule.noise_epsilon = options.noise_epsilon();
  rule.capacity_factor = options.capacity_factor();
  rule.min_capacity = options.min_capacity();
  rule.coefficients = resolve_coefficients(options);
  rule.aux_loss_in_eval = options.aux_loss_in_eval();
  rule.non_finite = options.non_finite();
  rule.who = options.name();
  detail::RouterWeights w{W, b, noise_weight.defined() ? noise_weight.to(rd) : torch::Tensor()};
  return detail::route_top_k(xr, w, rule, is_training(), batch);
}

}  // namespace moe
