// The CPU backend: drives one forward or backward of the engine over a RoutingPlan.
//
// Forward, for each expert e with pairs [s, s+n) in the plan:
//   xg = x[token_index[s:s+n]]                       gathered into an [n, d] scratch buffer
//                                                    (x's rows themselves when consecutive)
//   o  = expert_e(xg)                                [n, out] rows of a chunk buffer
//   (expert_ffn_cpu.h) y[t] += w_p · o[p]                               summed into the token rows
//   in expert order
// Experts run in chunks (one expert, or on the parallel schedule several consecutive experts up to
// a row budget; engine_schedule.h); after each chunk its rows are added into y, split over threads
// by columns, so nothing of size [P, out] is ever allocated and every y[t] sums its pairs in expert
// order on either schedule and at any thread count.
// Kept for backward when asked: the hidden layer [P, h] (ReLU: a itself, which serves both dW2 and
// the derivative mask since a > 0 exactly where h > 0; otherwise h, and g for gated units). Without
// it backward recomputes h from x (one more GEMM per expert, two for gated units).
//
// Backward, per expert: xg and dy rows gathered; the hidden layer restored; expert_backward gives
// the weight and pair-weight gradients and dxg into the chunk buffer, summed into dx like the
// forward's outputs (or, when dL/dx is not wanted, neither computed nor summed).
// One-layer experts (no w2) output their activation (out = h); otherwise out is w2's last
// dimension, which need not be d (backend.h).
//
// bf16 experts compute in float32 where the CPU has no bf16 dot products (gemm.h compute_dtype):
// the weight blocks and the gathered rows are converted on the way in, the hidden layers stay
// float32, and only what is stored (the saved hidden layer, outputs, gradients) is rounded to bf16.
// The token rows y and dx are summed in float32 for bf16 (docs/routing.md) and rounded once.
#include "engine/cpu/cpu_backend.h"

#include <ATen/ATen.h>

#include <vector>

#include "engine/cpu/cpu_pass.h"
#include "engine/cpu/engine_schedule.h"
#include "engine/cpu/expert_ffn_cpu.h"
#include "engine/cpu/gemm.h"
#include "engine/cpu/small_experts.h"
#include "engine/cpu/workspace.h"
#include "kernels/cpu/acc_type.h"
#include "kernels/cpu/kernels.h"

namespace moe::engine::cpu {
namespace {

namespace k = moe::kernels::cpu;

// The pairs of a padded plan (include/moe/plan.h): its rows past expert_offsets[E] are padding,
// which the kernels below never see. On the CPU reading the offsets costs nothing.
ExpertProblem without_padding(const ExpertProblem& p) {
  const int64_t E = p.expert_offsets.size(0) - 1;
  const int64_t pairs = p.expert_offsets.data_ptr<int64_t>()[E];
  if (pairs == p.token_index.size(0)) return p;
  ExpertProblem q = p;
  q.token_index = p.token_index.narrow(0, 0, pairs);
  q.pair_weight = p.pair_weight.narrow(0, 0, pairs);
  return q;
}

class CpuBackend final : public ExpertBackend {
 public:
  ForwardResult forward(const ExpertProblem& p, bool keep_hidden) const override {
    return forward_pairs(without_padding(p), keep_hidden);
  }
  ExpertGradients backward(const ExpertProblem& p, const SavedHidden& hidden, const at::Tensor& dy,
                           const WantedGradients& want) const override {
    const ExpertProblem pairs = without_padding(p);
    auto g = backward_pairs(pairs, hidden, dy, want);
    const int64_t padding = p.token_index.size(0) - pairs.token_index.size(0);
    if (g.pair_weight.defined() && padding > 0)
      g.pair_weight = at::constant_pad_nd(g.pair_weight, {0, padding}, 0);
    return g;
  }

