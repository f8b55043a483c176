// moe::nn::HierarchicalMoE (Shazeer et al. 2017, Appendix B; docs/ALGORITHMS.md §1.7).
#include "moe/nn/hierarchical_moe.h"

#include <ATen/ATen.h>

#include <cmath>
#include <ostream>

#include "moe/gating.h"
#include "moe/losses.h"
#include "moe/plan.h"
#include "moe/router.h"
#include "nn/common.h"

namespace moe::nn {

HierarchicalGateImpl::HierarchicalGateImpl(int64_t d_model_, int64_t num_experts_)
    : d_model(d_model_), num_experts(num_experts_) {
  reset();
}

void HierarchicalGateImpl::reset() {
  // Zero init (Shazeer §1.5): routing starts uniformly random through the noise alone.
  weight = register_parameter("weight", torch::zeros({num_experts, d_model}));
  noise_weight = register_parameter("noise_weight", torch::zeros({num_experts, d_model}));
}

HierarchicalMoEImpl::HierarchicalMoEImpl(HierarchicalMoEOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  TORCH_CHECK_VALUE(o.d_model() >= 1, "HierarchicalMoE: d_model must be >= 1, got ", o.d_model());
  TORCH_CHECK_VALUE(o.groups() >= 1, "HierarchicalMoE: groups must be >= 1, got ", o.groups());
  TORCH_CHECK_VALUE(o.experts_per_group() >= 1,
                    "HierarchicalMoE: experts_per_group must be >= 1, got ", o.experts_per_group());
  TORCH_CHECK_VALUE(o.primary_top_k() >= 1 && o.primary_top_k() <= o.groups(),
                    "HierarchicalMoE: primary_top_k must be in [1, groups=", o.groups(), "], got ",
                    o.primary_top_k());
  TORCH_CHECK_VALUE(o.secondary_top_k() >= 1 && o.secondary_top_k() <= o.experts_per_group(),
                    "HierarchicalMoE: secondary_top_k must be in [1, experts_per_group=",
                    o.experts_per_group(), "], got ", o.secondary_top_k());
  TORCH_CHECK_VALUE(std::isfinite(o.noise_epsilon()) && o.noise_epsilon() >= 0,
                    "HierarchicalMoE: noise_epsilon must be finite and >= 0, got ",
                    o.noise_epsilon());
  TORCH_CHECK_VALUE(std::isfinite(o.importance_coef()) && o.importance_coef() >= 0,
                    "HierarchicalMoE: importance_coef must be finite and >= 0, got ",
                    o.importance_coef());
  TORCH_CHECK_VALUE(std::isfinite(o.load_coef()) && o.load_coef() >= 0,
                    "HierarchicalMoE: load_coef must be finite and >= 0, got ", o.load_coef());
  reset();
}

void HierarchicalMoEImpl::reset() {
  const int64_t a = options.groups(), b = options.experts_per_group();
  primary_router = register_module("primary_router", HierarchicalGate(options.d_model(), a));
  secondary_router =
      register_module("secondary_router", HierarchicalGate(options.d_model(), a * b));
  experts = register_module(
      "experts", ExpertBank(ExpertBankOptions(a * b, options.d_model(), options.hidden_size())
                                .activation(options.activation())
                                .bias(options.expert_bias())
                                .init(options.expert_init())
                                .init_std(options.expert_init_std())));
}

void HierarchicalMoEImpl::pretty_print(std::ostream& stream) const {
  stream << "moe::nn::HierarchicalMoE(d_model=" << options.d_model()
         << ", groups=" << options.groups() << ", experts_per_group=" << options.experts_per_group()
         << ", hidden_size=" << options.hidden_size() << ", top_k=(" << options.primary_top_k()
         << ", " << options.secondary_top_k() << "), activation=" << to_string(options.activation())
         << ")";
}

void HierarchicalMoEImpl::to(torch::Dtype dtype, bool non_blocking) {
  experts->to(dtype, non_blocking);
  primary_router->to(router_dtype(dtype), non_blocking);
  secondary_router->to(router_dtype(dtype), non_blocking);
}

void HierarchicalMoEImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  experts->to(device, dtype, non_blocking);
  primary_router->to(device, router_dtype(dtype), non_blocking);
  secondary_router->to(device, router_dtype(dtype), non_blocking);
}

