// moe::nn::RoutedMoE: router → RoutingPlan → expert bank (include/moe/nn/routed_moe.h).
#include "moe/nn/routed_moe.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <ostream>
#include <typeinfo>

#include "moe/plan.h"
#include "nn/common.h"

namespace moe::nn {
namespace {

// The statistics of one forward, as tensors (nothing here reads the device).
RoutingStats routing_stats(const RoutingPlan& plan, const RoutingResult& r) {
  RoutingStats s;
  s.tokens_per_expert = plan.tokens_per_expert();
  s.importance = r.importance.detach();
  s.load = r.load.detach();
  s.experts_per_token = plan.experts_per_token();
  s.assigned = r.assigned;
  s.dropped = r.dropped;
  s.skipped = r.skipped_tokens;
  if (r.unrouted.defined()) s.unrouted = r.unrouted.sum();
  s.num_active_experts = r.active_experts.defined()
                             ? r.active_experts
                             : at::full({}, plan.num_experts, s.tokens_per_expert.options());
  s.loss_terms = r.loss_terms;
  return s;
}

}  // namespace

RoutedMoEImpl::RoutedMoEImpl(RoutedMoEOptions options_) : options(std::move(options_)) {
  const auto& who = options.name();
  TORCH_CHECK_VALUE(options.router() != nullptr, who, ": no router factory given");
  router_ = options.router()();
  TORCH_CHECK_VALUE(router_ != nullptr, who, ": the router factory returned no router");
  TORCH_CHECK_VALUE(
      router_->num_experts() == options.experts().num_experts(), who, ": the ", router_->kind(),
      " router routes to ", router_->num_experts(),
      " experts but the expert bank has num_experts=", options.experts().num_experts());
  TORCH_CHECK_VALUE(options.experts().d_model() == options.d_model(), who,
                    ": the experts' d_model=", options.experts().d_model(),
                    " differs from the layer's d_model=", options.d_model());
  for (auto& [name, module] : router_->layer_modules()) {
    register_module(name, module);
    router_modules_.push_back(module);
  }
  experts = register_module("experts", ExpertBank(options.experts()));
}

void RoutedMoEImpl::reset_parameters() {
  router_->reset_parameters();
  experts->reset_parameters();
}

void RoutedMoEImpl::pretty_print(std::ostream& stream) const {
  const auto& e = options.experts();
  stream << "moe::nn::" << options.name() << "(router=" << router_->kind()
         << ", d_model=" << options.d_model() << ", num_experts=" << e.num_experts()
         << ", hidden_size=" << e.hidden_size() << ", top_k=" << router_->top_k()
         << ", activation=" << to_string(e.activation()) << ")";
}

void RoutedMoEImpl::throw_router_type_error() const {
  TORCH_CHECK_TYPE(false, options.name(), ": the router is a ", router_->kind(),
                   " router, not the type asked for");
}

void RoutedMoEImpl::set_top_k(int64_t k) {
  TORCH_CHECK_VALUE(k >= 1 && k <= router_->num_experts(), options.name(),
                    ": top_k must be in [1, num_experts=", router_->num_experts(), "], got ", k);
  router_->set_top_k(k);
}

void RoutedMoEImpl::add_component(std::shared_ptr<LayerComponent> component) {
  components_.push_back(std::move(component));
}

MoEOutput RoutedMoEImpl::forward(const torch::Tensor& x) {
  const auto xf = detail::tokens_2d(x, options.d_model(), experts->w1, options.name().c_str());
  for (auto& c : components_) c->before_routing(*this);
  RoutingResult r;
  try {
    r = router_->route(xf);
  } catch (...) {
    for (auto& c : components_) c->routing_failed(*this);
    throw;
  }
  for (auto& c : components_) c->after_routing(*this, xf, r);

  const RoutingPlan plan = build_routing_plan(r.expert_index, experts->options.num_experts());
  const auto w = pair_weights(plan, r.gate).to(xf.scalar_type());
  MoEOutput out;
  out.output = experts->forward(xf, plan, w).view(x.sizes());
  out.aux_loss = r.aux_loss;
  out.stats = routing_stats(plan, r);
  out.routing = {r.expert_index, r.gate.detach()};
  for (auto& c : components_) c->after_forward(*this);
  return out;
}

void RoutedMoEImpl::to(torch::Dtype dtype, bool non_blocking) {
  experts->to(dtype, non_blocking);
  for (auto& m : router_modules_) m->to(router_dtype(dtype), non_blocking);
  // The layer's own floating buffers follow the experts (DynMoE's expert template); counters stay
  // int64.
  for (auto& b : named_buffers(/*recurse=*/false))
    if (at::isFloatingType(b.value().scalar_type()))
      b.value().set_data(b.value().to(dtype, non_blocking));
}

void RoutedMoEImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  experts->to(device, dtype, non_blocking);
  for (auto& m : router_modules_) m->to(device, router_dtype(dtype), non_blocking);
  for (auto& b : named_buffers(/*recurse=*/false)) {
    auto& t = b.value();
    t.set_data(at::isFloatingType(t.scalar_type()) ? t.to(device, dtype, non_blocking)
                                                   : t.to(device, non_blocking));
  }
}

void RoutedMoEImpl::train(bool on) {
  torch::nn::Module::train(on);
  if (auto* router_module = dynamic_cast<torch::nn::Module*>(router_.get()))
    router_module->train(on);
}

std::shared_ptr<RoutedMoEImpl> RoutedMoEImpl::make_copy() const {
  return std::make_shared<RoutedMoEImpl>(options);
}

std::shared_ptr<torch::nn::Module> RoutedMoEImpl::clone(
    const c10::optional<torch::Device>& device) const {
  torch::NoGradGuard no_grad;
  auto copy = make_copy();
  if (top_k() > 0 && copy->top_k() != top_k()) copy->set_top_k(top_k());
  auto copy_into = [&](const torch::OrderedDict<std::string, torch::Tensor>& from,
                       torch::OrderedDict<std::string, torch::Tensor> to) {
    for (const auto& item : from) {
      auto* target = to.find(item.key());
      TORCH_CHECK(target != nullptr, options.name(), ": clone() found no ", item.key(),
                  " in the copy");
      const auto& t = item.value();
      target->set_data(device ? t.to(*device, /*non_blocking=*/false, /*copy=*/true) : t.clone());
    }
  };
  copy_into(named_parameters(), copy->named_parameters());
  copy_into(named_buffers(), copy->named_buffers());
  return copy;
}

}  // namespace moe::nn
