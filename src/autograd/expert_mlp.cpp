// The engine's hot path: dispatch → grouped expert GEMMs → weighted combine, and its backward, as
// one custom autograd function over a RoutingPlan (see include/moe/functional.h).
//
// Forward, for each expert e with pairs [s, s+n) in the plan:
//   xg = x[token_index[s:s+n]]                       gather into an [n, d] scratch buffer
//   h  = xg·w1[e] + b1[e]      (g = xg·w3[e])        [n, h]
//   a  = act(h)                (a = act(h)·g)        [n, h] scratch
//   o  = a·w2[e] + b2[e]                             [n, d] rows of a chunk buffer
//   y[t] += w_p · o[p]                               summed into the token rows in expert order
// Experts run in chunks (one expert, or on the parallel schedule several consecutive experts up to
// kChunkRows rows); after each chunk its rows are added into y, split over threads by columns, so
// nothing of size [P, d] is ever allocated and every y[t] sums its pairs in expert order on either
// schedule and at any thread count.
// Saved for backward: the hidden layer [P, h] (ReLU: a itself; otherwise h, and g for gated units);
// with recompute_hidden nothing of size P, and h is recomputed from x (one more GEMM per expert,
// two for gated units). The expert outputs o are not saved: dL/dw_p = <dy[t], o[p]> equals
// <dy[t]·w2ᵀ, a[p]> + <dy[t], b2>, and backward computes dy·w2ᵀ anyway.
//
// Backward, per expert: xg and dy rows gathered; a recomputed (not for ReLU); G = dy·w2ᵀ; one fused
// pass gives dL/dw_p = <G, a> and da = w_p·G (and ReLU's mask, or the gated product's two factors);
// dW2 = aᵀ·(w·dy); dh = act'(h)·da; dW1 = xgᵀ·dh; dxg = dh·w1ᵀ into the chunk buffer, summed into
// dx like the forward's outputs.
//
// bf16 experts compute in float32 where the CPU has no bf16 dot products (compute_dtype below):
// the weight blocks and the gathered rows are converted on the way in, the hidden layers stay
// float32, and only what is stored (the saved hidden layer, outputs, gradients) is rounded to bf16.
//
// Activations use ATen's vectorised elementwise kernels (relu/gelu/silu and their backward); a
// scalar loop with erf/exp per element was 10x slower and made the elementwise passes rival the
// GEMMs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/csrc/autograd/custom_function.h>

#include <vector>

#include "engine/cpu/engine_schedule.h"
#include "engine/cpu/expert_activations.h"
#include "kernels/cpu/acc_type.h"
#include "kernels/cpu/kernels.h"
#include "moe/cpu.h"
#include "moe/functional.h"

namespace moe::functional {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = moe::kernels::cpu;
namespace schedule = moe::engine::cpu::schedule;
using moe::engine::cpu::act_out;
using moe::engine::cpu::activation_derivative;
using moe::engine::cpu::activation_forward;
using moe::engine::cpu::in_row_blocks;
using moe::engine::cpu::row_slice;

// One dtype switch for the whole file (float, double, bfloat16).
template <typename F>
void dispatch_dtype(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t, "expert_mlp", [&] { f(scalar_t(0)); });
}

