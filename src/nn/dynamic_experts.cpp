// DynMoE's self-tuning expert set (include/moe/nn/dynamic_experts.h, docs/algorithms.md §2.4).
#include "moe/nn/dynamic_experts.h"

#include <ATen/ATen.h>
#include <torch/nn/module.h>

#include <utility>

#include "engine/backend.h"
#include "nn/optimizer_state.h"

namespace moe::nn {
namespace {

constexpr const char* kWho = "TopAnyMoE";

// The FFN tensors of a bank, in the order of DynamicExpertSet::template_.
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

int64_t RoutingRecords::unrouted_tokens() const {
  return unrouted_count.defined() ? unrouted_count.item<int64_t>() : 0;
}

DynamicExpertSet::DynamicExpertSet(RoutedMoEImpl& layer, TopAnyRouterImpl& router,
                                   ExpertBank experts, TopAnyMoEOptions options)
    : router_(&router), experts_(std::move(experts)), options_(std::move(options)) {
  const bool pool = options_.storage() == ExpertStorage::kPoolMask;
  template_.assign(5, torch::Tensor());
  if (!pool && options_.copy_initial_expert() &&
      options_.new_expert_init() == NewExpertInit::kKeep) {
    const char* names[] = {"expert_template_w1", "expert_template_w2", "expert_template_w3",
                           "expert_template_b1", "expert_template_b2"};
    const auto params = bank_tensors(experts_);
    for (size_t i = 0; i < params.size(); ++i) {
      if (params[i].defined())
        template_[i] = layer.register_buffer(names[i], torch::empty_like(params[i][0]));
    }
  }
  // The schedule's position is a buffer, so that checkpoints resume the schedule.
  forward_count_.attach(layer.register_buffer("forward_count", torch::zeros({1}, torch::kLong)));
  forward_count_.set(0);
}

void DynamicExpertSet::reset_parameters() {
  torch::NoGradGuard no_grad;
  const auto params = bank_tensors(experts_);
  if (options_.copy_initial_expert()) {
    // The reference deep-copies one FFN into every expert (§2.2).
    for (const auto& p : params)
      if (p.defined()) p.copy_(p.select(0, 0).unsqueeze(0).expand_as(p));
  }
  for (size_t i = 0; i < template_.size(); ++i)
    if (template_[i].defined()) template_[i].copy_(params[i][0]);
  records_ = RoutingRecords();
  pending_records_ = RoutingRecords();
  recording_ = pending_ = false;
  forward_count_.set(0);
}

void DynamicExpertSet::before_routing(RoutedMoEImpl& layer) {
  training_ = layer.is_training();
  if (pending_) {
    TORCH_CHECK(options_.storage() == ExpertStorage::kPoolMask || !training_, kWho,
                ": an expert update (resize mode) is pending since training forward ",
                forward_count(),
                "; call moe::nn::apply_expert_updates(model, &optimizer) after optimizer.step() so "
                "that the optimizer state follows the resized parameters");
    if (options_.storage() == ExpertStorage::kPoolMask) apply_pending_update(nullptr);
  }
  if (!training_) return;
  const auto& schedule = options_.schedule();
  const int64_t count = forward_count() + 1;
  forward_count_.set(count);
  if (schedule.begins_before(count) &&
      !(recording_ && schedule.kind() == ExpertSchedule::Kind::kEveryStep))
    begin_recording();
}

void DynamicExpertSet::after_forward(RoutedMoEImpl& layer) {
  if (training_ && recording_ && options_.schedule().updates_after(forward_count())) {
    pending_records_ = finish_recording();
    pending_ = true;
  }
}

void DynamicExpertSet::begin_recording() {
  const auto opts = router_->weight.options().requires_grad(false);
  records_ = RoutingRecords();
  records_.expert_counts = torch::zeros({num_experts()}, opts.dtype(at::kLong));
  records_.unrouted_sum = torch::zeros({options_.d_model()}, opts);
  records_.unrouted_count = torch::zeros({}, opts.dtype(at::kLong));
  recording_ = true;
}

void DynamicExpertSet::resume_recording(RoutingRecords records) {
  check_records(records);
  const auto opts = router_->weight.options().requires_grad(false);
  records.expert_counts = records.expert_counts.to(opts.dtype(at::kLong));
  records.unrouted_sum = records.unrouted_sum.to(opts);
  records.unrouted_count = records.unrouted_count.defined()
                               ? records.unrouted_count.to(opts.dtype(at::kLong))
                               : torch::zeros({}, opts.dtype(at::kLong));
  records_ = std::move(records);
  recording_ = true;
}

RoutingRecords DynamicExpertSet::finish_recording() {
  TORCH_CHECK(recording_, kWho, ": finish_recording() called while not recording");
  recording_ = false;
  return std::move(records_);
}

void DynamicExpertSet::after_routing(RoutedMoEImpl& layer, const torch::Tensor& x,
                                     const RoutingResult& r) {
  if (!recording_) return;
  torch::NoGradGuard no_grad;
  // R_E counts the experts each token used (after the inference fallback); R_S sums the raw inputs
  // of tokens that activated none (§2.4).
  auto counts = at::cat({(r.expert_index >= 0).sum(0), r.unrouted.sum().view({1}),
                         at::full({1}, x.size(0), r.expert_index.options())});
  // Masked rather than selected: no size depends on the data (nothing is read back on a GPU).
  // The unrouted rows are selected on the CPU's own path; the portable path masks the others, as
  // a selection would read its size back from the device (docs/gpu.md).
  const auto type = records_.unrouted_sum.scalar_type();
  auto unrouted_sum =
      engine::portable_path(x.device())
          ? at::where(r.unrouted.unsqueeze(1), x.to(type), at::zeros({}, x.options().dtype(type)))
                .sum(0)
          : x.index({r.unrouted}).to(type).sum(0);
  if (const auto& group = layer.expert_group()) {
    // Experts spread over processes: every rank records the global batch, so that all ranks make
    // the same expert updates.
    group->all_reduce_sum(counts);
    group->all_reduce_sum(unrouted_sum);
  }
  const int64_t E = r.expert_index.size(1);
  records_.expert_counts += counts.narrow(0, 0, E);
  records_.unrouted_sum += unrouted_sum;
  records_.unrouted_count += counts[E];
  records_.tokens += layer.expert_group() ? counts[E + 1].item<int64_t>() : x.size(0);
}

void DynamicExpertSet::before_distributing(RoutedMoEImpl& layer, dist::ProcessGroup& group) {
  TORCH_CHECK_VALUE(options_.storage() == ExpertStorage::kPoolMask, kWho,
                    ": experts spread over processes need a fixed expert count (storage=pool); "
                    "storage=resize changes the number of experts");
}

void DynamicExpertSet::check_records(const RoutingRecords& rec) const {
  TORCH_CHECK_VALUE(rec.expert_counts.defined() && rec.expert_counts.dim() == 1 &&
                        rec.expert_counts.size(0) == num_experts(),
                    kWho, ": records.expert_counts must be [E=", num_experts(), "], got ",
                    rec.expert_counts.defined() ? rec.expert_counts.sizes() : at::IntArrayRef{});
  const auto counts = rec.expert_counts.to(at::kDouble);
  TORCH_CHECK_VALUE(at::isfinite(counts).all().item<bool>() && (counts >= 0).all().item<bool>(),
                    kWho, ": records.expert_counts must be finite and >= 0, got ", counts);
  TORCH_CHECK_VALUE(rec.unrouted_sum.defined() && rec.unrouted_sum.dim() == 1 &&
                        rec.unrouted_sum.size(0) == options_.d_model(),
                    kWho, ": records.unrouted_sum must be [d_model=", options_.d_model(), "], got ",
                    rec.unrouted_sum.defined() ? rec.unrouted_sum.sizes() : at::IntArrayRef{});
  TORCH_CHECK_VALUE(at::isfinite(rec.unrouted_sum).all().item<bool>(), kWho,
                    ": records.unrouted_sum has non-finite values");
}

ExpertUpdate DynamicExpertSet::update_experts(const RoutingRecords& rec,
                                              torch::optim::Optimizer* optimizer) {
  check_records(rec);
  return options_.storage() == ExpertStorage::kPoolMask ? update_pool(rec, optimizer)
                                                        : update_resize(rec, optimizer);
}

ExpertUpdate DynamicExpertSet::apply_pending_update(torch::optim::Optimizer* optimizer) {
  if (!pending_) return {};
  pending_ = false;
  return update_experts(std::exchange(pending_records_, RoutingRecords()), optimizer);
}

RoutingRecords DynamicExpertSet::discard_pending_update() {
  pending_ = false;
  return std::exchange(pending_records_, RoutingRecords());
}

// The representation of an added expert: R_S/||R_S||, or undefined when Σ_j R_S[j] = 0 (the
// reference tests the sum of the components, not the norm; §2.4).
static torch::Tensor new_representation(const torch::Tensor& unrouted_sum) {
  const auto rs = unrouted_sum.to(at::kDouble);
  if (rs.sum().item<double>() == 0.0) return {};
  return (rs / rs.norm()).to(unrouted_sum.scalar_type());
}

ExpertUpdate DynamicExpertSet::update_pool(const RoutingRecords& rec,
                                           torch::optim::Optimizer* optimizer) {
  torch::NoGradGuard no_grad;
  const auto counts = rec.expert_counts.to(at::kLong);
  const auto active = router_->active > 0;
  ExpertUpdate u;
  u.active_before = active.sum().item<int64_t>();
  const auto removed = (active & (counts == 0)).nonzero().view(-1);
  auto next = active & (counts > 0);
  const auto rep = new_representation(rec.unrouted_sum);
  const auto free_experts = (~next).nonzero().view(-1);
  const int64_t new_expert =
      rep.defined() && free_experts.numel() > 0 ? free_experts[0].item<int64_t>() : -1;
  if (new_expert < 0 && !next.any().item<bool>()) {
    // Every expert idled and none can be added: keep the set rather than leave no expert (§2.7).
    u.active_after = u.active_before;
    return u;
  }
  const auto removed_cpu = removed.cpu();
  u.removed.assign(removed_cpu.data_ptr<int64_t>(),
                   removed_cpu.data_ptr<int64_t>() + removed_cpu.numel());
  router_->active.copy_(next.to(router_->active.scalar_type()));
  if (new_expert >= 0) {
    router_->active[new_expert] = 1.0;
    router_->weight[new_expert].copy_(rep);
    router_->threshold[new_expert].zero_();
    if (options_.new_expert_init() == NewExpertInit::kReinit) reinit_expert(new_expert, optimizer);
    u.added = new_expert;
  }
  u.active_after = router_->num_active();
  return u;
}

// Pool mode, NewExpertInit::kReinit: expert e gets fresh weights from the bank's initialiser and
// zeroed optimizer moments.
void DynamicExpertSet::reinit_expert(int64_t e, torch::optim::Optimizer* optimizer) {
  ExpertBank fresh(options_.expert_options_for(1));
  // Experts spread over processes: every rank draws the fresh expert (the generators stay in
  // step), the rank that holds it keeps it.
  e -= experts_->options.first_expert();
  if (e < 0 || e >= experts_->options.num_experts()) return;
  const auto src = bank_tensors(fresh);
  auto dst = bank_tensors(experts_);
  for (size_t i = 0; i < dst.size(); ++i) {
    if (!dst[i].defined()) continue;
    dst[i][e].copy_(src[i][0]);
    if (optimizer != nullptr) {
      detail::transform_param_state(
          *optimizer, dst[i],
          [&](const torch::Tensor& m) {
            auto out = m.clone();
            out[e].zero_();
            return out;
          },
          kWho);
    }
  }
}

ExpertUpdate DynamicExpertSet::update_resize(const RoutingRecords& rec,
                                             torch::optim::Optimizer* optimizer) {
  const auto counts = rec.expert_counts.to(at::kLong);
  const int64_t E = num_experts();
  ExpertUpdate u;
  u.active_before = E;
  auto keep = (counts > 0).nonzero().view(-1);
  const auto rep = new_representation(rec.unrouted_sum);
  const bool add = rep.defined() && keep.numel() < options_.max_experts();
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
  keep = keep.to(router_->weight.device());
  std::vector<torch::Tensor> rows(5);
  torch::Tensor weight_row, threshold_row;
  if (add) {
    weight_row = rep.view({1, -1});
    threshold_row = torch::zeros({1});
    if (template_[0].defined()) {
      for (size_t i = 0; i < rows.size(); ++i)
        if (template_[i].defined()) rows[i] = template_[i].unsqueeze(0);
    } else {
      ExpertBank fresh(options_.expert_options_for(1));
      rows = bank_tensors(fresh);
    }
  }
  resize_rows(router_->weight, keep, weight_row, optimizer);
  resize_rows(router_->threshold, keep, threshold_row, optimizer);
  auto params = bank_tensors(experts_);
  for (size_t i = 0; i < params.size(); ++i)
    if (params[i].defined()) resize_rows(params[i], keep, rows[i], optimizer);
  const int64_t n = keep.numel() + (add ? 1 : 0);
  router_->active.set_data(torch::ones({n}, router_->active.options()));
  router_->options.num_experts(n).initial_active(n);
  experts_->options.num_experts(n);
  u.added = add ? n - 1 : -1;
  u.active_after = n;
  return u;
}

void DynamicExpertSet::resize_experts(int64_t n) {
  TORCH_CHECK_VALUE(options_.storage() == ExpertStorage::kResize, kWho,
                    ": resize_experts() needs storage(ExpertStorage::kResize); this layer has a "
                    "fixed pool of ",
                    num_experts(), " experts, cannot hold ", n);
  TORCH_CHECK_VALUE(n >= 1 && n <= options_.max_experts(), kWho, ": expert count must be in [1, ",
                    "max_experts=", options_.max_experts(), "], got ", n);
  const int64_t E = num_experts();
  if (n == E) return;
  const auto keep =
      at::arange(std::min(n, E), router_->weight.options().dtype(at::kLong).requires_grad(false));
  const int64_t extra = std::max<int64_t>(0, n - E);
  auto zero_rows = [&](const torch::Tensor& t) {
    if (extra == 0) return torch::Tensor();
    auto shape = t.sizes().vec();
    shape[0] = extra;
    return at::zeros(shape, t.options());
  };
  resize_rows(router_->weight, keep, zero_rows(router_->weight), nullptr);
  resize_rows(router_->threshold, keep, zero_rows(router_->threshold), nullptr);
  for (auto p : bank_tensors(experts_))
    if (p.defined()) resize_rows(p, keep, zero_rows(p), nullptr);
  router_->active.set_data(torch::ones({n}, router_->active.options()));
  router_->options.num_experts(n).initial_active(n);
  experts_->options.num_experts(n);
  records_ = RoutingRecords();
  recording_ = pending_ = false;
}

}  // namespace moe::nn
