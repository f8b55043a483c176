#include "baselines.h"

#include <ATen/ATen.h>

#include <cmath>

#include "moe/matmul.h"
#include "moe/plan.h"

namespace moe::bench {

// Every product goes through moe::ops (moe/matmul.h), so that bf16 baselines accumulate in
// float32 on every CPU, as the library does.

torch::Tensor activate(Activation act, const torch::Tensor& h, const torch::Tensor& g) {
  switch (act) {
    case Activation::kReLU:
      return at::relu(h);
    case Activation::kGELU:
      return at::gelu(h);
    case Activation::kSiLU:
      return at::silu(h);
    case Activation::kSwiGLU:
      return at::silu(h) * g;
    case Activation::kGEGLU:
      return at::gelu(h) * g;
  }
  return h;
}

torch::Tensor lib_forward(const Workload& w, bool recompute_hidden) {
  const RoutingPlan plan = build_routing_plan(w.expert_index, w.shape.E);
  const auto pw = pair_weights(plan, w.gate).to(w.dtype);
  return functional::expert_mlp(w.x, plan, pw, w.w, w.shape.act, recompute_hidden);
}

torch::Tensor naive_loop_forward(const Workload& w) {
  const auto& s = w.shape;
  auto out = at::zeros_like(w.x);
  const auto gate = w.gate.to(w.dtype);
  const bool gated = is_gated(s.act);
  for (int64_t e = 0; e < s.E; ++e) {
    const auto nz = at::nonzero(w.expert_index == e);  // [n, 2]: (token, slot)
    if (nz.size(0) == 0) continue;
    const auto tok = nz.select(1, 0), slot = nz.select(1, 1);
    const auto cur = w.x.index_select(0, tok);
    const auto h = ops::mm(cur, w.w1s[e]);
    const auto a = activate(s.act, h, gated ? ops::mm(cur, w.w3s[e]) : torch::Tensor());
    const auto y = ops::mm(a, w.w2s[e]) * gate.index({tok, slot}).unsqueeze(1);
    out.index_add_(0, tok, y);
  }
  return out;
}

DenseDispatch dense_dispatch_forward(const Workload& w, int64_t group, double cf) {
  const auto& s = w.shape;
  const int64_t n = std::min(group, s.T);
  TORCH_CHECK(s.T % n == 0, "dense_dispatch: T=", s.T, " must be a multiple of the group size ", n);
  const int64_t G = s.T / n;
  const int64_t C = static_cast<int64_t>(std::ceil(cf * s.k * n / s.E));
  // Positions are counted in float32 (bf16 cannot count past 256); the tensors fed to the einsums
  // are cast to the workload dtype.
  const auto fopts = w.x.options().dtype(at::kFloat).requires_grad(false);
  const auto idx = w.expert_index.view({G, n, s.k});
  const auto gate = w.gate.to(w.dtype).view({G, n, s.k});

  // Positions in each expert's buffer, first choices of the whole group before second choices.
  auto filled = at::zeros({G, 1, s.E}, fopts);
  torch::Tensor dispatch, combine;
  std::vector<torch::Tensor> kept_slots;
  for (int64_t j = 0; j < s.k; ++j) {
    const auto mask = at::one_hot(idx.select(2, j), s.E).to(at::kFloat);  // [G, n, E]
    const auto pos = at::cumsum(mask, 1) - 1 + filled;                    // [G, n, E]
    const auto keep = mask * (pos < C).to(at::kFloat);
    filled = filled + keep.sum(1, true);
    const auto slot = at::one_hot((pos * keep).sum(2).to(at::kLong).clamp(0, C - 1), C).to(w.dtype);
    const auto d_j = keep.to(w.dtype).unsqueeze(3) * slot.unsqueeze(2);  // [G, n, E, C]
    const auto c_j = d_j * gate.select(2, j).unsqueeze(2).unsqueeze(3);
    dispatch = dispatch.defined() ? dispatch + d_j : d_j;
    combine = combine.defined() ? combine + c_j : c_j;
    kept_slots.push_back(
        at::where(keep.sum(2) > 0, idx.select(2, j), at::full({}, -1, idx.options())));
  }
  const auto x = w.x.view({G, n, s.d});
  auto expert_in = ops::einsum("gnec,gnd->egcd", {dispatch, x}).reshape({s.E, G * C, s.d});
  const auto h = ops::bmm(expert_in, w.w.w1);
  const auto a =
      activate(s.act, h, is_gated(s.act) ? ops::bmm(expert_in, w.w.w3) : torch::Tensor());
  const auto expert_out = ops::bmm(a, w.w.w2).view({s.E, G, C, s.d});
  DenseDispatch r;
  r.output = ops::einsum("gnec,egcd->gnd", {combine, expert_out}).reshape({s.T, s.d});
  r.kept_index = at::stack(kept_slots, 2).view({s.T, s.k});
  r.drop_rate = 1.0 - double((r.kept_index >= 0).sum().item<int64_t>()) / double(s.T * s.k);
  return r;
}

torch::Tensor dense_equiv_forward(const Workload& w, const torch::Tensor& x_rep) {
  const auto& s = w.shape;
  const auto h = ops::mm(x_rep, w.w.w1[0]);
  const auto a = activate(s.act, h, is_gated(s.act) ? ops::mm(x_rep, w.w.w3[0]) : torch::Tensor());
  return ops::mm(a, w.w.w2[0]);
}

}  // namespace moe::bench
