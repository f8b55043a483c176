// Many small experts on the CPU (small_experts.h).
//
// With ~8 rows per expert the per-expert driver (cpu_backend.cpp) spends most of its time around
// the products, not in them: each expert makes its views (rows, weight blocks, gradient slices), a
// few dozen ATen calls and its own small elementwise passes. Here a chunk of consecutive experts (a
// few thousand rows) is one unit: its token rows are gathered at once, every per-expert product is
// one BLAS call on raw pointers (blas.h), and every elementwise pass (activation, its recompute and
// derivative, the pair-weight pass, the scaling by the pair weights) runs once over the whole
// chunk. Per expert there is nothing left but its GEMMs and its bias sums. The math, pass by pass,
// is that of expert_ffn_cpu.cpp; the chunk rows are then summed into the token rows as there.
#include "engine/cpu/small_experts.h"

#include <cstdlib>
#include <cstring>
#include <optional>

#include "engine/cpu/blas.h"
#include "engine/cpu/cpu_pass.h"
#include "engine/cpu/expert_activations.h"
#include "kernels/cpu/kernels.h"

namespace moe::engine::cpu {
namespace {

namespace k = moe::kernels::cpu;

// Mean rows per busy expert up to which the batched path is taken. Measured on the 2-core build
// machine (expert_mlp alone, GELU, T = 8192, d = 256, h = 64, top-4, fp32, forward / backward ms):
// 8 rows per expert (E = 4096) 121–161 / 305–351 per expert vs 81–98 / 200–266 batched; 32 rows
// (E = 1024) 66–73 / 156–160 vs 49–53 / 116–124; at 128 rows (E = 256) the two are equal.
constexpr int64_t kSmallExpertRows = 64;

// The raw weights of the stacked experts, in the compute dtype (= the stored one on this path).
template <typename T>
struct Raw {
  const T *w1, *w2, *w3, *b1, *b2;
  int64_t d, h, out;
  const T* W1(int64_t e) const { return w1 + e * d * h; }
  const T* W2(int64_t e) const { return w2 + e * h * out; }
  const T* W3(int64_t e) const { return w3 + e * d * h; }
};

template <typename T>
const T* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

template <typename T>
T* mut_ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// rows [n, w] (leading dimension w) = bias[w] on every row, so that a GEMM with beta = 1 adds to
// it.
template <typename T>
void fill_rows(T* rows, const T* bias, int64_t n, int64_t w) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(rows + i * w, bias, sizeof(T) * w);
}

// out[w] = Σ over n rows of m [n, w].
template <typename T>
void sum_rows(T* out, const T* m, int64_t n, int64_t w) {
  for (int64_t j = 0; j < w; ++j) out[j] = 0;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < w; ++j) out[j] += m[i * w + j];
}

// The first layer of expert e on its n rows X [n, d]: H = X·W1 + b1, G = X·W3 (gated units).
template <typename T>
void first_layer(const Raw<T>& w, int64_t e, const T* X, int64_t n, T* H, T* G) {
  const int64_t d = w.d, h = w.h;
  T beta = 0;
  if (w.b1) {
    fill_rows(H, w.b1 + e * h, n, h);
    beta = 1;
  }
  blas::gemm<T>(false, false, n, h, d, 1, X, d, w.W1(e), h, beta, H, h);
  if (G) blas::gemm<T>(false, false, n, h, d, 1, X, d, w.W3(e), h, 0, G, h);
}

// The activation pass over a chunk's [n, h] rows: a = f(h) (f(h)·g), in the engine's fixed row
// blocks (expert_activations.h), so that the result does not depend on the thread count.
void activation_rows(Activation act, const at::Tensor& H, const at::Tensor& G, at::Tensor& A) {
  in_row_blocks(H.size(0), H.size(1), [&](int64_t r0, int64_t r1) {
    auto a = row_slice(A, r0, r1);
    activation_forward(act, row_slice(H, r0, r1), row_slice(G, r0, r1), a);
  });
}

// Runs fn(e, s, n) for the non-empty experts of a chunk, s being the expert's first row in the
// chunk.
template <typename F>
void per_expert(const Pass& ps, const schedule::Chunk& c, F&& fn) {
  const int64_t base = ps.offsets[c.first];
  schedule::for_each_expert(
      ps.offsets, c.first, c.last, /*parallel=*/true,
      [&](int64_t e, int64_t) { fn(e, ps.offsets[e] - base, ps.offsets[e + 1] - ps.offsets[e]); });
}