// out = a · b (+ bias), or out += a · b when `accumulate`; out a view into a preallocated buffer.
// Where bf16 runs natively, LibTorch still sends a product of at most 16³ multiply-adds to its
// generic loop, which accumulates in bf16 (a 1×4096·4096×1 product measured 18% off): such tiny
// products (an expert with a few rows) are computed in float32 and rounded once.
void gemm_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b,
              const at::Tensor& bias = {}, bool accumulate = false) {
  if (out.scalar_type() == at::kBFloat16 &&
      !cpu::bf16_product_native(a.size(0), b.size(1), a.size(1))) {
    auto r = at::mm(a.to(at::kFloat), b.to(at::kFloat));
    if (bias.defined()) r.add_(bias);
    if (accumulate) r.add_(out);
    out.copy_(r);
  } else if (accumulate) {
    out.addmm_(a, b);
  } else if (bias.defined()) {
    at::addmm_out(out, bias, a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

// The zeroed accumulator of run_chunked for an output of type `opts`: the output itself, or a
// float32 buffer for bf16 (accumulation in float32, docs/routing.md).
at::Tensor make_accumulator(int64_t T, int64_t d, const at::TensorOptions& opts) {
  return at::zeros({T, d}, opts.dtype() == at::kBFloat16 ? opts.dtype(at::kFloat) : opts);
}

// The dtype the experts compute in: the storage dtype, except bf16 where the CPU has no bf16 dot
// products (include/moe/cpu.h): there every product runs in float32 on float32 copies of the bf16
// operands, and the hidden layers stay float32 between the GEMMs. Stored tensors (the weights, the
// saved hidden layer, inputs, outputs and gradients) keep their dtype.
at::ScalarType compute_dtype(at::ScalarType storage) {
  return storage == at::kBFloat16 && cpu::bf16_gemm() == cpu::Bf16Gemm::kFloat32 ? at::kFloat
                                                                                 : storage;
}

// `t` in the compute dtype `c` (a copy only when they differ); undefined stays undefined.
at::Tensor in_dtype(const at::Tensor& t, at::ScalarType c) {
  return t.defined() && t.scalar_type() != c ? t.to(c) : t;
}

// Per-expert scratch rows: the first n rows of a [max_rows, cols] buffer.
struct Scratch {
  at::Tensor buf;
  at::Tensor rows(int64_t n) const { return buf.narrow(0, 0, n); }
};

// Per-worker scratch, in the compute dtype. Forward: xg [rows, d]; h, g when the hidden layer is
// not kept in the compute dtype; a when it is kept and a cannot overwrite it. Backward: xg and dy
// [rows, d]; h, g when not kept; a (not for ReLU, whose hidden layer already holds a); da; f(h) for
// gated units. When the experts compute in another dtype than their weights are stored in (bf16 on
// the float32 path), w1, w2, w3 hold one expert's blocks converted, and in backward receive its
// weight gradients before they are rounded into the stored dtype.
struct Work {
  Scratch xg, dy, hs, gs, as, das, fhs;
  at::Tensor w1, w2, w3;
};

struct WorkShape {
  int64_t rows, d, h;
  bool keep_h, gated, relu, backward;
  bool convert;  // computing in another dtype than the stored one
};

std::vector<Work> make_workspace(bool parallel, const WorkShape& s, const at::TensorOptions& opts) {
  std::vector<Work> work(parallel ? at::get_num_threads() : 1);
  auto buf = [&](int64_t cols) { return Scratch{at::empty({s.rows, cols}, opts)}; };
  // The kept hidden layer serves as h only when it is stored in the compute dtype.
  const bool h_in_place = s.keep_h && !s.convert;
  for (auto& w : work) {
    w.xg = buf(s.d);
    if (!h_in_place) w.hs = buf(s.h);
    if (!h_in_place && s.gated) w.gs = buf(s.h);
    if (s.backward) {
      w.dy = buf(s.d);
      if (!s.relu) w.as = buf(s.h);
      w.das = buf(s.h);
      if (s.gated) w.fhs = buf(s.h);
    } else if (s.keep_h && !s.relu) {
      w.as = buf(s.h);
    }
    if (s.convert) {
      w.w1 = at::empty({s.d, s.h}, opts);
      w.w2 = at::empty({s.h, s.d}, opts);
      if (s.gated) w.w3 = at::empty({s.d, s.h}, opts);
    }
  }
  return work;
}

// Expert e's block of a stacked weight in the compute dtype: a view of the weight itself, or its
// conversion into the worker's scratch `conv` (defined only when converting). An absent weight (the
// empty stand-in for an absent w3) gives an undefined tensor.
at::Tensor block(const at::Tensor& w, int64_t e, at::Tensor& conv) {
  if (w.numel() == 0) return at::Tensor();
  if (!conv.defined()) return w[e];
  conv.copy_(w[e]);
  return conv;
}

// Where expert e's weight gradient is computed: its slice of the stored gradient, or, when
// converting, the worker's float32 scratch (then rounded into the slice by store_grad).
at::Tensor grad_target(const at::Tensor& g, int64_t e, const at::Tensor& conv) {
  return conv.defined() ? conv : g[e];
}
void store_grad(at::Tensor& g, int64_t e, const at::Tensor& computed) {
  if (computed.data_ptr() != g[e].data_ptr()) g[e].copy_(computed);
}

// The rows one expert works on: its gathered inputs xg [n, d] (worker scratch), its hidden
// pre-activations h (and g for gated units) in the compute dtype, and the rows of the saved [P, h]
// tensors (undefined when nothing is kept). h and g are those saved rows when they are stored in
// the compute dtype, else worker scratch. Gathers xg; fills nothing else.
struct ExpertRows {
  at::Tensor xg, h, g, h_kept, g_kept;
};

template <typename T>
ExpertRows expert_rows(const Work& wk, const at::Tensor& x, const int64_t* tok, int64_t s,
                       int64_t n, const at::Tensor& hall, const at::Tensor& gall, bool gated) {
  ExpertRows r;
  r.xg = wk.xg.rows(n);
  kernels::cpu::gather_rows<T>(x.data_ptr<T>(), tok + s, n, x.size(1), r.xg.data_ptr<T>());
  if (hall.defined()) {
    r.h_kept = hall.narrow(0, s, n);
    if (gated) r.g_kept = gall.narrow(0, s, n);
  }
  const bool in_place = hall.defined() && !wk.hs.buf.defined();
  r.h = in_place ? r.h_kept : wk.hs.rows(n);
  if (gated) r.g = in_place ? r.g_kept : wk.gs.rows(n);
  return r;
}

// h = xg·w1 + b1 and, for gated units, g = xg·w3, into the given views (w1, w3, b1: one expert's).
void hidden_layer(at::Tensor& h_e, at::Tensor& g_e, const at::Tensor& xg_e, const at::Tensor& w1,
                  const at::Tensor& w3, const at::Tensor& b1) {
  gemm_out(h_e, xg_e, w1, b1);
  if (g_e.defined()) gemm_out(g_e, xg_e, w3);
}

// Where one expert's gradients go: its weight gradients (slices of the stored gradients or, when
// converting, the worker's scratch), its bias gradients (undefined without biases) and its pair
// weights' gradients.
struct ExpertGrads {
  at::Tensor w1, w2, w3, b1, b2, pw;
};

// Backward of one expert once r.xg, dy_e and r.h (r.g) hold its rows in the compute dtype; dy_e
// becomes dL/do. Writes the gradients `g` and dxg_e, its rows of dL/dx.
template <typename T>
void backward_expert(Activation act, ExpertRows& r, at::Tensor& dy_e, const at::Tensor& w1_e,
                     const at::Tensor& w2_e, const at::Tensor& w3_e, const at::Tensor& b2_e,
                     const at::Tensor& pw_e, const T* pw_p, T* dpw_p, Work& wk, at::Tensor& dxg_e,
                     ExpertGrads& g) {
  const int64_t n = dy_e.size(0), h = r.h.size(1);
  const bool gated = is_gated(act);
  const bool relu = act == Activation::kReLU;
  // a = f(h) (f(h)·g), recomputed; for ReLU h already holds it. For gated units f(h) is kept apart:
  // it is also the first factor of dg.
  at::Tensor a_e = relu ? r.h : wk.as.rows(n);
  auto fh_e = gated ? wk.fhs.rows(n) : at::Tensor();
  if (!relu) {
    in_row_blocks(n, h, [&](int64_t r0, int64_t r1) {
      auto a_b = row_slice(a_e, r0, r1), fh_b = row_slice(fh_e, r0, r1);
      const auto h_b = row_slice(r.h, r0, r1), g_b = row_slice(r.g, r0, r1);
      if (gated) act_out(act, fh_b, h_b);
      if (gated && h_b.scalar_type() != at::kBFloat16) {
        at::mul_out(a_b, fh_b, g_b);
      } else {
        activation_forward(act, h_b, g_b, a_b);  // bf16: the forward's single rounding
      }
    });
  }

  // With o = a·w2 + b2 and y[t] = Σ w_p·o[p]: dL/dw_p = <dy[t], o[p]> = <dy·w2ᵀ, a> + <dy, b2>,
  // computed from G = dy·w2ᵀ, whose rows scaled by w_p are dL/da. So o is never stored. One fused
  // pass gives dL/dw_p and dL/da, and for ReLU dL/dh, for gated units dL/dg (into fh_e) and
  // dL/df(h).
  auto da_e = wk.das.rows(n);
  gemm_out(da_e, dy_e, w2_e.t());
  const auto mode = relu    ? k::HiddenGrad::kReLU
                    : gated ? k::HiddenGrad::kGated
                            : k::HiddenGrad::kPlain;
  k::hidden_output_backward<T>(da_e.data_ptr<T>(), a_e.data_ptr<T>(), pw_p, n, h, dpw_p, mode,
                               gated ? fh_e.data_ptr<T>() : nullptr,
                               gated ? r.g.template data_ptr<T>() : nullptr);
  if (b2_e.defined()) g.pw.addmv_(dy_e, b2_e);
  dy_e.mul_(pw_e.unsqueeze(1));  // now dL/do

  // The weight gradients may overwrite the converted blocks once these are used: dW2 after
  // dy·w2ᵀ above, dW1 and dW3 after dxg below.
  gemm_out(g.w2, a_e.t(), dy_e);
  if (g.b2.defined()) at::sum_out(g.b2, dy_e, 0);
  if (!relu) {  // da_e now holds dL/dh
    in_row_blocks(n, h, [&](int64_t r0, int64_t r1) {
      auto da_b = row_slice(da_e, r0, r1);
      activation_derivative(act, row_slice(r.h, r0, r1), da_b);
    });
  }
  gemm_out(dxg_e, da_e, w1_e.t());
  if (gated) gemm_out(dxg_e, fh_e, w3_e.t(), {}, /*accumulate=*/true);
  gemm_out(g.w1, r.xg.t(), da_e);
  if (g.b1.defined()) at::sum_out(g.b1, da_e, 0);
  if (gated) gemm_out(g.w3, r.xg.t(), fh_e);
}

// Which tensors forward keeps for backward.
struct Keep {
  bool any = false;     // backward will run
  bool hidden = false;  // keep h (and g); otherwise backward recomputes them
};

struct ExpertMLPFunction : public torch::autograd::Function<ExpertMLPFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& pair_weight, const at::Tensor& w1,
                            const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& b1_in,
                            const at::Tensor& b2_in, const RoutingPlan& plan, Activation act,
                            Keep keep) {
    const int64_t T = x.size(0), d = x.size(1), h = w1.size(2), E = w1.size(0);
    const int64_t P = plan.num_pairs();
    const bool gated = is_gated(act);
    const bool relu = act == Activation::kReLU;
    const auto cdt = compute_dtype(x.scalar_type());
    const bool convert = cdt != x.scalar_type();
    const auto opts = x.options();
    const auto copts = opts.dtype(cdt);
    const auto b1 = b1_in.numel() > 0 ? in_dtype(b1_in, cdt) : at::Tensor();
    const auto b2 = b2_in.numel() > 0 ? in_dtype(b2_in, cdt) : at::Tensor();
    const auto xs = x.contiguous();
    const auto ws = pair_weight.contiguous();
    const auto xc = in_dtype(xs, cdt);
    const auto wc = in_dtype(ws, cdt);
    const int64_t* offsets = plan.expert_offsets.data_ptr<int64_t>();
    const int64_t* tok = plan.token_index.data_ptr<int64_t>();
    const int64_t rows = schedule::largest_segment(offsets, E);

    // Kept for backward, in the stored dtype: h (and g) as [P, h], or for ReLU a = relu(h), which
    // serves both dW2 and the derivative mask (a > 0 exactly where h > 0).
    const bool keep_h = keep.any && keep.hidden;
    const bool parallel = schedule::experts_in_parallel(offsets, E);
    auto hall = keep_h ? at::empty({P, h}, opts) : at::Tensor();
    auto gall = keep_h && gated ? at::empty({P, h}, opts) : at::Tensor();
    auto work = make_workspace(parallel, {rows, d, h, keep_h, gated, relu, false, convert}, copts);
    auto chunk = at::empty({schedule::chunk_rows(parallel, rows, P), d}, copts);
    auto acc = make_accumulator(T, d, copts);

    dispatch_dtype(cdt, [&](auto tag) {
      using T_ = decltype(tag);
      using A_ = k::acc_t<T_>;
      schedule::run_chunked<T_>(
          offsets, E, parallel, tok, wc.data_ptr<T_>(), chunk, acc.data_ptr<A_>(),
          [&](int64_t e, int64_t worker, at::Tensor& o_e) {
            Work& wk = work[worker];
            const int64_t s = offsets[e], n = offsets[e + 1] - s;
            auto r = expert_rows<T_>(wk, xc, tok, s, n, hall, gall, gated);
            hidden_layer(r.h, r.g, r.xg, block(w1, e, wk.w1), block(w3, e, wk.w3),
                         b1.defined() ? b1[e] : b1);
            // a overwrites h unless backward needs h itself.
            auto a_e = keep_h && !relu ? wk.as.rows(n) : r.h;
            in_row_blocks(n, h, [&](int64_t r0, int64_t r1) {
              auto a_b = row_slice(a_e, r0, r1);
              activation_forward(act, row_slice(r.h, r0, r1), row_slice(r.g, r0, r1), a_b);
            });
            if (convert && keep_h) {  // round the kept hidden layer into its stored dtype
              r.h_kept.copy_(relu ? a_e : r.h);
              if (gated) r.g_kept.copy_(r.g);
            }
            gemm_out(o_e, a_e, block(w2, e, wk.w2), b2.defined() ? b2[e] : b2);
          });
    });
    auto y = acc.scalar_type() == x.scalar_type() ? acc : acc.to(x.scalar_type());

    if (keep.any) {
      ctx->save_for_backward({xs, ws, w1, w2, w3, b1_in, b2_in, hall, gall});
      ctx->saved_data["act"] = static_cast<int64_t>(act);
      ctx->saved_data["expert_offsets"] = plan.expert_offsets;
      ctx->saved_data["token_index"] = plan.token_index;
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& w1 = saved[2];
    const auto& w2 = saved[3];
    const auto& w3 = saved[4];
    const auto& hall = saved[7];
    const auto& gall = saved[8];
    const auto store = saved[0].scalar_type();
    const auto cdt = compute_dtype(store);
    const bool convert = cdt != store;
    const auto x = in_dtype(saved[0], cdt);
    const auto pw = in_dtype(saved[1], cdt);
    const auto b1 = saved[5].numel() > 0 ? in_dtype(saved[5], cdt) : at::Tensor();
    const auto b2 = saved[6].numel() > 0 ? in_dtype(saved[6], cdt) : at::Tensor();
    const auto act = static_cast<Activation>(ctx->saved_data["act"].toInt());
    const auto expert_offsets = ctx->saved_data["expert_offsets"].toTensor();
    const auto token_index = ctx->saved_data["token_index"].toTensor();
    const bool gated = is_gated(act);
    const bool relu = act == Activation::kReLU;
    const bool keep_h = hall.defined();

    const auto dy = in_dtype(grads[0].contiguous(), cdt);
    const int64_t T = x.size(0), d = x.size(1), h = w1.size(2), E = w1.size(0);
    const int64_t P = token_index.size(0);
    const auto opts = saved[0].options();
    const auto copts = opts.dtype(cdt);
    const int64_t* offsets = expert_offsets.data_ptr<int64_t>();
    const int64_t* tok = token_index.data_ptr<int64_t>();
    const int64_t rows = schedule::largest_segment(offsets, E);

    // Every expert with pairs writes its whole gradient slice; the others are zeroed below (never
    // left uninitialised). Bias and pair-weight gradients are computed in the compute dtype.
    auto dw1 = at::empty_like(w1), dw2 = at::empty_like(w2);
    auto dw3 = gated ? at::empty_like(w3) : at::Tensor();
    auto db1 = b1.defined() ? at::empty({E, h}, copts) : at::Tensor();
    auto db2 = b2.defined() ? at::empty({E, d}, copts) : at::Tensor();
    for (int64_t e = 0; e < E; ++e) {
      if (offsets[e + 1] > offsets[e]) continue;
      for (auto* g : {&dw1, &dw2, &dw3, &db1, &db2})
        if (g->defined()) (*g)[e].zero_();
    }
    auto dpw = at::empty({P}, copts);
    const bool parallel = schedule::experts_in_parallel(offsets, E);
    auto work = make_workspace(parallel, {rows, d, h, keep_h, gated, relu, true, convert}, copts);
    auto chunk = at::empty({schedule::chunk_rows(parallel, rows, P), d}, copts);
    auto acc = make_accumulator(T, d, copts);

    dispatch_dtype(cdt, [&](auto tag) {
      using T_ = decltype(tag);
      using A_ = k::acc_t<T_>;
      T_* dpw_p = dpw.data_ptr<T_>();
      const T_* pw_p = pw.data_ptr<T_>();
      schedule::run_chunked<T_>(
          offsets, E, parallel, tok, static_cast<const T_*>(nullptr), chunk, acc.data_ptr<A_>(),
          [&](int64_t e, int64_t worker, at::Tensor& dxg_e) {
            Work& wk = work[worker];
            const int64_t s = offsets[e], n = offsets[e + 1] - s;
            auto r = expert_rows<T_>(wk, x, tok, s, n, hall, gall, gated);
            auto dy_e = wk.dy.rows(n);  // the upstream rows, not yet scaled by the pair weights
            k::gather_rows<T_>(dy.data_ptr<T_>(), tok + s, n, d, dy_e.data_ptr<T_>());
            const auto w1_e = block(w1, e, wk.w1);
            const auto w3_e = block(w3, e, wk.w3);
            if (!keep_h) {  // recompute_hidden
              hidden_layer(r.h, r.g, r.xg, w1_e, w3_e, b1.defined() ? b1[e] : b1);
              if (relu) r.h.clamp_min_(0);
            } else if (!r.h.is_same(r.h_kept)) {  // the kept rows, converted
              r.h.copy_(r.h_kept);
              if (gated) r.g.copy_(r.g_kept);
            }
            ExpertGrads g{grad_target(dw1, e, wk.w1),
                          grad_target(dw2, e, wk.w2),
                          gated ? grad_target(dw3, e, wk.w3) : at::Tensor(),
                          db1.defined() ? db1[e] : db1,
                          db2.defined() ? db2[e] : db2,
                          dpw.narrow(0, s, n)};
            backward_expert<T_>(act, r, dy_e, w1_e, block(w2, e, wk.w2), w3_e,
                                b2.defined() ? b2[e] : b2, pw.narrow(0, s, n), pw_p + s, dpw_p + s,
                                wk, dxg_e, g);
            store_grad(dw1, e, g.w1);
            store_grad(dw2, e, g.w2);
            if (gated) store_grad(dw3, e, g.w3);
          });
    });
    auto dx = acc.scalar_type() == store ? acc : acc.to(store);
    return {dx,
            in_dtype(dpw, store),
            dw1,
            dw2,
            dw3,
            in_dtype(db1, store),
            in_dtype(db2, store),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};
}  // namespace

torch::Tensor expert_mlp(const torch::Tensor& x, const RoutingPlan& plan,
                         const torch::Tensor& pair_weight, const ExpertWeights& w,
                         Activation activation, bool recompute_hidden) {
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
  // Forward keeps what backward needs only when a backward can happen.
  Keep keep;
  keep.any = at::GradMode::is_enabled();
  if (keep.any) {
    bool any_grad = false;
    for (const auto* t : {&x, &pair_weight, &w.w1, &w.w2, &w.w3, &w.b1, &w.b2})
      any_grad = any_grad || (t->defined() && t->requires_grad());
    keep.any = any_grad;
  }
  keep.hidden = !recompute_hidden;
  // Custom autograd functions cannot take undefined inputs: absent optional weights travel as empty
  // placeholders (a real b1/b2/w3 is never empty) and get an undefined gradient.
  const auto absent = at::empty({0}, x.options());
  auto or_absent = [&](const at::Tensor& t) { return t.defined() ? t : absent; };
  return ExpertMLPFunction::apply(x, pair_weight, w.w1, w.w2, or_absent(w.w3), or_absent(w.b1),
                                  or_absent(w.b2), plan, activation, keep);
}

}  // namespace moe::functional
