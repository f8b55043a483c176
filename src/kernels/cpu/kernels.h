// CPU kernels of the sparse MoE engine: raw pointers and sizes in, nothing out but the buffers.
//
// No torch frontend header here (docs/design.md §2): the core wraps these with Tensor checks. Every
// kernel is deterministic: each output element is written by one task, and a token's contributions
// are summed in a fixed order (the plan's expert-major order), never with atomics.
//
// Scalar types: float, double and c10::BFloat16 (accumulation in float for bf16).
#pragma once

#include <cstdint>

namespace moe::kernels::cpu {

/// dst[i, :] = src[index[i], :] for i < n.   src [*, d], dst [n, d], both row-major, contiguous.
template <typename T>
void gather_rows(const T* src, const int64_t* index, int64_t n, int64_t d, T* dst);

/// dst[index[i], :] += w[i] * src[i, :] for i < n, in i order (w == nullptr: w = 1). src [n, d] of
/// type T; dst [*, d] of the accumulation type A (float for bf16). The same dst row may occur
/// several times in index: tasks split the columns, so every dst element is updated by one task in
/// i order, whatever the thread count.
template <typename T, typename A>
void scatter_add_rows(const T* src, const int64_t* index, const T* w, int64_t n, int64_t d, A* dst);

/// What hidden_output_backward does after scaling by the pair weight.
enum class HiddenGrad {
  kPlain,  ///< nothing: the caller applies f'(h)
  kReLU,   ///< g *= (a > 0), the ReLU derivative from its output a = relu(h)
  kGated,  ///< a = f(h)·u: f = f·g (now dL/du), g = g·u (dL/df(h); the caller applies f'(h))
};

/// Backward through an expert's combine weight and its hidden output a [n, h], one pass per row
/// i < n over the width h, fused because each pass over [n, h] costs as much as the pair-weight
/// gradient itself:
///   dot[i] = <g[i, :], a[i, :]>   g = dL/do·w2ᵀ before the pair weight: dL/dw_i = dot[i] (+ bias)
///   g[i, :] *= w[i]               dL/da
///   then the `mode` step. f and u are used only for kGated ([n, h] each). g must not overlap a,
///   f or u.
template <typename T>
void hidden_output_backward(T* g, const T* a, const T* w, int64_t n, int64_t h, T* dot,
                            HiddenGrad mode, T* f, const T* u);

/// Row-wise top-k of a [rows, cols] matrix, largest first; ties go to the lowest column index.
/// Writes idx [rows, k] and val [rows, k]. Values must not be NaN (callers check finiteness first).
template <typename T>
void topk_rows(const T* v, int64_t rows, int64_t cols, int64_t k, int64_t* idx, T* val);

/// Fused softmax top-k router pass, one token per task (docs/algorithms.md §5.1, §5.2, §5.3):
/// lse[t] = logsumexp(logits[t]); idx[t] = the k largest logits (ties to the lowest index);
/// gate[t, j] = softmax(logits[t])[idx[t, j]], renormalised over the k when `normalize`.
/// Logits must be finite (callers check first).
template <typename T>
void topk_softmax_forward(const T* logits, int64_t rows, int64_t cols, int64_t k, bool normalize,
                          int64_t* idx, T* gate, T* lse);

/// Backward of topk_softmax_forward: dlogits from dgate [rows, k] and (optional, may be null) dlse.
///   normalize:  dl[i_j] = gate_j (dgate_j - Σ_j' dgate_j' gate_j'), 0 elsewhere
///   otherwise:  dl[m]   = p_m (G_m - Σ_j dgate_j gate_j), G_m = dgate_j if m = i_j else 0
///   plus dlse[t] · p_m for the log-sum-exp output.
template <typename T>
void topk_softmax_backward(const T* logits, const T* lse, const int64_t* idx, const T* gate,
                           const T* dgate, const T* dlse, int64_t rows, int64_t cols, int64_t k,
                           bool normalize, T* dlogits);

/// Counting sort of router slots into the expert-major CSR of a RoutingPlan.
/// expert_index [num_slots] holds an expert id in [0, E) or -1 (unused slot).
/// Writes expert_offsets [E+1], pair_slot [P] (slot of each pair, ascending within an expert) and
/// slot_pair [num_slots] (position of each slot's pair, or -1). Returns P.
/// Precondition: ids are in range (the caller validates).
int64_t build_expert_major(const int64_t* expert_index, int64_t num_slots, int64_t num_experts,
                           int64_t* expert_offsets, int64_t* pair_slot, int64_t* slot_pair);

}  // namespace moe::kernels::cpu
