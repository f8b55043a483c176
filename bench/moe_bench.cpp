// moe_bench: this library side by side with the MoE implementations users would otherwise write, on
// identical inputs, weights and routing (docs/benchmarks.md).
//
//   build/bench/moe_bench --quick                    # C0, uniform, fp32: the smoke test make test
//   runs build/bench/moe_bench --shapes C1,C4 --dtypes fp32,bf16 --json results.jsonl
//   build/bench/moe_bench --help                     (also `moe bench ...`)
//
// Implementations: lib (this library), naive (Mixtral-style eager loop), dense_dispatch (GShard
// one-hot dispatch, groups of 1024, capacity factor 1.25), dense_equiv (the same MLP on a
// contiguous [T·k, d] tensor: eta's denominator). A large square GEMM measured in the same run
// gives the peak. Before timing, every implementation's output and gradients are checked against a
// float64 naive loop.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "baselines.h"
#include "bench_main.h"
#include "bench_options.h"
#include "device_bench.h"
#include "kernels/cpu/acc_type.h"
#include "kernels/cpu/kernels.h"
#include "layer_bench.h"
#include "memory.h"
#include "moe/cpu.h"
#include "moe/gating.h"
#include "moe/matmul.h"
#include "moe/plan.h"
#include "moe/router.h"
#include "moe/runtime.h"
#include "workload.h"

