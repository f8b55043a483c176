// Options of the multi-task models (docs/algorithms.md §4): Shared-Bottom, MMoE / OMoE, CGC, PLE.
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>

#include <cstdint>
#include <vector>

namespace moe::nn {

/// How a task gate turns its input into expert weights (§4.1, §4.4, §4.6).
struct TaskGateOptions {
  /// Bias of the gate's linear layer (the papers: softmax(W x), no bias).
  TORCH_ARG(bool, bias) = false;
  /// Compatibility: hidden ReLU layers before the linear layer (DeepCTR-Torch uses {64}).
  TORCH_ARG(std::vector<int64_t>, hidden) = {};
  /// Compatibility: initial value of the gate bias (PaddleRec: 0.1; implies bias).
  TORCH_ARG(c10::optional<double>, bias_init) = c10::nullopt;
  /// 0 = dense softmax (the papers). k > 0: keep each task's k largest weights, renormalised, and
  /// evaluate only the selected experts through a RoutingPlan.
  TORCH_ARG(int64_t, top_k) = 0;
  /// Switch/GShard balance loss E·Σ f·P per sparse gate (sparse gates only).
  TORCH_ARG(double, balance_coef) = 1e-2;
};

/// Example: MMoE m(MMoEOptions(/*d_in=*/100, /*num_experts=*/8, /*num_tasks=*/2)
///                     .expert_hidden({16}).tower_hidden({8}));
struct MMoEOptions {
  MMoEOptions(int64_t d_in, int64_t num_experts, int64_t num_tasks)
      : d_in_(d_in), num_experts_(num_experts), num_tasks_(num_tasks) {}
  TORCH_ARG(int64_t, d_in);
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, num_tasks);
  TORCH_ARG(std::vector<int64_t>, expert_hidden) = {16};  ///< each expert: Linear+ReLU per entry
  TORCH_ARG(std::vector<int64_t>, tower_hidden) = {8};    ///< each tower: Linear+ReLU per entry
  /// Per-task tower widths (overrides tower_hidden); needs exactly num_tasks entries.
  TORCH_ARG(std::vector<std::vector<int64_t>>, towers) = {};
  TORCH_ARG(int64_t, task_output_dim) = 1;  ///< the last Linear of every tower
  /// OMoE (the MMoE paper's ablation): one gate shared by all tasks.
  TORCH_ARG(bool, one_gate) = false;
  TORCH_ARG(TaskGateOptions, gate) = {};
};

/// Example: PLE p(PLEOptions(/*d_in=*/100, /*num_tasks=*/2).levels(2).specific_experts(1)
///                   .shared_experts(1).expert_hidden({16}).tower_hidden({8}));
/// CGC is PLE with levels(1).
struct PLEOptions {
  PLEOptions(int64_t d_in, int64_t num_tasks) : d_in_(d_in), num_tasks_(num_tasks) {}
  TORCH_ARG(int64_t, d_in);
  TORCH_ARG(int64_t, num_tasks);
  TORCH_ARG(int64_t, levels) = 2;
  TORCH_ARG(int64_t, specific_experts) = 1;  ///< m_k, the same for every task
  TORCH_ARG(int64_t, shared_experts) = 1;    ///< m_s
  TORCH_ARG(std::vector<int64_t>, expert_hidden) = {16};
  TORCH_ARG(std::vector<int64_t>, tower_hidden) = {8};
  TORCH_ARG(std::vector<std::vector<int64_t>>, towers) = {};  ///< per task, as in MMoEOptions
  TORCH_ARG(int64_t, task_output_dim) = 1;
  TORCH_ARG(TaskGateOptions, gate) = {};
};

/// Example: SharedBottom s(SharedBottomOptions(100, 2).bottom_hidden({113}).tower_hidden({8}));
struct SharedBottomOptions {
  SharedBottomOptions(int64_t d_in, int64_t num_tasks) : d_in_(d_in), num_tasks_(num_tasks) {}
  TORCH_ARG(int64_t, d_in);
  TORCH_ARG(int64_t, num_tasks);
  TORCH_ARG(std::vector<int64_t>, bottom_hidden) = {16};
  TORCH_ARG(std::vector<int64_t>, tower_hidden) = {8};
  TORCH_ARG(std::vector<std::vector<int64_t>>, towers) = {};  ///< per task, as in MMoEOptions
  TORCH_ARG(int64_t, task_output_dim) = 1;
};

}  // namespace moe::nn
