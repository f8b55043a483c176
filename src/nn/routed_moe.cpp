// moe::nn::RoutedMoE: router → RoutingPlan → expert bank (include/moe/nn/routed_moe.h).
#include "moe/nn/routed_moe.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <ostream>
#include <sstream>
#include <string>
#include <typeinfo>

#include "moe/plan.h"
#include "nn/common.h"
#include "nn/optimizer_state.h"

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

RoutingResult RoutedMoEImpl::route(const torch::Tensor& tokens, const BatchShards& batch) {
  for (auto& c : components_) c->before_routing(*this);
  RoutingResult r;
  try {
    r = router_->route(tokens, batch);
  } catch (...) {
    for (auto& c : components_) c->routing_failed(*this);
    throw;
  }
  for (auto& c : components_) c->after_routing(*this, tokens, r);
  return r;
}

MoEOutput RoutedMoEImpl::forward(const torch::Tensor& x) {
  const auto xf = detail::tokens_2d(x, options.d_model(), experts->w1, options.name().c_str());
  if (expert_group_ != nullptr) return forward_expert_parallel(x, xf);
  const RoutingResult r = route(xf, BatchShards(xf.size(0)));

  // The portable path builds the plan on the device, without reading it back (docs/gpu.md).
  const RoutingPlan plan =
      build_routing_plan(r.expert_index, experts->options.num_experts(), PlanLayout::kForDevice);
  const auto w = pair_weights(plan, r.gate).to(xf.scalar_type());
  MoEOutput out;
  out.output = experts->forward(xf, plan, w).view(x.sizes());
  out.aux_loss = r.aux_loss;
  out.stats = routing_stats(plan, r);
  out.routing = {r.expert_index, r.gate.detach()};
  for (auto& c : components_) c->after_forward(*this);
  return out;
}

std::string RoutedMoEImpl::signature() const {
  const auto& e = experts->options;
  std::ostringstream s;
  s << "layer=" << options.name() << " router=" << router_->kind()
    << " d_model=" << options.d_model() << " num_experts=" << router_->num_experts()
    << " hidden_size=" << e.hidden_size() << " activation=" << to_string(e.activation())
    << " expert_bias=" << e.bias() << " dtype=" << experts->w1.scalar_type()
    << " top_k=" << router_->top_k() << " training=" << is_training();
  return s.str();
}

void RoutedMoEImpl::distribute_experts(std::shared_ptr<dist::ProcessGroup> group,
                                       torch::optim::Optimizer* optimizer) {
  const auto& who = options.name();
  TORCH_CHECK_VALUE(group != nullptr, who, ": distribute_experts() needs a process group");
  TORCH_CHECK_VALUE(expert_group_ == nullptr, who, ": the experts are already distributed");
  // Every rank compares before any rank changes anything: a difference fails on all of them.
  const auto mine = signature();
  const auto all = dist::all_gather_strings(group, mine);
  for (size_t j = 0; j < all.size(); ++j) {
    if (all[j] == all[0]) continue;
    std::istringstream a(all[0]), b(all[j]);
    std::string wa, wb;
    while (a >> wa && b >> wb && wa == wb) {
    }
    TORCH_CHECK_VALUE(false, who, ": the ranks built different layers: rank 0 has ", wa,
                      " but rank ", j, " has ", wb, "; every rank must build the same model");
  }
  keep_local_experts(std::move(group), optimizer);
}

void RoutedMoEImpl::keep_local_experts(std::shared_ptr<dist::ProcessGroup> group,
                                       torch::optim::Optimizer* optimizer) {
  const auto& who = options.name();
  const int64_t W = group->size(), r = group->rank(), E = experts->options.num_experts();
  TORCH_CHECK_VALUE(E % W == 0, who, ": num_experts=", E,
                    " must be a multiple of the process group's size ", W,
                    " to spread the experts over its ranks");
  for (auto& c : components_) c->before_distributing(*this, *group);
  const int64_t local = E / W;
  const auto mine = [&](const torch::Tensor& t) { return t.narrow(0, r * local, local).clone(); };
  torch::NoGradGuard no_grad;
  for (auto* t : {&experts->w1, &experts->w2, &experts->w3, &experts->b1, &experts->b2}) {
    if (!t->defined()) continue;
    if (optimizer != nullptr) detail::transform_param_state(*optimizer, *t, mine, who.c_str());
    t->set_data(mine(*t));
  }
  experts->options.num_experts(local).first_expert(r * local);
  expert_group_ = std::move(group);
}

void RoutedMoEImpl::gather_experts(torch::optim::Optimizer* optimizer) {
  const auto& who = options.name();
  TORCH_CHECK_VALUE(expert_group_ != nullptr, who, ": the experts are not distributed");
  const auto all = [&](const torch::Tensor& t) {
    return dist::all_gather_rows(expert_group_, t.detach());
  };
  torch::NoGradGuard no_grad;
  for (auto* t : {&experts->w1, &experts->w2, &experts->w3, &experts->b1, &experts->b2}) {
    if (!t->defined()) continue;
    // Every rank has state for its experts or none (same optimizer, same steps).
    if (optimizer != nullptr) detail::transform_param_state(*optimizer, *t, all, who.c_str());
    t->set_data(all(*t));
  }
  experts->options.num_experts(router_->num_experts()).first_expert(0);
  expert_group_ = nullptr;
}

MoEOutput RoutedMoEImpl::forward_expert_parallel(const torch::Tensor& x, const torch::Tensor& xf) {
  const auto& group = expert_group_;
  const auto batch = dist::batch_shards(group, xf.size(0));
  const RoutingResult r = route(xf, *batch);

  const int64_t E = router_->num_experts();
  MoEOutput out;
  out.output =
      dist::expert_parallel_mlp(group, xf, r.expert_index, r.gate.to(xf.scalar_type()), E,
                                {experts->w1, experts->w2, experts->w3, experts->b1, experts->b2},
                                experts->options.activation())
          .view(x.sizes());
  out.aux_loss = r.aux_loss;
  // The statistics of the global batch: the counts summed over the ranks in one all-reduce, the
  // experts of every token gathered.
  const RoutingPlan plan = build_routing_plan(r.expert_index, E);
  out.stats = routing_stats(plan, r);
  auto& s = out.stats;
  const auto zero = at::zeros({1}, s.tokens_per_expert.options());
  const auto counts = batch->sum(
      at::cat({s.tokens_per_expert, s.assigned.view({1}), s.dropped.view({1}), s.skipped.view({1}),
               s.unrouted.defined() ? s.unrouted.view({1}) : zero}));
  s.tokens_per_expert = counts.narrow(0, 0, E);
  s.assigned = counts[E];
  s.dropped = counts[E + 1];
  s.skipped = counts[E + 2];
  if (s.unrouted.defined()) s.unrouted = counts[E + 3];
  s.experts_per_token = batch->all_rows(s.experts_per_token);
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
  if (expert_group_ != nullptr) copy->keep_local_experts(expert_group_, nullptr);
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