namespace moe::bench {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- measurements
// --------------------------------------------------------------------------------

struct Stats {
  double med = 0, p10 = 0, p90 = 0;
};

Stats stats_of(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  auto q = [&](double f) {
    return v[std::min(v.size() - 1, static_cast<size_t>(f * (v.size() - 1) + 0.5))];
  };
  return {q(0.5), q(0.1), q(0.9)};
}

// GFLOP/s of one large square GEMM in this process: the machine's peak for `dtype`.
double gemm_peak(c10::ScalarType dtype) {
  const int64_t n = 2048;
  auto a = at::randn({n, n}).to(dtype), b = at::randn({n, n}).to(dtype),
       c = at::empty({n, n}, a.options());
  // bf16 on a CPU without bf16 dot products: the library's float32 path (moe/matmul.h), which
  // converts the operands on each call.
  const bool convert = ops::products_in_float32(dtype);
  auto product = [&] {
    if (convert) {
      c = ops::mm(a, b);
    } else {
      at::mm_out(c, a, b);
    }
  };
  product();
  std::vector<double> t;
  for (int i = 0; i < 5; ++i) {
    const auto t0 = Clock::now();
    product();
    t.push_back(seconds_since(t0));
  }
  return 2.0 * n * n * n / stats_of(t).med / 1e9;
}

// ---- correctness gate
// ----------------------------------------------------------------------------

struct GateResult {
  bool ok = true;
  double max_err = 0;  // max over the output and every gradient of ||impl - ref|| / ||ref|| (L2)
  std::string what;
};

std::vector<torch::Tensor> run_with_grads(Workload& w, const std::function<torch::Tensor()>& f) {
  set_requires_grad(w, true);
  auto out = f();
  out.backward(w.grad_out);
  std::vector<torch::Tensor> r{out.detach(), w.x.grad(), w.gate.grad(), w.w.w1.grad(),
                               w.w.w2.grad()};
  if (w.w.w3.defined()) r.push_back(w.w.w3.grad());
  set_requires_grad(w, false);
  return r;
}

// Tolerances (relative L2): `tol` for the output, 50·tol for the gradients: a ReLU unit whose
// pre-activation lies within float32 rounding of 0 takes the other branch of the derivative, which
// alone gives ~1e-3 relative error in dx and dw1 at these sizes. A wrong gradient is off by O(1).
GateResult compare(const std::vector<torch::Tensor>& got, const std::vector<torch::Tensor>& ref,
                   double tol) {
  static const char* names[] = {"output", "dx", "dgate", "dw1", "dw2", "dw3"};
  GateResult g;
  for (size_t i = 0; i < ref.size(); ++i) {
    if (!got[i].defined() || !ref[i].defined()) continue;
    // A relative L2 error: ReLU units whose pre-activation sits within rounding of 0 flip their
    // derivative between float32 and float64, which an elementwise tolerance would flag.
    const auto r = ref[i].to(at::kDouble);
    const double scale = std::max(r.norm().item<double>(), 1e-30);
    const double err = (got[i].to(at::kDouble) - r).norm().item<double>() / scale;
    g.max_err = std::max(g.max_err, err);
    if (!(err <= (i == 0 ? tol : 50 * tol))) {
      g.ok = false;
      g.what += std::string(names[i]) + " ";
    }
  }
  return g;
}

Workload as_double(const Workload& w) {
  Workload d = w;
  d.dtype = at::kDouble;
  d.x = w.x.detach().to(at::kDouble);
  d.gate = w.gate.detach().to(at::kDouble);
  d.grad_out = w.grad_out.to(at::kDouble);
  for (auto* t : {&d.w.w1, &d.w.w2, &d.w.w3})
    if (t->defined()) *t = t->detach().to(at::kDouble);
  return d;
}

// ---- one case
// ------------------------------------------------------------------------------------

struct Row {
  std::string impl, pass;
  Stats t;
  int64_t peak_mem = -1;
  double drop_rate = 0, max_err = 0;
  bool gate_ok = true;
};

// A JSON string's contents: quotes and backslashes escaped, control characters made spaces.
std::string json_escape(const std::string& in) {
  std::string out;
  for (const char c : in) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return out;
}

// JSON has no NaN: a ratio against an implementation that did not run (eta without dense_equiv)
// is null.
std::string json_number(double v) {
  if (!std::isfinite(v)) return "null";
  std::ostringstream s;
  s.precision(6);
  s << v;
  return s.str();
}

std::string json_row(const Workload& w, const Row& r, double flops, double peak, double t_equiv,
                     const std::map<std::string, double>& phases, int threads) {
  std::ostringstream s;
  const auto& sh = w.shape;
  s.precision(6);
  s << "{\"impl\":\"" << r.impl << "\",\"shape_id\":\"" << sh.id << "\",\"T\":" << sh.T
    << ",\"d\":" << sh.d << ",\"d_ff\":" << sh.d_ff << ",\"E\":" << sh.E << ",\"k\":" << sh.k
    << ",\"act\":\"" << to_string(sh.act) << "\",\"dtype\":\""
    << (w.dtype == at::kBFloat16 ? "bf16" : "fp32") << "\",\"dist\":\"" << w.dist
    << "\",\"imbalance\":" << w.imbalance << ",\"pass\":\"" << r.pass
    << "\",\"t_med_ms\":" << r.t.med * 1e3 << ",\"t_p10_ms\":" << r.t.p10 * 1e3
    << ",\"t_p90_ms\":" << r.t.p90 * 1e3 << ",\"tokens_per_s\":" << sh.T / r.t.med
    << ",\"useful_gflops\":" << flops / r.t.med / 1e9
    << ",\"pct_peak\":" << flops / r.t.med / 1e9 / peak
    << ",\"eta\":" << json_number(t_equiv / r.t.med) << ",\"peak_mem_delta_bytes\":" << r.peak_mem
    << ",\"drop_rate\":" << r.drop_rate << ",\"max_rel_err\":" << r.max_err
    << ",\"gate_ok\":" << (r.gate_ok ? "true" : "false") << ",\"threads\":" << threads
    << ",\"openblas\":\"" << moe::runtime::openblas_threading() << "\",\"bf16_gemm\":\""
    << cpu::to_string(cpu::bf16_gemm()) << "\",\"cpu\":\"" << json_escape(cpu::describe())
    << "\",\"peak_gflops\":" << peak;
  if (!phases.empty()) {
    s << ",\"phase_ms\":{";
    bool first = true;
    for (const auto& [k, v] : phases) {
      s << (first ? "" : ",") << "\"" << k << "\":" << v * 1e3;
      first = false;
    }
    s << "}";
  }
  s << "}";
  return s.str();
}

// Time of the library's non-GEMM work on this workload, phase by phase: plan construction, the
// permutation kernels (gather + weighted sum into the token rows; in backward also their adjoints)
// and a softmax top-k router.
std::map<std::string, double> lib_phases(const Workload& w, bool backward, int reps) {
  const auto& s = w.shape;
  std::vector<double> plan_t, perm_t, router_t;
  const auto xf = w.x.to(at::kFloat);
  TopKRouter router(RouterOptions(s.d, s.E).top_k(s.k).balance_coef(0.0));
  for (int r = 0; r < reps; ++r) {
    auto t0 = Clock::now();
    const RoutingPlan plan = build_routing_plan(w.expert_index, s.E);
    const auto pw = pair_weights(plan, w.gate).to(w.dtype);
    plan_t.push_back(seconds_since(t0));

    const int64_t P = plan.num_rows();
    const int64_t* off = plan.expert_offsets.data_ptr<int64_t>();
    int64_t most = 0;
    for (int64_t e = 0; e < s.E; ++e) most = std::max(most, off[e + 1] - off[e]);
    // Touched before the clock starts: the engine gathers into scratch of one expert's rows, not
    // into fresh [P, d] pages, so first-touch page faults here would overstate the kernels.
    auto rows = at::zeros({P, s.d}, w.x.options());
    auto hid_g = at::zeros({most, s.d_ff}, w.x.options());
    auto hid_a = at::zeros({most, s.d_ff}, w.x.options());
    auto dots = at::empty({P}, w.x.options());
    t0 = Clock::now();
    AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, w.x.scalar_type(), "phases", [&] {
      namespace k = kernels::cpu;
      using acc_t = k::acc_t<scalar_t>;
      const auto* tok = plan.token_index.data_ptr<int64_t>();
      auto* pwp = pw.data_ptr<scalar_t>();
      // Forward: dispatch (gather) and the weighted sum into the token rows.
      auto acc = at::zeros({s.T, s.d}, w.x.options().dtype(c10::CppTypeToScalarType<acc_t>()));
      k::gather_rows<scalar_t>(w.x.data_ptr<scalar_t>(), tok, P, s.d, rows.data_ptr<scalar_t>());
      k::scatter_add_rows<scalar_t, acc_t>(rows.data_ptr<scalar_t>(), tok, pwp, P, s.d,
                                           acc.data_ptr<acc_t>());
      if (backward) {
        // Backward: gather the upstream rows and the inputs again, the pair-weight gradients
        // over the hidden width (expert by expert, as the engine does; the engine fuses the
        // activation's elementwise backward into the same pass, counted here as permutation),
        // the weight scaling of the upstream rows, and the sum of the input gradients into the
        // token rows.
        k::gather_rows<scalar_t>(w.grad_out.data_ptr<scalar_t>(), tok, P, s.d,
                                 rows.data_ptr<scalar_t>());
        k::gather_rows<scalar_t>(w.x.data_ptr<scalar_t>(), tok, P, s.d, rows.data_ptr<scalar_t>());
        for (int64_t e = 0; e < s.E; ++e)
          k::hidden_output_backward<scalar_t>(
              hid_g.data_ptr<scalar_t>(), hid_a.data_ptr<scalar_t>(), pwp + off[e],
              off[e + 1] - off[e], s.d_ff, dots.data_ptr<scalar_t>() + off[e],
              k::HiddenGrad::kPlain, nullptr, nullptr);
        rows.mul_(pw.unsqueeze(1));
        acc.zero_();
        k::scatter_add_rows<scalar_t, acc_t>(rows.data_ptr<scalar_t>(), tok, nullptr, P, s.d,
                                             acc.data_ptr<acc_t>());
      }
    });
    perm_t.push_back(seconds_since(t0));

    t0 = Clock::now();
    if (backward) {
      auto xr = xf.detach().requires_grad_();
      auto out = router->route(xr);
      out.gate.sum().backward();
    } else {
      at::NoGradGuard ng;
      router->route(xf);
    }
    router_t.push_back(seconds_since(t0));
  }
  return {{"plan", stats_of(plan_t).med},
          {"permute", stats_of(perm_t).med},
          {"router", stats_of(router_t).med}};
}

