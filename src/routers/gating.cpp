// Gating math of the top-k routers (see include/moe/gating.h and docs/algorithms.md §1, §5).
#include "moe/gating.h"

#include <ATen/ATen.h>

#include <cmath>

#include "engine/backend.h"
#include "kernels/cpu/kernels.h"

namespace moe {
namespace {

torch::Tensor one_hot_rows(const torch::Tensor& idx, int64_t E, const torch::TensorOptions& like) {
  auto m = at::zeros({idx.size(0), E}, like);
  return m.scatter_(1, idx, 1.0);
}

// Invalid tokens: no expert, no gate, no load. Then load = Σ over rows of in_top_k.
void finish(TopKGate& g, const torch::Tensor& valid, int64_t E, const torch::TensorOptions& like) {
  if (valid.defined()) {
    TORCH_CHECK(valid.dim() == 1 && valid.size(0) == g.expert_index.size(0) &&
                    valid.scalar_type() == at::kBool,
                "gating: valid must be a bool [T] mask with T=", g.expert_index.size(0), ", got ",
                valid.sizes(), " ", valid.scalar_type());
    const auto v = valid.unsqueeze(1);
    g.expert_index = g.expert_index.masked_fill(~v, -1);
    g.gate = g.gate * v.to(g.gate.scalar_type());
    if (g.in_top_k.defined()) g.in_top_k = g.in_top_k * v.to(g.in_top_k.scalar_type());
  }
  g.load = g.in_top_k.defined() ? g.in_top_k.sum(0) : assignment_counts(g.expert_index, E, like);
}

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> topk_lowest_index(const torch::Tensor& v, int64_t k) {
  TORCH_CHECK(v.dim() == 2, "topk_lowest_index: expected a [T, E] tensor, got ", v.sizes());
  const int64_t T = v.size(0), E = v.size(1);
  TORCH_CHECK_VALUE(k >= 1 && k <= E, "topk_lowest_index: k must be in [1, ", E, "], got ", k);
  TORCH_CHECK_TYPE(v.scalar_type() == at::kFloat || v.scalar_type() == at::kDouble,
                   "topk_lowest_index: expected float32 or float64, got ", v.scalar_type());
  if (engine::portable_path(v.device())) {
    // A stable sort, largest first, keeps equal values in index order: ties go to the lowest index.
    const auto idx = std::get<1>(at::sort(v.detach(), /*stable=*/true, /*dim=*/1,
                                          /*descending=*/true))
                         .narrow(1, 0, k)
                         .contiguous();
    return {idx, v.gather(1, idx)};
  }
  const auto vc = v.detach().contiguous();
  auto idx = at::empty({T, k}, vc.options().dtype(at::kLong));
  auto val = at::empty({T, k}, vc.options());
  AT_DISPATCH_FLOATING_TYPES(vc.scalar_type(), "topk_lowest_index", [&] {
    kernels::cpu::topk_rows<scalar_t>(vc.data_ptr<scalar_t>(), T, E, k, idx.data_ptr<int64_t>(),
                                      val.data_ptr<scalar_t>());
  });
  return {idx, v.gather(1, idx)};
}

torch::Tensor assignment_counts(const torch::Tensor& expert_index, int64_t num_experts,
                                const torch::TensorOptions& like) {
  // A histogram over E + 1 bins, the unused slots (-1) in bin 0: no size depends on the data.
  const auto bins = expert_index.reshape({-1}) + 1;
  return at::zeros({num_experts + 1}, bins.options())
      .scatter_add_(0, bins, at::ones_like(bins))
      .narrow(0, 1, num_experts)
      .to(like);
}

torch::Tensor importance(const torch::Tensor& expert_index, const torch::Tensor& gate,
                         int64_t num_experts) {
  const auto valid = expert_index.reshape({-1}) >= 0;
  const auto idx = expert_index.reshape({-1}).clamp_min(0);
  const auto g = gate.reshape({-1}) * valid.to(gate.scalar_type());
  if (!engine::portable_path(gate.device()))
    return at::zeros({num_experts}, gate.options()).index_add(0, idx, g);
  // Off the CPU index_add adds with atomics, in an order that changes from run to run. Per token
  // instead: a token's row of E receives its experts' gates (distinct experts, as the top-k and
  // hierarchical routers pick them) and exact zeros (unused slots), so the order of its
  // scatter_add does not matter, and the sum over tokens is a plain reduction.
  const int64_t T = expert_index.size(0), K = expert_index.size(1);
  return at::zeros({T, num_experts}, gate.options())
      .scatter_add_(1, idx.view({T, K}), g.view({T, K}))
      .sum(0);
}

TopKGate softmax_top_k_gating(const torch::Tensor& logits, int64_t k, bool normalize,
                              const torch::Tensor& valid) {
  TopKGate out;
  // Selection on the logits, not the probabilities: rounding in a softmax can create ties.
  std::tie(out.expert_index, out.gate) = fused_softmax_top_k(logits, k, normalize);
  finish(out, valid, logits.size(1), logits.options());
  return out;
}

TopKGate noisy_top_k_gating(const torch::Tensor& clean_logits, const torch::Tensor& noise_logits,
                            const torch::Tensor& noise, int64_t k, double noise_epsilon,
                            const torch::Tensor& valid) {
  const int64_t E = clean_logits.size(1);
  const bool noisy = noise.defined();
  TopKGate out;
  torch::Tensor H = clean_logits, noise_std;
  if (noisy) {
    TORCH_CHECK(noise_logits.defined() && noise_logits.sizes() == clean_logits.sizes() &&
                    noise.sizes() == clean_logits.sizes(),
                "noisy_top_k_gating: noise_logits and noise must be ", clean_logits.sizes());
    noise_std = at::softplus(noise_logits) + noise_epsilon;
    H = at::addcmul(clean_logits, noise, noise_std);  // as the fused gate computes it
  }
  // The load estimator needs the (k+1)-th value too (t2t computes min(k+1, E) values).
  const int64_t m = std::min<int64_t>(k + 1, E);
  auto [top_idx, top_val] = topk_lowest_index(H, m);
  out.expert_index = top_idx.slice(1, 0, k).contiguous();
  out.gate = at::softmax(top_val.slice(1, 0, k), -1);

  if (noisy && k < E) {
    // _ProbInTopK: the competitor of expert i is the (k+1)-th largest noisy logit if i is in the
    // top k, else the k-th largest; gradients flow through both thresholds (no stop-gradient).
    const auto threshold_if_in = top_val.slice(1, k, k + 1);   // [T, 1]
    const auto threshold_if_out = top_val.slice(1, k - 1, k);  // [T, 1]
    const auto is_in = at::gt(H, threshold_if_in);             // [T, E]
    const double s2 = std::sqrt(2.0);
    auto phi = [&](const torch::Tensor& thr) {
      return 0.5 * (1.0 + at::erf((clean_logits - thr) / (s2 * noise_std + 1e-20)));
    };
    out.in_top_k = at::where(is_in, phi(threshold_if_in), phi(threshold_if_out));
  } else {
    out.in_top_k = one_hot_rows(out.expert_index, E, clean_logits.options());
  }
  finish(out, valid, E, clean_logits.options());
  return out;
}

}  // namespace moe
