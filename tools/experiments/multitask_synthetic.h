// The synthetic multi-task experiment of MMoE / PLE (docs/multitask.md): Shared-Bottom, OMoE,
// MMoE, CGC and PLE on MMoESynthetic data at several task correlations.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::experiments {

struct MultitaskConfig {
  int64_t dim = 100;
  int64_t train_size = 20000;
  int64_t test_size = 5000;
  int64_t epochs = 20;
  int64_t batch = 128;
  double lr = 1e-3;
};

struct MultitaskRun {
  std::string model;
  double correlation = 0;    ///< requested p
  double label_pearson = 0;  ///< measured on the training labels
  uint64_t seed = 0;
  int64_t parameters = 0;
  double test_mse[2] = {0, 0};
  /// test MSE / variance of the test labels: comparable across seeds, whose data differ in scale
  double test_nmse[2] = {0, 0};
};

/// The five models of the comparison, in table order.
const std::vector<std::string>& multitask_models();
/// Trains one model on the data of (p, seed) and evaluates it on the test split.
MultitaskRun run_multitask(const MultitaskConfig& c, const std::string& model, double p,
                           uint64_t seed);

}  // namespace moe::experiments
