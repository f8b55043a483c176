// The DynMoE auto-tuning experiment (docs/dynmoe.md): a TopAnyMoE that starts with E_0 experts
// learns a ClusterRegression task, next to softmax top-k SparseMoE baselines with fixed E. Shared
// by the example program (examples/dynmoe_autotune.cpp) and the test that asserts what the
// mechanism guarantees (tests/dynmoe/test_autotune.cpp).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "moe/data/cluster_regression.h"
#include "moe/nn/expert_schedule.h"
#include "moe/nn/top_any_moe_options.h"

namespace moe::experiments {

struct AutotuneConfig {
  data::ClusterRegressionOptions task;
  int64_t steps = 3000;
  int64_t batch = 128;
  int64_t test_size = 4096;
  int64_t hidden = 32;
  double lr = 3e-3;  ///< Adam, cosine decay to 0 over the run
  int64_t initial_experts = 2;
  int64_t max_experts = 16;
  int64_t window = 20;  ///< ExpertSchedule::window(window, period)
  int64_t period = 60;
  nn::ExpertStorage storage = nn::ExpertStorage::kResize;
  TopAnyTemperature temperature = TopAnyTemperature::kFrozen;
  double aux_loss_coef = 0.01;
  bool copy_initial_expert = true;
  bool tutel_losses = false;
  uint64_t seed = 1;  ///< model initialisation and the order of training batches
  /// Optional shift: from step shift_step on, only the first shift_clusters clusters are drawn
  /// (0 = no shift). Experts that served the others go idle and are removed.
  int64_t shift_step = 0;
  int64_t shift_clusters = 0;
  /// Diagnostic (0 = off): from this step on, the router is frozen (its parameters get no update)
  /// and no expert is added or removed, so only the experts train, on a fixed routing.
  int64_t freeze_router_step = 0;
};

/// The state of the DynMoE layer after one training step.
struct AutotunePoint {
  int64_t step = 0;
  int64_t active = 0;   ///< active experts after the step's update (if any)
  double mean_k = 0;    ///< experts per token in the step
  double unrouted = 0;  ///< fraction of tokens with no expert in the step
  double loss = 0;      ///< training MSE of the step
  bool added = false, removed = false;
  // When an update ran after this step: what its recording window saw.
  bool updated = false;
  int64_t window_unrouted = 0;  ///< tokens that activated no expert
  int64_t window_idle = 0;      ///< active experts with no activation
  int64_t removed_count = 0;
};

struct AutotuneResult {
  std::vector<AutotunePoint> history;  ///< every step
  double test_mse = 0;                 ///< eval mode, on the held-out test set (all clusters)
  double test_mean_k = 0;
  double test_unrouted = 0;    ///< fraction of test tokens that fired no expert (argmax fallback)
  double test_mse_routed = 0;  ///< test MSE over the tokens that fired at least one expert
  int64_t final_active = 0;
};

/// Trains the TopAnyMoE; `on_step` (optional) sees each point as it happens.
AutotuneResult train_dynmoe(const AutotuneConfig& c,
                            const std::function<void(const AutotunePoint&)>& on_step = {});
/// Trains a softmax top-k SparseMoE with E experts and returns its test MSE.
double train_topk(const AutotuneConfig& c, int64_t num_experts, int64_t top_k);

}  // namespace moe::experiments
