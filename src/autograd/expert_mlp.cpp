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
#include <optional>
#include <vector>

#include "kernels/cpu/acc_type.h"
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

// da = f'(h) · da in place: the derivative of a smooth activation (ReLU's is applied from its
// output by hidden_output_backward).
void activation_derivative(Activation act, const at::Tensor& h, at::Tensor& da) {
  switch (act) {
    case Activation::kReLU:
      TORCH_INTERNAL_ASSERT(false, "ReLU's derivative is fused into hidden_output_backward");
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

// OpenBLAS's pthread build runs its own thread pool; while experts run in parallel on OpenMP
// threads it must run single-threaded in each caller, so that only one threading system is active
// at a time. Its OpenMP build (openblas_get_parallel() == 2) and other BLAS libraries (MKL) run
// single-threaded inside an OpenMP region by themselves; there openblas_set_num_threads would set
// the OpenMP thread count of the whole process, so it is not called.
class BlasSingleThreaded {
 public:
  BlasSingleThreaded() {
    static const auto set =
        reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
    static const auto get =
        reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
    static const auto parallel_kind =
        reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
    if (set && get && !(parallel_kind && parallel_kind() == 2)) {
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

// Runs body(e, worker) for every non-empty expert in [first, last). In parallel mode the experts
// are claimed dynamically, largest first, so skewed loads still keep every thread busy; `worker`
// indexes the per-thread scratch. Each expert writes only its own rows and its own weight
// gradients, so the result does not depend on the schedule.
template <typename Body>
void for_each_expert(const int64_t* offsets, int64_t first, int64_t last, bool parallel,
                     Body&& body) {
  if (!parallel) {
    for (int64_t e = first; e < last; ++e)
      if (offsets[e + 1] > offsets[e]) body(e, 0);
    return;
  }
  std::vector<int64_t> order;
  for (int64_t e = first; e < last; ++e)
    if (offsets[e + 1] > offsets[e]) order.push_back(e);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  std::atomic<size_t> next{0};
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

// Rows of expert outputs (forward) or input gradients (backward) held at once before they are
// summed into the token rows: one expert's rows on the serial schedule; on the parallel schedule,
// consecutive experts up to this many rows (or the largest expert), so the buffer stays small
// while each parallel region still has many experts to balance.
constexpr int64_t kChunkRows = 4096;

// Rows of the chunk buffer: the largest expert; on the parallel schedule kChunkRows (or the largest
// expert), never more than all P pairs.
int64_t chunk_rows(bool parallel, int64_t largest, int64_t P) {
  return parallel ? std::min(P, std::max(largest, kChunkRows)) : largest;
}

// Consecutive runs of experts [first, last) whose rows are computed into the chunk buffer together
// and then summed into the token rows.
struct Chunk {
  int64_t first, last;
};

std::vector<Chunk> make_chunks(const int64_t* offsets, int64_t E, bool parallel, int64_t budget) {
  std::vector<Chunk> chunks;
  for (int64_t e = 0; e < E;) {
    if (offsets[e + 1] == offsets[e]) {
      ++e;
      continue;
    }
    int64_t last = e + 1;
    while (parallel && last < E && offsets[last + 1] - offsets[e] <= budget) ++last;
    chunks.push_back({e, last});
    e = last;
  }
  return chunks;
}

// The engine's schedule: for each chunk, body(e, worker, rows) computes expert e's [n, d] result
// into `rows` (its slice of the chunk buffer), then the chunk's rows are added into the token rows
// of acc ([T, d], zero on entry, float32 for bf16), scaled by the pair weights when given. Every
// token row thus sums its pairs in expert order on either schedule and at any thread count.
template <typename T, typename A, typename Body>
void run_chunked(const int64_t* offsets, int64_t E, bool parallel, const int64_t* tok,
                 const T* weights, at::Tensor& chunk_buf, A* acc, Body&& body) {
  const int64_t d = chunk_buf.size(1);
  // While experts run in parallel, OpenBLAS must stay single-threaded in each worker.
  std::optional<BlasSingleThreaded> single;
  if (parallel) single.emplace();
  for (const Chunk& c : make_chunks(offsets, E, parallel, chunk_buf.size(0))) {
    const int64_t base = offsets[c.first];
    for_each_expert(offsets, c.first, c.last, parallel, [&](int64_t e, int64_t worker) {
      auto rows = chunk_buf.narrow(0, offsets[e] - base, offsets[e + 1] - offsets[e]);
      body(e, worker, rows);
    });
    k::scatter_add_rows<T, A>(chunk_buf.data_ptr<T>(), tok + base,
                              weights ? weights + base : nullptr, offsets[c.last] - base, d, acc);
  }
}

// The zeroed accumulator of run_chunked for an output of type `opts`: the output itself, or a
// float32 buffer for bf16 (accumulation in float32, RELIABILITY.md).
at::Tensor make_accumulator(int64_t T, int64_t d, const at::TensorOptions& opts) {
  return at::zeros({T, d}, opts.dtype() == at::kBFloat16 ? opts.dtype(at::kFloat) : opts);
}

// Per-worker scratch. Forward: xg [rows, d]; h, g when the hidden layer is not kept; a when it is
// kept and a cannot overwrite it. Backward: xg and dy [rows, d]; h, g when not kept; a (not for
// ReLU, whose kept or recomputed hidden layer already holds a); da; f(h) for gated units.
struct Work {
  Scratch xg, dy, hs, gs, as, das, fhs;
};

struct WorkShape {
  int64_t rows, d, h;
  bool keep_h, gated, relu, backward;
};

std::vector<Work> make_workspace(bool parallel, const WorkShape& s, const at::TensorOptions& opts) {
  std::vector<Work> work(parallel ? at::get_num_threads() : 1);
  auto buf = [&](int64_t cols) { return Scratch{at::empty({s.rows, cols}, opts)}; };
  for (auto& w : work) {
    w.xg = buf(s.d);
    if (!s.keep_h) w.hs = buf(s.h);
    if (!s.keep_h && s.gated) w.gs = buf(s.h);
    if (s.backward) {
      w.dy = buf(s.d);
      if (!s.relu) w.as = buf(s.h);
      w.das = buf(s.h);
      if (s.gated) w.fhs = buf(s.h);
    } else if (s.keep_h && !s.relu) {
      w.as = buf(s.h);
    }
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
    const bool relu = act == Activation::kReLU;
    const auto b1 = b1_in.numel() > 0 ? b1_in : at::Tensor();
    const auto b2 = b2_in.numel() > 0 ? b2_in : at::Tensor();
    const auto opts = x.options();
    const auto xc = x.contiguous();
    const auto wc = pair_weight.contiguous();
    const int64_t* offsets = plan.expert_offsets.data_ptr<int64_t>();
    const int64_t* tok = plan.token_index.data_ptr<int64_t>();
    const int64_t rows = largest_segment(offsets, E);

    // Kept for backward: h (and g) as [P, h], or for ReLU a = relu(h), which serves both dW2 and
    // the derivative mask (a > 0 exactly where h > 0).
    const bool keep_h = keep.any && keep.hidden;
    const bool parallel = experts_in_parallel(offsets, E);
    auto hall = keep_h ? at::empty({P, h}, opts) : at::Tensor();
    auto gall = keep_h && gated ? at::empty({P, h}, opts) : at::Tensor();
    const auto work =
        make_workspace(parallel, {rows, d, h, keep_h, gated, relu, /*backward=*/false}, opts);
    auto chunk = at::empty({chunk_rows(parallel, rows, P), d}, opts);
    auto acc = make_accumulator(T, d, opts);

    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      using A_ = k::acc_t<T_>;
      run_chunked<T_>(offsets, E, parallel, tok, wc.data_ptr<T_>(), chunk, acc.data_ptr<A_>(),
                      [&](int64_t e, int64_t worker, at::Tensor& o_e) {
                        const Work& wk = work[worker];
                        const int64_t s = offsets[e], n = offsets[e + 1] - s;
                        auto [xg_e, h_e, g_e] =
                            expert_rows<T_>(wk, xc, tok, s, n, hall, gall, gated);
                        hidden_layer(h_e, g_e, xg_e, w1, w3, b1, e);
                        // a overwrites h unless backward needs h itself.
                        auto a_e = keep_h && !relu ? wk.as.rows(n) : h_e;
                        activation_forward(act, h_e, g_e, a_e);
                        linear_out(o_e, a_e, w2[e], b2.defined() ? b2[e] : at::Tensor());
                      });
    });
    auto y = acc.scalar_type() == x.scalar_type() ? acc : acc.to(x.scalar_type());

    if (keep.any) {
      ctx->save_for_backward({xc, wc, w1, w2, w3, b1_in, b2_in, hall, gall});
      ctx->saved_data["act"] = static_cast<int64_t>(act);
      ctx->saved_data["expert_offsets"] = plan.expert_offsets;
      ctx->saved_data["token_index"] = plan.token_index;
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
    const auto b2 = saved[6].numel() > 0 ? saved[6] : at::Tensor();
    const auto& hall = saved[7];
    const auto& gall = saved[8];
    const auto act = static_cast<Activation>(ctx->saved_data["act"].toInt());
    const auto expert_offsets = ctx->saved_data["expert_offsets"].toTensor();
    const auto token_index = ctx->saved_data["token_index"].toTensor();
    const bool gated = is_gated(act);
    const bool relu = act == Activation::kReLU;
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
    auto db2 = b2.defined() ? at::empty({E, d}, opts) : at::Tensor();
    for (int64_t e = 0; e < E; ++e) {
      if (offsets[e + 1] > offsets[e]) continue;
      for (auto* g : {&dw1, &dw2, &dw3, &db1, &db2})
        if (g->defined()) (*g)[e].zero_();
    }
    auto dpw = at::empty({P}, opts);
    const bool parallel = experts_in_parallel(offsets, E);
    const auto work =
        make_workspace(parallel, {rows, d, h, keep_h, gated, relu, /*backward=*/true}, opts);
    auto chunk = at::empty({chunk_rows(parallel, rows, P), d}, opts);
    auto acc = make_accumulator(T, d, opts);

    dispatch_dtype(x.scalar_type(), [&](auto tag) {
      using T_ = decltype(tag);
      using A_ = k::acc_t<T_>;
      T_* dpw_p = dpw.data_ptr<T_>();
      const T_* pw_p = pw.data_ptr<T_>();
      run_chunked<T_>(
          offsets, E, parallel, tok, static_cast<const T_*>(nullptr), chunk, acc.data_ptr<A_>(),
          [&](int64_t e, int64_t worker, at::Tensor& dxg_e) {
            const Work& wk = work[worker];
            const int64_t s = offsets[e], n = offsets[e + 1] - s;
            auto [xg_e, h_e, g_e] = expert_rows<T_>(wk, x, tok, s, n, hall, gall, gated);
            auto dy_e = wk.dy.rows(n);  // the upstream rows, not yet scaled by the pair weights
            k::gather_rows<T_>(dy.data_ptr<T_>(), tok + s, n, d, dy_e.data_ptr<T_>());
            if (!keep_h) {  // recompute_hidden
              hidden_layer(h_e, g_e, xg_e, w1, w3, b1, e);
              if (relu) h_e.clamp_min_(0);
            }
            // a = f(h) (f(h)·g), recomputed; for ReLU h_e already holds it. For gated units f(h)
            // is kept apart: it is also the first factor of dg.
            at::Tensor a_e = relu ? h_e : wk.as.rows(n);
            auto fh_e = gated ? wk.fhs.rows(n) : at::Tensor();
            if (gated && h_e.scalar_type() != at::kBFloat16) {
              act_out(act, fh_e, h_e);
              at::mul_out(a_e, fh_e, g_e);
            } else if (!relu) {
              if (gated) act_out(act, fh_e, h_e);
              activation_forward(act, h_e, g_e, a_e);  // bf16: the forward's single rounding
            }

            // With o = a·w2 + b2 and y[t] = Σ w_p·o[p]: dL/dw_p = <dy[t], o[p]>
            // = <dy·w2ᵀ, a> + <dy, b2>, computed from G = dy·w2ᵀ, whose rows scaled by w_p are
            // dL/da. So o is never stored. One fused pass gives dL/dw_p and dL/da, and for ReLU
            // dL/dh, for gated units dL/dg (into fh_e) and dL/df(h).
            auto da_e = wk.das.rows(n);
            at::mm_out(da_e, dy_e, w2[e].t());
            const auto mode = relu    ? k::HiddenGrad::kReLU
                              : gated ? k::HiddenGrad::kGated
                                      : k::HiddenGrad::kPlain;
            k::hidden_output_backward<T_>(da_e.data_ptr<T_>(), a_e.data_ptr<T_>(), pw_p + s, n, h,
                                          dpw_p + s, mode, gated ? fh_e.data_ptr<T_>() : nullptr,
                                          gated ? g_e.template data_ptr<T_>() : nullptr);
            auto dpw_e = dpw.narrow(0, s, n);
            if (b2.defined()) dpw_e.addmv_(dy_e, b2[e]);
            dy_e.mul_(pw.narrow(0, s, n).unsqueeze(1));  // now dL/do

            auto dw2_e = dw2[e];
            at::mm_out(dw2_e, a_e.t(), dy_e);
            if (b2.defined()) {
              auto db2_e = db2[e];
              at::sum_out(db2_e, dy_e, 0);
            }
            if (!relu) activation_derivative(act, h_e, da_e);  // da_e now holds dL/dh

            auto dw1_e = dw1[e];
            at::mm_out(dw1_e, xg_e.t(), da_e);
            if (b1.defined()) {
              auto db1_e = db1[e];
              at::sum_out(db1_e, da_e, 0);
            }
            at::mm_out(dxg_e, da_e, w1[e].t());
            if (gated) {
              auto dw3_e = dw3[e];
              at::mm_out(dw3_e, xg_e.t(), fh_e);
              dxg_e.addmm_(fh_e, w3[e].t());
            }
          });
    });
    auto dx = acc.scalar_type() == x.scalar_type() ? acc : acc.to(x.scalar_type());
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
