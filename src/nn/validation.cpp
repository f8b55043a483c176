// Pieces shared by the nn modules: input validation (RELIABILITY.md §3.3), statistics and the
// expert pass after routing.
#include <ATen/ATen.h>

#include <cmath>

#include "nn/common.h"

namespace moe::detail {

torch::Tensor tokens_2d(const torch::Tensor& x, int64_t d_model, const torch::Tensor& expert_param,
                        const char* who) {
  TORCH_CHECK(x.defined(), who, ": input x is undefined");
  TORCH_CHECK(x.dim() >= 1, who, ": input x must have shape [..., d_model=", d_model,
              "], got a 0-dim tensor");
  TORCH_CHECK(x.size(-1) == d_model, who, ": expected the last dim of x == d_model=", d_model,
              ", got x of shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), who,
                   ": input x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_TYPE(x.scalar_type() == expert_param.scalar_type(), who, ": input x has dtype ",
                   x.scalar_type(), " but the experts are ", expert_param.scalar_type(),
                   " (convert the module with .to(dtype) or the input)");
  TORCH_CHECK(x.device() == expert_param.device(), who, ": input x on ", x.device(),
              " but the experts on ", expert_param.device());
  // Contiguous: the router's GEMM then sees one layout whatever the input's strides, so a strided
  // input gives bitwise its contiguous copy's result on any BLAS.
  return x.reshape({-1, d_model}).contiguous();
}

RoutingStats make_stats(const RoutingPlan& plan, const torch::Tensor& importance,
                        const torch::Tensor& load, int64_t assigned, int64_t dropped,
                        int64_t skipped_tokens) {
  RoutingStats s;
  s.tokens_per_expert = plan.tokens_per_expert();
  s.importance = importance.detach();
  s.load = load.detach();
  s.dropped_fraction =
      assigned > 0 ? static_cast<double>(dropped) / static_cast<double>(assigned) : 0.0;
  s.skipped_tokens = skipped_tokens;
  s.active_experts = plan.num_experts;
  if (plan.num_tokens > 0) {
    const auto ept = plan.experts_per_token();
    s.experts_per_token_mean = ept.to(at::kDouble).mean().item<double>();
    s.experts_per_token_min = ept.min().item<int64_t>();
    s.experts_per_token_max = ept.max().item<int64_t>();
  }
  auto cv = [](const torch::Tensor& v) {
    const auto d = v.detach().to(at::kDouble);
    const double mean = d.mean().item<double>();
    if (!(mean > 0)) return 0.0;
    return std::sqrt((d - mean).pow(2).mean().item<double>()) / mean;
  };
  s.cv_importance = cv(importance);
  s.cv_load = cv(load);
  return s;
}

MoEOutput run_routed_experts(const torch::Tensor& x, const torch::Tensor& xf, const RouterOutput& r,
                             ExpertBank& experts) {
  const RoutingPlan plan = build_routing_plan(r.expert_index, experts->options.num_experts());
  const auto w = pair_weights(plan, r.gate).to(xf.scalar_type());
  MoEOutput out;
  out.output = experts->forward(xf, plan, w).view(x.sizes());
  out.aux_loss = r.aux_loss;
  out.stats = make_stats(plan, r.importance, r.load, r.assigned, r.dropped, r.skipped_tokens);
  out.routing = {r.expert_index, r.gate.detach()};
  return out;
}

}  // namespace moe::detail
