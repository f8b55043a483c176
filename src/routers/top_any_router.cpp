// TopAnyRouter: DynMoE top-any gating (moe/routers/top_any_router.h, docs/algorithms.md §2.2).
#include "moe/routers/top_any_router.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/nn/init.h>

#include <algorithm>
#include <cmath>
#include <ostream>

#include "engine/backend.h"
#include "moe/router.h"
#include "routers/non_finite.h"

namespace moe {
namespace {

// §2.2: the temperature clamp log(1/0.01) = log 100.
const double kLogScaleMax = std::log(100.0);
// F.normalize's eps: x / max(||x||, eps).
constexpr double kNormalizeEps = 1e-12;

torch::Tensor normalize_rows(const torch::Tensor& x) {
  return x / x.norm(2, {1}, /*keepdim=*/true).clamp_min(kNormalizeEps);
}

struct SignSTE : public torch::autograd::Function<SignSTE> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) {
    return x.sign();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {grads[0]};
  }
};

const char* to_string(TopAnyTemperature t) {
  switch (t) {
    case TopAnyTemperature::kFrozen:
      return "frozen";
    case TopAnyTemperature::kTrainable:
      return "trainable";
    case TopAnyTemperature::kNone:
      return "none";
  }
  return "?";
}

}  // namespace

torch::Tensor sign_ste(const torch::Tensor& x) { return SignSTE::apply(x); }

double TopAnyRouterOptions::resolved_init_temperature() const {
  return init_temperature().value_or(temperature() == TopAnyTemperature::kTrainable ? 0.1 : 1.0);
}

torch::Tensor top_any_diversity_loss(const torch::Tensor& weight, const torch::Tensor& active) {
  const auto wn = normalize_rows(weight);
  const auto m = active.to(weight.scalar_type());
  const auto pairs = m.unsqueeze(1) * m.unsqueeze(0);
  const auto eye = at::eye(weight.size(0), weight.options());
  // Frobenius norm, not squared (§2.3). Its gradient at an exact 0 (one active expert) is 0.
  const auto dev = (wn.mm(wn.t()) - eye) * pairs;
  const auto sq = dev.pow(2).sum();
  const auto positive = sq > 0;
  return at::where(positive, at::where(positive, sq, at::ones_like(sq)).sqrt(), sq);
}

torch::Tensor top_any_simplicity_loss(const torch::Tensor& weight) {
  return weight.norm(2, {1}).mean();
}

// The balance loss over the tokens that activated some expert (k > 0), its means over the global
// batch. Those tokens are selected on the CPU's own path (free there); the portable path masks the
// others instead, since a selection would read its size back from the device (docs/gpu.md). The
// two agree up to the order of the sums.
static torch::Tensor balance_loss_over(const torch::Tensor& a, const BatchShards& batch) {
  const int64_t E = a.size(1);
  const auto nz = (a.detach() > 0).any(1, /*keepdim=*/true);  // [T, 1]
  torch::Tensor p, fired;                                     // [T', E] each
  if (engine::portable_path(a.device())) {
    // 1/k on the activated experts, differentiable; 0 on the rows without any.
    const auto zero = at::zeros({}, a.options());
    p = at::where(nz, a / at::where(nz, a.sum(1, /*keepdim=*/true), at::ones_like(zero)), zero);
    fired = (a.detach() > 0).to(a.scalar_type());
  } else {
    const auto an = a.index({nz.squeeze(1)});
    p = an / an.sum(1, /*keepdim=*/true);
    fired = (an.detach() > 0).to(a.scalar_type());
  }
  const auto n = batch.sum(nz.sum().to(a.scalar_type())).clamp_min(1);
  const auto me = batch.sum(p.sum(0)) / n;
  const auto ce = batch.sum(fired.sum(0)) / n;
  return (me * ce).mean() * static_cast<double>(E * E);
}

torch::Tensor top_any_balance_loss(const torch::Tensor& a) {
  return balance_loss_over(a, BatchShards(a.size(0)));
}

torch::Tensor top_any_efficiency_loss(const torch::Tensor& a) {
  return a.numel() > 0 ? a.mean() : a.sum();  // an empty batch contributes 0, not NaN
}