// Runs and prints one workload; returns false if an implementation failed the correctness gate.
bool run_case(Workload& w, const Options& o, double peak, std::ofstream* json, int threads) {
  const auto& s = w.shape;
  const auto x_rep = w.x.repeat_interleave(s.k, 0).contiguous();
  Workload wrep = w;  // dense_equiv trains its own leaf copy of the tokens
  wrep.x = x_rep;
  wrep.grad_out = w.grad_out.repeat_interleave(s.k, 0).contiguous();
  DenseDispatch dd_last;
  std::map<std::string, std::function<torch::Tensor(Workload&)>> impls{
      {"lib", [](Workload& v) { return lib_forward(v); }},
      {"lib_recompute", [](Workload& v) { return lib_forward(v, /*recompute_hidden=*/true); }},
      {"naive", [](Workload& v) { return naive_loop_forward(v); }},
      {"dense_dispatch",
       [&](Workload& v) {
         dd_last = dense_dispatch_forward(v);
         return dd_last.output;
       }},
      {"dense_equiv", [](Workload& v) { return dense_equiv_forward(v, v.x); }},
  };
  auto workload_of = [&](const std::string& impl) -> Workload& {
    return impl == "dense_equiv" ? wrep : w;
  };

  // Correctness gate: every implementation vs a float64 naive loop (dense_dispatch vs the library
  // on the assignments it kept; dense_equiv vs a float64 copy of itself).
  std::map<std::string, GateResult> gates;
  if (o.check) {
    const double tol = w.dtype == at::kBFloat16 ? 2e-2 : 1e-4;
    Workload d = as_double(w);
    const auto ref = run_with_grads(d, [&] { return naive_loop_forward(d); });
    for (const auto& name : o.impls) {
      if (name == "dense_equiv") {
        Workload dr = as_double(wrep);
        const auto r = run_with_grads(dr, [&] { return dense_equiv_forward(dr, dr.x); });
        gates[name] = compare(
            run_with_grads(wrep, [&] { return dense_equiv_forward(wrep, wrep.x); }), r, tol);
      } else if (name == "dense_dispatch") {
        const auto got = run_with_grads(w, [&] { return impls[name](w); });
        Workload dk = d;
        dk.expert_index = dd_last.kept_index;
        gates[name] = compare(got, run_with_grads(dk, [&] { return naive_loop_forward(dk); }), tol);
      } else {
        gates[name] = compare(run_with_grads(w, [&] { return impls[name](w); }), ref, tol);
      }
    }
  }

  std::mt19937 rng(o.seed + 17);
  for (const auto& pass : o.passes) {
    const bool bwd = pass == "fwdbwd";
    std::map<std::string, std::vector<double>> times;
    auto run_one = [&](const std::string& name) {
      Workload& v = workload_of(name);
      set_requires_grad(v, bwd);
      const auto t0 = Clock::now();
      if (bwd) {
        auto out = impls[name](v);
        out.backward(v.grad_out);
      } else {
        at::NoGradGuard ng;
        impls[name](v);
      }
      return seconds_since(t0);
    };
    std::vector<std::string> order = o.impls;
    for (int r = 0; r < o.warmup; ++r)
      for (const auto& name : order) run_one(name);
    for (int r = 0; r < o.rounds; ++r) {
      std::shuffle(order.begin(), order.end(), rng);  // interleaved rounds cancel drift
      for (const auto& name : order) times[name].push_back(run_one(name));
    }
    const double flops = s.forward_flops() * (bwd ? 3.0 : 1.0);
    const double t_equiv = times.count("dense_equiv") ? stats_of(times["dense_equiv"]).med
                                                      : std::numeric_limits<double>::quiet_NaN();
    const auto phases = std::find(o.impls.begin(), o.impls.end(), "lib") != o.impls.end()
                            ? lib_phases(w, bwd, std::max(3, o.rounds))
                            : std::map<std::string, double>{};

    std::vector<Row> rows;
    for (const auto& name : o.impls) {
      Row r{name, pass, stats_of(times[name])};
      set_requires_grad(workload_of(name),
                        false);  // free the last run's gradients before measuring
      r.peak_mem = peak_tensor_bytes([&] { run_one(name); });
      if (name == "dense_dispatch") r.drop_rate = dd_last.drop_rate;
      if (gates.count(name)) {
        r.gate_ok = gates[name].ok;
        r.max_err = gates[name].max_err;
      }
      rows.push_back(r);
    }
    const double t_naive = times.count("naive") ? stats_of(times["naive"]).med : std::nan("");
    const double t_dd =
        times.count("dense_dispatch") ? stats_of(times["dense_dispatch"]).med : std::nan("");
    std::printf(
        "\n%s T=%lld d=%lld d_ff=%lld E=%lld k=%lld %s  %s  %s  imbalance %.2f  %s  (peak %.0f "
        "GFLOP/s)\n",
        s.id.c_str(), (long long)s.T, (long long)s.d, (long long)s.d_ff, (long long)s.E,
        (long long)s.k, to_string(s.act), w.dtype == at::kBFloat16 ? "bf16" : "fp32",
        w.dist.c_str(), w.imbalance, pass.c_str(), peak);
    std::printf("  %-15s %9s %9s %10s %8s %6s %7s %8s %8s %9s %6s %s\n", "impl", "ms", "p90/p10",
                "tokens/s", "GFLOP/s", "peak", "eta", "x naive", "x dense", "mem MiB", "drop",
                "check");
    for (const auto& r : rows) {
      const double gf = flops / r.t.med / 1e9;
      std::printf("  %-15s %9.2f %9.2f %10.0f %8.1f %6.2f %7.2f %8.2f %8.2f %9.1f %5.1f%% %s\n",
                  r.impl.c_str(), r.t.med * 1e3, r.t.p90 / r.t.p10, s.T / r.t.med, gf, gf / peak,
                  t_equiv / r.t.med, t_naive / r.t.med, t_dd / r.t.med, r.peak_mem / 1048576.0,
                  100 * r.drop_rate,
                  !gates.count(r.impl) ? "-"
                  : r.gate_ok
                      ? ("ok " + std::to_string(r.max_err)).c_str()
                      : ("FAILED " + gates[r.impl].what + std::to_string(r.max_err)).c_str());
      if (json)
        *json << json_row(w, r, flops, peak, t_equiv,
                          r.impl == "lib" ? phases : std::map<std::string, double>{}, threads)
              << "\n";
    }
    if (!phases.empty() && times.count("lib")) {
      const double t_lib = stats_of(times["lib"]).med;
      const double routing = phases.at("plan") + phases.at("permute");
      std::printf(
          "  lib phases: plan %.2f ms, permute %.2f ms (%.1f%% of lib); softmax top-k router %.2f "
          "ms; "
          "routing + permutation incl. router = %.1f%% of (router + lib)\n",
          phases.at("plan") * 1e3, phases.at("permute") * 1e3, 100 * routing / t_lib,
          phases.at("router") * 1e3,
          100 * (routing + phases.at("router")) / (t_lib + phases.at("router")));
    }
    std::fflush(stdout);
  }
  bool ok = true;
  for (const auto& [name, g] : gates) ok = ok && g.ok;
  return ok;
}

}  // namespace
}  // namespace moe::bench

