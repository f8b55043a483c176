// The engine's hot path: dispatch → grouped expert GEMMs → weighted combine, and its backward, as
// one custom autograd function over a RoutingPlan (see include/moe/functional.h).
//
// Forward per expert segment [o_e, o_{e+1}) of the plan:
//   xg = x[token_index]                       gather, [P, d]
//   h  = xg·w1[e] + b1[e]      (g = xg·w3[e])  [P, h]
//   a  = act(h)                (a = act(h)*g)
//   o  = a·w2[e] + b2[e]                       [P, d]
//   y[t] = Σ_{pairs p of t} w_p · o[p]         combine in slot order
// Saved for backward: h (and g) and o; xg and a are recomputed (a gather and an elementwise pass),
// which keeps the saved activations at 2·P·h + P·d values.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "kernels/cpu/kernels.h"
#include "moe/functional.h"

namespace moe::functional {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = moe::kernels::cpu;

// One dtype switch for the whole file (float, double, bfloat16).
template <typename F>
void dispatch_dtype(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t, "expert_mlp", [&] { f(scalar_t(0)); });
}

// out[seg] = a[seg] · b_e (+ bias_e) for every non-empty expert segment.
void segment_mm(const at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
                const at::Tensor& bias, const int64_t* offsets, int64_t E) {
  for (int64_t e = 0; e < E; ++e) {
    const int64_t s = offsets[e], n = offsets[e + 1] - s;
    if (n == 0) continue;
    auto o = out.narrow(0, s, n);
    if (bias.defined()) {
      at::addmm_out(o, bias[e], a.narrow(0, s, n), b[e]);
    } else {
      at::mm_out(o, a.narrow(0, s, n), b[e]);
    }
  }
}

