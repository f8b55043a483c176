// The training loop (tools/train/trainer.h).
#include "train/trainer.h"

#include <torch/nn/utils/clip_grad.h>

#include <cmath>
#include <stdexcept>

#include "moe/nn/data_parallel.h"
#include "moe/nn/top_any_moe.h"

namespace moe::train {

Trainer::Trainer(torch::nn::Module& module, torch::optim::Optimizer& optimizer,
                 TrainerOptions options)
    : module_(module), optimizer_(optimizer), options_(std::move(options)) {
  for (const auto& item : module_.named_modules())
    if (auto* layer = item.value()->as<nn::TopAnyMoEImpl>())
      dynmoe_.emplace_back(item.key(), layer);
}

int64_t Trainer::run(TrainerHooks& hooks, int64_t first, int64_t end) {
  if (end <= 0) end = options_.steps;
  stopped_ = false;
  module_.train();
  int64_t step = first;
  while (step < end) {
    ++step;
    hooks.on_step_end(train_step(hooks, step));
    if (scheduled_stages(hooks, step, end)) {
      stopped_ = true;
      break;
    }
  }
  return step;
}

StepReport Trainer::train_step(TrainerHooks& hooks, int64_t step) {
  StepReport report;
  report.step = step;
  set_learning_rate(&report);
  const StepLoss loss = hooks.forward(step);
  report.task_loss = loss.task.item<double>();
  report.aux_loss = loss.aux.defined() ? loss.aux.item<double>() : 0.0;
  if (options_.check_finite &&
      (!std::isfinite(report.task_loss) || !std::isfinite(report.aux_loss)))
    non_finite(hooks, report, NonFinite::kLoss);
  backward(hooks, loss, &report);
  optimizer_.step();
  update_experts(&report);
  return report;
}

void Trainer::set_learning_rate(StepReport* report) {
  auto& groups = optimizer_.param_groups();
  if (options_.learning_rate) {
    const double lr = options_.learning_rate(report->step);
    for (auto& g : groups) g.options().set_lr(lr);
  }
  report->lr = groups.empty() ? 0.0 : groups.front().options().get_lr();
}

void Trainer::backward(TrainerHooks& hooks, const StepLoss& loss, StepReport* report) {
  const auto total = loss.aux.defined() ? loss.task + loss.aux : loss.task;
  optimizer_.zero_grad();
  total.backward();
  if (options_.group != nullptr) {
    nn::synchronize_gradients(options_.group, module_);
    // Every rank measures (the norm is a collective), so that all clip alike.
    report->grad_norm = nn::clip_gradient_norm(options_.group, module_, options_.grad_clip);
  } else {
    if (options_.grad_clip <= 0 && !options_.measure_grad_norm) return;
    report->grad_norm = torch::nn::utils::clip_grad_norm_(
        module_.parameters(), options_.grad_clip > 0 ? options_.grad_clip : INFINITY);
  }
  if (options_.check_finite && !std::isfinite(report->grad_norm))
    non_finite(hooks, *report, NonFinite::kGradNorm);
}

// apply_expert_updates returns the updates of the layers with one pending, in module order: the
// names of those layers, in the same order, label them.
void Trainer::update_experts(StepReport* report) {
  std::vector<std::string> pending;
  for (const auto& [name, layer] : dynmoe_)
    if (layer->update_pending()) pending.push_back(name);
  if (pending.empty()) return;
  // After the run's last step nothing would train an added expert: it would only take the tokens
  // training left unrouted into the final evaluation and the checkpoint, untrained. The reference
  // counts its window one forward later and so never updates at the last step of a run of
  // 2·record steps (docs/results.md, section 3).
  if (report->step == options_.steps) {
    for (const auto& [name, layer] : dynmoe_)
      if (layer->update_pending()) layer->discard_pending_update();
    report->discarded_updates = std::move(pending);
    return;
  }
  auto updates = nn::apply_expert_updates(module_, &optimizer_);
  TORCH_INTERNAL_ASSERT(updates.size() == pending.size());
  for (size_t i = 0; i < updates.size(); ++i)
    report->expert_updates.emplace_back(pending[i], std::move(updates[i]));
}

bool Trainer::scheduled_stages(TrainerHooks& hooks, int64_t step, int64_t end) {
  const auto due = [step](int64_t every) { return every > 0 && step % every == 0; };
  const bool last = step == options_.steps;
  const bool checkpoint = due(options_.checkpoint_every) || step == end || hooks.stop_requested();
  // A log before every checkpoint too, so that a resumed run's logging intervals match.
  if (due(options_.log_every) || checkpoint) hooks.on_log(step);
  // The checkpoint before the final evaluation: a kill during the evaluation loses nothing.
  if (checkpoint) hooks.on_checkpoint(step);
  if (due(options_.eval_every) && !last) hooks.on_eval(step, false);
  if (last) hooks.on_eval(step, true);
  if (!hooks.stop_requested()) return false;
  if (!checkpoint) {  // the request came during this step's evaluation
    hooks.on_log(step);
    hooks.on_checkpoint(step);
  }
  return true;
}

void Trainer::non_finite(TrainerHooks& hooks, const StepReport& report, NonFinite what) {
  hooks.on_non_finite(report, what);
  throw std::runtime_error(
      std::string(what == NonFinite::kLoss ? "the loss" : "the gradient norm") +
      " is not finite at step " + std::to_string(report.step));
}

torch::Tensor EpochBatches::indices(int64_t step) {
  const int64_t s = step_in_epoch(step);
  if (s == 0) order_ = torch::randperm(examples_, torch::kLong);
  return order_.slice(0, s * batch_, (s + 1) * batch_);
}

}  // namespace moe::train
