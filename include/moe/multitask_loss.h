// The multi-task loss of PLE (Tang et al. 2020, Eq. 8–10; docs/algorithms.md §4.5) and the metrics
// of the multi-task experiments.
//
//   L   = Σ_k ω_k(t) · L_k,   ω_k(t) = ω_{k,0} · γ_k^t
//   L_k = Σ_i δ_k^i loss_k(ŷ_k^i, y_k^i) / max(Σ_i δ_k^i, 1)      (a task with no valid sample: 0)
#pragma once

#include <torch/types.h>

#include <vector>

namespace moe {

enum class TaskType {
  kRegression,  ///< mean squared error on the raw output
  kBinary,      ///< binary cross-entropy on the logit (sigmoid inside, numerically stable)
};

struct MultiTaskLossOptions {
  std::vector<TaskType> types;
  std::vector<double> initial_weights;  ///< ω_{k,0}; empty = all 1
  std::vector<double> decay;            ///< γ_k; empty = all 1 (constant weights)
};

class MultiTaskLoss {
 public:
  explicit MultiTaskLoss(MultiTaskLossOptions options);
  /// outputs: one [T] or [T, 1] tensor per task; targets [T, K]; mask [T, K] (bool or 0/1, may be
  /// undefined = all valid); t: the step or epoch of the weight decay (the caller chooses which).
  /// Returns the weighted total; *per_task (optional) receives the unweighted L_k.
  torch::Tensor operator()(const std::vector<torch::Tensor>& outputs, const torch::Tensor& targets,
                           const torch::Tensor& mask, int64_t t,
                           std::vector<torch::Tensor>* per_task = nullptr) const;
  double weight(int64_t task, int64_t t) const;
  int64_t num_tasks() const { return static_cast<int64_t>(options_.types.size()); }

 private:
  MultiTaskLossOptions options_;
};

/// Area under the ROC curve of `scores` for binary `labels` (ties count one half), over the entries
/// where `mask` is set (undefined = all). NaN when only one class is present.
double auc(const torch::Tensor& scores, const torch::Tensor& labels,
           const torch::Tensor& mask = {});
/// Mean squared error over the masked entries (NaN when none).
double masked_mse(const torch::Tensor& pred, const torch::Tensor& target,
                  const torch::Tensor& mask = {});
/// Pearson correlation of two vectors.
double pearson(const torch::Tensor& a, const torch::Tensor& b);

}  // namespace moe
