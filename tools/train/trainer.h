// The training loop: one class that `moe train` (tools/train/run_training.cpp), the experiments
// (tools/experiments/) and the examples (examples/) share instead of each writing its own.
//
// A program supplies its batch, forward and loss (TrainerHooks::forward); the Trainer runs the
// stages of each step in this order:
//
//   learning rate      TrainerOptions::learning_rate(step), set on every parameter group
//   batch + forward    TrainerHooks::forward: the program's data, model and loss
//   finite check       optional: a non-finite loss stops before backward (on_non_finite)
//   backward + clip    zero_grad, backward of task + aux; on several processes the gradients
//                      averaged over the ranks; the global gradient norm, clipped at grad_clip;
//                      a non-finite norm stops before the optimizer writes it
//   optimizer step
//   expert updates     the pending updates of the DynMoE layers (moe::nn::apply_expert_updates,
//                      docs/dynmoe.md), reported by layer name
//   on_step_end        the step's report (losses, lr, gradient norm, expert updates)
//
// and then, on their schedules: on_log, on_checkpoint (also at the end of a session), on_eval (the
// final evaluation at the run's last step) and the stop request (a checkpoint, then the end).
// Steps count from 1: step s is the s-th optimizer step of the run.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moe/distributed.h"
#include "moe/nn/dynamic_experts.h"

namespace moe::nn {
class TopAnyMoEImpl;
}

namespace moe::train {

/// The loss of one step as TrainerHooks::forward returns it: backward runs on task + aux.
struct StepLoss {
  torch::Tensor task;  ///< 0-dim, differentiable
  torch::Tensor aux;   ///< 0-dim; undefined when the model has no auxiliary loss
};

/// What one step did, for the hooks.
struct StepReport {
  int64_t step = 0;
  double lr = 0;         ///< the learning rate of the step (of the first parameter group)
  double task_loss = 0;  ///< the values of StepLoss (aux 0 when undefined)
  double aux_loss = 0;
  /// The global gradient norm before clipping; NaN unless measured (TrainerOptions).
  double grad_norm = std::numeric_limits<double>::quiet_NaN();
  /// The DynMoE expert updates applied after the step, by layer name, in module order.
  std::vector<std::pair<std::string, nn::ExpertUpdate>> expert_updates;
  /// The layers whose update fell due after the run's last step, which is not applied.
  std::vector<std::string> discarded_updates;
};

struct TrainerOptions {
  /// The run's last step: where the final on_eval comes. A session may end earlier (Trainer::run).
  int64_t steps = 0;
  /// Every how many steps on_log, on_eval and on_checkpoint come; 0 = never on a schedule (on_log
  /// and on_checkpoint still come at the end of a session and at a stop request).
  int64_t log_every = 0;
  int64_t eval_every = 0;
  int64_t checkpoint_every = 0;
  /// > 0: clip the global gradient norm to this. The norm is measured when clipping or when
  /// measure_grad_norm is set.
  double grad_clip = 0;
  bool measure_grad_norm = false;
  /// Stop at a non-finite loss (before backward) or gradient norm (before the optimizer step):
  /// TrainerHooks::on_non_finite.
  bool check_finite = false;
  /// The learning rate of each step; empty: the optimizer's own, unchanged.
  std::function<double(int64_t step)> learning_rate;
  /// Training on several processes (tools/train/sharded_model.h): after backward the gradients
  /// are averaged over the group (moe::nn::synchronize_gradients) and the gradient norm is the
  /// norm over all ranks.
  std::shared_ptr<dist::ProcessGroup> group;
};

/// What was not finite: the loss (before backward) or the gradient norm (before the update).
enum class NonFinite { kLoss, kGradNorm };

/// What a program plugs into the loop. Only forward is required.
class TrainerHooks {
 public:
  virtual ~TrainerHooks() = default;
  /// The batch, forward pass and loss of `step`.
  virtual StepLoss forward(int64_t step) = 0;
  /// After the optimizer step and the expert updates.
  virtual void on_step_end(const StepReport& /*report*/) {}
  /// A log is due (every log_every steps, and before each checkpoint).
  virtual void on_log(int64_t /*step*/) {}
  /// A checkpoint is due (every checkpoint_every steps, at the end of a session, at a stop).
  virtual void on_checkpoint(int64_t /*step*/) {}
  /// An evaluation is due: every eval_every steps but the last; `final` at the run's last step.
  virtual void on_eval(int64_t /*step*/, bool /*final*/) {}
  /// Asked after each step and again after its stages (a stop may come during an evaluation).
  virtual bool stop_requested() { return false; }
  /// TrainerOptions::check_finite found `what` not finite: throw to say why. If this returns, the
  /// Trainer throws std::runtime_error naming the step.
  virtual void on_non_finite(const StepReport& /*report*/, NonFinite /*what*/) {}
};

/// TrainerHooks from functions, for a program whose stages are a few lines each.
struct HookFunctions final : TrainerHooks {
  std::function<StepLoss(int64_t step)> batch_forward;  ///< required: forward
  std::function<void(const StepReport&)> step_end;      ///< optional: on_step_end
  std::function<void(int64_t step)> log;                ///< optional: on_log

