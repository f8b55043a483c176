// The engine's hot path: dispatch → grouped expert GEMMs → weighted combine, and its backward, as
// one custom autograd function over a RoutingPlan (see include/moe/functional.h).
//
// Forward, for each expert e with pairs [s, s+n) in the plan:
//   xg = x[token_index[s:s+n]]                       gather into an [n, d] scratch buffer
//   h  = xg·w1[e] + b1[e]      (g = xg·w3[e])        [n, h]
//   a  = act(h)                (a = act(h)·g)        [n, h] scratch
//   o[s:s+n] = a·w2[e] + b2[e]                       [P, d]
//   y[t] = Σ_{pairs p of t} w_p · o[p]               combine in slot order (deterministic)
// Saved for backward: h (and g) as [P, h] and o as [P, d]; with recompute_hidden only o, and h is
// recomputed from x (one more GEMM per expert, two for gated units). Everything per expert lives in
// scratch buffers sized by the largest expert, so the peak memory is the saved tensors plus one
// expert's working set, as in an eager loop over experts, without its per-expert allocations.
//
// Backward, per expert: a is recomputed, dW2 = aᵀ·do, da = do·w2ᵀ, dh = act'(h)·da (in place),
// dW1 = xgᵀ·dh, and dxg = dh·w1ᵀ is written over the rows of do that expert no longer needs; a
// final deterministic combine sums each token's dxg rows into dx.
//
// Activations use ATen's vectorised elementwise kernels (relu/gelu/silu and their backward); a
// scalar loop with erf/exp per element was 10x slower and made the elementwise passes rival the
// GEMMs.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <dlfcn.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "moe/functional.h"

namespace moe::functional {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
namespace k = moe::kernels::cpu;

// Mean rows per expert below which experts run in parallel (one per thread) rather than one after
// the other with a multi-threaded BLAS. Measured with moe_bench on the 2-core build machine.
constexpr int64_t kParallelExpertRows = 512;

// One dtype switch for the whole file (float, double, bfloat16).
template <typename F>
void dispatch_dtype(at::ScalarType t, F&& f) {
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t, "expert_mlp", [&] { f(scalar_t(0)); });
}

// a = f(h), or f(h) * g for gated units. GELU is the exact (erf) form.
void act_out(Activation act, at::Tensor& out, const at::Tensor& h) {
  switch (act) {
    case Activation::kReLU:
      at::clamp_min_out(out, h, 0);
      break;
    case Activation::kGELU:
    case Activation::kGEGLU:
      at::gelu_out(out, h);
      break;
    case Activation::kSiLU:
    case Activation::kSwiGLU:
      at::silu_out(out, h);
      break;
  }
}

void activation_forward(Activation act, const at::Tensor& h, const at::Tensor& g, at::Tensor& a) {
  if (is_gated(act) && h.scalar_type() == at::kBFloat16) {
    // f(h)·g with one bf16 rounding instead of two: f(h) stays float32 until the product.
    auto f = h.to(at::kFloat);
    act_out(act, f, f);
    at::mul_out(a, f, g);
    return;
  }
  act_out(act, a, h);
  if (is_gated(act)) a.mul_(g);
}

// Backward of the activation. On entry da = dL/da and, for gated units, dg holds f(h) (computed
// once for both the recomputed a and dg); on exit da holds dL/dh and dg = dL/dg.
void activation_backward(Activation act, const at::Tensor& h, const at::Tensor& g, at::Tensor& da,
                         at::Tensor& dg) {
  if (is_gated(act)) {
    dg.mul_(da);  // dL/dg = f(h) · da
    da.mul_(g);   // the upstream gradient of f(h)
  }
  switch (act) {
    case Activation::kReLU:
      at::threshold_backward_out(da, da, h, 0);
      break;
    case Activation::kGELU:
    case Activation::kGEGLU:
      at::gelu_backward_out(da, da, h);
      break;
    case Activation::kSiLU:
    case Activation::kSwiGLU:
      at::silu_backward_out(da, da, h);
      break;
  }
}

// out = a · b (+ bias), out a view into a preallocated buffer.
void linear_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b, const at::Tensor& bias) {
  if (bias.defined()) {
    at::addmm_out(out, bias, a, b);
  } else {
    at::mm_out(out, a, b);
  }
}

int64_t largest_segment(const int64_t* offsets, int64_t E) {
  int64_t m = 0;
  for (int64_t e = 0; e < E; ++e) m = std::max(m, offsets[e + 1] - offsets[e]);
  return m;
}