TopAnyRouterImpl::TopAnyRouterImpl(TopAnyRouterOptions options_) : options(std::move(options_)) {
  const char* who = options.name().c_str();
  TORCH_CHECK_VALUE(options.d_model() >= 1, who, ": d_model must be >= 1, got ", options.d_model());
  TORCH_CHECK_VALUE(options.num_experts() >= 1, who, ": the number of experts must be >= 1, got ",
                    options.num_experts());
  TORCH_CHECK_VALUE(
      options.initial_active() >= 1 && options.initial_active() <= options.num_experts(), who,
      ": initial_experts must be in [1, ", options.num_experts(), "], got ",
      options.initial_active());
  const double t = options.resolved_init_temperature();
  TORCH_CHECK_VALUE(std::isfinite(t) && t > 0, who,
                    ": init_temperature must be finite and > 0, got ", t);
  TORCH_CHECK_VALUE(std::isfinite(options.aux_loss_coef()) && options.aux_loss_coef() >= 0, who,
                    ": aux_loss_coef must be finite and >= 0, got ", options.aux_loss_coef());
  reset();
}

void TopAnyRouterImpl::reset() {
  const int64_t E = options.num_experts(), d = options.d_model();
  weight = register_parameter("weight", torch::empty({E, d}));
  threshold = register_parameter("threshold", torch::empty({E}));
  const auto log_scale = torch::full({1}, std::log(1.0 / options.resolved_init_temperature()));
  // A frozen temperature is a parameter that takes no gradient, as every frozen weight of the
  // library is (SMoE-Dropout's router, HyperRouter's hypernetwork): one name, one kind of tensor.
  const bool trainable = options.temperature() == TopAnyTemperature::kTrainable;
  temperature = options.temperature() == TopAnyTemperature::kNone
                    ? torch::Tensor()
                    : register_parameter("temperature", log_scale, /*requires_grad=*/trainable);
  active = register_buffer("active", torch::zeros({E}));
  reset_parameters();
}

void TopAnyRouterImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  // orthogonal_ on [E, d] (the reference initialises [E_max, d] and stores its transpose): the
  // rows are orthonormal when E <= d.
  torch::nn::init::orthogonal_(weight);
  threshold.zero_();
  if (temperature.defined()) temperature.fill_(std::log(1.0 / options.resolved_init_temperature()));
  active.zero_();
  active.slice(0, 0, options.initial_active()).fill_(1.0);
}

void TopAnyRouterImpl::pretty_print(std::ostream& stream) const {
  stream << "moe::TopAnyRouter(d_model=" << options.d_model() << ", experts=" << num_experts()
         << ", active=" << num_active() << ", temperature=" << to_string(options.temperature())
         << ")";
}

int64_t TopAnyRouterImpl::num_active() const { return (active > 0).sum().item<int64_t>(); }

torch::Tensor TopAnyRouterImpl::logit_scale() const {
  if (!temperature.defined()) return at::ones({}, weight.options());
  return temperature.clamp_max(kLogScaleMax).exp().squeeze(0);
}

double TopAnyRouting::term(const std::string& name) const {
  const auto t = find_loss_term(loss_terms, name);
  return t.defined() ? t.item<double>() : 0.0;
}

RoutingResult TopAnyRouting::result() const { return result(BatchShards(gate.size(0))); }

RoutingResult TopAnyRouting::result(const BatchShards& batch) const {
  RoutingResult r;
  r.expert_index = expert_index;
  r.gate = gate;
  const auto used = expert_index >= 0;
  r.importance = batch.sum(gate.sum(0));
  r.load = batch.sum(used.sum(0).to(gate.scalar_type()));
  r.aux_loss = aux_loss;
  r.loss_terms = loss_terms;
  r.assigned = used.sum();
  r.dropped = at::zeros({}, r.assigned.options());
  r.skipped_tokens = skipped_tokens;
  r.unrouted = unrouted;
  r.active_experts = active_count;
  return r;
}

