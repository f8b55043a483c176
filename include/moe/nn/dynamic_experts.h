// DynMoE's self-tuning expert set (Guo et al. 2024; docs/algorithms.md §2.4), a component of the
// routed layer that TopAnyMoE builds (moe/nn/top_any_moe.h).
//
// While recording, it counts each expert's activations (R_E) and sums the raw inputs of tokens that
// activated no expert (R_S); an update removes every active expert with R_E = 0 and then adds at
// most one expert whose representation is R_S/||R_S|| and whose threshold is 0. In pool mode a
// mask switches experts of a fixed pool on and off; in resize mode the parameter tensors shrink
// and grow, carrying the optimizer state of surviving experts.
//
// Buffers it registers on its layer: forward_count [1] (the schedule's position) and, in resize
// mode with copied experts, expert_template_w1/w2/w3/b1/b2 (the network new experts copy).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "moe/experts.h"
#include "moe/nn/buffer_counter.h"
#include "moe/nn/routed_moe.h"
#include "moe/nn/top_any_moe_options.h"
#include "moe/routers/top_any_router.h"

namespace torch::optim {
class Optimizer;
}

namespace moe::nn {

/// What a recording window saw (§2.4). Layers on several ranks sum these before update_experts().
struct RoutingRecords {
  torch::Tensor expert_counts;  ///< R_E [E] int64: activations per expert
  torch::Tensor unrouted_sum;   ///< R_S [d] float32 (float64 for a float64 layer)
  int64_t tokens = 0;           ///< tokens recorded (for logging)
  /// Tokens that activated no expert, a 0-dim int64 tensor (counted without reading the device);
  /// unrouted_tokens() reads it.
  torch::Tensor unrouted_count;
  int64_t unrouted_tokens() const;
};

/// The result of one update. Expert indices are those before the update; in resize mode the
/// survivors keep their order and an added expert is appended.
struct ExpertUpdate {
  std::vector<int64_t> removed;
  int64_t added = -1;  ///< the new expert's index after the update, -1 if none was added
  int64_t active_before = 0;
  int64_t active_after = 0;
  bool changed() const { return !removed.empty() || added >= 0; }
};

class DynamicExpertSet : public LayerComponent {
 public:
  /// Registers the buffers on `layer`, whose router must be `router` and experts `experts`.
  DynamicExpertSet(RoutedMoEImpl& layer, TopAnyRouterImpl& router, ExpertBank experts,
                   TopAnyMoEOptions options);

  /// Copies expert 0 into every expert (copy_initial_expert) and into the template; clears the
  /// records and the schedule's position.
  void reset_parameters();

  // LayerComponent: an update due in pool mode is applied before the next forward; training
  // forwards advance the schedule, open and close recording windows.
  void before_routing(RoutedMoEImpl& layer) override;
  void after_routing(RoutedMoEImpl& layer, const torch::Tensor& tokens,
                     const RoutingResult& routing) override;
  void after_forward(RoutedMoEImpl& layer) override;
  void before_distributing(RoutedMoEImpl& layer, dist::ProcessGroup& group) override;

  void begin_recording();
  void resume_recording(RoutingRecords records);
  RoutingRecords finish_recording();
  bool recording() const { return recording_; }
  const RoutingRecords& records() const { return records_; }

  ExpertUpdate update_experts(const RoutingRecords& records, torch::optim::Optimizer* optimizer);
  bool update_pending() const { return pending_; }
  const RoutingRecords& pending_records() const { return pending_records_; }
  ExpertUpdate apply_pending_update(torch::optim::Optimizer* optimizer);
  RoutingRecords discard_pending_update();
  void resize_experts(int64_t n);

  int64_t num_experts() const { return router_->num_experts(); }
  int64_t forward_count() const { return forward_count_.get(); }
  const TopAnyMoEOptions& options() const { return options_; }
  /// Changes the update schedule from now on.
  void set_schedule(ExpertSchedule schedule) { options_.schedule(schedule); }

 private:
  ExpertUpdate update_pool(const RoutingRecords& rec, torch::optim::Optimizer* optimizer);
  ExpertUpdate update_resize(const RoutingRecords& rec, torch::optim::Optimizer* optimizer);
  void reinit_expert(int64_t e, torch::optim::Optimizer* optimizer);
  void check_records(const RoutingRecords& rec) const;

  TopAnyRouterImpl* router_;  // owned by the layer
  ExpertBank experts_;
  TopAnyMoEOptions options_;
  bool training_ = false;
  std::vector<torch::Tensor> template_;  // w1, w2, w3, b1, b2 of the initial network (or undefined)
  RoutingRecords records_;
  RoutingRecords pending_records_;
  bool recording_ = false;
  bool pending_ = false;
  BufferCounter forward_count_;  // buffer "forward_count" [1] int64
};

}  // namespace moe::nn
