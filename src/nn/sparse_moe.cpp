// moe::nn::SparseMoE: a named constructor of RoutedMoE (include/moe/nn/sparse_moe.h).
#include "moe/nn/sparse_moe.h"

#include <ATen/ATen.h>

#include <ostream>

namespace moe::nn {
namespace {

constexpr const char* kWho = "SparseMoE";

RoutedMoEOptions routed_options(const SparseMoEOptions& o) {
  RouterFactory router;
  if (o.router() == RouterKind::kHyper) {
    TORCH_CHECK_VALUE(o.capacity_factor() == 0, kWho, ": RouterKind::kHyper is dropless; ",
                      "capacity_factor must be 0, got ", o.capacity_factor());
    auto ro = o.router_options();
    check_router_options(ro.kind(RouterKind::kSoftmaxTopK), kWho);
    const auto ho = o.hyper_router_options();
    router = [ho] { return HyperRouter(ho).ptr(); };
  } else {
    const auto ro = o.router_options();
    check_router_options(ro, kWho);
    router = [ro] { return TopKRouter(ro).ptr(); };
  }
  return RoutedMoEOptions(o.d_model(), std::move(router), o.expert_options()).name(kWho);
}

}  // namespace

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
      .name(kWho);
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
      .name(kWho);
}

ExpertBankOptions SparseMoEOptions::expert_options() const {
  return ExpertBankOptions(num_experts(), d_model(), hidden_size())
      .activation(activation())
      .bias(expert_bias())
      .init(expert_init())
      .init_std(expert_init_std())
      .recompute_hidden(recompute_hidden());
}

SparseMoEImpl::SparseMoEImpl(SparseMoEOptions options)
    : RoutedMoEImpl(routed_options(options)), layer_options_(std::move(options)) {
  if (layer_options_.router() == RouterKind::kHyper) {
    hyper_router =
        HyperRouter(std::dynamic_pointer_cast<HyperRouterImpl>(named_children()["router"]));
  } else {
    router = TopKRouter(std::dynamic_pointer_cast<TopKRouterImpl>(named_children()["router"]));
  }
}

std::shared_ptr<RoutedMoEImpl> SparseMoEImpl::make_copy() const {
  return std::make_shared<SparseMoEImpl>(layer_options_);
}

void SparseMoEImpl::pretty_print(std::ostream& stream) const {
  const auto& o = layer_options_;
  stream << "moe::nn::SparseMoE(d_model=" << o.d_model() << ", num_experts=" << o.num_experts()
         << ", hidden_size=" << o.hidden_size() << ", top_k=" << top_k()
         << ", router=" << to_string(o.router()) << ", activation=" << to_string(o.activation())
         << ", capacity_factor=" << o.capacity_factor() << ")";
}

}  // namespace moe::nn
