// moe::nn::TopAnyMoE: DynMoE (Guo et al. 2024; docs/ALGORITHMS.md §2) on the shared engine.
//
// A TopAnyRouter picks any number of experts per token (a ragged RoutingPlan), the ExpertBank
// computes them, and the set of experts tunes itself during training: while recording, the layer
// counts each expert's activations (R_E) and sums the raw inputs of tokens that activated no expert
// (R_S); an update removes every active expert with R_E = 0 and then adds at most one expert whose
// representation is R_S/||R_S|| and whose threshold is 0 (§2.4).
//
// Parameters: router.weight [E, d], router.threshold [E], router.temperature [1] (trainable
//             temperature), experts.w1 [E, d, h], experts.w2 [E, h, d], experts.w3, b1, b2 as in
//             SparseMoE. Buffers: router.active [E], router.temperature (frozen temperature),
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
#include <vector>

#include "moe/experts.h"
#include "moe/nn/top_any_moe_options.h"
#include "moe/routers/top_any_router.h"
#include "moe/stats.h"

namespace torch::optim {
class Optimizer;
}

namespace moe::nn {

/// What a recording window saw (§2.4). Layers on several ranks sum these before update_experts().
struct RoutingRecords {
  torch::Tensor expert_counts;  ///< R_E [E] int64: activations per slot
  torch::Tensor unrouted_sum;   ///< R_S [d] float32 (float64 for a float64 layer)
  int64_t tokens = 0;           ///< tokens recorded (for logging)
  int64_t unrouted_tokens = 0;  ///< tokens that activated no expert
};

/// The result of one update. Slot indices are those before the update; in resize mode the
/// survivors keep their order and an added expert is appended.
struct ExpertUpdate {
  std::vector<int64_t> removed;
  int64_t added = -1;  ///< the new expert's index after the update, -1 if none was added
  int64_t active_before = 0;
  int64_t active_after = 0;
  bool changed() const { return !removed.empty() || added >= 0; }
};

class TopAnyMoEImpl : public torch::nn::Cloneable<TopAnyMoEImpl> {
 public:
  explicit TopAnyMoEImpl(TopAnyMoEOptions options);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// x: [..., d_model]. Training forwards advance the schedule; an update due in pool mode is
  /// applied at the start of the next forward if apply_expert_updates() was not called.
  MoEOutput forward(const torch::Tensor& x);

  /// Keeps the router in float32 (float64 with float64 experts), like SparseMoE.
  using torch::nn::Module::to;
  void to(torch::Dtype dtype, bool non_blocking = false) override;
  void to(torch::Device device, torch::Dtype dtype, bool non_blocking = false) override;

  /// Starts a recording window (clears the records).
  void begin_recording();
  /// Re-opens a recording window with the records it had so far (a training program resuming
  /// from a checkpoint taken inside a window; see records()). Checked as update_experts() checks.
  void resume_recording(RoutingRecords records);
  /// Ends the window and returns its records.
  RoutingRecords finish_recording();
  bool recording() const { return recording_; }
  const RoutingRecords& records() const { return records_; }

  /// Removes the active experts with zero activations, then adds at most one expert (§2.4).
  /// In resize mode the parameter tensors change size; pass the optimizer that holds them so that
  /// the moments of surviving experts move with them (Adam, AdamW, SGD, RMSprop, Adagrad). Call
  /// between optimizer steps: gradients of the resized tensors are cleared.
  ExpertUpdate update_experts(const RoutingRecords& records,
                              torch::optim::Optimizer* optimizer = nullptr);
  /// Whether a schedule has finished a window whose update is not applied yet.
  bool update_pending() const { return pending_; }
  /// The records of the finished window whose update is pending.
  const RoutingRecords& pending_records() const { return pending_records_; }
  /// Applies the pending update (no-op without one).
  ExpertUpdate apply_pending_update(torch::optim::Optimizer* optimizer = nullptr);

  /// Resize mode: sets the number of experts to n, keeping the first min(n, E); new slots get zero
  /// rows (a zero representation never fires) until a checkpoint fills them; recording stops.
  /// Used to load a checkpoint whose expert count differs. Pool mode: error.
  void resize_experts(int64_t n);

  int64_t num_slots() const { return router->num_slots(); }
  int64_t num_active_experts() const { return router->num_active(); }
  /// Training forwards so far: the buffer `forward_count`, saved with checkpoints. (The records of
  /// an open recording window are not module state: a program that checkpoints inside a window
  /// saves records() itself and calls resume_recording(), as `moe train` does.)
  int64_t forward_count() const { return forward_count_.item<int64_t>(); }

  TopAnyMoEOptions options;
  TopAnyRouter router = nullptr;
  ExpertBank experts = nullptr;

 private:
  void record(const torch::Tensor& x, const TopAnyRouting& r);
  ExpertUpdate update_pool(const RoutingRecords& rec, torch::optim::Optimizer* optimizer);
  ExpertUpdate update_resize(const RoutingRecords& rec, torch::optim::Optimizer* optimizer);
  void check_records(const RoutingRecords& rec) const;
  void copy_template_into(int64_t slot);

  std::vector<torch::Tensor> template_;  // w1, w2, w3, b1, b2 of the initial network (or undefined)
  RoutingRecords records_;
  RoutingRecords pending_records_;
  bool recording_ = false;
  bool pending_ = false;
  torch::Tensor forward_count_;  // buffer "forward_count" [1] int64
};
TORCH_MODULE(TopAnyMoE);

/// Applies the pending updates of every TopAnyMoE in `model` (after optimizer.step()). Returns the
/// updates applied, in module order.
std::vector<ExpertUpdate> apply_expert_updates(torch::nn::Module& model,
                                               torch::optim::Optimizer* optimizer = nullptr);

}  // namespace moe::nn
