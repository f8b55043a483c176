#include "support/reference.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace moe::testing {

torch::Tensor reference_activation(Activation act, const torch::Tensor& h) {
  switch (act) {
    case Activation::kReLU:
      return at::clamp_min(h, 0.0);
    case Activation::kGELU:
    case Activation::kGEGLU:
      return 0.5 * h * (1.0 + at::erf(h / std::sqrt(2.0)));
    case Activation::kSiLU:
    case Activation::kSwiGLU:
      return h * at::sigmoid(h);
  }
  return h;
}

torch::Tensor dense_moe_reference(const torch::Tensor& x, const torch::Tensor& expert_index,
                                  const torch::Tensor& gate, const torch::Tensor& w1,
                                  const torch::Tensor& w2, const torch::Tensor& w3,
                                  const torch::Tensor& b1, const torch::Tensor& b2,
                                  Activation act) {
  const auto xd = x.to(at::kDouble);
  const int64_t T = x.size(0), E = w1.size(0);
  // Dense mixing matrix M[t, e] = Σ_s gate[t, s]·1{idx[t, s] = e}, differentiable w.r.t. the gates.
  const auto idx = expert_index.to(at::kCPU);
  const auto used = (idx >= 0).to(at::kDouble);
  const auto M =
      at::zeros({T, E}, xd.options()).scatter_add(1, idx.clamp_min(0), gate.to(at::kDouble) * used);
  auto y = at::zeros_like(xd);
  for (int64_t e = 0; e < E; ++e) {
    auto h = at::matmul(xd, w1[e].to(at::kDouble));
    if (b1.defined()) h = h + b1[e].to(at::kDouble);
    auto a = reference_activation(act, h);
    if (is_gated(act)) a = a * at::matmul(xd, w3[e].to(at::kDouble));
    auto o = at::matmul(a, w2[e].to(at::kDouble));
    if (b2.defined()) o = o + b2[e].to(at::kDouble);
    y = y + M.select(1, e).unsqueeze(1) * o;
  }
  return y;
}

torch::Tensor reference_topk_indices(const torch::Tensor& v, int64_t k) {
  const auto vd = v.detach().to(at::kDouble).to(at::kCPU).contiguous();
  const int64_t T = vd.size(0), E = vd.size(1);
  auto out = at::empty({T, k}, at::kLong);
  auto va = vd.accessor<double, 2>();
  auto oa = out.accessor<int64_t, 2>();
  std::vector<int64_t> order(E);
  for (int64_t t = 0; t < T; ++t) {
    std::iota(order.begin(), order.end(), int64_t(0));
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return va[t][a] > va[t][b]; });
    for (int64_t j = 0; j < k; ++j) oa[t][j] = order[j];
  }
  return out;
}

torch::Tensor reference_prob_in_top_k(const torch::Tensor& clean, const torch::Tensor& noisy,
                                      const torch::Tensor& std, int64_t k) {
  const int64_t T = clean.size(0), E = clean.size(1);
  auto out = at::empty({T, E}, at::kDouble);
  const auto c = clean.to(at::kDouble), h = noisy.to(at::kDouble), s = std.to(at::kDouble);
  auto ca = c.accessor<double, 2>();
  auto ha = h.accessor<double, 2>();
  auto sa = s.accessor<double, 2>();
  auto oa = out.accessor<double, 2>();
  const auto top = reference_topk_indices(h, std::min(k + 1, E));
  auto ta = top.accessor<int64_t, 2>();
  for (int64_t t = 0; t < T; ++t) {
    const double thr_in = ha[t][ta[t][k]], thr_out = ha[t][ta[t][k - 1]];
    for (int64_t e = 0; e < E; ++e) {
      const double thr = ha[t][e] > thr_in ? thr_in : thr_out;
      oa[t][e] = 0.5 * std::erfc(-(ca[t][e] - thr) / sa[t][e] / std::sqrt(2.0));
    }
  }
  return out;
}

ReferenceRoute reference_softmax_route(const torch::Tensor& logits, int64_t k, bool normalize) {
  const auto l = logits.to(at::kDouble);
  const auto p = at::softmax(l, -1);
  ReferenceRoute r;
  r.expert_index = reference_topk_indices(l, k);
  r.gate = p.gather(1, r.expert_index);
  if (normalize) r.gate = r.gate / r.gate.sum(-1, true);
  return r;
}

ReferenceRoute reference_noisy_route(const torch::Tensor& clean, const torch::Tensor& noisy,
                                     int64_t k) {
  (void)clean;
  const auto h = noisy.to(at::kDouble);
  ReferenceRoute r;
  r.expert_index = reference_topk_indices(h, k);
  r.gate = at::softmax(h.gather(1, r.expert_index), -1);
  return r;
}

ReferenceRoute reference_capacity(const ReferenceRoute& r, int64_t num_experts, int64_t capacity) {
  ReferenceRoute out{r.expert_index.clone(), r.gate.clone()};
  auto ia = out.expert_index.accessor<int64_t, 2>();
  auto ga = out.gate.accessor<double, 2>();
  std::vector<int64_t> used(num_experts, 0);
  for (int64_t s = 0; s < out.expert_index.size(1); ++s) {
    for (int64_t t = 0; t < out.expert_index.size(0); ++t) {
      const int64_t e = ia[t][s];
      if (e < 0) continue;
      if (used[e] < capacity) {
        ++used[e];
      } else {
        ia[t][s] = -1;
        ga[t][s] = 0.0;
      }
    }
  }
  return out;
}

}  // namespace moe::testing
