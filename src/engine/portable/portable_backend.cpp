// The portable backend (portable_backend.h): the expert MLPs of a plan with ATen operations.
//
// Forward, for the P pairs of the plan (expert-major):
//   xs = x[token_index]                      [P, d]
//   hs_e = xs_e · w1[e] + b1[e]               per expert e (its segment of rows)
//   gs_e = xs_e · w3[e]                       gated units
//   as = f(hs) (· gs)
//   os_e = as_e · w2[e] + b2[e]               (one-layer experts: os = as)
//   y = Σ_p w_p · os_p into the rows token_index[p]     (in slot order for a padded plan)
// Backward applies the chain rule to the same steps, one GEMM per expert and weight.
//
// bfloat16: on the CPU, LibTorch's bf16 products may accumulate in bf16 (docs/reliability.md), so
// the CPU computes in float32 and rounds each result once; other devices multiply bf16 with their
// libraries' float32 accumulation.
#include "engine/portable/portable_backend.h"

#include <ATen/ATen.h>

#include <vector>

#include "engine/portable/activations.h"
#include "engine/portable/grouped_rows.h"
#include "plan/sum_by_token.h"

namespace moe::engine::portable {
namespace {

at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kBFloat16 && x.device().is_cpu() ? at::kFloat : x.scalar_type();
}

at::Tensor cast(const at::Tensor& t, at::ScalarType type) { return t.defined() ? t.to(type) : t; }

// The experts' segments of the plan: the one read from the device per call.
std::vector<int64_t> segment_bounds(const at::Tensor& offsets) {
  const auto host = offsets.to(at::kCPU, at::kLong).contiguous();
  const int64_t* o = host.data_ptr<int64_t>();
  return {o, o + host.numel()};
}

// The problem in the computation dtype, with the pairs' rows gathered.
// A padded plan's rows past the last bound are padding (include/moe/plan.h): dropped here.
struct Pairs {
  at::ScalarType type;
  int64_t padding = 0;     // rows of the plan after its pairs
  at::Tensor token_index;  // on x's device
  at::Tensor xs, w1, w2, w3, b1, b2, weight;
  std::vector<int64_t> bounds;
  int64_t experts() const { return static_cast<int64_t>(bounds.size()) - 1; }
  int64_t rows(int64_t e) const { return bounds[e + 1] - bounds[e]; }
  at::Tensor segment(const at::Tensor& t, int64_t e) const {
    return t.narrow(0, bounds[e], rows(e));
  }
};

Pairs pairs_of(const ExpertProblem& p) {
  Pairs s;
  s.type = compute_type(p.x);
  s.bounds = segment_bounds(p.expert_offsets);
  const int64_t pairs = s.bounds.back();
  s.padding = p.token_index.size(0) - pairs;
  s.token_index = p.token_index.narrow(0, 0, pairs).to(p.x.device());
  s.xs = p.x.index_select(0, s.token_index).to(s.type);
  s.w1 = cast(p.w1, s.type);
  s.w2 = cast(p.w2, s.type);
  s.w3 = cast(p.w3, s.type);
  s.b1 = cast(p.b1, s.type);
  s.b2 = cast(p.b2, s.type);
  s.weight = cast(p.pair_weight.narrow(0, 0, pairs), s.type);
  return s;
}

// hs (and gs) of every pair.
SavedHidden hidden_layer(const Pairs& s) {
  const int64_t P = s.xs.size(0), h = s.w1.size(2);
  SavedHidden out;
  out.h = at::empty({P, h}, s.xs.options());
  if (s.w3.defined()) out.g = at::empty({P, h}, s.xs.options());
  for (int64_t e = 0; e < s.experts(); ++e) {
    if (s.rows(e) == 0) continue;
    const auto xe = s.segment(s.xs, e);
    auto he = s.segment(out.h, e);
    if (s.b1.defined()) {
      at::addmm_out(he, s.b1[e], xe, s.w1[e]);
    } else {
      at::mm_out(he, xe, s.w1[e]);
    }
    if (s.w3.defined()) {
      auto ge = s.segment(out.g, e);
      at::mm_out(ge, xe, s.w3[e]);
    }
  }
  return out;
}

at::Tensor activated(Activation act, const SavedHidden& hidden) {
  const auto a = activation(act, hidden.h);
  return hidden.g.defined() ? a * hidden.g : a;
}

// os: the experts' outputs per pair.
at::Tensor outputs(const Pairs& s, const at::Tensor& as) {
  if (!s.w2.defined()) return as;
  auto os = at::empty({as.size(0), s.w2.size(2)}, as.options());
  for (int64_t e = 0; e < s.experts(); ++e) {
    if (s.rows(e) == 0) continue;
    auto oe = s.segment(os, e);
    if (s.b2.defined()) {
      at::addmm_out(oe, s.b2[e], s.segment(as, e), s.w2[e]);
    } else {
      at::mm_out(oe, s.segment(as, e), s.w2[e]);
    }
  }
  return os;
}

// Σ of each token's pair rows: in slot order for a padded plan (the same bits from run to run on
// any device; index_add would add with atomics on CUDA), else with index_add (the CPU's compact
// plans).
at::Tensor sum_by_token(const ExpertProblem& p, const at::Tensor& rows) {
  return plan::sum_by_token(rows, p.token_index, p.pair_slot, p.slots_per_token, p.x.size(0));
}

class PortableBackend final : public ExpertBackend {
 public:
  ForwardResult forward(const ExpertProblem& p, bool keep_hidden) const override {
    if (grouped_applies(p)) return grouped_forward(p, keep_hidden);
    const Pairs s = pairs_of(p);
    const SavedHidden hidden = hidden_layer(s);
    const auto os = outputs(s, activated(p.act, hidden));
    ForwardResult r;
    r.y = sum_by_token(p, os * s.weight.unsqueeze(1)).to(p.x.scalar_type());
    if (keep_hidden) r.hidden = hidden;
    return r;
  }