TopAnyRouting TopAnyRouterImpl::decide(const torch::Tensor& x_in) {
  return decide(x_in, BatchShards(x_in.dim() >= 1 ? x_in.size(0) : 0));
}

TopAnyRouting TopAnyRouterImpl::decide(const torch::Tensor& x_in, const BatchShards& batch) {
  const char* who = options.name().c_str();
  TORCH_CHECK(x_in.dim() == 2 && x_in.size(1) == options.d_model(), who,
              ": router input must be [T, d_model=", options.d_model(), "], got ", x_in.sizes());
  const int64_t T = x_in.size(0), E = num_experts();
  const auto rd = router_dtype(x_in.scalar_type());
  TORCH_CHECK_TYPE(weight.scalar_type() == rd, who, ": router parameters are ",
                   weight.scalar_type(), " but inputs of dtype ", x_in.scalar_type(), " need ", rd);
  auto x = x_in.to(rd);

  TopAnyRouting r;
  // Non-finite tokens (docs/reliability.md §3.3).
  const auto finite =
      detail::check_finite_tokens(x, options.non_finite(), options.name(), "input values");
  const bool skip = finite.valid.defined();
  if (skip) x = detail::zero_invalid_rows(x, finite.valid);
  r.skipped_tokens = finite.skipped;

  const auto lambda = logit_scale();
  const auto cos = normalize_rows(x).mm(normalize_rows(weight).t());
  const auto s = at::sigmoid(cos * lambda) * active;  // free experts score 0 and never fire
  const auto theta = at::sigmoid(threshold * lambda);
  auto a = sign_ste(at::relu(s - theta));  // forward: 1 where s > theta
  if (skip) a = a * finite.valid.unsqueeze(1).to(a.scalar_type());
  auto fired = a.detach() > 0;
  auto k = fired.sum(1);
  r.fired = fired;
  r.unrouted = (k == 0);
  if (skip) r.unrouted = r.unrouted & finite.valid;
  r.scores = s.detach();
  r.active_count = (active > 0).sum();

  // Combine weight a/max(k, 1), k not differentiated (the reference divides by the integer k).
  auto gate = a / k.clamp_min(1).to(a.scalar_type()).unsqueeze(1);
  auto used = fired;
  if (!is_training() && options.fallback() != TopAnyFallback::kZero) {
    const auto none = (r.unrouted).unsqueeze(1);  // [T, 1]
    const auto best = r.scores.argmax(1, /*keepdim=*/true);
    // Only active experts score > 0; a layer with no active expert has nowhere to send the token.
    const auto has_active = r.scores.gather(1, best) > 0;
    const auto onehot = at::zeros({T, E}, x.options().dtype(at::kBool)).scatter_(1, best, true);
    const auto add = onehot & none & has_active;
    used = fired | add;
    const auto fill =
        options.fallback() == TopAnyFallback::kArgmax ? at::ones({}, s.options()) : r.scores;
    gate = at::where(add, fill.expand({T, E}), gate);
  }
  r.gate = gate;
  r.expert_index =
      at::where(used, at::arange(E, x.options().dtype(at::kLong)).unsqueeze(0).expand({T, E}),
                at::full({}, -1, x.options().dtype(at::kLong)));

  const bool want_aux = is_training() || options.aux_loss_in_eval();
  auto aux = at::zeros({}, x.options());
  if (want_aux) {
    auto add_term = [&](const char* name, const torch::Tensor& term) {
      r.loss_terms.emplace_back(name, term.detach());
      aux = aux + term;
    };
    if (options.diversity_loss()) add_term("diversity", top_any_diversity_loss(weight, active));
    if (options.simplicity_loss()) add_term("simplicity", top_any_simplicity_loss(weight));
    if (options.balance_loss()) add_term("balance", balance_loss_over(a, batch));
    if (options.efficiency_loss()) {
      add_term("efficiency",
               batch.whole() ? top_any_efficiency_loss(a)
                             : batch.sum(a.sum()) /
                                   std::max<double>(1.0, double(E) * double(batch.total_rows())));
    }
    aux = aux * options.aux_loss_coef();
  }
  r.aux_loss = aux;
  return r;
}

}  // namespace moe
