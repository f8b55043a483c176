// The CPU engine's path for many small experts (Shazeer's regime: thousands of experts with a few
// rows each), used by the CPU backend in place of its per-expert driver (small_experts.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/backend.h"

namespace moe::engine::cpu {

struct Pass;

/// True when the experts of this pass are small enough for the batched path: the parallel
/// schedule, float32 or float64 computed in the stored dtype, contiguous stacked weights, the
/// process's BLAS reachable directly (blas.h), and at most kSmallExpertRows rows per expert on
/// average (decided from the plan alone, never from the thread count). MOE_SMALL_EXPERTS=0 turns
/// the path off, =1 takes it whenever the rest allows (benchmarks, tests).
bool use_small_experts(const ExpertProblem& p, const Pass& ps);

/// The forward and backward of CpuBackend on the batched path: same contract and results (up to
/// rounding) as the per-expert driver.
ForwardResult small_experts_forward(const ExpertProblem& p, const Pass& ps, bool keep_hidden);
ExpertGradients small_experts_backward(const ExpertProblem& p, const Pass& ps,
                                       const SavedHidden& hidden, const at::Tensor& dy,
                                       const WantedGradients& want);

}  // namespace moe::engine::cpu
