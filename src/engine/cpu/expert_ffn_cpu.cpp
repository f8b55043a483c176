// One expert's feed-forward network on the CPU, read like llm.c: each piece's forward next to its
// backward, then the two passes that chain them for one expert. Per expert, on its n gathered rows:
//
//   first layer    h = xg·w1 + b1  (g = xg·w3)   backward: dxg = dh·w1ᵀ (+ dg·w3ᵀ), dW1, db1, dW3
//   activation     a = f(h)        (f(h)·g)      backward: dh = f'(h)·da (dg = f(h)·da)
//   second layer   o = a·w2 + b2                 backward: da, dW2, db2 and dL/dw_p
//                  (one-layer experts, no w2: o = a; backward: da and dL/dw_p)
//
// The gather of xg, the combine y[t] += w_p·o[p] and, in backward, the gather of dy rows are the
// driver's (cpu_backend.cpp, with engine_schedule.h's run_chunked). Everything here works in the
// compute dtype (gemm.h) on views into scratch (workspace.h).
//
// The expert outputs o are never stored: dL/dw_p = <dy[t], o[p]> equals <dy[t]·w2ᵀ, a[p]> +
// <dy[t], b2>, and backward computes G = dy·w2ᵀ anyway. One fused pass over G gives dL/dw_p, dL/da
// = w_p·G and, for ReLU, dL/dh; for gated units dL/dg and dL/df(h) (kernels/cpu/kernels.h,
// hidden_output_backward).
//
// Activations use ATen's vectorised elementwise kernels (relu/gelu/silu and their backward); a
// scalar loop with erf/exp per element was 10x slower and made the elementwise passes rival the
// GEMMs.
#include "engine/cpu/expert_ffn_cpu.h"

#include <ATen/ATen.h>

#include "engine/cpu/expert_activations.h"
#include "engine/cpu/gemm.h"
#include "kernels/cpu/kernels.h"

