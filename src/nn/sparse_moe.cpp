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
    auto ro = o.router_options();  // a copy: the hyper router is checked as a softmax top-k one
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
