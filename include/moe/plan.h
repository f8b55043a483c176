// RoutingPlan: the one data structure between routing and expert compute (docs/design.md §1).
//
// A router fills K slots per token (slot s of token t has flat id t*K + s); each slot names an
// expert or is unused (-1: not chosen, dropped by capacity, or a skipped token). The plan lists the
// used slots as (token, expert) pairs in expert-major CSR order, plus the token-major inverse
// (docs/design.md §1) for kernels that work per token (the CPU engine sums expert by expert and
// uses only the expert-major view). A variable number of experts per token is just a ragged plan.
// Nothing of size T·E·capacity is ever allocated.
#pragma once

#include <torch/types.h>

#include <cstdint>

namespace moe {

/// How build_routing_plan lays out the pairs.
enum class PlanLayout {
  /// Exactly the P used slots (counting sort on the host; the plan's tensors are on the CPU).
  kCompact,
  /// One row for each of the S = T·K slots, built on expert_index's device with device operations
  /// only (a stable sort, a histogram and prefix sums): no size is read back, so no host
  /// synchronisation. The P used slots come first, in the compact plan's order; the S − P rows
  /// after them are padding (the unused slots, pair_expert = E), which the engine skips and
  /// pair_weights weighs 0. P itself is expert_offsets[E], on the device.
  kPadded,
  /// What the layers use for expert_index's device: kCompact on the CPU's own path, kPadded on
  /// the portable path (every other device; docs/gpu.md).
  kForDevice,
};

struct RoutingPlan {
  int64_t num_tokens = 0;       ///< T
  int64_t num_experts = 0;      ///< E
  int64_t slots_per_token = 0;  ///< K: router slots per token (the width of expert_index)
  bool padded = false;          ///< PlanLayout::kPadded: rows past expert_offsets[E] are padding

  // Expert-major view (rows = P, or S when padded). Pairs of one expert are ordered by slot id,
  // hence by token.
  torch::Tensor expert_offsets;  ///< [E+1] int64: pairs of expert e are [offsets[e], offsets[e+1])
  torch::Tensor token_index;     ///< [rows] int64: token of each pair
  torch::Tensor pair_slot;       ///< [rows] int64: flat slot id (t*K + s) each pair came from
  torch::Tensor pair_expert;     ///< [rows] int64: expert of each pair (E for padding)

  // Token-major view: the pairs of token t, in slot order, are token_pairs[token_offsets[t] ..
  // token_offsets[t+1]).
  torch::Tensor token_offsets;  ///< [T+1] int64
  torch::Tensor token_pairs;  ///< [rows] int64: pair positions (indices into the expert-major view)

  /// The length of the pair tensors: P for a compact plan, T·K for a padded one.
  int64_t num_rows() const { return token_index.defined() ? token_index.size(0) : 0; }
  /// Pairs per expert, [E] int64.
  torch::Tensor tokens_per_expert() const;
  /// Pairs per token, [T] int64.
  torch::Tensor experts_per_token() const;
};

/// Builds a plan from a router's slot table.
/// expert_index: [T, K] int64 with values in [0, E) or -1 for an unused slot. Ids out of range are
/// rejected with the offending values in the message; a padded plan on the portable path (every
/// device but the CPU, docs/gpu.md) rejects them by a device-side assertion instead, which reads
/// nothing back.
RoutingPlan build_routing_plan(const torch::Tensor& expert_index, int64_t num_experts,
                               PlanLayout layout = PlanLayout::kCompact);

/// The combine weight of every pair in plan order, [rows] (0 for padding), differentiable w.r.t.
/// gate.
/// gate: [T, K] (same slot layout as the expert_index the plan was built from).
torch::Tensor pair_weights(const RoutingPlan& plan, const torch::Tensor& gate);

/// Checks every invariant of a plan (sizes, dtypes, offsets monotone, indices in range, the two
/// views inverse to each other, padding rows naming unused slots). Throws c10::Error naming the
/// broken field. For plans built outside build_routing_plan; reads the plan on the host.
void validate_routing_plan(const RoutingPlan& plan);

}  // namespace moe