  ExpertGradients backward(const ExpertProblem& p, const SavedHidden& saved, const at::Tensor& dy,
                           const WantedGradients& want) const override {
    if (grouped_applies(p)) return grouped_backward(p, saved, dy, want);
    const Pairs s = pairs_of(p);
    const SavedHidden hidden = saved.h.defined() ? saved : hidden_layer(s);
    const auto f = activation(p.act, hidden.h);
    const auto as = hidden.g.defined() ? f * hidden.g : f;
    const auto dys = dy.index_select(0, s.token_index).to(s.type);  // [P, out]
    ExpertGradients g;
    const auto dtype = p.x.scalar_type();
    const auto dos = dys * s.weight.unsqueeze(1);

    // Through w2, per expert: dW2_e = as_eᵀ·dos_e, db2_e = Σ dos_e, and the unweighted
    // dys_e·w2[e]ᵀ, from which both das (times the pair weights) and the pair weights' gradient
    // come: dL/dw_p = os_p·dys_p = as_p·(dys_p·w2ᵀ) + b2·dys_p, with no second product by w2.
    at::Tensor das = dos, dw2, db2, dpw;
    if (s.w2.defined()) {
      const auto dau = at::empty_like(as);
      if (want.pair_weight) dpw = at::empty({as.size(0)}, as.options());
      dw2 = at::zeros_like(s.w2);
      if (s.b2.defined()) db2 = at::zeros_like(s.b2);
      for (int64_t e = 0; e < s.experts(); ++e) {
        if (s.rows(e) == 0) continue;
        const auto doe = s.segment(dos, e);
        auto dw2e = dw2[e];
        at::mm_out(dw2e, s.segment(as, e).t(), doe);
        if (db2.defined()) {
          auto db2e = db2[e];
          at::sum_out(db2e, doe, {0});
        }
        auto daue = s.segment(dau, e);
        at::mm_out(daue, s.segment(dys, e), s.w2[e].t());
        if (dpw.defined()) {
          auto dpwe = s.segment(dpw, e);
          at::sum_out(dpwe, s.segment(as, e) * daue, {1});
          if (s.b2.defined()) dpwe.add_(s.segment(dys, e).mv(s.b2[e]));
        }
      }
      das = dau * s.weight.unsqueeze(1);
    } else if (want.pair_weight) {
      dpw = (as * dys).sum(1);  // one-layer experts: os = as
    }
    if (want.pair_weight) g.pair_weight = at::constant_pad_nd(dpw, {0, s.padding}, 0).to(dtype);
    // Through the activation (and the gate of gated units).
    const auto dgs = hidden.g.defined() ? das * f : at::Tensor();
    const auto dhs =
        activation_backward(p.act, hidden.g.defined() ? das * hidden.g : das, hidden.h);

    // Through w1 (and w3): dW1_e = xs_eᵀ·dhs_e, db1_e = Σ dhs_e, dxs_e = dhs_e·w1[e]ᵀ (+ w3's).
    auto dw1 = at::zeros_like(s.w1);
    auto dw3 = s.w3.defined() ? at::zeros_like(s.w3) : at::Tensor();
    auto db1 = s.b1.defined() ? at::zeros_like(s.b1) : at::Tensor();
    auto dxs = want.x ? at::empty_like(s.xs) : at::Tensor();
    for (int64_t e = 0; e < s.experts(); ++e) {
      if (s.rows(e) == 0) continue;
      const auto xe = s.segment(s.xs, e), dhe = s.segment(dhs, e);
      auto dw1e = dw1[e];
      at::mm_out(dw1e, xe.t(), dhe);
      if (db1.defined()) {
        auto db1e = db1[e];
        at::sum_out(db1e, dhe, {0});
      }
      if (dw3.defined()) {
        auto dw3e = dw3[e];
        at::mm_out(dw3e, xe.t(), s.segment(dgs, e));
      }
      if (want.x) {
        auto dxe = s.segment(dxs, e);
        at::mm_out(dxe, dhe, s.w1[e].t());
        if (dw3.defined()) dxe.addmm_(s.segment(dgs, e), s.w3[e].t());
      }
    }
    if (want.x) {
      g.x = sum_by_token(p, dxs).to(dtype);
    }
    g.w1 = dw1.to(dtype);
    g.w2 = cast(dw2, dtype);
    g.w3 = cast(dw3, dtype);
    g.b1 = cast(db1, dtype);
    g.b2 = cast(db2, dtype);
    return g;
  }
};

}  // namespace

std::shared_ptr<const ExpertBackend> make_portable_backend() {
  return std::make_shared<const PortableBackend>();
}

}  // namespace moe::engine::portable
