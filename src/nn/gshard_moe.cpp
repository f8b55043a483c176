// moe::nn::GShardMoE: a named constructor of RoutedMoE with the GShard top-2 gate
// (include/moe/nn/gshard_moe.h).
#include "moe/nn/gshard_moe.h"

#include <ostream>

namespace moe::nn {
namespace {

constexpr const char* kWho = "GShardMoE";

RoutedMoEOptions routed_options(const GShardMoEOptions& o) {
  const auto ro = o.router_options();
  check_gshard_router_options(ro);  // now, naming the layer, not at the first forward
  return RoutedMoEOptions(
             o.d_model(), [ro] { return GShardRouter(ro).ptr(); }, o.expert_options())
      .name(kWho);
}

}  // namespace

GShardMoEImpl::GShardMoEImpl(GShardMoEOptions options)
    : RoutedMoEImpl(routed_options(options)), layer_options_(std::move(options)) {
  router = GShardRouter(std::dynamic_pointer_cast<GShardRouterImpl>(named_children()["router"]));
}

void GShardMoEImpl::set_groups_for(const torch::Tensor& x) {
  const auto fixed = layer_options_.group_size();
  router->set_group_size(fixed == 0 && x.dim() == 3 ? x.size(1) : fixed);
}

MoEOutput GShardMoEImpl::forward(const torch::Tensor& x) {
  set_groups_for(x);
  return RoutedMoEImpl::forward(x);
}

RoutingResult GShardMoEImpl::route(const torch::Tensor& x) {
  set_groups_for(x);
  TORCH_CHECK_VALUE(x.dim() >= 1, kWho,
                    ": input must have a feature dimension, got a 0-dim tensor");
  return router->route(x.reshape({-1, x.size(-1)}));
}

std::shared_ptr<RoutedMoEImpl> GShardMoEImpl::make_copy() const {
  return std::make_shared<GShardMoEImpl>(layer_options_);
}

void GShardMoEImpl::pretty_print(std::ostream& stream) const {
  const auto& o = layer_options_;
  const auto& e = o.experts();
  stream << "moe::nn::GShardMoE(d_model=" << o.d_model() << ", experts=" << e[0];
  if (e.size() == 2) stream << "x" << e[1];
  stream << ", hidden_size=" << o.hidden_size() << ", activation=" << to_string(o.activation())
         << ", second_policy=" << to_string(o.second_policy_train()) << "/"
         << to_string(o.second_policy_eval()) << ")";
}

}  // namespace moe::nn
