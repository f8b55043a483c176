// The DynMoE auto-tuning experiment (tools/experiments/dynmoe_autotune.h).
#include "experiments/dynmoe_autotune.h"

#include <torch/torch.h>

#include <cmath>

#include "moe/nn/sparse_moe.h"
#include "moe/nn/top_any_moe.h"
#include "train/trainer.h"

namespace moe::experiments {
namespace {

// Cosine decay of the learning rate from lr to 0. The Trainer counts steps from 1, the experiment
// from 0 (its step s is the Trainer's s + 1).
train::TrainerOptions trainer_options(const AutotuneConfig& c) {
  train::TrainerOptions o;
  o.steps = c.steps;
  o.learning_rate = [lr = c.lr, steps = c.steps](int64_t step) {
    return 0.5 * lr *
           (1 + std::cos(M_PI * static_cast<double>(step - 1) / static_cast<double>(steps)));
  };
  return o;
}

// Training batches never overlap the test set: the test set has its own seed.
uint64_t batch_seed(const AutotuneConfig& c, int64_t step) {
  return 1000003ull * (c.seed + 1) + static_cast<uint64_t>(step);
}
constexpr uint64_t kTestSeed = 7;

// The DynMoE run's stages: the batch (with the optional shift and router freeze) and forward, then
// one AutotunePoint per step.
class DynMoESteps final : public train::TrainerHooks {
 public:
  DynMoESteps(const AutotuneConfig& c, const data::ClusterRegression& task, nn::TopAnyMoE layer,
              const std::function<void(const AutotunePoint&)>& on_step, AutotuneResult* result)
      : c_(c), task_(task), layer_(std::move(layer)), on_step_(on_step), result_(result) {}

  train::StepLoss forward(int64_t step) override {
    const int64_t s = step - 1;  // the experiment's step
    if (c_.freeze_router_step > 0 && s == c_.freeze_router_step) {
      for (auto& p : layer_->router->parameters()) p.set_requires_grad(false);
      layer_->expert_set().set_schedule(nn::ExpertSchedule::manual());
    }
    const bool shifted = c_.shift_clusters > 0 && s >= c_.shift_step;
    const auto b = task_.sample(c_.batch, batch_seed(c_, s), shifted ? c_.shift_clusters : 0);
    auto out = layer_->forward(b.x);
    point_ = AutotunePoint{};
    point_.step = step;
    point_.mean_k = out.stats.experts_per_token_mean();
    point_.unrouted = static_cast<double>(out.stats.tokens_without_expert()) / c_.batch;
    if (layer_->update_pending()) {  // this forward closed a window: what it saw
      const auto& rec = layer_->pending_records();
      point_.updated = true;
      point_.window_unrouted = rec.unrouted_tokens();
      point_.window_idle =
          ((layer_->router->active > 0) & (rec.expert_counts == 0)).sum().item<int64_t>();
    }
    return {torch::mse_loss(out.output, b.y), out.aux_loss};
  }

  void on_step_end(const train::StepReport& r) override {
    AutotunePoint& p = point_;
    p.loss = r.task_loss;
    for (const auto& [name, u] : r.expert_updates) {
      p.added = p.added || u.added >= 0;
      p.removed = p.removed || !u.removed.empty();
      p.removed_count += static_cast<int64_t>(u.removed.size());
    }
    p.active = layer_->num_active_experts();
    result_->history.push_back(p);
    if (on_step_) on_step_(p);
  }

 private:
  const AutotuneConfig& c_;
  const data::ClusterRegression& task_;
  nn::TopAnyMoE layer_;
  const std::function<void(const AutotunePoint&)>& on_step_;
  AutotuneResult* result_;
  AutotunePoint point_;
};

// The test-set results of the trained layer.
void test_dynmoe(const AutotuneConfig& c, const data::ClusterRegression& task, nn::TopAnyMoE& layer,
                 AutotuneResult* r) {
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto test = task.sample(c.test_size, kTestSeed, c.shift_step > 0 ? c.shift_clusters : 0);
  auto out = layer->forward(test.x);
  r->test_mse = torch::mse_loss(out.output, test.y).item<double>();
  r->test_mean_k = out.stats.experts_per_token_mean();
  // which test tokens fired an expert: the same forward without the inference fallback
  const auto fallback = layer->router->options.fallback();
  layer->router->options.fallback(TopAnyFallback::kZero);
  const auto routed = (layer->forward(test.x).routing.expert_index >= 0).any(1);
  layer->router->options.fallback(fallback);
  r->test_unrouted = 1.0 - routed.to(torch::kDouble).mean().item<double>();
  r->test_mse_routed = (out.output - test.y).pow(2).mean(1).index({routed}).mean().item<double>();
  r->final_active = layer->num_active_experts();
}

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
  DynMoESteps steps(c, task, layer, on_step, &r);
  train::Trainer(*layer, opt, trainer_options(c)).run(steps);
  test_dynmoe(c, task, layer, &r);
  return r;
}

double train_topk(const AutotuneConfig& c, int64_t num_experts, int64_t top_k) {
  const data::ClusterRegression task(c.task);
  torch::manual_seed(c.seed);
  nn::SparseMoE layer(nn::SparseMoEOptions(c.task.dim(), num_experts)
                          .hidden_size(c.hidden)
                          .top_k(std::min(top_k, num_experts)));
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(c.lr));
  train::HookFunctions hooks;
  hooks.batch_forward = [&](int64_t step) {
    const auto b = task.sample(c.batch, batch_seed(c, step - 1));
    auto out = layer->forward(b.x);
    return train::StepLoss{torch::mse_loss(out.output, b.y), out.aux_loss};
  };
  train::Trainer(*layer, opt, trainer_options(c)).run(hooks);
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto test = task.sample(c.test_size, kTestSeed);
  return torch::mse_loss(layer->forward(test.x).output, test.y).item<double>();
}

}  // namespace moe::experiments