template <typename T>
Raw<T> raw_weights(const ExpertProblem& p, const Pass& ps) {
  return {p.w1.data_ptr<T>(),
          ptr_or_null<T>(p.w2),
          ptr_or_null<T>(p.w3),
          ptr_or_null<T>(ps.w.b1),
          ptr_or_null<T>(ps.w.b2),
          ps.d,
          ps.h,
          ps.out};
}

template <typename T>
void forward_chunks(const ExpertProblem& p, const Pass& ps, bool keep_h, const at::Tensor& hall,
                    const at::Tensor& gall, at::Tensor& acc) {
  const Raw<T> w = raw_weights<T>(p, ps);
  const int64_t R = schedule::chunk_rows(true, ps.rows, ps.P), d = ps.d, h = ps.h;
  const auto opt = ps.copts;
  auto X = at::empty({R, d}, opt);
  auto H = keep_h ? at::Tensor() : at::empty({R, h}, opt);
  auto G = keep_h || !ps.gated ? at::Tensor() : at::empty({R, h}, opt);
  auto A = keep_h && !ps.relu ? at::empty({R, h}, opt) : at::Tensor();
  auto O = w.w2 ? at::empty({R, ps.out}, opt) : at::Tensor();
  const T* x = p.x.data_ptr<T>();
  const T* pw = p.pair_weight.data_ptr<T>();
  schedule::BlasSingleThreaded single;
  for (const auto& c : schedule::make_chunks(ps.offsets, ps.E, true, R)) {
    const int64_t base = ps.offsets[c.first], n = ps.offsets[c.last] - base;
    auto Xc = X.narrow(0, 0, n);
    k::gather_rows<T>(x, ps.tok + base, n, d, Xc.data_ptr<T>());
    auto Hc = keep_h ? hall.narrow(0, base, n) : H.narrow(0, 0, n);
    auto Gc = !ps.gated ? at::Tensor() : keep_h ? gall.narrow(0, base, n) : G.narrow(0, 0, n);
    // a overwrites h unless backward needs h itself (as in the per-expert driver).
    auto Ac = keep_h && !ps.relu ? A.narrow(0, 0, n) : Hc;
    T *xc = Xc.data_ptr<T>(), *hc = Hc.data_ptr<T>(), *gc = mut_ptr_or_null<T>(Gc);
    per_expert(ps, c, [&](int64_t e, int64_t s, int64_t ne) {
      first_layer(w, e, xc + s * d, ne, hc + s * h, gc ? gc + s * h : nullptr);
    });
    activation_rows(p.act, Hc, Gc, Ac);
    at::Tensor Oc = Ac;  // one-layer experts output their activation
    if (w.w2) {
      Oc = O.narrow(0, 0, n);
      T *ac = Ac.data_ptr<T>(), *oc = Oc.data_ptr<T>();
      per_expert(ps, c, [&](int64_t e, int64_t s, int64_t ne) {
        T beta = 0;
        if (w.b2) {
          fill_rows(oc + s * w.out, w.b2 + e * w.out, ne, w.out);
          beta = 1;
        }
        blas::gemm<T>(false, false, ne, w.out, h, 1, ac + s * h, h, w.W2(e), w.out, beta,
                      oc + s * w.out, w.out);
      });
    }
    k::scatter_add_rows<T, k::acc_t<T>>(Oc.data_ptr<T>(), ps.tok + base, pw + base, n, w.out,
                                        acc.data_ptr<k::acc_t<T>>());
  }
}

