// moe::nn::SparseMoE: router → RoutingPlan → expert bank (include/moe/nn/sparse_moe.h).
#include "moe/nn/sparse_moe.h"

#include <ATen/ATen.h>

#include <ostream>

#include "moe/plan.h"
#include "nn/common.h"
#include "nn/router_slot.h"

namespace moe::nn {

RouterOptions SparseMoEOptions::router_options() const {
  return RouterOptions(d_model(), num_experts())
      .kind(router())
      .top_k(top_k())
      .normalize_top_k(normalize_top_k())
      .bias(router_bias())
      .noise_epsilon(noise_epsilon())
      .jitter(jitter())
      .capacity_factor(capacity_factor())
      .min_capacity(min_capacity())
      .importance_coef(importance_coef())
      .load_coef(load_coef())
      .balance_coef(balance_coef())
      .z_loss_coef(z_loss_coef())
      .aux_loss_in_eval(aux_loss_in_eval())
      .non_finite(non_finite())
      .zero_init(router_zero_init())
      .router_init_std(router_init_std())
      .frozen(freeze_router())
      .name("SparseMoE");
}

HyperRouterOptions SparseMoEOptions::hyper_router_options() const {
  return HyperRouterOptions(d_model(), num_experts())
      .top_k(top_k())
      .hyper_hidden(hyper_hidden())
      .embedding_dim(embedding_dim())
      .init_std(router_init_std())
      .balance_coef(balance_coef().value_or(0.0))
      .z_loss_coef(z_loss_coef().value_or(0.0))
      .aux_loss_in_eval(aux_loss_in_eval())
      .non_finite(non_finite())
      .name("SparseMoE");
}

ExpertBankOptions SparseMoEOptions::expert_options() const {
  return ExpertBankOptions(num_experts(), d_model(), hidden_size())
      .activation(activation())
      .bias(expert_bias())
      .init(expert_init())
      .init_std(expert_init_std())
      .recompute_hidden(recompute_hidden());
}

SparseMoEImpl::SparseMoEImpl(SparseMoEOptions options_) : options(std::move(options_)) {
  auto ro = options.router_options();
  if (options.router() == RouterKind::kHyper) {
    TORCH_CHECK_VALUE(options.capacity_factor() == 0, "SparseMoE: RouterKind::kHyper is dropless; ",
                      "capacity_factor must be 0, got ", options.capacity_factor());
    ro.kind(RouterKind::kSoftmaxTopK);
  }
  check_router_options(ro, "SparseMoE");
  reset();
}

void SparseMoEImpl::reset() {
  detail::register_router(*this, options.router() == RouterKind::kHyper,
                          options.hyper_router_options(), options.router_options(), &hyper_router,
                          &router);
  experts = register_module("experts", ExpertBank(options.expert_options()));
}

void SparseMoEImpl::reset_parameters() {
  detail::reset_router_parameters(hyper_router, router);
  experts->reset_parameters();
}

void SparseMoEImpl::pretty_print(std::ostream& stream) const {
  stream << "moe::nn::SparseMoE(d_model=" << options.d_model()
         << ", num_experts=" << options.num_experts() << ", hidden_size=" << options.hidden_size()
         << ", top_k=" << options.top_k() << ", router=" << to_string(options.router())
         << ", activation=" << to_string(options.activation())
         << ", capacity_factor=" << options.capacity_factor() << ")";
}

void SparseMoEImpl::to(torch::Dtype dtype, bool non_blocking) {
  detail::move_routed_layer(hyper_router, router, experts, c10::nullopt, dtype, non_blocking);
}

void SparseMoEImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  detail::move_routed_layer(hyper_router, router, experts, device, dtype, non_blocking);
}

void SparseMoEImpl::set_top_k(int64_t k) {
  TORCH_CHECK_VALUE(k >= 1 && k <= options.num_experts(), "SparseMoE: top_k must be in [1, ",
                    "num_experts=", options.num_experts(), "], got ", k);
  options.top_k(k);
  detail::set_router_top_k(hyper_router, router, k);
}

MoEOutput SparseMoEImpl::forward(const torch::Tensor& x) {
  const auto xf = detail::tokens_2d(x, options.d_model(), experts->w1, "SparseMoE");
  RouterOutput r = detail::route(hyper_router, router, xf);
  return detail::run_routed_experts(x, xf, r, experts);
}

}  // namespace moe::nn
