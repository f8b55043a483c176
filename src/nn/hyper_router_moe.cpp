// moe::nn::HyperRouterMoE (include/moe/nn/hyper_router_moe.h).
#include "moe/nn/hyper_router_moe.h"

#include <ATen/ATen.h>

#include <ostream>

#include "moe/plan.h"
#include "nn/common.h"
#include "nn/router_slot.h"

namespace moe::nn {
namespace {
constexpr const char* kWho = "HyperRouterMoE";
}

HyperRouterOptions HyperRouterMoEOptions::hyper_router_options() const {
  return HyperRouterOptions(d_model(), num_experts())
      .top_k(top_k())
      .hyper_hidden(hyper_hidden())
      .embedding_dim(embedding_dim())
      .init_std(router_init_std())
      .balance_coef(balance_coef())
      .z_loss_coef(z_loss_coef())
      .aux_loss_in_eval(aux_loss_in_eval())
      .non_finite(non_finite())
      .name(kWho);
}

RouterOptions HyperRouterMoEOptions::random_router_options() const {
  return RouterOptions(d_model(), num_experts())
      .kind(RouterKind::kFrozenRandom)  // frozen, with bias, softmax over the k selected logits
      .top_k(top_k())
      .router_init_std(router_init_std())
      .balance_coef(balance_coef())
      .z_loss_coef(z_loss_coef())
      .aux_loss_in_eval(aux_loss_in_eval())
      .non_finite(non_finite())
      .name(kWho);
}

ExpertBankOptions HyperRouterMoEOptions::expert_options() const {
  return ExpertBankOptions(num_experts(), d_model(), hidden_size())
      .activation(activation())
      .bias(expert_bias())
      .init(expert_init())
      .init_std(expert_init_std())
      .recompute_hidden(recompute_hidden());
}

HyperRouterMoEImpl::HyperRouterMoEImpl(HyperRouterMoEOptions options_)
    : options(std::move(options_)) {
  TORCH_CHECK_VALUE(options.num_experts() >= 1, kWho, ": num_experts must be >= 1, got ",
                    options.num_experts());
  TORCH_CHECK_VALUE(options.top_k() >= 1 && options.top_k() <= options.num_experts(), kWho,
                    ": top_k must be in [1, num_experts=", options.num_experts(), "], got ",
                    options.top_k());
  if (const auto& s = options.k_schedule()) {
    TORCH_CHECK_VALUE(s->k_max() <= options.num_experts(), kWho,
                      ": the k schedule reaches k_max=", s->k_max(),
                      " but there are only num_experts=", options.num_experts());
  }
  reset();
}

void HyperRouterMoEImpl::reset() {
  detail::register_router(*this, options.router() == HyperRouterKind::kHyper,
                          options.hyper_router_options(), options.random_router_options(),
                          &hyper_router, &random_router);
  experts = register_module("experts", ExpertBank(options.expert_options()));
  // The schedule's position is a buffer, so that checkpoints resume the k schedule.
  step_ = register_buffer("step", torch::zeros({1}, torch::kLong));
  inference_k_ = c10::nullopt;
}

void HyperRouterMoEImpl::reset_parameters() {
  detail::reset_router_parameters(hyper_router, random_router);
  experts->reset_parameters();
}

void HyperRouterMoEImpl::pretty_print(std::ostream& stream) const {
  stream << "moe::nn::HyperRouterMoE(router="
         << (options.router() == HyperRouterKind::kHyper ? "hyper" : "frozen_random")
         << ", d_model=" << options.d_model() << ", num_experts=" << options.num_experts()
         << ", hidden_size=" << options.hidden_size() << ", top_k=" << top_k();
  if (options.k_schedule()) {
    const auto& s = *options.k_schedule();
    stream << ", k_schedule=" << to_string(s.mode()) << "(" << s.k_min() << "->" << s.k_max()
           << " over " << s.total_steps() << ")";
  }
  stream << ")";
}

int64_t HyperRouterMoEImpl::top_k() const {
  return detail::router_top_k(hyper_router, random_router);
}

void HyperRouterMoEImpl::set_top_k(int64_t k) {
  TORCH_CHECK_VALUE(k >= 1 && k <= options.num_experts(), kWho, ": top_k must be in [1, ",
                    "num_experts=", options.num_experts(), "], got ", k);
  detail::set_router_top_k(hyper_router, random_router, k);
}

void HyperRouterMoEImpl::set_inference_top_k(c10::optional<int64_t> k) {
  if (k) {
    TORCH_CHECK_VALUE(*k >= 1 && *k <= options.num_experts(), kWho,
                      ": inference top_k must be in [1, num_experts=", options.num_experts(),
                      "], got ", *k);
  }
  inference_k_ = k;
}

void HyperRouterMoEImpl::set_step(int64_t step) {
  TORCH_CHECK_VALUE(step >= 0, kWho, ": step must be >= 0, got ", step);
  step_.fill_(step);
}

void HyperRouterMoEImpl::to(torch::Dtype dtype, bool non_blocking) {
  detail::move_routed_layer(hyper_router, random_router, experts, c10::nullopt, dtype,
                            non_blocking);
}

void HyperRouterMoEImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  detail::move_routed_layer(hyper_router, random_router, experts, device, dtype, non_blocking);
}

MoEOutput HyperRouterMoEImpl::forward(const torch::Tensor& x) {
  const auto xf = detail::tokens_2d(x, options.d_model(), experts->w1, kWho);
  const auto& schedule = options.k_schedule();
  int64_t k = top_k();
  if (is_training()) {
    const int64_t t = step();
    if (schedule) k = schedule->at(t);
    step_.fill_(t + 1);
  } else if (inference_k_) {
    k = *inference_k_;
  } else if (schedule) {
    k = schedule->at(step() > 0 ? step() - 1 : 0);  // the k of the latest training forward
  }
  const int64_t saved_k = top_k();
  set_top_k(k);
  RouterOutput r;
  try {
    r = detail::route(hyper_router, random_router, xf);
  } catch (...) {
    set_top_k(saved_k);
    throw;
  }
  // A training forward keeps the scheduled k (it is the layer's current k); eval restores it.
  if (!is_training()) set_top_k(saved_k);
  return detail::run_routed_experts(x, xf, r, experts);
}

}  // namespace moe::nn
