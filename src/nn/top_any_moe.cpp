// moe::nn::TopAnyMoE: DynMoE top-any routing with a self-tuning expert set
// (include/moe/nn/top_any_moe.h, docs/ALGORITHMS.md §2).
#include "moe/nn/top_any_moe.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <ostream>
#include <utility>

#include "moe/plan.h"
#include "moe/router.h"
#include "nn/common.h"
#include "nn/optimizer_state.h"

namespace moe::nn {
namespace {

constexpr const char* kWho = "TopAnyMoE";

const char* to_string(ExpertStorage s) { return s == ExpertStorage::kPoolMask ? "pool" : "resize"; }

// The FFN tensors of a bank, in the order of TopAnyMoEImpl::template_.
std::vector<torch::Tensor> bank_tensors(const ExpertBank& bank) {
  return {bank->w1, bank->w2, bank->w3, bank->b1, bank->b2};
}

// Replaces a tensor's rows by rows[keep] followed by `extra` (rows to append, may be undefined),
// keeping the tensor's identity (module registry, optimizer parameter groups) and carrying the
// optimizer state the same way, with zeros for appended rows.
void resize_rows(torch::Tensor& t, const torch::Tensor& keep, const torch::Tensor& extra,
                 torch::optim::Optimizer* optimizer) {
  auto reshape = [&](const torch::Tensor& v, const torch::Tensor& appended) {
    auto kept = v.index_select(0, keep);
    return appended.defined() ? at::cat({kept, appended.to(v.options())}, 0) : kept;
  };
  torch::NoGradGuard no_grad;
  if (optimizer != nullptr && t.requires_grad()) {
    detail::transform_param_state(
        *optimizer, t,
        [&](const torch::Tensor& m) {
          return reshape(m, extra.defined() ? at::zeros_like(extra, m.options()) : extra);
        },
        kWho);
  }
  t.set_data(reshape(t.detach(), extra));
  if (t.requires_grad()) t.mutable_grad() = torch::Tensor();
}

}  // namespace

TopAnyRouterOptions TopAnyMoEOptions::router_options(int64_t num_slots) const {
  return TopAnyRouterOptions(d_model(), num_slots)
      .initial_active(storage() == ExpertStorage::kPoolMask ? initial_experts() : num_slots)
      .temperature(temperature())
      .init_temperature(init_temperature())
      .fallback(fallback())
      .aux_loss_coef(aux_loss_coef())
      .diversity_loss(diversity_loss())
      .simplicity_loss(simplicity_loss())
      .balance_loss(balance_loss())
      .efficiency_loss(efficiency_loss())
      .aux_loss_in_eval(aux_loss_in_eval())
      .non_finite(non_finite())
      .name(kWho);
}

ExpertBankOptions TopAnyMoEOptions::expert_options(int64_t num_slots) const {
  return ExpertBankOptions(num_slots, d_model(), hidden_size())
      .activation(activation())
      .bias(expert_bias())
      .init(expert_init())
      .init_std(expert_init_std())
      .recompute_hidden(recompute_hidden());
}

TopAnyMoEImpl::TopAnyMoEImpl(TopAnyMoEOptions options_) : options(std::move(options_)) {
  TORCH_CHECK_VALUE(options.max_experts() >= 1, kWho, ": max_experts (E_max) must be >= 1, got ",
                    options.max_experts());
  TORCH_CHECK_VALUE(
      options.initial_experts() >= 1 && options.initial_experts() <= options.max_experts(), kWho,
      ": initial_experts (E_0) must be in [1, max_experts=", options.max_experts(), "], got ",
      options.initial_experts());
  reset();
}

void TopAnyMoEImpl::reset() {
  const bool pool = options.storage() == ExpertStorage::kPoolMask;
  const int64_t slots = pool ? options.max_experts() : options.initial_experts();
  router = register_module("router", TopAnyRouter(options.router_options(slots)));
  experts = register_module("experts", ExpertBank(options.expert_options(slots)));
  template_.assign(5, torch::Tensor());
  if (!pool && options.copy_initial_expert() && options.new_expert_init() == NewExpertInit::kKeep) {
    const char* names[] = {"expert_template_w1", "expert_template_w2", "expert_template_w3",
                           "expert_template_b1", "expert_template_b2"};
    const auto params = bank_tensors(experts);
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].defined())
        template_[i] = register_buffer(names[i], torch::empty_like(params[i][0]));
    }
  }
  // The schedule's position is a buffer, so that checkpoints resume the schedule.
  forward_count_ = register_buffer("forward_count", torch::zeros({1}, torch::kLong));
  reset_parameters();
}

void TopAnyMoEImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  router->reset_parameters();
  experts->reset_parameters();
  const auto params = bank_tensors(experts);
  if (options.copy_initial_expert()) {
    // The reference deep-copies one FFN into every slot (§2.2).
    for (const auto& p : params)
      if (p.defined()) p.copy_(p.select(0, 0).unsqueeze(0).expand_as(p));
  }
  for (size_t i = 0; i < template_.size(); ++i)
    if (template_[i].defined()) template_[i].copy_(params[i][0]);
  records_ = RoutingRecords();
  pending_records_ = RoutingRecords();
  recording_ = pending_ = false;
  forward_count_.zero_();
}

void TopAnyMoEImpl::pretty_print(std::ostream& stream) const {
  stream << "moe::nn::TopAnyMoE(d_model=" << options.d_model()
         << ", max_experts=" << options.max_experts() << ", active=" << num_active_experts()
         << ", hidden_size=" << options.hidden_size()
         << ", activation=" << to_string(options.activation())
         << ", storage=" << to_string(options.storage()) << ")";
}

void TopAnyMoEImpl::to(torch::Dtype dtype, bool non_blocking) {
  experts->to(dtype, non_blocking);
  router->to(router_dtype(dtype), non_blocking);
  for (auto& t : template_)
    if (t.defined()) t.set_data(t.to(dtype, non_blocking));
}

void TopAnyMoEImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  experts->to(device, dtype, non_blocking);
  router->to(device, router_dtype(dtype), non_blocking);
  for (auto& t : template_)
    if (t.defined()) t.set_data(t.to(device, dtype, non_blocking));
}

MoEOutput TopAnyMoEImpl::forward(const torch::Tensor& x) {
  const auto xf = detail::tokens_2d(x, options.d_model(), experts->w1, kWho);
  if (pending_) {
    TORCH_CHECK(options.storage() == ExpertStorage::kPoolMask || !is_training(), kWho,
                ": an expert update (resize mode) is pending since training forward ",
                forward_count(),
                "; call moe::nn::apply_expert_updates(model, &optimizer) after optimizer.step() so "
                "that the optimizer state follows the resized parameters");
    if (options.storage() == ExpertStorage::kPoolMask) apply_pending_update(nullptr);
  }
  const auto& schedule = options.schedule();
  int64_t count = forward_count();
  if (is_training()) {
    forward_count_.fill_(++count);
    if (schedule.begins_before(count) &&
        !(recording_ && schedule.kind() == ExpertSchedule::Kind::kEveryStep))
      begin_recording();
  }

  TopAnyRouting r = router->route(xf);
  if (recording_) record(xf, r);
  const int64_t E = num_slots();
  const RoutingPlan plan = build_routing_plan(r.expert_index, E);
  const auto w = pair_weights(plan, r.gate).to(xf.scalar_type());

  MoEOutput out;
  out.output = experts->forward(xf, plan, w).view(x.sizes());
  out.aux_loss = r.aux_loss;
  const auto gate = r.gate.detach();
  const int64_t pairs = plan.num_pairs();
  out.stats = detail::make_stats(plan, gate.sum(0), plan.tokens_per_expert().to(gate.dtype()),
                                 pairs, 0, r.skipped_tokens);
  out.stats.active_experts = num_active_experts();
  out.stats.tokens_without_expert = r.unrouted.sum().item<int64_t>();
  out.routing = {r.expert_index, gate};

  if (is_training() && recording_ && schedule.updates_after(count)) {
    pending_records_ = finish_recording();
    pending_ = true;
  }
  return out;
}

void TopAnyMoEImpl::begin_recording() {
  const auto opts = router->weight.options().requires_grad(false);
  records_ = RoutingRecords();
  records_.expert_counts = torch::zeros({num_slots()}, opts.dtype(at::kLong));
  records_.unrouted_sum = torch::zeros({options.d_model()}, opts);
  recording_ = true;
}

void TopAnyMoEImpl::resume_recording(RoutingRecords records) {
  check_records(records);
  const auto opts = router->weight.options().requires_grad(false);
  records.expert_counts = records.expert_counts.to(opts.dtype(at::kLong));
  records.unrouted_sum = records.unrouted_sum.to(opts);
  records_ = std::move(records);
  recording_ = true;
}

