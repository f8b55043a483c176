// CPU kernels of the sparse MoE engine: raw pointers and sizes in, nothing out but the buffers.
//
// No torch frontend header here (DESIGN.md §2): the core wraps these with Tensor checks. Every
// kernel is deterministic: each output element is written by one task, and a token's contributions
// are summed in a fixed order (the plan's token-major order), never with atomics.
//
// Scalar types: float, double and c10::BFloat16 (accumulation in float for bf16).
#pragma once

#include <cstdint>


namespace moe::kernels::cpu {

/// dst[i, :] = src[index[i], :] for i < n.   src [*, d], dst [n, d], both row-major, contiguous.
template <typename T>
void gather_rows(const T* src, const int64_t* index, int64_t n, int64_t d, T* dst);

/// out[t, :] = Σ_{j in [offsets[t], offsets[t+1])} w[pairs[j]] * rows[pairs[j], :]   (w == nullptr:
/// w = 1). rows [P, d], out [T, d]; tokens with no pair get a zero row. The sum runs in j order.
template <typename T>
void combine_rows(const T* rows, const T* w, const int64_t* offsets, const int64_t* pairs,
                  int64_t num_tokens, int64_t d, T* out);

/// dst[p, :] = w[p] * src[index[p], :]   (the adjoint of combine for one pair).
template <typename T>
void gather_scale_rows(const T* src, const int64_t* index, const T* w, int64_t n, int64_t d,
                       T* dst);

/// out[p] = <src[index[p], :], rows[p, :]>   (the gradient of a pair's combine weight).
template <typename T>
void gather_dot_rows(const T* src, const int64_t* index, const T* rows, int64_t n, int64_t d,
                     T* out);

/// Row-wise top-k of a [rows, cols] matrix, largest first; ties go to the lowest column index.
/// Writes idx [rows, k] and val [rows, k]. Values must not be NaN (callers check finiteness first).
template <typename T>
void topk_rows(const T* v, int64_t rows, int64_t cols, int64_t k, int64_t* idx, T* val);

/// Counting sort of router slots into the expert-major CSR of a RoutingPlan.
/// expert_index [num_slots] holds an expert id in [0, E) or -1 (unused slot).
/// Writes expert_offsets [E+1], pair_slot [P] (slot of each pair, ascending within an expert) and
/// slot_pair [num_slots] (position of each slot's pair, or -1). Returns P.
/// Precondition: ids are in range (the caller validates).
int64_t build_expert_major(const int64_t* expert_index, int64_t num_slots, int64_t num_experts,
                           int64_t* expert_offsets, int64_t* pair_slot, int64_t* slot_pair);

}  // namespace moe::kernels::cpu