struct ExpertMLPFunction : public torch::autograd::Function<ExpertMLPFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& pair_weight, const at::Tensor& w1,
                            const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& b1,
                            const at::Tensor& b2, const RoutingPlan& plan, Activation act) {
    const int64_t T = x.size(0), d = x.size(1), h = w1.size(2), E = w1.size(0);
    const int64_t P = plan.num_pairs();
    const bool gated = is_gated(act);
    const bool has_b1 = b1.numel() > 0, has_b2 = b2.numel() > 0;
    const auto opts = x.options();
    const auto xc = x.contiguous();
    const auto wc = pair_weight.contiguous();
    const int64_t* offsets = plan.expert_offsets.data_ptr<int64_t>();

    auto xg = at::empty({P, d}, opts);
    auto hpre = at::empty({P, h}, opts);
    auto gpre = gated ? at::empty({P, h}, opts) : at::Tensor();
    auto a = at::empty({P, h}, opts);
    auto o = at::empty({P, d}, opts);
    auto y = at::empty({T, d}, opts);
    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      k::gather_rows<T_>(xc.data_ptr<T_>(), plan.token_index.data_ptr<int64_t>(), P, d,
                         xg.data_ptr<T_>());
      segment_mm(hpre, xg, w1, has_b1 ? b1 : at::Tensor(), offsets, E);
      if (gated) segment_mm(gpre, xg, w3, at::Tensor(), offsets, E);
      k::activation_forward<T_>(act, hpre.data_ptr<T_>(), gated ? gpre.data_ptr<T_>() : nullptr,
                                P * h, a.data_ptr<T_>());
      segment_mm(o, a, w2, has_b2 ? b2 : at::Tensor(), offsets, E);
      k::combine_rows<T_>(o.data_ptr<T_>(), wc.data_ptr<T_>(),
                          plan.token_offsets.data_ptr<int64_t>(),
                          plan.token_pairs.data_ptr<int64_t>(), T, d, y.data_ptr<T_>());
    });

    ctx->save_for_backward({xc, wc, w1, w2, w3, hpre, gpre, o});
    ctx->saved_data["act"] = static_cast<int64_t>(act);
    ctx->saved_data["has_b1"] = has_b1;
    ctx->saved_data["has_b2"] = has_b2;
    ctx->saved_data["expert_offsets"] = plan.expert_offsets;
    ctx->saved_data["token_index"] = plan.token_index;
    ctx->saved_data["token_offsets"] = plan.token_offsets;
    ctx->saved_data["token_pairs"] = plan.token_pairs;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& pw = saved[1];
    const auto& w1 = saved[2];
    const auto& w2 = saved[3];
    const auto& w3 = saved[4];
    const auto& hpre = saved[5];
    const auto& gpre = saved[6];
    const auto& o = saved[7];
    const auto act = static_cast<Activation>(ctx->saved_data["act"].toInt());
    const bool has_b1 = ctx->saved_data["has_b1"].toBool();
    const bool has_b2 = ctx->saved_data["has_b2"].toBool();
    const auto expert_offsets = ctx->saved_data["expert_offsets"].toTensor();
    const auto token_index = ctx->saved_data["token_index"].toTensor();
    const auto token_offsets = ctx->saved_data["token_offsets"].toTensor();
    const auto token_pairs = ctx->saved_data["token_pairs"].toTensor();
    const bool gated = is_gated(act);

    const auto dy = grads[0].contiguous();
    const int64_t T = x.size(0), d = x.size(1), h = w1.size(2), E = w1.size(0);
    const int64_t P = token_index.size(0);
    const auto opts = x.options();
    const int64_t* offsets = expert_offsets.data_ptr<int64_t>();
    const int64_t* tok = token_index.data_ptr<int64_t>();

    // Zero-initialised so experts with no tokens get zero (never uninitialised) gradients.
    auto dw1 = at::zeros_like(w1), dw2 = at::zeros_like(w2);
    auto dw3 = gated ? at::zeros_like(w3) : at::Tensor();
    auto db1 = has_b1 ? at::zeros({E, h}, opts) : at::Tensor();
    auto db2 = has_b2 ? at::zeros({E, d}, opts) : at::Tensor();
    auto dpw = at::empty({P}, opts);
    auto dx = at::empty({T, d}, opts);
    auto dout = at::empty({P, d}, opts);
    auto a = at::empty({P, h}, opts);
    auto da = at::empty({P, h}, opts);
    auto dg = gated ? at::empty({P, h}, opts) : at::Tensor();
    auto xg = at::empty({P, d}, opts);
    auto dxg = at::empty({P, d}, opts);

    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      // Combine adjoints: d o[p] = w_p · dy[t_p];  d w_p = <dy[t_p], o[p]>.
      k::gather_scale_rows<T_>(dy.data_ptr<T_>(), tok, pw.data_ptr<T_>(), P, d,
                               dout.data_ptr<T_>());
      k::gather_dot_rows<T_>(dy.data_ptr<T_>(), tok, o.data_ptr<T_>(), P, d, dpw.data_ptr<T_>());
      k::activation_forward<T_>(act, hpre.data_ptr<T_>(), gated ? gpre.data_ptr<T_>() : nullptr,
                                P * h, a.data_ptr<T_>());
      k::gather_rows<T_>(x.data_ptr<T_>(), tok, P, d, xg.data_ptr<T_>());
      for (int64_t e = 0; e < E; ++e) {
        const int64_t s = offsets[e], n = offsets[e + 1] - s;
        if (n == 0) continue;
        const auto dout_e = dout.narrow(0, s, n);
        auto dw2_e = dw2[e];
        auto da_e = da.narrow(0, s, n);
        at::mm_out(dw2_e, a.narrow(0, s, n).t(), dout_e);
        if (has_b2) {
          auto db2_e = db2[e];
          at::sum_out(db2_e, dout_e, 0);
        }
        at::mm_out(da_e, dout_e, w2[e].t());
      }
      // da → dh (in place) and dg.
      k::activation_backward<T_>(act, hpre.data_ptr<T_>(), gated ? gpre.data_ptr<T_>() : nullptr,
                                 da.data_ptr<T_>(), P * h, da.data_ptr<T_>(),
                                 gated ? dg.data_ptr<T_>() : nullptr);
      for (int64_t e = 0; e < E; ++e) {
        const int64_t s = offsets[e], n = offsets[e + 1] - s;
        if (n == 0) continue;
        const auto xg_e = xg.narrow(0, s, n);
        const auto dh_e = da.narrow(0, s, n);
        auto dw1_e = dw1[e];
        at::mm_out(dw1_e, xg_e.t(), dh_e);
        if (has_b1) {
          auto db1_e = db1[e];
          at::sum_out(db1_e, dh_e, 0);
        }
        auto dxg_e = dxg.narrow(0, s, n);
        at::mm_out(dxg_e, dh_e, w1[e].t());
        if (gated) {
          const auto dg_e = dg.narrow(0, s, n);
          auto dw3_e = dw3[e];
          at::mm_out(dw3_e, xg_e.t(), dg_e);
          dxg_e.addmm_(dg_e, w3[e].t());
        }
      }
      // dx[t] = Σ_{pairs of t} dxg[p], in slot order (deterministic).
      k::combine_rows<T_>(dxg.data_ptr<T_>(), nullptr, token_offsets.data_ptr<int64_t>(),
                          token_pairs.data_ptr<int64_t>(), T, d, dx.data_ptr<T_>());
    });
    return {dx, dpw, dw1, dw2, dw3, db1, db2, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

torch::Tensor expert_mlp(const torch::Tensor& x, const RoutingPlan& plan,
                         const torch::Tensor& pair_weight, const ExpertWeights& w,
                         Activation activation) {
  TORCH_CHECK(x.dim() == 2, "expert_mlp: x must be [T, d], got ", x.sizes());
  const int64_t T = x.size(0), d = x.size(1);
  TORCH_CHECK(plan.num_tokens == T, "expert_mlp: the plan is for ", plan.num_tokens,
              " tokens but x has ", T);
  TORCH_CHECK(w.w1.defined() && w.w1.dim() == 3 && w.w1.size(1) == d,
              "expert_mlp: w1 must be [E, d=", d, ", h], got ",
              w.w1.defined() ? w.w1.sizes() : at::IntArrayRef{});
  const int64_t E = w.w1.size(0), h = w.w1.size(2);
  TORCH_CHECK(plan.num_experts == E, "expert_mlp: the plan is for ", plan.num_experts,
              " experts but w1 has ", E);
  TORCH_CHECK(w.w2.defined() && w.w2.sizes() == at::IntArrayRef({E, h, d}),
              "expert_mlp: w2 must be [", E, ", ", h, ", ", d, "], got ",
              w.w2.defined() ? w.w2.sizes() : at::IntArrayRef{});
  if (is_gated(activation)) {
    TORCH_CHECK(w.w3.defined() && w.w3.sizes() == w.w1.sizes(), "expert_mlp: activation ",
                to_string(activation), " needs w3 of shape ", w.w1.sizes());
  }
  if (w.b1.defined())
    TORCH_CHECK(w.b1.sizes() == at::IntArrayRef({E, h}), "expert_mlp: b1 must be [", E, ", ", h,
                "], got ", w.b1.sizes());
  if (w.b2.defined())
    TORCH_CHECK(w.b2.sizes() == at::IntArrayRef({E, d}), "expert_mlp: b2 must be [", E, ", ", d,
                "], got ", w.b2.sizes());
  TORCH_CHECK(pair_weight.dim() == 1 && pair_weight.size(0) == plan.num_pairs(),
              "expert_mlp: pair_weight must be [P=", plan.num_pairs(), "], got ",
              pair_weight.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
                   "expert_mlp: x must be float32, float64 or bfloat16, got ", dt);
  for (const auto* t : {&pair_weight, &w.w1, &w.w2, &w.w3, &w.b1, &w.b2}) {
    if (!t->defined()) continue;
    TORCH_CHECK_TYPE(t->scalar_type() == dt, "expert_mlp: every tensor must have x's dtype ", dt,
                     ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), "expert_mlp: input on ", x.device(), " but a weight on ",
                t->device());
  }
  TORCH_CHECK(x.device().is_cpu(), "expert_mlp: only the CPU backend is built, got x on ",
              x.device());
  // Custom autograd functions cannot take undefined inputs: absent optional weights travel as empty
  // placeholders (a real b1/b2/w3 is never empty) and get an undefined gradient.
  const auto absent = at::empty({0}, x.options());
  auto or_absent = [&](const at::Tensor& t) { return t.defined() ? t : absent; };
  return ExpertMLPFunction::apply(x, pair_weight, w.w1, w.w2, or_absent(w.w3), or_absent(w.b1),
                                  or_absent(w.b2), plan, activation);
}

}  // namespace moe::functional
