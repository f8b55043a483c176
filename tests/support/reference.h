// Independent references for the tests: dense computations in float64 with plain LibTorch ops.
// Nothing here calls the library's engine, routers or kernels.
#pragma once

#include <torch/types.h>

#include "moe/types.h"

namespace moe::testing {

/// f(h) of an activation written out from its definition (GELU exact, SiLU = h·sigmoid(h)).
torch::Tensor reference_activation(Activation act, const torch::Tensor& h);

/// Dense MoE reference: every expert evaluated on every token, then mixed by the dense [T, E]
/// matrix M[t, e] = Σ_s gate[t, s]·1{expert_index[t, s] = e} (slots with -1 contribute nothing). x
/// [T, d]; expert_index, gate [T, K]; w1 [E, d, h]; w2 [E, h, d]; w3, b1, b2 optional. Computes in
/// float64 from the given (already dtype-rounded) values.
torch::Tensor dense_moe_reference(const torch::Tensor& x, const torch::Tensor& expert_index,
                                  const torch::Tensor& gate, const torch::Tensor& w1,
                                  const torch::Tensor& w2, const torch::Tensor& w3,
                                  const torch::Tensor& b1, const torch::Tensor& b2, Activation act);

/// Top-k indices of each row by a full stable sort (value descending, index ascending on ties).
torch::Tensor reference_topk_indices(const torch::Tensor& v, int64_t k);

/// Shazeer's P(x, e) (Eq. 9) by loops: for each token, the threshold is the (k+1)-th largest noisy
/// logit if e is in the top k, else the k-th; P = Phi((clean - threshold) / std). All [T, E]
/// float64.
torch::Tensor reference_prob_in_top_k(const torch::Tensor& clean, const torch::Tensor& noisy,
                                      const torch::Tensor& std, int64_t k);

/// A routing table computed by hand: indices [T, k] and gates [T, k] (float64).
struct ReferenceRoute {
  torch::Tensor expert_index;
  torch::Tensor gate;
};

/// Softmax top-k over `logits` (float64): p = softmax; keep the k largest logits (ties to the lower
/// index); gate = p, divided by the kept sum when `normalize`.
ReferenceRoute reference_softmax_route(const torch::Tensor& logits, int64_t k, bool normalize);

/// Noisy top-k (Eq. 3-5): H = clean (+ noise·std); keep the k largest H; gate = softmax over them.
ReferenceRoute reference_noisy_route(const torch::Tensor& clean, const torch::Tensor& noisy,
                                     int64_t k);

/// Capacity with first-choice priority, by loops: slot 0 of every token in token order, then
/// slot 1...
ReferenceRoute reference_capacity(const ReferenceRoute& r, int64_t num_experts, int64_t capacity);

}  // namespace moe::testing