// Per-expert scratch rows: the first n rows of a [max_rows, cols] buffer.
struct Scratch {
  at::Tensor buf;
  at::Tensor rows(int64_t n) const { return buf.narrow(0, 0, n); }
};

// OpenBLAS runs its own thread pool; while experts run in parallel on OpenMP threads it must run
// single-threaded in each caller, so that only one threading system is active at a time. Other BLAS
// libraries (MKL) detect the enclosing OpenMP region themselves; then the symbols are absent.
class BlasSingleThreaded {
 public:
  BlasSingleThreaded() {
    static const auto set =
        reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    static const auto get =
        reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    if (set && get) {
      set_ = set;
      prev_ = get();
      set_(1);
    }
  }
  ~BlasSingleThreaded() {
    if (set_) set_(prev_);
  }
  BlasSingleThreaded(const BlasSingleThreaded&) = delete;
  BlasSingleThreaded& operator=(const BlasSingleThreaded&) = delete;

 private:
  void (*set_)(int) = nullptr;
  int prev_ = 1;
};

// How the experts of one call are scheduled:
//  - one after the other, each GEMM using every core through the BLAS (large segments), or
//  - several experts at once, one per intra-op thread, each with a single-threaded BLAS (many small
//    segments, where a multi-threaded GEMM of a few hundred rows loses to fork/join and splitting).
// MOE_EXPERT_SCHEDULE=serial|parallel overrides the choice (for benchmarks).
// The choice depends on the plan only, never on the thread count: a single-threaded and a
// multi-threaded GEMM may round differently, and results must not change with at::set_num_threads.
bool experts_in_parallel(const int64_t* offsets, int64_t E) {
  static const char* env = std::getenv("MOE_EXPERT_SCHEDULE");
  if (env && std::strcmp(env, "serial") == 0) return false;
  if (env && std::strcmp(env, "parallel") == 0) return true;
  int64_t busy = 0;
  for (int64_t e = 0; e < E; ++e) busy += offsets[e + 1] > offsets[e];
  if (busy < 4) return false;
  return offsets[E] / busy < kParallelExpertRows;
}

// Runs body(e, worker) for every non-empty expert. In parallel mode the experts are claimed
// dynamically, largest first, so skewed loads still keep every thread busy; `worker` indexes the
// per-thread scratch. Each expert writes only its own rows and its own weight gradients, so the
// result does not depend on the schedule.
template <typename Body>
void for_each_expert(const int64_t* offsets, int64_t E, bool parallel, Body&& body) {
  if (!parallel) {
    for (int64_t e = 0; e < E; ++e)
      if (offsets[e + 1] > offsets[e]) body(e, 0);
    return;
  }
  std::vector<int64_t> order;
  for (int64_t e = 0; e < E; ++e)
    if (offsets[e + 1] > offsets[e]) order.push_back(e);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  std::atomic<size_t> next{0};
  BlasSingleThreaded single;
  const int64_t threads = at::get_num_threads();
  // OpenMP workers do not inherit the caller's thread-local state (grad mode is off inside an
  // autograd function's forward and backward; ATen ops on weights that require grad would record).
  const at::ThreadLocalState state;
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t worker = begin; worker < end; ++worker) {
      for (size_t i = next++; i < order.size(); i = next++) body(order[i], worker);
    }
  });
}

// Per-worker scratch: xg [rows, d]; h, g when the hidden layer is not kept; a; and in backward da,
// dg.
struct Work {
  Scratch xg, hs, gs, as, das, dgs;
};

std::vector<Work> make_workspace(bool parallel, int64_t rows, int64_t d, int64_t h, bool keep_h,
                                 bool gated, bool backward, const at::TensorOptions& opts) {
  std::vector<Work> work(parallel ? at::get_num_threads() : 1);
  auto buf = [&](int64_t cols) { return Scratch{at::empty({rows, cols}, opts)}; };
  for (auto& w : work) {
    w.xg = buf(d);
    if (!keep_h) w.hs = buf(h);
    if (!keep_h && gated) w.gs = buf(h);
    if (!backward && keep_h) w.as = buf(h);
    if (backward) w.das = buf(h);
    if (backward && gated) w.dgs = buf(h);
  }
  return work;
}

// The rows one expert works on: its gathered inputs xg [n, d] (worker scratch) and its hidden
// pre-activations h (and g for gated units): rows of the saved [P, h] tensors when they are kept,
// else worker scratch. Gathers xg; fills nothing else.
struct ExpertRows {
  at::Tensor xg, h, g;
};

