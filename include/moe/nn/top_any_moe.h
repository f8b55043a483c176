// moe::nn::TopAnyMoE: DynMoE (Guo et al. 2024; docs/algorithms.md §2) on the shared engine.
//
// A TopAnyRouter picks any number of experts per token (a ragged RoutingPlan), the ExpertBank
// computes them, and the set of experts tunes itself during training: while recording, the layer
// counts each expert's activations (R_E) and sums the raw inputs of tokens that activated no expert
// (R_S); an update removes every active expert with R_E = 0 and then adds at most one expert whose
// representation is R_S/||R_S|| and whose threshold is 0 (§2.4).
//
// Parameters: router.weight [E, d], router.threshold [E], router.temperature [1] (log(1/t); no
//             gradient when frozen, absent for kNone), experts.w1 [E, d, h], experts.w2 [E, h, d],
//             experts.w3, b1, b2 as in SparseMoE. Buffers: router.active [E],
//             expert_template_* (resize mode with copied experts: the network new experts copy),
//             forward_count [1] (the schedule's position).
// E is max_experts in pool mode and the number of active experts in resize mode.
//
// Training loop with automatic schedules:
//   auto out = layer(x); (task_loss + out.aux_loss).backward(); optimizer.step();
//   moe::nn::apply_expert_updates(*model, &optimizer);   // required in resize mode
#pragma once

#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "moe/experts.h"
#include "moe/nn/dynamic_experts.h"
#include "moe/nn/routed_moe.h"
#include "moe/nn/top_any_moe_options.h"
#include "moe/routers/top_any_router.h"

namespace moe::nn {

/// A named constructor of RoutedMoE (moe/nn/routed_moe.h) with a TopAnyRouter and a
/// DynamicExpertSet component (moe/nn/dynamic_experts.h). The methods below forward to the
/// component (expert_set()).
class TopAnyMoEImpl : public RoutedMoEImpl {
 public:
  explicit TopAnyMoEImpl(TopAnyMoEOptions options);
  /// New initial values; every expert starts as a copy of one network (copy_initial_expert).
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// x: [..., d_model]. Training forwards advance the schedule; an update due in pool mode is
  /// applied at the start of the next forward if apply_expert_updates() was not called.
  using RoutedMoEImpl::forward;

  /// The expert-set lifecycle: recording windows, updates, resizing.
  DynamicExpertSet& expert_set() const { return *expert_set_; }

  /// Starts a recording window (clears the records).
  void begin_recording() { expert_set_->begin_recording(); }
  /// Re-opens a recording window with the records it had so far (a training program resuming
  /// from a checkpoint taken inside a window; see records()). Checked as update_experts() checks.
  void resume_recording(RoutingRecords records) {
    expert_set_->resume_recording(std::move(records));
  }
  /// Ends the window and returns its records.
  RoutingRecords finish_recording() { return expert_set_->finish_recording(); }
  bool recording() const { return expert_set_->recording(); }
  const RoutingRecords& records() const { return expert_set_->records(); }

  /// Removes the active experts with zero activations, then adds at most one expert (§2.4).
  /// In resize mode the parameter tensors change size; pass the optimizer that holds them so that
  /// the moments of surviving experts move with them (Adam, AdamW, SGD, RMSprop, Adagrad). Call
  /// between optimizer steps: gradients of the resized tensors are cleared.
  ExpertUpdate update_experts(const RoutingRecords& records,
                              torch::optim::Optimizer* optimizer = nullptr) {
    return expert_set_->update_experts(records, optimizer);
  }
  /// Whether a schedule has finished a window whose update is not applied yet.
  bool update_pending() const { return expert_set_->update_pending(); }
  /// The records of the finished window whose update is pending.
  const RoutingRecords& pending_records() const { return expert_set_->pending_records(); }
  /// Applies the pending update (no-op without one).
  ExpertUpdate apply_pending_update(torch::optim::Optimizer* optimizer = nullptr) {
    return expert_set_->apply_pending_update(optimizer);
  }
  /// Drops the pending update without applying it (e.g. after a run's last step, where nothing
  /// would train an added expert) and returns its records; empty records without one.
  RoutingRecords discard_pending_update() { return expert_set_->discard_pending_update(); }
  /// Resize mode: sets the number of experts to n, keeping the first min(n, E); new experts get
  /// zero rows (a zero representation never fires) until a checkpoint fills them; recording
  /// stops. Used to load a checkpoint whose expert count differs. Pool mode: error.
  void resize_experts(int64_t n) { expert_set_->resize_experts(n); }

  /// Experts allocated (E: the pool in pool mode, the active experts in resize mode).
  int64_t num_experts() const { return expert_set_->num_experts(); }
  int64_t num_active_experts() const { return router->num_active(); }
  /// Training forwards so far: the buffer `forward_count`, saved with checkpoints. (The records of
  /// an open recording window are not module state: a program that checkpoints inside a window
  /// saves records() itself and calls resume_recording(), as `moe train` does.)
  int64_t forward_count() const { return expert_set_->forward_count(); }

  /// The options this layer was built from (the schedule as it is now).
  const TopAnyMoEOptions& layer_options() const { return expert_set_->options(); }

  TopAnyRouter router = nullptr;

 protected:
  std::shared_ptr<RoutedMoEImpl> make_copy() const override;

 private:
  std::shared_ptr<DynamicExpertSet> expert_set_;
};
TORCH_MODULE(TopAnyMoE);

/// Applies the pending updates of every TopAnyMoE in `model` (after optimizer.step()). Returns the
/// updates applied, in module order.
std::vector<ExpertUpdate> apply_expert_updates(torch::nn::Module& model,
                                               torch::optim::Optimizer* optimizer = nullptr);

}  // namespace moe::nn