  StepLoss forward(int64_t step) override { return batch_forward(step); }
  void on_step_end(const StepReport& report) override {
    if (step_end) step_end(report);
  }
  void on_log(int64_t step) override {
    if (log) log(step);
  }
};

class Trainer {
 public:
  /// Trains the parameters `optimizer` holds; `module` is the model (its train mode, its DynMoE
  /// layers). Both must outlive the Trainer.
  Trainer(torch::nn::Module& module, torch::optim::Optimizer& optimizer, TrainerOptions options);

  /// Trains the steps after `first` (a resumed run's checkpoint) up to `end` (0: options.steps),
  /// in train mode. Returns the last step trained; stopped() says whether a stop request ended
  /// the session early.
  int64_t run(TrainerHooks& hooks, int64_t first = 0, int64_t end = 0);
  bool stopped() const { return stopped_; }

 private:
  /// The stages of one step up to on_step_end.
  StepReport train_step(TrainerHooks& hooks, int64_t step);
  void set_learning_rate(StepReport* report);
  void backward(TrainerHooks& hooks, const StepLoss& loss, StepReport* report);
  void update_experts(StepReport* report);
  /// on_log, on_checkpoint, on_eval on their schedules and the stop request; true: stop.
  bool scheduled_stages(TrainerHooks& hooks, int64_t step, int64_t end);
  void non_finite(TrainerHooks& hooks, const StepReport& report, NonFinite what);

  torch::nn::Module& module_;
  torch::optim::Optimizer& optimizer_;
  TrainerOptions options_;
  std::vector<std::pair<std::string, nn::TopAnyMoEImpl*>> dynmoe_;  ///< DynMoE layers by name
  bool stopped_ = false;
};

/// The batches of an epoch-based program: a new random order (torch::randperm, global generator)
/// at the first step of each epoch, then consecutive slices of `batch` examples; a last partial
/// batch is dropped.
class EpochBatches {
 public:
  EpochBatches(int64_t examples, int64_t batch) : examples_(examples), batch_(batch) {}
  int64_t steps_per_epoch() const { return examples_ / batch_; }
  /// 0-based epoch and step within it of the run's `step` (from 1).
  int64_t epoch(int64_t step) const { return (step - 1) / steps_per_epoch(); }
  int64_t step_in_epoch(int64_t step) const { return (step - 1) % steps_per_epoch(); }
  /// The example indices of `step`; steps must come in order.
  torch::Tensor indices(int64_t step);

 private:
  int64_t examples_, batch_;
  torch::Tensor order_;
};

}  // namespace moe::train