namespace moe::engine::cpu {
namespace {

namespace k = moe::kernels::cpu;

// --- first layer
// -----------------------------------------------------------------------------------

// h = xg·w1 + b1 and, for gated units, g = xg·w3, into the given views.
void first_layer_forward(const at::Tensor& xg, const ExpertBlocks& w, at::Tensor& h,
                         at::Tensor& g) {
  gemm_out(h, xg, w.w1, w.b1);
  if (g.defined()) gemm_out(g, xg, w.w3);
}

// From dh = dL/dh (and dg = dL/dg for gated units): dxg = dh·w1ᵀ + dg·w3ᵀ (skipped when dxg is
// undefined: dL/dx not wanted), dW1 = xgᵀ·dh, db1 = Σ dh, dW3 = xgᵀ·dg. The weight gradients may
// overwrite the converted blocks w1, w3 (workspace.h), so they come after dxg.
void first_layer_backward(const at::Tensor& xg, const ExpertBlocks& w, const at::Tensor& dh,
                          const at::Tensor& dg, at::Tensor& dxg, ExpertGrads& grads) {
  if (dxg.defined()) {
    gemm_out(dxg, dh, w.w1.t());
    if (dg.defined()) gemm_out(dxg, dg, w.w3.t(), {}, /*accumulate=*/true);
  }
  gemm_out(grads.w1, xg.t(), dh);
  if (grads.b1.defined()) at::sum_out(grads.b1, dh, 0);
  if (dg.defined()) gemm_out(grads.w3, xg.t(), dg);
}

// --- activation
// ------------------------------------------------------------------------------------

// a = f(h), or f(h)·g for gated units, over fixed row blocks (expert_activations.h); a may be h.
void activation_forward_pass(Activation act, const at::Tensor& h, const at::Tensor& g,
                             at::Tensor& a) {
  in_row_blocks(h.size(0), h.size(1), [&](int64_t r0, int64_t r1) {
    auto a_b = row_slice(a, r0, r1);
    activation_forward(act, row_slice(h, r0, r1), row_slice(g, r0, r1), a_b);
  });
}

// The forward's a again, in backward (not for ReLU, whose kept h holds a). For gated units f(h) is
// kept apart in fh: it is also the first factor of dL/dg.
void activation_recompute(Activation act, const at::Tensor& h, const at::Tensor& g, at::Tensor& a,
                          at::Tensor& fh) {
  const bool gated = is_gated(act);
  in_row_blocks(h.size(0), h.size(1), [&](int64_t r0, int64_t r1) {
    auto a_b = row_slice(a, r0, r1), fh_b = row_slice(fh, r0, r1);
    const auto h_b = row_slice(h, r0, r1), g_b = row_slice(g, r0, r1);
    if (gated) act_out(act, fh_b, h_b);
    if (gated && h_b.scalar_type() != at::kBFloat16) {
      at::mul_out(a_b, fh_b, g_b);
    } else {
      activation_forward(act, h_b, g_b, a_b);  // bf16: the forward's single rounding
    }
  });
}

// da = f'(h)·da in place (smooth activations: ReLU's mask is applied by second_layer_backward's
// fused pass, and for gated units that pass has already split off dL/dg).
void activation_backward_pass(Activation act, const at::Tensor& h, at::Tensor& da) {
  in_row_blocks(h.size(0), h.size(1), [&](int64_t r0, int64_t r1) {
    auto da_b = row_slice(da, r0, r1);
    activation_derivative(act, row_slice(h, r0, r1), da_b);
  });
}

// --- second layer, with the pair weights of the combine
// --------------------------------------------

// o = a·w2 + b2, or o = a for one-layer experts (no w2).
void second_layer_forward(const at::Tensor& a, const ExpertBlocks& w, at::Tensor& o) {
  if (w.w2.defined()) {
    gemm_out(o, a, w.w2, w.b2);
  } else {
    o.copy_(a);
  }
}

// From dy = dL/dy rows of the pairs (not yet scaled by the pair weights pw): G = dy·w2ᵀ into da
// (one-layer experts: G = dy, o being a), then one fused pass gives dL/dw_p = <G, a> (+ <dy, b2>)
// into grads.pw and da = w_p·G = dL/da, and its `mode` step: ReLU's mask (da becomes dL/dh), or
// for gated units (a = f(h)·g) dL/dg into fh and dL/df(h) into da. With w2, dy becomes dL/do =
// w_p·dy; dW2 = aᵀ·dL/do (after G: it may overwrite the converted block w2), db2 = Σ dL/do.
template <typename T>
void second_layer_backward(Activation act, const at::Tensor& a, const at::Tensor& fh,
                           const at::Tensor& g, const ExpertBlocks& w, const at::Tensor& pw,
                           at::Tensor& dy, at::Tensor& da, ExpertGrads& grads) {
  const int64_t n = da.size(0), h = da.size(1);
  const bool gated = is_gated(act);
  if (w.w2.defined()) {
    gemm_out(da, dy, w.w2.t());
  } else {
    da.copy_(dy);
  }
  const auto mode = act == Activation::kReLU ? k::HiddenGrad::kReLU
                    : gated                  ? k::HiddenGrad::kGated
                                             : k::HiddenGrad::kPlain;
  k::hidden_output_backward<T>(da.data_ptr<T>(), a.data_ptr<T>(), pw.data_ptr<T>(), n, h,
                               grads.pw.data_ptr<T>(), mode, gated ? fh.data_ptr<T>() : nullptr,
                               gated ? g.data_ptr<T>() : nullptr);
  if (!w.w2.defined()) return;  // one layer: no dW2, db2
  if (w.b2.defined()) grads.pw.addmv_(dy, w.b2);
  dy.mul_(pw.unsqueeze(1));  // now dL/do
  gemm_out(grads.w2, a.t(), dy);
  if (grads.b2.defined()) at::sum_out(grads.b2, dy, 0);
}

}  // namespace

// --- one expert
// ------------------------------------------------------------------------------------

void expert_forward(Activation act, ExpertRows& r, const ExpertBlocks& w, at::Tensor& a,
                    at::Tensor& o) {
  first_layer_forward(r.xg, w, r.h, r.g);
  activation_forward_pass(act, r.h, r.g, a);
  second_layer_forward(a, w, o);
}

void restore_hidden(Activation act, bool kept, ExpertRows& r, const ExpertBlocks& w) {
  if (!kept) {
    first_layer_forward(r.xg, w, r.h, r.g);
    if (act == Activation::kReLU) r.h.clamp_min_(0);
  } else if (!r.h.is_same(r.h_kept)) {  // the kept rows, converted
    r.h.copy_(r.h_kept);
    if (is_gated(act)) r.g.copy_(r.g_kept);
  }
}

template <typename T>
void expert_backward(Activation act, ExpertRows& r, const ExpertBlocks& w, const at::Tensor& pw,
                     at::Tensor& dy, Work& wk, at::Tensor& dxg, ExpertGrads& g) {
  const int64_t n = dy.size(0);
  const bool relu = act == Activation::kReLU;
  at::Tensor a = relu ? r.h : wk.as.rows(n);
  at::Tensor fh = is_gated(act) ? wk.fhs.rows(n) : at::Tensor();
  if (!relu) activation_recompute(act, r.h, r.g, a, fh);
  auto da = wk.das.rows(n);
  second_layer_backward<T>(act, a, fh, r.g, w, pw, dy, da, g);
  if (!relu) activation_backward_pass(act, r.h, da);  // da now holds dL/dh
  first_layer_backward(r.xg, w, da, fh, dxg, g);
}

template void expert_backward<float>(Activation, ExpertRows&, const ExpertBlocks&,
                                     const at::Tensor&, at::Tensor&, Work&, at::Tensor&,
                                     ExpertGrads&);
template void expert_backward<double>(Activation, ExpertRows&, const ExpertBlocks&,
                                      const at::Tensor&, at::Tensor&, Work&, at::Tensor&,
                                      ExpertGrads&);
template void expert_backward<c10::BFloat16>(Activation, ExpertRows&, const ExpertBlocks&,
                                             const at::Tensor&, at::Tensor&, Work&, at::Tensor&,
                                             ExpertGrads&);

}  // namespace moe::engine::cpu
