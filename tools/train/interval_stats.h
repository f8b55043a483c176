// What `moe train` logs of the steps between two train records of metrics.jsonl (losses, the
// task's metrics, tokens/s, each MoE layer's expert shares, CV, dropped fraction, experts per
// token) and the load of each layer over the whole session, for the summary (docs/cli.md).
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

#include "train/metrics_schema.h"
#include "train/run_training.h"
#include "train/tasks.h"

namespace moe::train {

/// One MoE layer (or multi-task gate) summed over forward passes.
struct LayerAccumulator {
  explicit LayerAccumulator(std::string layer = {}) : name(std::move(layer)) {}
  std::string name;
  torch::Tensor counts;  ///< [E] double: assignments (sparse layers) or summed gate mass (gates)
  double cv = 0, cv_importance = 0, dropped = 0, mean_k = 0, unrouted_tokens = 0, tokens = 0;
  int64_t forwards = 0, active = 0;
  bool sparse = true;

  /// One forward pass over `batch_tokens` tokens. A changed expert count (DynMoE's resize mode)
  /// starts over.
  void add(const LayerProbe& p, int64_t batch_tokens);
  /// The layer's entry of a train record: name, share per expert, and the means of the statistics
  /// (sparse layers; gates: the CV of the mean gate mass).
  metrics::LayerRecord record() const;
};

class IntervalStats {
 public:
  /// One training step.
  void add(const ModelOutput& out, const Metrics& batch_metrics, double task_loss, double aux_loss,
           int64_t tokens);
  bool empty() const { return steps_ == 0; }
  /// The train record of the interval (metrics::TrainRecord), then a fresh interval.
  nlohmann::json flush(int64_t step, double elapsed, double interval_seconds, double lr);
  /// Load over the whole session (since the start or the resume).
  std::vector<LayerLoad> run_load() const;

 private:
  std::vector<LayerAccumulator> layers_, run_;
  std::map<std::string, double> metrics_;
  double task_loss_ = 0, aux_loss_ = 0;
  int64_t tokens_ = 0, steps_ = 0;
};

}  // namespace moe::train
