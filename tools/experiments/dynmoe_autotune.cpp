// The DynMoE auto-tuning experiment (tools/experiments/dynmoe_autotune.h).
#include "experiments/dynmoe_autotune.h"

#include <torch/torch.h>

#include <cmath>

#include "moe/nn/sparse_moe.h"
#include "moe/nn/top_any_moe.h"

namespace moe::experiments {
namespace {

// Cosine decay of the learning rate from lr to 0.
void set_lr(torch::optim::Adam& opt, const AutotuneConfig& c, int64_t step) {
  const double lr =
      0.5 * c.lr * (1 + std::cos(M_PI * static_cast<double>(step) / static_cast<double>(c.steps)));
  for (auto& g : opt.param_groups()) static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);
}

// Training batches never overlap the test set: the test set has its own seed.
uint64_t batch_seed(const AutotuneConfig& c, int64_t step) {
  return 1000003ull * (c.seed + 1) + static_cast<uint64_t>(step);
}
constexpr uint64_t kTestSeed = 7;

}  // namespace

AutotuneResult train_dynmoe(const AutotuneConfig& c,
                            const std::function<void(const AutotunePoint&)>& on_step) {
  const data::ClusterRegression task(c.task);
  torch::manual_seed(c.seed);
  nn::TopAnyMoE layer(nn::TopAnyMoEOptions(c.task.dim(), c.max_experts)
                          .initial_experts(c.initial_experts)
                          .hidden_size(c.hidden)
                          .storage(c.storage)
                          .temperature(c.temperature)
                          .aux_loss_coef(c.aux_loss_coef)
                          .copy_initial_expert(c.copy_initial_expert)
                          .schedule(nn::ExpertSchedule::window(c.window, c.period)));
  if (c.tutel_losses) layer->router->options.tutel_losses();
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(c.lr));
  AutotuneResult r;
  for (int64_t step = 0; step < c.steps; ++step) {
    set_lr(opt, c, step);
    const bool frozen = c.freeze_router_step > 0 && step >= c.freeze_router_step;
    if (frozen && step == c.freeze_router_step) {
      for (auto& p : layer->router->parameters()) p.set_requires_grad(false);
      layer->expert_set().set_schedule(nn::ExpertSchedule::manual());
    }
    const bool shifted = c.shift_clusters > 0 && step >= c.shift_step;
    const auto b = task.sample(c.batch, batch_seed(c, step), shifted ? c.shift_clusters : 0);
    opt.zero_grad();
    auto out = layer->forward(b.x);
    auto mse = torch::mse_loss(out.output, b.y);
    (mse + out.aux_loss).backward();
    opt.step();
    AutotunePoint p;
    p.step = step + 1;
    p.mean_k = out.stats.experts_per_token_mean();
    p.unrouted = static_cast<double>(out.stats.tokens_without_expert()) / c.batch;
    p.loss = mse.item<double>();
    if (layer->update_pending()) {
      const auto& rec = layer->pending_records();
      p.updated = true;
      p.window_unrouted = rec.unrouted_tokens();
      p.window_idle =
          ((layer->router->active > 0) & (rec.expert_counts == 0)).sum().item<int64_t>();
    }
    for (const auto& u : nn::apply_expert_updates(*layer, &opt)) {
      p.added = p.added || u.added >= 0;
      p.removed = p.removed || !u.removed.empty();
      p.removed_count += static_cast<int64_t>(u.removed.size());
    }
    p.active = layer->num_active_experts();
    r.history.push_back(p);
    if (on_step) on_step(p);
  }
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto test = task.sample(c.test_size, kTestSeed, c.shift_step > 0 ? c.shift_clusters : 0);
  auto out = layer->forward(test.x);
  r.test_mse = torch::mse_loss(out.output, test.y).item<double>();
  r.test_mean_k = out.stats.experts_per_token_mean();
  // which test tokens fired an expert: the same forward without the inference fallback
  const auto fallback = layer->router->options.fallback();
  layer->router->options.fallback(TopAnyFallback::kZero);
  const auto routed = (layer->forward(test.x).routing.expert_index >= 0).any(1);
  layer->router->options.fallback(fallback);
  r.test_unrouted = 1.0 - routed.to(torch::kDouble).mean().item<double>();
  r.test_mse_routed = (out.output - test.y).pow(2).mean(1).index({routed}).mean().item<double>();
  r.final_active = layer->num_active_experts();
  return r;
}

double train_topk(const AutotuneConfig& c, int64_t num_experts, int64_t top_k) {
  const data::ClusterRegression task(c.task);
  torch::manual_seed(c.seed);
  nn::SparseMoE layer(nn::SparseMoEOptions(c.task.dim(), num_experts)
                          .hidden_size(c.hidden)
                          .top_k(std::min(top_k, num_experts)));
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(c.lr));
  for (int64_t step = 0; step < c.steps; ++step) {
    set_lr(opt, c, step);
    const auto b = task.sample(c.batch, batch_seed(c, step));
    opt.zero_grad();
    auto out = layer->forward(b.x);
    (torch::mse_loss(out.output, b.y) + out.aux_loss).backward();
    opt.step();
  }
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto test = task.sample(c.test_size, kTestSeed);
  return torch::mse_loss(layer->forward(test.x).output, test.y).item<double>();
}

}  // namespace moe::experiments
