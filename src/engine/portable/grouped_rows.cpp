// The grouped path (grouped_rows.h). The rows are the padded plan's, expert-major: rows
// [offsets[e], offsets[e+1]) are expert e's pairs, the rows from offsets[E] on are padding.
//   xs = x[token_index]                           [R, d]
//   hs = grouped(xs, w1) + b1[expert]             (gs = grouped(xs, w3) for gated units)
//   os = grouped(f(hs) (· gs), w2) + b2[expert]
//   y = Σ over each token's rows of w · os         (padding masked to 0; src/plan/sum_by_token.h)
// Backward: weight gradients from the 2D×2D form, grouped(xsᵀ, dhs) → [E, d, h] (the groups
// split the rows, so padding is left out), bias gradients the same way with a column of ones,
// and dxs = grouped(dhs, w1ᵀ).
#include "engine/portable/grouped_rows.h"

#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>

#include "engine/portable/activations.h"
#include "engine/portable/grouped_mm.h"
#include "plan/sum_by_token.h"

namespace moe::engine::portable {
namespace {

struct Rows {
  int64_t E = 0;
  at::Tensor offs;    // [E] int32: the end row of each expert
  at::Tensor filled;  // [E, 1, 1] bool: the expert has rows
  at::Tensor expert;  // [R] int64: each row's expert, clamped to E - 1 for padding (bias lookups)
  at::Tensor valid;   // [R, 1] bool: a pair, not padding
  at::Tensor xs;      // [R, d]
  at::Tensor weight;  // [R, 1], 0 for padding
};

Rows rows_of(const ExpertProblem& p) {
  Rows r;
  r.E = p.w1.size(0);
  const auto ends = p.expert_offsets.narrow(0, 1, r.E);
  r.offs = ends.to(at::kInt);
  r.filled = (ends - p.expert_offsets.narrow(0, 0, r.E) > 0).view({r.E, 1, 1});
  const auto row = at::arange(p.token_index.size(0), p.expert_offsets.options());
  // The first expert whose end is past the row; E for padding.
  const auto expert = at::searchsorted(ends, row, /*out_int32=*/false, /*right=*/true);
  r.valid = (expert < r.E).unsqueeze(1);
  r.expert = expert.clamp_max(r.E - 1);
  r.xs = p.x.index_select(0, p.token_index);
  r.weight = at::where(r.valid, p.pair_weight.unsqueeze(1), at::zeros({}, p.pair_weight.options()));
  return r;
}

at::Tensor masked(const Rows& r, const at::Tensor& t) {
  return at::where(r.valid, t, at::zeros({}, t.options()));
}

at::Tensor plus_bias(const Rows& r, const at::Tensor& t, const at::Tensor& bias) {
  return bias.defined() ? t + bias.index_select(0, r.expert) : t;
}

SavedHidden hidden_layer(const ExpertProblem& p, const Rows& r) {
  SavedHidden h;
  h.h = plus_bias(r, grouped_mm(r.xs, p.w1, r.offs), p.b1);
  if (p.w3.defined()) h.g = grouped_mm(r.xs, p.w3, r.offs);
  return h;
}

at::Tensor outputs(const ExpertProblem& p, const Rows& r, const at::Tensor& as) {
  return p.w2.defined() ? plus_bias(r, grouped_mm(as, p.w2, r.offs), p.b2) : as;
}

// a_eᵀ · b_e for each expert e, [E, m, n], from the 2D×2D form (the groups split the rows):
// zero for an expert without rows, whatever the op leaves there.
at::Tensor per_expert_product(const Rows& r, const at::Tensor& a, const at::Tensor& b) {
  const auto out = grouped_mm(a.t(), b, r.offs);
  return at::where(r.filled, out, at::zeros({}, out.options()));
}

// Σ over the rows of each expert: [E, w], the product with columns of ones. Eight identical ones:
// the op wants the operand's leading stride a multiple of 16 bytes.
at::Tensor per_expert_sum(const Rows& r, const at::Tensor& t) {
  return per_expert_product(r, at::ones({t.size(0), 8}, t.options()), t).select(1, 0);
}

// A weight the op takes: absent, or contiguous with the given width a multiple of 8 (16 bytes).
bool takes(const at::Tensor& w, int64_t dim) {
  return !w.defined() || (w.is_contiguous() && w.size(dim) % 8 == 0);
}

}  // namespace

bool grouped_requested() {
  static const bool on = [] {
    const char* v = std::getenv("MOE_GROUPED_MM");
    return v != nullptr && std::strcmp(v, "1") == 0 && have_grouped_mm();
  }();
  return on;
}

bool grouped_applies(const ExpertProblem& p) {
  return grouped_requested() && !p.x.device().is_cpu() && p.x.scalar_type() == at::kBFloat16 &&
         p.pair_slot.defined() && takes(p.w1, 1) && takes(p.w1, 2) && takes(p.w3, 2) &&
         takes(p.w2, 2);
}

ForwardResult grouped_forward(const ExpertProblem& p, bool keep_hidden) {
  const Rows r = rows_of(p);
  const SavedHidden hidden = hidden_layer(p, r);
  const auto f = activation(p.act, hidden.h);
  const auto os = masked(r, outputs(p, r, hidden.g.defined() ? f * hidden.g : f));
  ForwardResult out;
  out.y =
      plan::sum_by_token(os * r.weight, p.token_index, p.pair_slot, p.slots_per_token, p.x.size(0))
          .to(p.x.scalar_type());
  if (keep_hidden) out.hidden = hidden;
  return out;
}

ExpertGradients grouped_backward(const ExpertProblem& p, const SavedHidden& saved,
                                 const at::Tensor& dy, const WantedGradients& want) {
  const Rows r = rows_of(p);
  const SavedHidden hidden = saved.h.defined() ? saved : hidden_layer(p, r);
  const auto f = activation(p.act, hidden.h);
  const auto as = hidden.g.defined() ? f * hidden.g : f;
  const auto dys = dy.index_select(0, p.token_index);  // [R, out]
  ExpertGradients g;
  const auto dos = dys * r.weight;  // 0 on padding rows
  at::Tensor das = dos;
  if (p.w2.defined()) {
    g.w2 = per_expert_product(r, as, dos);
    if (p.b2.defined()) g.b2 = per_expert_sum(r, dos);
    // Unweighted dys·w2ᵀ: das and the pair weights' gradient, os·dys = as·(dys·w2ᵀ) + b2·dys.
    // Its padding rows are unwritten: masked before they meet anything.
    const auto dau = masked(r, grouped_mm(dys, p.w2.transpose(1, 2), r.offs));
    if (want.pair_weight) {
      auto dpw = (masked(r, as) * dau).sum(1);
      if (p.b2.defined()) dpw = dpw + (dys * p.b2.index_select(0, r.expert)).sum(1);
      g.pair_weight = masked(r, dpw.unsqueeze(1)).squeeze(1);
    }
    das = dau * r.weight;
  } else if (want.pair_weight) {
    g.pair_weight = (masked(r, as) * dys).sum(1);  // one-layer experts: os = as
  }
  das = masked(r, das);
  const auto dgs = hidden.g.defined() ? das * f : at::Tensor();
  const auto dhs =
      masked(r, activation_backward(p.act, hidden.g.defined() ? das * hidden.g : das, hidden.h));
  g.w1 = per_expert_product(r, r.xs, dhs);
  if (p.b1.defined()) g.b1 = per_expert_sum(r, dhs);
  if (p.w3.defined()) g.w3 = per_expert_product(r, r.xs, masked(r, dgs));
  if (want.x) {
    auto dxs = grouped_mm(dhs, p.w1.transpose(1, 2), r.offs);
    if (p.w3.defined()) dxs = dxs + grouped_mm(masked(r, dgs), p.w3.transpose(1, 2), r.offs);
    g.x = plan::sum_by_token(masked(r, dxs), p.token_index, p.pair_slot, p.slots_per_token,
                             p.x.size(0))
              .to(p.x.scalar_type());
  }
  return g;
}

}  // namespace moe::engine::portable
