// Gating functions: the math of the routers, as plain functions over logits (docs/algorithms.md).
//
// Routers (router.h) compose these; tests check them against the paper formulas directly.
// Every function here expects router-precision tensors (float32 or float64) and keeps the graph, so
// gradients flow to the logits through the kept gate values and through the smooth load.
#pragma once

#include <torch/types.h>

#include <cstdint>
#include <tuple>

namespace moe {

/// Row-wise top-k, largest first, ties to the lowest expert index (§1.9). v: [T, E] float/double.
/// Returns (indices [T, k] int64, values [T, k]); values are gathered from v and keep its graph.
std::tuple<torch::Tensor, torch::Tensor> topk_lowest_index(const torch::Tensor& v, int64_t k);

/// Fused softmax top-k in one pass per token (no [T, E] softmax is materialised): returns
/// (indices [T, k], gates [T, k]) with gate = softmax(logits) at the k largest logits (ties to the
/// lowest index), renormalised over the k when `normalize`. Differentiable w.r.t. the logits.
std::tuple<torch::Tensor, torch::Tensor> fused_softmax_top_k(const torch::Tensor& logits, int64_t k,
                                                             bool normalize);

/// Result of a top-k gate: K = k slots per token.
struct TopKGate {
  torch::Tensor expert_index;  ///< [T, k] int64
  torch::Tensor gate;          ///< [T, k] combine weights (differentiable)
  torch::Tensor in_top_k;      ///< [T, E] P(x, e) or the 0/1 choice indicator (noisy gates only)
  torch::Tensor load;          ///< [E] Σ over valid tokens of in_top_k (Shazeer Eq. 10), or counts
};

/// Both gating functions take an optional `valid` [T] bool mask: invalid tokens get no expert
/// (slots -1, gate 0) and are left out of the load.

/// Softmax top-k (§5.1, §5.2): p = softmax(logits); keep the k largest; gate = p of the kept
/// experts, renormalised over them when `normalize` (Mixtral/GShard), raw otherwise (Switch).
/// Runs fused_softmax_top_k; the load is the assignment count.
TopKGate softmax_top_k_gating(const torch::Tensor& logits, int64_t k, bool normalize,
                              const torch::Tensor& valid = {});

/// Shazeer noisy top-k (§1.2, §1.4), following t2t's NoisyTopKGating:
///   std   = softplus(noise_logits) + noise_epsilon
///   H     = clean + noise * std                     (noise: standard normal [T, E], training only)
///   gate  = softmax over the k largest H            (Eq. 3, ties to the lowest index)
///   load  = Σ_x P(x, e), P from the (k+1)-th / k-th largest noisy logits (_ProbInTopK, Eq. 9)
/// With noise undefined (inference, or noisy gating off) H = clean and load is the hard count; the
/// hard count is also used when k >= E.
TopKGate noisy_top_k_gating(const torch::Tensor& clean_logits, const torch::Tensor& noise_logits,
                            const torch::Tensor& noise, int64_t k, double noise_epsilon,
                            const torch::Tensor& valid = {});

/// noisy_top_k_gating fused with its linear maps, for CPU float32/float64 tensors: the same gate,
/// load and gradients, block by block over the tokens with no [T, E] tensor (in_top_k is left
/// undefined). x [T, d] is the router input (invalid rows already zeroed), weight and noise_weight
/// [E, d], bias [E] or undefined. noise_weight undefined: clean top-k (H = clean logits, the load
/// is the hard count). Otherwise the noise is drawn from the default generator block after block,
/// the same numbers as one torch::randn({T, E}). block_rows: rows per block (0 = about 2^21
/// logits per block; rounded up to a multiple of 16).
/// x's rows in a batch split over processes: the noise is one draw of [total_rows, E] for the
/// global batch, of which x's tokens are the rows [row_offset, row_offset + T). Every rank draws
/// the whole noise (the generators of all ranks stay in step) and every world size routes a token
/// alike. Default: x is the whole batch.
struct NoiseRows {
  int64_t row_offset = 0;
  int64_t total_rows = -1;  ///< -1: T
};
TopKGate fused_noisy_top_k_gating(const torch::Tensor& x, const torch::Tensor& weight,
                                  const torch::Tensor& bias, const torch::Tensor& noise_weight,
                                  int64_t k, double noise_epsilon, const torch::Tensor& valid = {},
                                  int64_t block_rows = 0, NoiseRows noise_rows = {});

/// Number of (token, expert) assignments per expert, [E] in `like`'s dtype; -1 slots are ignored.
torch::Tensor assignment_counts(const torch::Tensor& expert_index, int64_t num_experts,
                                const torch::TensorOptions& like);

/// Σ_x G(x)_e: the gate mass per expert, [E], differentiable w.r.t. gate (Shazeer Eq. 6).
/// expert_index, gate: [T, K] (-1: an unused slot).
torch::Tensor importance(const torch::Tensor& expert_index, const torch::Tensor& gate,
                         int64_t num_experts);

/// Expert capacity for T tokens with k slots each: max(min_capacity, ceil(T·k/E ·
/// capacity_factor)). Rejects capacities above 2^31 rows.
int64_t expert_capacity(int64_t num_tokens, int64_t k, int64_t num_experts, double capacity_factor,
                        int64_t min_capacity);

/// Drops assignments beyond `capacity` per expert with first-choice priority: all slot-0 choices
/// are placed first (in token order), then slot 1, and so on. Returns the new index table (-1 where
/// dropped) and the number of dropped assignments (a 0-dim int64 tensor on the table's device, so
/// that nothing is read back on a GPU). Deterministic.
/// `fill_before` [K, E] int64 (optional): the pairs already placed at expert e before slot s of
/// this table begins (a shard of a batch split over processes; docs/distributed.md).
std::tuple<torch::Tensor, torch::Tensor> apply_capacity(const torch::Tensor& expert_index,
                                                        int64_t num_experts, int64_t capacity,
                                                        const torch::Tensor& fill_before = {});

}  // namespace moe