RoutingRecords TopAnyMoEImpl::finish_recording() {
  TORCH_CHECK(recording_, kWho, ": finish_recording() called while not recording");
  recording_ = false;
  return std::move(records_);
}

void TopAnyMoEImpl::record(const torch::Tensor& x, const TopAnyRouting& r) {
  torch::NoGradGuard no_grad;
  // R_E counts the experts each token used (after the inference fallback); R_S sums the raw inputs
  // of tokens that activated none (§2.4).
  records_.expert_counts += (r.expert_index >= 0).sum(0);
  records_.unrouted_sum += x.index({r.unrouted}).to(records_.unrouted_sum.scalar_type()).sum(0);
  records_.tokens += x.size(0);
  records_.unrouted_tokens += r.unrouted.sum().item<int64_t>();
}

void TopAnyMoEImpl::check_records(const RoutingRecords& rec) const {
  TORCH_CHECK_VALUE(rec.expert_counts.defined() && rec.expert_counts.dim() == 1 &&
                        rec.expert_counts.size(0) == num_slots(),
                    kWho, ": records.expert_counts must be [E=", num_slots(), "], got ",
                    rec.expert_counts.defined() ? rec.expert_counts.sizes() : at::IntArrayRef{});
  const auto counts = rec.expert_counts.to(at::kDouble);
  TORCH_CHECK_VALUE(at::isfinite(counts).all().item<bool>() && (counts >= 0).all().item<bool>(),
                    kWho, ": records.expert_counts must be finite and >= 0, got ", counts);
  TORCH_CHECK_VALUE(rec.unrouted_sum.defined() && rec.unrouted_sum.dim() == 1 &&
                        rec.unrouted_sum.size(0) == options.d_model(),
                    kWho, ": records.unrouted_sum must be [d_model=", options.d_model(), "], got ",
                    rec.unrouted_sum.defined() ? rec.unrouted_sum.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(at::isfinite(rec.unrouted_sum).all().item<bool>(), kWho,
                    ": records.unrouted_sum has non-finite values");
}

ExpertUpdate TopAnyMoEImpl::update_experts(const RoutingRecords& rec,
                                           torch::optim::Optimizer* optimizer) {
  check_records(rec);
  return options.storage() == ExpertStorage::kPoolMask ? update_pool(rec, optimizer)
                                                       : update_resize(rec, optimizer);
}

ExpertUpdate TopAnyMoEImpl::apply_pending_update(torch::optim::Optimizer* optimizer) {
  if (!pending_) return {};
  pending_ = false;
  return update_experts(std::exchange(pending_records_, RoutingRecords()), optimizer);
}

// The representation of an added expert: R_S/||R_S||, or undefined when Σ_j R_S[j] = 0 (the
// reference tests the sum of the components, not the norm; §2.4).
static torch::Tensor new_representation(const torch::Tensor& unrouted_sum) {
  const auto rs = unrouted_sum.to(at::kDouble);
  if (rs.sum().item<double>() == 0.0) return {};
  return (rs / rs.norm()).to(unrouted_sum.scalar_type());
}

ExpertUpdate TopAnyMoEImpl::update_pool(const RoutingRecords& rec,
                                        torch::optim::Optimizer* optimizer) {
  torch::NoGradGuard no_grad;
  const auto counts = rec.expert_counts.to(at::kLong);
  const auto active = router->active > 0;
  ExpertUpdate u;
  u.active_before = active.sum().item<int64_t>();
  const auto removed = (active & (counts == 0)).nonzero().view(-1);
  auto next = active & (counts > 0);
  const auto rep = new_representation(rec.unrouted_sum);
  const auto free_slots = (~next).nonzero().view(-1);
  const int64_t slot = rep.defined() && free_slots.numel() > 0 ? free_slots[0].item<int64_t>() : -1;
  if (slot < 0 && !next.any().item<bool>()) {
    // Every expert idled and none can be added: keep the set rather than leave no expert (§2.7).
    u.active_after = u.active_before;
    return u;
  }
  const auto removed_cpu = removed.cpu();
  u.removed.assign(removed_cpu.data_ptr<int64_t>(),
                   removed_cpu.data_ptr<int64_t>() + removed_cpu.numel());
  router->active.copy_(next.to(router->active.scalar_type()));
  if (slot >= 0) {
    router->active[slot] = 1.0;
    router->weight[slot].copy_(rep);
    router->threshold[slot].zero_();
    if (options.new_expert_init() == NewExpertInit::kReinit) {
      ExpertBank fresh(options.expert_options(1));
      const auto src = bank_tensors(fresh);
      auto dst = bank_tensors(experts);
      for (size_t i = 0; i < dst.size(); ++i) {
        if (!dst[i].defined()) continue;
        dst[i][slot].copy_(src[i][0]);
        if (optimizer != nullptr) {
          detail::transform_param_state(
              *optimizer, dst[i],
              [&](const torch::Tensor& m) {
                auto out = m.clone();
                out[slot].zero_();
                return out;
              },
              kWho);
        }
      }
    }
    u.added = slot;
  }
  u.active_after = num_active_experts();
  return u;
}

ExpertUpdate TopAnyMoEImpl::update_resize(const RoutingRecords& rec,
                                          torch::optim::Optimizer* optimizer) {
  const auto counts = rec.expert_counts.to(at::kLong);
  const int64_t E = num_slots();
  ExpertUpdate u;
  u.active_before = E;
  auto keep = (counts > 0).nonzero().view(-1);
  const auto rep = new_representation(rec.unrouted_sum);
  const bool add = rep.defined() && keep.numel() < options.max_experts();
  if (!add && keep.numel() == 0) {  // keep the set rather than leave no expert (§2.7)
    u.active_after = E;
    return u;
  }
  const auto removed = (counts == 0).nonzero().view(-1).cpu();
  u.removed.assign(removed.data_ptr<int64_t>(), removed.data_ptr<int64_t>() + removed.numel());
  if (u.removed.empty() && !add) {
    u.active_after = E;
    return u;
  }
  keep = keep.to(router->weight.device());
  std::vector<torch::Tensor> rows(5);
  torch::Tensor weight_row, threshold_row;
  if (add) {
    weight_row = rep.view({1, -1});
    threshold_row = torch::zeros({1});
    if (template_[0].defined()) {
      for (size_t i = 0; i < rows.size(); ++i)
        if (template_[i].defined()) rows[i] = template_[i].unsqueeze(0);
    } else {
      ExpertBank fresh(options.expert_options(1));
      rows = bank_tensors(fresh);
    }
  }
  resize_rows(router->weight, keep, weight_row, optimizer);
  resize_rows(router->threshold, keep, threshold_row, optimizer);
  auto params = bank_tensors(experts);
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].defined()) resize_rows(params[i], keep, rows[i], optimizer);
  const int64_t n = keep.numel() + (add ? 1 : 0);
  router->active.set_data(torch::ones({n}, router->active.options()));
  router->options.num_slots(n).initial_active(n);
  experts->options.num_experts(n);
  u.added = add ? n - 1 : -1;
  u.active_after = n;
  return u;
}