 private:
  ForwardResult forward_pairs(const ExpertProblem& p, bool keep_hidden) const;
  ExpertGradients backward_pairs(const ExpertProblem& p, const SavedHidden& hidden,
                                 const at::Tensor& dy, const WantedGradients& want) const;
};

ForwardResult CpuBackend::forward_pairs(const ExpertProblem& p, bool keep_h) const {
  const Pass ps(p);
  if (use_small_experts(p, ps)) return small_experts_forward(p, ps, keep_h);
  const auto opts = p.x.options();
  const auto xc = in_dtype(p.x, ps.cdt);
  const auto wc = in_dtype(p.pair_weight, ps.cdt);
  // Kept for backward, in the stored dtype (see the top of this file).
  auto hall = keep_h ? at::empty({ps.P, ps.h}, opts) : at::Tensor();
  auto gall = keep_h && ps.gated ? at::empty({ps.P, ps.h}, opts) : at::Tensor();
  auto work = ps.workspace(keep_h, /*backward=*/false);
  auto chunk = ps.chunk_buffer(ps.out);
  auto acc = make_accumulator(ps.T, ps.out, ps.copts);

  dispatch_dtype(ps.cdt, [&](auto tag) {
    using T_ = decltype(tag);
    schedule::run_chunked<T_>(
        ps.offsets, ps.E, ps.parallel, ps.tok, wc.data_ptr<T_>(), chunk,
        acc.data_ptr<k::acc_t<T_>>(), [&](int64_t e, int64_t worker, at::Tensor& o_e) {
          Work& wk = work[worker];
          const int64_t s = ps.offsets[e], n = ps.offsets[e + 1] - s;
          auto r = expert_rows<T_>(wk, xc, ps.tok, s, n, hall, gall, ps.gated);
          // a overwrites h unless backward needs h itself.
          auto a_e = keep_h && !ps.relu ? wk.as.rows(n) : r.h;
          expert_forward(p.act, r, expert_blocks(ps.w, e, wk), a_e, o_e);
          if (ps.convert && keep_h) {  // round the kept hidden layer into its stored dtype
            r.h_kept.copy_(ps.relu ? a_e : r.h);
            if (ps.gated) r.g_kept.copy_(r.g);
          }
        });
  });
  return {stored(acc, ps.store), {hall, gall}};
}

}  // namespace

ExpertGradients allocate_gradients(const ExpertProblem& p, const Pass& ps) {
  ExpertGradients g;
  g.w1 = at::empty_like(p.w1);
  if (p.w2.defined()) g.w2 = at::empty_like(p.w2);
  if (ps.gated) g.w3 = at::empty_like(p.w3);
  if (ps.w.b1.defined()) g.b1 = at::empty({ps.E, ps.h}, ps.copts);
  if (ps.w.b2.defined()) g.b2 = at::empty({ps.E, ps.out}, ps.copts);
  for (int64_t e = 0; e < ps.E; ++e) {
    if (ps.offsets[e + 1] > ps.offsets[e]) continue;
    for (auto* t : {&g.w1, &g.w2, &g.w3, &g.b1, &g.b2})
      if (t->defined()) (*t)[e].zero_();
  }
  g.pair_weight = at::empty({ps.P}, ps.copts);
  return g;
}

namespace {

ExpertGradients CpuBackend::backward_pairs(const ExpertProblem& p, const SavedHidden& hidden,
                                           const at::Tensor& dy_in,
                                           const WantedGradients& want) const {
  const Pass ps(p);
  if (use_small_experts(p, ps)) return small_experts_backward(p, ps, hidden, dy_in, want);
  const auto x = in_dtype(p.x, ps.cdt);
  const auto pw = in_dtype(p.pair_weight, ps.cdt);
  const auto dy = in_dtype(dy_in, ps.cdt);
  const bool keep_h = hidden.h.defined();
  auto g = allocate_gradients(p, ps);
  auto work = ps.workspace(keep_h, /*backward=*/true);
  // Without dL/dx the chunk buffer has no columns and nothing is summed into token rows.
  auto chunk = ps.chunk_buffer(want.x ? ps.d : 0);
  auto acc = want.x ? make_accumulator(ps.T, ps.d, ps.copts) : at::Tensor();

  dispatch_dtype(ps.cdt, [&](auto tag) {
    using T_ = decltype(tag);
    using A_ = k::acc_t<T_>;
    schedule::run_chunked<T_>(
        ps.offsets, ps.E, ps.parallel, ps.tok, static_cast<const T_*>(nullptr), chunk,
        want.x ? acc.data_ptr<A_>() : static_cast<A_*>(nullptr),
        [&](int64_t e, int64_t worker, at::Tensor& dxg_rows) {
          Work& wk = work[worker];
          const int64_t s = ps.offsets[e], n = ps.offsets[e + 1] - s;
          auto r = expert_rows<T_>(wk, x, ps.tok, s, n, hidden.h, hidden.g, ps.gated);
          // The upstream rows, not yet scaled by the pair weights; expert_backward changes them, so
          // they are always a copy.
          auto dy_e = wk.dy.rows(n);
          k::gather_rows<T_>(dy.data_ptr<T_>(), ps.tok + s, n, ps.out, dy_e.data_ptr<T_>());
          const auto w = expert_blocks(ps.w, e, wk);
          restore_hidden(p.act, keep_h, r, w);
          ExpertGrads ge{grad_target(g.w1, e, wk.w1),
                         g.w2.defined() ? grad_target(g.w2, e, wk.w2) : at::Tensor(),
                         ps.gated ? grad_target(g.w3, e, wk.w3) : at::Tensor(),
                         g.b1.defined() ? g.b1[e] : g.b1,
                         g.b2.defined() ? g.b2[e] : g.b2,
                         g.pair_weight.narrow(0, s, n)};
          auto dxg_e = want.x ? dxg_rows : at::Tensor();
          expert_backward<T_>(p.act, r, w, pw.narrow(0, s, n), dy_e, wk, dxg_e, ge);
          store_grad(g.w1, e, ge.w1);
          if (g.w2.defined()) store_grad(g.w2, e, ge.w2);
          if (ps.gated) store_grad(g.w3, e, ge.w3);
        });
  });
  if (want.x) g.x = stored(acc, ps.store);
  g.pair_weight = want.pair_weight ? in_dtype(g.pair_weight, ps.store) : at::Tensor();
  g.b1 = in_dtype(g.b1, ps.store);
  g.b2 = in_dtype(g.b2, ps.store);
  return g;
}

}  // namespace

std::shared_ptr<const ExpertBackend> make_cpu_backend() { return std::make_shared<CpuBackend>(); }

}  // namespace moe::engine::cpu