template <typename T>
ExpertRows expert_rows(const Work& wk, const at::Tensor& x, const int64_t* tok, int64_t s,
                       int64_t n, const at::Tensor& hall, const at::Tensor& gall, bool gated) {
  ExpertRows r;
  r.xg = wk.xg.rows(n);
  kernels::cpu::gather_rows<T>(x.data_ptr<T>(), tok + s, n, x.size(1), r.xg.data_ptr<T>());
  const bool kept = hall.defined();
  r.h = kept ? hall.narrow(0, s, n) : wk.hs.rows(n);
  if (gated) r.g = kept ? gall.narrow(0, s, n) : wk.gs.rows(n);
  return r;
}

// h = xg·w1[e] + b1[e] and, for gated units, g = xg·w3[e], into the given views.
void hidden_layer(at::Tensor& h_e, at::Tensor& g_e, const at::Tensor& xg_e, const at::Tensor& w1,
                  const at::Tensor& w3, const at::Tensor& b1, int64_t e) {
  linear_out(h_e, xg_e, w1[e], b1.defined() ? b1[e] : at::Tensor());
  if (g_e.defined()) at::mm_out(g_e, xg_e, w3[e]);
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
    const auto b1 = b1_in.numel() > 0 ? b1_in : at::Tensor();
    const auto b2 = b2_in.numel() > 0 ? b2_in : at::Tensor();
    const auto opts = x.options();
    const auto xc = x.contiguous();
    const auto wc = pair_weight.contiguous();
    const int64_t* offsets = plan.expert_offsets.data_ptr<int64_t>();
    const int64_t* tok = plan.token_index.data_ptr<int64_t>();
    const int64_t rows = largest_segment(offsets, E);

    const bool keep_h = keep.any && keep.hidden;
    const bool parallel = experts_in_parallel(offsets, E);
    auto hall = keep_h ? at::empty({P, h}, opts) : at::Tensor();
    auto gall = keep_h && gated ? at::empty({P, h}, opts) : at::Tensor();
    const auto work = make_workspace(parallel, rows, d, h, keep_h, gated, /*backward=*/false, opts);
    auto o = at::empty({P, d}, opts);
    auto y = at::empty({T, d}, opts);

    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      for_each_expert(offsets, E, parallel, [&](int64_t e, int64_t worker) {
        const Work& wk = work[worker];
        const int64_t s = offsets[e], n = offsets[e + 1] - s;
        auto [xg_e, h_e, g_e] = expert_rows<T_>(wk, xc, tok, s, n, hall, gall, gated);
        hidden_layer(h_e, g_e, xg_e, w1, w3, b1, e);
        auto a_e = keep_h ? wk.as.rows(n) : h_e;  // h is scratch here: a may overwrite it
        activation_forward(act, h_e, g_e, a_e);
        auto o_e = o.narrow(0, s, n);
        linear_out(o_e, a_e, w2[e], b2.defined() ? b2[e] : at::Tensor());
      });
      k::combine_rows<T_>(o.data_ptr<T_>(), wc.data_ptr<T_>(),
                          plan.token_offsets.data_ptr<int64_t>(),
                          plan.token_pairs.data_ptr<int64_t>(), T, d, y.data_ptr<T_>());
    });

    if (keep.any) {
      ctx->save_for_backward({xc, wc, w1, w2, w3, b1_in, hall, gall, o});
      ctx->saved_data["act"] = static_cast<int64_t>(act);
      ctx->saved_data["has_b2"] = b2.defined();
      ctx->saved_data["expert_offsets"] = plan.expert_offsets;
      ctx->saved_data["token_index"] = plan.token_index;
      ctx->saved_data["token_offsets"] = plan.token_offsets;
      ctx->saved_data["token_pairs"] = plan.token_pairs;
    }
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& pw = saved[1];
    const auto& w1 = saved[2];
    const auto& w2 = saved[3];
    const auto& w3 = saved[4];
    const auto b1 = saved[5].numel() > 0 ? saved[5] : at::Tensor();
    const auto& hall = saved[6];
    const auto& gall = saved[7];
    const auto& o = saved[8];
    const auto act = static_cast<Activation>(ctx->saved_data["act"].toInt());
    const bool has_b2 = ctx->saved_data["has_b2"].toBool();
    const auto expert_offsets = ctx->saved_data["expert_offsets"].toTensor();
    const auto token_index = ctx->saved_data["token_index"].toTensor();
    const auto token_offsets = ctx->saved_data["token_offsets"].toTensor();
    const auto token_pairs = ctx->saved_data["token_pairs"].toTensor();
    const bool gated = is_gated(act);
    const bool keep_h = hall.defined();

    const auto dy = grads[0].contiguous();
    const int64_t T = x.size(0), d = x.size(1), h = w1.size(2), E = w1.size(0);
    const int64_t P = token_index.size(0);
    const auto opts = x.options();
    const int64_t* offsets = expert_offsets.data_ptr<int64_t>();
    const int64_t* tok = token_index.data_ptr<int64_t>();
    const int64_t rows = largest_segment(offsets, E);

    // Every expert with pairs writes its whole gradient slice; the others are zeroed below (never
    // left uninitialised).
    auto dw1 = at::empty_like(w1), dw2 = at::empty_like(w2);
    auto dw3 = gated ? at::empty_like(w3) : at::Tensor();
    auto db1 = b1.defined() ? at::empty({E, h}, opts) : at::Tensor();
    auto db2 = has_b2 ? at::empty({E, d}, opts) : at::Tensor();
    for (int64_t e = 0; e < E; ++e) {
      if (offsets[e + 1] > offsets[e]) continue;
      for (auto* g : {&dw1, &dw2, &dw3, &db1, &db2})
        if (g->defined()) (*g)[e].zero_();
    }
    auto dpw = at::empty({P}, opts);
    auto dx = at::empty({T, d}, opts);
    auto dout = at::empty({P, d}, opts);  // d o; expert by expert it becomes d xg
    const bool parallel = experts_in_parallel(offsets, E);
    const auto work = make_workspace(parallel, rows, d, h, keep_h, gated, /*backward=*/true, opts);

    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      // Combine adjoints: d o[p] = w_p · dy[t_p];  d w_p = <dy[t_p], o[p]>.
      k::gather_scale_rows<T_>(dy.data_ptr<T_>(), tok, pw.data_ptr<T_>(), P, d,
                               dout.data_ptr<T_>());
      k::gather_dot_rows<T_>(dy.data_ptr<T_>(), tok, o.data_ptr<T_>(), P, d, dpw.data_ptr<T_>());
      for_each_expert(offsets, E, parallel, [&](int64_t e, int64_t worker) {
        const Work& wk = work[worker];
        const int64_t s = offsets[e], n = offsets[e + 1] - s;
        auto [xg_e, h_e, g_e] = expert_rows<T_>(wk, x, tok, s, n, hall, gall, gated);
        if (!keep_h) hidden_layer(h_e, g_e, xg_e, w1, w3, b1, e);  // recompute_hidden
        auto a_e = wk.das.rows(n);  // a lives in da's buffer until dW2 is done
        auto dg_e = gated ? wk.dgs.rows(n) : at::Tensor();
        if (gated) act_out(act, dg_e, h_e);  // f(h), reused for dg below
        if (gated && h_e.scalar_type() != at::kBFloat16) {
          at::mul_out(a_e, dg_e, g_e);
        } else {
          activation_forward(act, h_e, g_e, a_e);  // bf16: the forward's single-rounding path
        }

        auto dout_e = dout.narrow(0, s, n);
        auto dw2_e = dw2[e];
        at::mm_out(dw2_e, a_e.t(), dout_e);
        if (has_b2) {
          auto db2_e = db2[e];
          at::sum_out(db2_e, dout_e, 0);
        }
        auto da_e = a_e;  // a is no longer needed
        at::mm_out(da_e, dout_e, w2[e].t());
        activation_backward(act, h_e, g_e, da_e, dg_e);  // da_e now holds dh

        auto dw1_e = dw1[e];
        at::mm_out(dw1_e, xg_e.t(), da_e);
        if (b1.defined()) {
          auto db1_e = db1[e];
          at::sum_out(db1_e, da_e, 0);
        }
        // d xg overwrites this expert's rows of d o, which are no longer needed.
        at::mm_out(dout_e, da_e, w1[e].t());
        if (gated) {
          auto dw3_e = dw3[e];
          at::mm_out(dw3_e, xg_e.t(), dg_e);
          dout_e.addmm_(dg_e, w3[e].t());
        }
      });
      // dx[t] = Σ_{pairs of t} d xg[p], in slot order (deterministic).
      k::combine_rows<T_>(dout.data_ptr<T_>(), nullptr, token_offsets.data_ptr<int64_t>(),
                          token_pairs.data_ptr<int64_t>(), T, d, dx.data_ptr<T_>());
    });
    return {dx, dpw, dw1, dw2, dw3, db1, db2, at::Tensor(), at::Tensor(), at::Tensor()};
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