void TopAnyMoEImpl::resize_experts(int64_t n) {
  TORCH_CHECK_VALUE(options.storage() == ExpertStorage::kResize, kWho,
                    ": resize_experts() needs storage(ExpertStorage::kResize); this layer has a "
                    "fixed pool of ",
                    num_slots(), " slots, cannot hold ", n);
  TORCH_CHECK_VALUE(n >= 1 && n <= options.max_experts(), kWho, ": expert count must be in [1, ",
                    "max_experts=", options.max_experts(), "], got ", n);
  const int64_t E = num_slots();
  if (n == E) return;
  const auto keep =
      at::arange(std::min(n, E), router->weight.options().dtype(at::kLong).requires_grad(false));
  const int64_t extra = std::max<int64_t>(0, n - E);
  auto zero_rows = [&](const torch::Tensor& t) {
    if (extra == 0) return torch::Tensor();
    auto shape = t.sizes().vec();
    shape[0] = extra;
    return at::zeros(shape, t.options());
  };
  resize_rows(router->weight, keep, zero_rows(router->weight), nullptr);
  resize_rows(router->threshold, keep, zero_rows(router->threshold), nullptr);
  for (auto p : bank_tensors(experts))
    if (p.defined()) resize_rows(p, keep, zero_rows(p), nullptr);
  router->active.set_data(torch::ones({n}, router->active.options()));
  router->options.num_slots(n).initial_active(n);
  experts->options.num_experts(n);
  records_ = RoutingRecords();
  recording_ = pending_ = false;
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