template <typename T>
void backward_chunks(const ExpertProblem& p, const Pass& ps, const SavedHidden& hidden,
                     const at::Tensor& dy, bool want_x, ExpertGradients& g, at::Tensor& acc) {
  const Raw<T> w = raw_weights<T>(p, ps);
  const int64_t R = schedule::chunk_rows(true, ps.rows, ps.P), d = ps.d, h = ps.h, out = ps.out;
  const bool keep_h = hidden.h.defined(), gated = ps.gated, relu = ps.relu;
  const auto opt = ps.copts;
  auto X = at::empty({R, d}, opt), DY = at::empty({R, out}, opt), DA = at::empty({R, h}, opt);
  auto H = keep_h ? at::Tensor() : at::empty({R, h}, opt);
  auto G = keep_h || !gated ? at::Tensor() : at::empty({R, h}, opt);
  auto A = relu ? at::Tensor() : at::empty({R, h}, opt);
  auto FH = gated ? at::empty({R, h}, opt) : at::Tensor();
  auto DX = want_x ? at::empty({R, d}, opt) : at::Tensor();
  const T *x = p.x.data_ptr<T>(), *dyp = dy.data_ptr<T>(), *pw = p.pair_weight.data_ptr<T>();
  T* gpw = g.pair_weight.data_ptr<T>();
  T *gw1 = g.w1.data_ptr<T>(), *gw2 = mut_ptr_or_null<T>(g.w2), *gw3 = mut_ptr_or_null<T>(g.w3);
  T *gb1 = mut_ptr_or_null<T>(g.b1), *gb2 = mut_ptr_or_null<T>(g.b2);
  const auto mode = relu    ? k::HiddenGrad::kReLU
                    : gated ? k::HiddenGrad::kGated
                            : k::HiddenGrad::kPlain;
  schedule::BlasSingleThreaded single;
  for (const auto& c : schedule::make_chunks(ps.offsets, ps.E, true, R)) {
    const int64_t base = ps.offsets[c.first], n = ps.offsets[c.last] - base;
    auto Xc = X.narrow(0, 0, n), DYc = DY.narrow(0, 0, n), DAc = DA.narrow(0, 0, n);
    k::gather_rows<T>(x, ps.tok + base, n, d, Xc.data_ptr<T>());
    k::gather_rows<T>(dyp, ps.tok + base, n, out, DYc.data_ptr<T>());
    T *xc = Xc.data_ptr<T>(), *dyc = DYc.data_ptr<T>(), *dac = DAc.data_ptr<T>();

    // The hidden layer: the kept rows (ReLU: a itself), or recomputed.
    auto Hc = keep_h ? hidden.h.narrow(0, base, n) : H.narrow(0, 0, n);
    auto Gc = !gated ? at::Tensor() : keep_h ? hidden.g.narrow(0, base, n) : G.narrow(0, 0, n);
    if (!keep_h) {
      T *hc = Hc.data_ptr<T>(), *gc = mut_ptr_or_null<T>(Gc);
      per_expert(ps, c, [&](int64_t e, int64_t s, int64_t ne) {
        first_layer(w, e, xc + s * d, ne, hc + s * h, gc ? gc + s * h : nullptr);
      });
      if (relu) Hc.clamp_min_(0);
    }
    auto Ac = relu ? Hc : A.narrow(0, 0, n);
    auto FHc = gated ? FH.narrow(0, 0, n) : at::Tensor();
    if (!relu) {
      in_row_blocks(n, h, [&](int64_t r0, int64_t r1) {
        auto a = row_slice(Ac, r0, r1), fh = row_slice(FHc, r0, r1);
        const auto hb = row_slice(Hc, r0, r1), gb = row_slice(Gc, r0, r1);
        if (gated) {
          act_out(p.act, fh, hb);
          at::mul_out(a, fh, gb);
        } else {
          activation_forward(p.act, hb, gb, a);
        }
      });
    }
    const T* ac = Ac.data_ptr<T>();

    // Second layer: G = dy·w2ᵀ (one-layer experts: dy), then one pass over the chunk for dL/dw_p,
    // dL/da and the activation's mask or split (kernels.h hidden_output_backward).
    if (w.w2) {
      per_expert(ps, c, [&](int64_t e, int64_t s, int64_t ne) {
        blas::gemm<T>(false, true, ne, h, out, 1, dyc + s * out, out, w.W2(e), out, 0, dac + s * h,
                      h);
      });
    } else {
      DAc.copy_(DYc);
    }
    k::hidden_output_backward<T>(dac, ac, pw + base, n, h, gpw + base, mode,
                                 gated ? FHc.data_ptr<T>() : nullptr,
                                 gated ? Gc.data_ptr<T>() : nullptr);
    if (w.w2) {
      if (w.b2) {  // dL/dw_p += <dy, b2>
        per_expert(ps, c, [&](int64_t e, int64_t s, int64_t ne) {
          const T* b2 = w.b2 + e * out;
          for (int64_t i = s; i < s + ne; ++i) {
            T dot = 0;
            for (int64_t j = 0; j < out; ++j) dot += dyc[i * out + j] * b2[j];
            gpw[base + i] += dot;
          }
        });
      }
      DYc.mul_(p.pair_weight.narrow(0, base, n).unsqueeze(1));  // now dL/do
      per_expert(ps, c, [&](int64_t e, int64_t s, int64_t ne) {
        blas::gemm<T>(true, false, h, out, ne, 1, ac + s * h, h, dyc + s * out, out, 0,
                      gw2 + e * h * out, out);
        if (gb2) sum_rows(gb2 + e * out, dyc + s * out, ne, out);
      });
    }
    if (!relu) {
      in_row_blocks(n, h, [&](int64_t r0, int64_t r1) {
        auto da = row_slice(DAc, r0, r1);
        activation_derivative(p.act, row_slice(Hc, r0, r1), da);
      });
    }

    // First layer: dxg = dh·w1ᵀ (+ dg·w3ᵀ), dW1 = xgᵀ·dh, db1 = Σ dh, dW3 = xgᵀ·dg (dg in FH).
    T* dxc = want_x ? DX.data_ptr<T>() : nullptr;
    const T* dgc = gated ? FHc.data_ptr<T>() : nullptr;
    per_expert(ps, c, [&](int64_t e, int64_t s, int64_t ne) {
      if (dxc) {
        blas::gemm<T>(false, true, ne, d, h, 1, dac + s * h, h, w.W1(e), h, 0, dxc + s * d, d);
        if (dgc) {
          blas::gemm<T>(false, true, ne, d, h, 1, dgc + s * h, h, w.W3(e), h, 1, dxc + s * d, d);
        }
      }
      blas::gemm<T>(true, false, d, h, ne, 1, xc + s * d, d, dac + s * h, h, 0, gw1 + e * d * h, h);
      if (gb1) sum_rows(gb1 + e * h, dac + s * h, ne, h);
      if (dgc) {
        blas::gemm<T>(true, false, d, h, ne, 1, xc + s * d, d, dgc + s * h, h, 0, gw3 + e * d * h,
                      h);
      }
    });
    if (want_x) {
      k::scatter_add_rows<T, k::acc_t<T>>(dxc, ps.tok + base, nullptr, n, d,
                                          acc.data_ptr<k::acc_t<T>>());
    }
  }
}

