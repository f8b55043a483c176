// HierarchicalRouter (Shazeer et al. 2017, Appendix B; include/moe/routers/hierarchical_router.h,
// docs/algorithms.md §1.7).
#include "moe/routers/hierarchical_router.h"

#include <ATen/ATen.h>

#include <cmath>
#include <ostream>

#include "engine/backend.h"
#include "moe/gating.h"
#include "moe/losses.h"
#include "moe/plan.h"
#include "routers/grouped_linear.h"
#include "routers/non_finite.h"
#include "routers/top_k_routing.h"

namespace moe {

HierarchicalGateImpl::HierarchicalGateImpl(int64_t d_model_, int64_t num_experts_, bool noisy_)
    : d_model(d_model_), num_experts(num_experts_), noisy(noisy_) {
  reset();
}

void HierarchicalGateImpl::reset() {
  // Zero init (Shazeer §1.5): routing starts uniformly random through the noise alone.
  weight = register_parameter("weight", torch::zeros({num_experts, d_model}));
  noise_weight = noisy ? register_parameter("noise_weight", torch::zeros({num_experts, d_model}))
                       : torch::Tensor();
}

HierarchicalRouterImpl::HierarchicalRouterImpl(HierarchicalRouterOptions options_)
    : options(std::move(options_)) {
  const auto& o = options;
  const auto& who = o.name();
  TORCH_CHECK_VALUE(o.d_model() >= 1, who, ": d_model must be >= 1, got ", o.d_model());
  TORCH_CHECK_VALUE(o.groups() >= 1, who, ": groups must be >= 1, got ", o.groups());
  TORCH_CHECK_VALUE(o.experts_per_group() >= 1, who, ": experts_per_group must be >= 1, got ",
                    o.experts_per_group());
  TORCH_CHECK_VALUE(o.primary_top_k() >= 1 && o.primary_top_k() <= o.groups(), who,
                    ": primary_top_k must be in [1, groups=", o.groups(), "], got ",
                    o.primary_top_k());
  TORCH_CHECK_VALUE(o.secondary_top_k() >= 1 && o.secondary_top_k() <= o.experts_per_group(), who,
                    ": secondary_top_k must be in [1, experts_per_group=", o.experts_per_group(),
                    "], got ", o.secondary_top_k());
  TORCH_CHECK_VALUE(std::isfinite(o.noise_epsilon()) && o.noise_epsilon() >= 0, who,
                    ": noise_epsilon must be finite and >= 0, got ", o.noise_epsilon());
  TORCH_CHECK_VALUE(std::isfinite(o.importance_coef()) && o.importance_coef() >= 0, who,
                    ": importance_coef must be finite and >= 0, got ", o.importance_coef());
  TORCH_CHECK_VALUE(std::isfinite(o.load_coef()) && o.load_coef() >= 0, who,
                    ": load_coef must be finite and >= 0, got ", o.load_coef());
  reset();
}

void HierarchicalRouterImpl::reset() {
  const int64_t a = options.groups(), b = options.experts_per_group();
  const bool noisy = options.noisy_gating();
  primary_router = register_module("primary_router", HierarchicalGate(options.d_model(), a, noisy));
  secondary_router =
      register_module("secondary_router", HierarchicalGate(options.d_model(), a * b, noisy));
}

void HierarchicalRouterImpl::pretty_print(std::ostream& stream) const {
  stream << "moe::HierarchicalRouter(d_model=" << options.d_model()
         << ", groups=" << options.groups() << ", experts_per_group=" << options.experts_per_group()
         << ", top_k=(" << options.primary_top_k() << ", " << options.secondary_top_k() << "))";
}

std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>
HierarchicalRouterImpl::layer_modules() {
  return {{"primary_router", primary_router.ptr()}, {"secondary_router", secondary_router.ptr()}};
}

RoutingResult HierarchicalRouterImpl::route(const torch::Tensor& x, const BatchShards& batch) {
  const auto& who = options.name();
  detail::check_router_input(x, options.d_model(), who);
  const int64_t T = x.size(0), a = options.groups(), b = options.experts_per_group();
  const int64_t k1 = options.primary_top_k(), k2 = options.secondary_top_k();
  const auto rd = router_dtype(x.scalar_type());
  auto xr = x.to(rd);
  const auto Wp = primary_router->weight.to(rd);
  auto pl = at::linear(xr, Wp);
  // A non-finite token makes its primary logits non-finite (x·0 is NaN for x = ±inf).
  const auto finite = detail::check_finite_tokens(pl, options.non_finite(), who, "router logits");
  const auto& valid = finite.valid;
  if (valid.defined()) {
    xr = detail::zero_invalid_rows(xr, valid);
    pl = at::linear(xr, Wp);
  }

  // The secondary noise is drawn first, one row per primary slot (token t's choice i is row
  // t·k1 + i), so that a one-group hierarchy sees exactly the noise of a flat noisy router with the
  // same seed; both draws are over the global batch (moe/batch_shards.h).
  const bool train = is_training(), noisy = train && options.noisy_gating();
  const auto p_noise_logits =
      noisy ? at::linear(xr, primary_router->noise_weight.to(rd)) : torch::Tensor();
  const auto normal = [](at::Tensor& t) { t.normal_(); };
  const auto s_noise_slots =
      noisy ? detail::shard_of_global_draw(batch, T, k1, b, pl.options(), normal) : torch::Tensor();
  const auto p_noise =
      noisy ? detail::shard_of_global_draw(batch, T, 1, a, pl.options(), normal) : torch::Tensor();
  const auto gp =
      noisy_top_k_gating(pl, p_noise_logits, p_noise, k1, options.noise_epsilon(), valid);

  // X^(g): the pairs (token, group) of the primary choices, grouped by group (the plan of the
  // primary gate). Secondary gate g runs on its own rows only (Eq. 12).
  // The per-group GEMMs of the secondary gates need the groups' bounds on the host: one read per
  // call on a device (free on the CPU), as the expert engine's (docs/gpu.md). A padded plan is cut
  // to its pairs once they are known.
  const auto plan = build_routing_plan(gp.expert_index, a, PlanLayout::kForDevice);
  const auto bounds = plan.expert_offsets.to(at::kCPU);
  const int64_t P = bounds.data_ptr<int64_t>()[a];
  const auto pair_rows = [&](const torch::Tensor& t) { return t.narrow(0, 0, P); };
  const auto x_pairs = xr.index_select(0, pair_rows(plan.token_index));  // [P, d]
  const auto group_of_pair = pair_rows(plan.pair_expert);
  const auto slots = pair_rows(plan.pair_slot);
  const auto sl =
      detail::grouped_linear(x_pairs, secondary_router->weight.to(rd).view({a, b, -1}), bounds);
  // Finite tokens passed the check above, so non-finite logits here mean corrupt secondary weights:
  // an error under either policy. Deciding to raise reads one flag from the device; the portable
  // path asserts on the device instead, which reads nothing back.
  if (engine::portable_path(sl.device())) {
    at::_assert_async(at::isfinite(sl).all());
  } else {
    TORCH_CHECK_VALUE(at::isfinite(sl).all().item<bool>(), who,
                      ": secondary router logits are non-finite for finite inputs: the secondary "
                      "router weights contain NaN or Inf");
  }
  const auto s_noise_logits =
      noisy ? detail::grouped_linear(x_pairs,
                                     secondary_router->noise_weight.to(rd).view({a, b, -1}), bounds)
            : torch::Tensor();
  const auto s_noise = noisy ? s_noise_slots.index_select(0, slots) : torch::Tensor();
  const auto gs = noisy_top_k_gating(sl, s_noise_logits, s_noise, k2, options.noise_epsilon(), {});

  // Back to the token's slots: primary choice i of token t (flat slot t·k1 + i) holds the k2
  // secondary choices of its pair: expert g·b + j with weight Gp(x)_g · G_g(x)_j (Eq. 12).
  auto s_idx = at::full({T * k1, k2}, -1, gp.expert_index.options());
  s_idx.index_copy_(0, slots, group_of_pair.unsqueeze(1) * b + gs.expert_index);
  const auto s_gate = at::zeros({T * k1, k2}, gs.gate.options()).index_copy(0, slots, gs.gate);
  RoutingResult out;
  out.expert_index = s_idx.reshape({T, k1 * k2});
  out.gate = (gp.gate.unsqueeze(2) * s_gate.view({T, k1, k2})).reshape({T, k1 * k2});

  // Importance_H (Eq. 13) and Load_H (Eq. 14) over the a·b experts, each of their sums over the
  // global batch.
  out.importance = batch.sum(importance(out.expert_index, out.gate, a * b));
  const auto true_load = batch.sum(assignment_counts(gp.expert_index, a, pl.options()));  // |X^(g)|
  const auto s_load = batch.sum(at::zeros({a, b}, gs.in_top_k.options())
                                    .index_add(0, group_of_pair, gs.in_top_k));  // Load_g(X^(g))_j
  out.load = ((batch.sum(gp.load) / (true_load + 1e-10)).unsqueeze(1) * s_load).reshape({-1});

  out.skipped_tokens = finite.skipped;
  out.assigned = (T - finite.skipped) * (k1 * k2);
  out.dropped = at::zeros({}, out.assigned.options());
  auto aux = (pl.sum() + sl.sum()) * 0.0;
  if (train || options.aux_loss_in_eval()) {
    const auto imp = cv_squared(out.importance), load = cv_squared(out.load);
    aux = aux + options.importance_coef() * imp + options.load_coef() * load;
    out.loss_terms = {{"importance", imp.detach()}, {"load", load.detach()}};
  }
  out.aux_loss = aux;
  return out;
}

}  // namespace moe
