// Pieces shared by the nn modules: input validation and routing statistics.
#pragma once

#include <torch/types.h>

#include "moe/experts.h"
#include "moe/plan.h"
#include "moe/router.h"
#include "moe/stats.h"

namespace moe::detail {

/// Checks a layer input and returns it as [T, d_model] (any leading dims are flattened).
/// Errors name the layer (`who`), the argument and the value: wrong rank or last dim (c10::Error),
/// non-floating dtype or a dtype other than the experts' (c10::TypeError), device mismatch.
torch::Tensor tokens_2d(const torch::Tensor& x, int64_t d_model, const torch::Tensor& expert_param,
                        const char* who);

/// RoutingStats of one forward pass from the plan and the router's importance and load.
RoutingStats make_stats(const RoutingPlan& plan, const torch::Tensor& importance,
                        const torch::Tensor& load, int64_t assigned, int64_t dropped,
                        int64_t skipped_tokens);

/// The part every top-k layer shares after routing: the plan from the router's slots, the expert
/// bank, the statistics. `x` is the layer input (its shape is the output's), `xf` its [T, d] view.
MoEOutput run_routed_experts(const torch::Tensor& x, const torch::Tensor& xf, const RouterOutput& r,
                             ExpertBank& experts);

}  // namespace moe::detail