namespace moe::bench {

int bench_main(int argc, char** argv) {
  moe::runtime::configure_threading(argv);
  try {
    const Options o = parse(argc, argv);
    // The block cache first: the counting allocator wraps whatever allocator is in place.
    const bool cache = o.block_cache && moe::runtime::enable_cpu_block_cache();
    install_counting_allocator();
    const int threads = moe::runtime::configure_threads(o.threads);
    at::set_num_interop_threads(1);
    // The device harness after the process setup, so that `--device cpu` runs as the CPU one.
    if (!o.device.empty()) return run_device_bench(o);
    std::ofstream json;
    if (!o.json.empty()) {
      json.open(o.json);
      if (!json) throw std::runtime_error("cannot write " + o.json);
    }
    auto env = [](const char* name) {
      const char* v = std::getenv(name);
      return v != nullptr ? v : "(unset)";
    };
    const std::string blas = moe::runtime::openblas_threading();
    std::printf(
        "moe_bench: %d threads, OpenBLAS %s build, OMP_WAIT_POLICY=%s, OPENBLAS_CORETYPE=%s\n",
        threads, blas.empty() ? "(not OpenBLAS)" : blas.c_str(), env("OMP_WAIT_POLICY"),
        env("OPENBLAS_CORETYPE"));
    std::printf("cpu: %s\n", cpu::describe().c_str());
    std::printf("CPU block cache: %s\n", cache ? "on" : "off");
    std::map<std::string, double> peak;
    for (const auto& dt : o.dtypes) {
      peak[dt] = gemm_peak(dt == "bf16" ? at::kBFloat16 : at::kFloat);
      std::printf(
          "peak %s: %.0f GFLOP/s (2048^3 %s)\n", dt.c_str(), peak[dt],
          dt == "bf16" && ops::products_in_float32(at::kBFloat16) ? "float32 path" : "at::mm");
    }
    if (!o.layers.empty()) {
      run_layer_bench(o.layers, o.rounds, o.warmup, o.naive_layers,
                      json.is_open() ? &json : nullptr);
      return 0;
    }
    bool all_ok = true;
    for (const auto& sid : o.shapes)
      for (const auto& dt : o.dtypes)
        for (const auto& dist : o.dists) {
          Shape shape = shape_by_id(sid);
          if (o.tokens > 0) shape.T = o.tokens;
          Workload w =
              make_workload(shape, dist, dt == "bf16" ? at::kBFloat16 : at::kFloat, o.seed);
          all_ok = run_case(w, o, peak[dt], json.is_open() ? &json : nullptr, threads) && all_ok;
        }
    if (!all_ok) {
      std::fprintf(stderr,
                   "moe_bench: an implementation failed the correctness gate (see 'check')\n");
      return 2;
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moe_bench: %s\n", e.what());
    return 1;
  }
}

}  // namespace moe::bench