MoEOutput HierarchicalMoEImpl::forward(const torch::Tensor& x) {
  const auto xf = detail::tokens_2d(x, options.d_model(), experts->w1, "HierarchicalMoE");
  const int64_t T = xf.size(0), a = options.groups(), b = options.experts_per_group();
  const int64_t k1 = options.primary_top_k(), k2 = options.secondary_top_k();
  const auto rd = router_dtype(xf.scalar_type());
  auto xr = xf.to(rd);
  const auto Wp = primary_router->weight.to(rd), Np = primary_router->noise_weight.to(rd);
  const auto Ws = secondary_router->weight.to(rd), Ns = secondary_router->noise_weight.to(rd);
  auto pl = at::linear(xr, Wp);
  auto sl = at::linear(xr, Ws);

  torch::Tensor valid;
  int64_t skipped = 0;
  {
    const auto finite = at::isfinite(pl).all(1).logical_and(at::isfinite(sl).all(1));
    const int64_t bad = T - finite.sum().item<int64_t>();
    if (bad > 0) {
      TORCH_CHECK(
          options.non_finite() == NonFinitePolicy::kSkip, "HierarchicalMoE: router logits ",
          "are non-finite for ", bad, " of ", T, " tokens (NaN or Inf in the input or the ",
          "gate weights); use non_finite(NonFinitePolicy::kSkip) to give such tokens a zero ",
          "output");
      valid = finite;
      skipped = bad;
      xr = xr.masked_fill(~finite.unsqueeze(1), 0.0);
      pl = at::linear(xr, Wp);
      sl = at::linear(xr, Ws);
    }
  }

  // Noise: the secondary draw comes first, so that with one group the secondary gate sees exactly
  // the noise a flat SparseMoE with the same seed would.
  const bool train = is_training();
  const auto s_noise = train ? at::randn_like(sl) : torch::Tensor();
  const auto p_noise = train ? at::randn_like(pl) : torch::Tensor();
  const auto gp =
      noisy_top_k_gating(pl, at::linear(xr, Np), p_noise, k1, options.noise_epsilon(), valid);

  // Secondary gates on rows (t, g); a row is valid iff the primary gate picked g for t (X^(g)).
  auto picked = at::zeros({T, a}, xf.options().dtype(at::kBool));
  picked.scatter_(1, gp.expert_index.clamp_min(0), gp.expert_index >= 0);
  const auto s_rows = [&](const torch::Tensor& t) {
    return t.defined() ? t.reshape({T * a, b}) : t;
  };
  const auto gs = noisy_top_k_gating(s_rows(sl), s_rows(at::linear(xr, Ns)), s_rows(s_noise), k2,
                                     options.noise_epsilon(), picked.reshape({-1}));

  // Product plan: slot (s1, s2) of token t -> expert g·b + j with weight Gp(x)_g · G_g(x)_j (Eq.
  // 12).
  const auto gidx = gp.expert_index.clamp_min(0).unsqueeze(2).expand({T, k1, k2});
  const auto s_idx = gs.expert_index.reshape({T, a, k2}).gather(1, gidx);
  const auto s_gate = gs.gate.reshape({T, a, k2}).gather(1, gidx);
  const auto primary_ok = (gp.expert_index >= 0).unsqueeze(2);
  const auto expert_index = at::where(primary_ok.logical_and(s_idx >= 0), gidx * b + s_idx,
                                      at::full({}, -1, gidx.options()))
                                .reshape({T, k1 * k2});
  const auto gate = (gp.gate.unsqueeze(2) * s_gate).reshape({T, k1 * k2});

  // Importance_H (Eq. 13) and Load_H (Eq. 14) over the a·b experts.
  const auto imp = importance(expert_index, gate, a * b);
  const auto true_load = assignment_counts(gp.expert_index, a, pl.options());  // |X^(g)|
  const auto s_load = gs.in_top_k.reshape({T, a, b}).sum(0);                   // Load_g(X^(g))_j
  const auto load = (gp.load / (true_load + 1e-10)).unsqueeze(1) * s_load;

  const RoutingPlan plan = build_routing_plan(expert_index, a * b);
  const auto w = pair_weights(plan, gate).to(xf.scalar_type());

  MoEOutput out;
  out.output = experts->forward(xf, plan, w).view(x.sizes());
  auto aux = (pl.sum() + sl.sum()) * 0.0;
  if (train || options.aux_loss_in_eval()) {
    aux = aux + options.importance_coef() * cv_squared(imp) +
          options.load_coef() * cv_squared(load.reshape({-1}));
  }
  out.aux_loss = aux;
  out.stats =
      detail::make_stats(plan, imp, load.reshape({-1}), (T - skipped) * k1 * k2, 0, skipped);
  out.routing = {expert_index, gate.detach()};
  return out;
}

}  // namespace moe::nn
