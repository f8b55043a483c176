// moe::nn::TopAnyMoE: a named constructor of RoutedMoE with DynMoE's router and expert-set
// component (include/moe/nn/top_any_moe.h, docs/algorithms.md §2).
#include "moe/nn/top_any_moe.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <ostream>
#include <utility>

namespace moe::nn {
namespace {

constexpr const char* kWho = "TopAnyMoE";

const char* to_string(ExpertStorage s) { return s == ExpertStorage::kPoolMask ? "pool" : "resize"; }

RoutedMoEOptions routed_options(const TopAnyMoEOptions& o) {
  TORCH_CHECK_VALUE(o.max_experts() >= 1, kWho, ": max_experts (E_max) must be >= 1, got ",
                    o.max_experts());
  TORCH_CHECK_VALUE(o.initial_experts() >= 1 && o.initial_experts() <= o.max_experts(), kWho,
                    ": initial_experts (E_0) must be in [1, max_experts=", o.max_experts(),
                    "], got ", o.initial_experts());
  const bool pool = o.storage() == ExpertStorage::kPoolMask;
  const int64_t experts = pool ? o.max_experts() : o.initial_experts();
  const auto ro = o.router_options_for(experts);
  return RoutedMoEOptions(
             o.d_model(), [ro] { return TopAnyRouter(ro).ptr(); }, o.expert_options_for(experts))
      .name(kWho);
}

}  // namespace

TopAnyRouterOptions TopAnyMoEOptions::router_options_for(int64_t num_experts) const {
  auto o = router_options();
  o.d_model(d_model()).num_experts(num_experts);
  o.initial_active(storage() == ExpertStorage::kPoolMask ? initial_experts() : num_experts);
  return o;
}

ExpertBankOptions TopAnyMoEOptions::expert_options_for(int64_t num_experts) const {
  auto o = expert_options();
  o.d_model(d_model()).num_experts(num_experts);
  return o;
}

TopAnyMoEImpl::TopAnyMoEImpl(TopAnyMoEOptions options) : RoutedMoEImpl(routed_options(options)) {
  router = TopAnyRouter(std::dynamic_pointer_cast<TopAnyRouterImpl>(named_children()["router"]));
  expert_set_ = std::make_shared<DynamicExpertSet>(*this, *router, experts, std::move(options));
  add_component(expert_set_);
  reset_parameters();
}

void TopAnyMoEImpl::reset_parameters() {
  RoutedMoEImpl::reset_parameters();
  expert_set_->reset_parameters();
}

std::shared_ptr<RoutedMoEImpl> TopAnyMoEImpl::make_copy() const {
  auto copy = std::make_shared<TopAnyMoEImpl>(layer_options());
  if (layer_options().storage() == ExpertStorage::kResize) copy->resize_experts(num_experts());
  return copy;
}

void TopAnyMoEImpl::pretty_print(std::ostream& stream) const {
  const auto& o = layer_options();
  stream << "moe::nn::TopAnyMoE(d_model=" << o.d_model() << ", max_experts=" << o.max_experts()
         << ", active=" << num_active_experts() << ", hidden_size=" << o.hidden_size()
         << ", activation=" << to_string(o.activation()) << ", storage=" << to_string(o.storage())
         << ")";
}

std::vector<ExpertUpdate> apply_expert_updates(torch::nn::Module& model,
                                               torch::optim::Optimizer* optimizer) {
  std::vector<torch::nn::Module*> mods{&model};
  for (const auto& m : model.modules(/*include_self=*/false)) mods.push_back(m.get());
  std::vector<ExpertUpdate> updates;
  for (auto* m : mods) {
    if (auto* layer = dynamic_cast<TopAnyMoEImpl*>(m); layer && layer->update_pending())
      updates.push_back(layer->apply_pending_update(optimizer));
  }
  return updates;
}

}  // namespace moe::nn