// MOE_SMALL_EXPERTS: -1 unset, 0 off, 1 forced where possible.
int small_experts_override() {
  static const int v = [] {
    const char* env = std::getenv("MOE_SMALL_EXPERTS");
    if (env == nullptr) return -1;
    return std::strcmp(env, "0") == 0 ? 0 : 1;
  }();
  return v;
}

}  // namespace

bool use_small_experts(const ExpertProblem& p, const Pass& ps) {
  const int force = small_experts_override();
  if (force == 0 || !ps.parallel || ps.convert) return false;
  if (ps.cdt != at::kFloat && ps.cdt != at::kDouble) return false;
  for (const auto* t : {&p.x, &p.w1, &p.w2, &p.w3, &p.pair_weight, &ps.w.b1, &ps.w.b2})
    if (t->defined() && !t->is_contiguous()) return false;
  if (!blas::available()) return false;
  if (force == 1) return true;
  int64_t busy = 0;
  for (int64_t e = 0; e < ps.E; ++e) busy += ps.offsets[e + 1] > ps.offsets[e];
  return busy > 0 && ps.P / busy <= kSmallExpertRows;
}

ForwardResult small_experts_forward(const ExpertProblem& p, const Pass& ps, bool keep_h) {
  auto hall = keep_h ? at::empty({ps.P, ps.h}, ps.copts) : at::Tensor();
  auto gall = keep_h && ps.gated ? at::empty({ps.P, ps.h}, ps.copts) : at::Tensor();
  auto acc = make_accumulator(ps.T, ps.out, ps.copts);
  AT_DISPATCH_FLOATING_TYPES(ps.cdt, "small_experts_forward",
                             [&] { forward_chunks<scalar_t>(p, ps, keep_h, hall, gall, acc); });
  return {acc, {hall, gall}};
}

ExpertGradients small_experts_backward(const ExpertProblem& p, const Pass& ps,
                                       const SavedHidden& hidden, const at::Tensor& dy,
                                       const WantedGradients& want) {
  auto g = allocate_gradients(p, ps);
  auto acc = want.x ? make_accumulator(ps.T, ps.d, ps.copts) : at::Tensor();
  const auto dyc = dy.contiguous();
  AT_DISPATCH_FLOATING_TYPES(ps.cdt, "small_experts_backward", [&] {
    backward_chunks<scalar_t>(p, ps, hidden, dyc, want.x, g, acc);
  });
  if (want.x) g.x = acc;
  if (!want.pair_weight) g.pair_weight = at::Tensor();
  return g;
}

}  // namespace moe::engine::cpu
