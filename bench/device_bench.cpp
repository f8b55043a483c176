// moe_bench --device DEV (device_bench.h): the implementations, the float64 gate and the timing.
#include "device_bench.h"

#include <ATen/ATen.h>
#include <torch/cuda.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "baselines.h"
#include "engine/portable/grouped_mm.h"
#include "moe/functional.h"
#include "moe/plan.h"
#include "workload.h"

namespace moe::bench {
namespace {

using Clock = std::chrono::steady_clock;
using torch::Tensor;

// Device work is asynchronous: every timed region ends with a synchronisation.
void synchronize(const at::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct DeviceWorkload {
  Shape s;
  std::string dist;
  c10::ScalarType dtype;
  double imbalance = 1;
  Tensor x, expert_index, gate, grad_out;  // gate float32
  functional::ExpertWeights w;             // stacked [E, d, d_ff] and [E, d_ff, d]
  std::vector<Tensor> w1s, w2s, w3s;       // the naive loop's own per-expert leaves
  Tensor x_rep, grad_rep;                  // dense_equiv's [T·k, d]
  Tensor e1, e2, e3;                       // dense_equiv's expert: leaves of its own

  std::vector<Tensor*> leaves() {
    std::vector<Tensor*> v{&x, &gate, &w.w1, &w.w2, &w.w3, &x_rep, &e1, &e2, &e3};
    for (auto* list : {&w1s, &w2s, &w3s})
      for (auto& t : *list) v.push_back(&t);
    return v;
  }
  // requires_grad on every input, gradients dropped.
  void set_requires_grad(bool on) {
    for (auto* t : leaves())
      if (t->defined()) *t = t->detach().requires_grad_(on);
  }
};

DeviceWorkload make_device_workload(const Shape& s, const std::string& dist, c10::ScalarType dtype,
                                    const at::Device& device, uint64_t seed, bool naive) {
  const Routing r = make_routing(s, dist, seed);
  DeviceWorkload w;
  w.s = s;
  w.dist = dist;
  w.dtype = dtype;
  w.imbalance = r.imbalance;
  w.expert_index = r.expert_index.to(device);
  w.gate = r.gate.to(device);
  // Drawn on the device in the benchmark's dtype: G3's weights are 21 GiB in bf16.
  const auto o = at::TensorOptions().dtype(dtype).device(device);
  w.x = at::randn({s.T, s.d}, o);
  w.grad_out = at::randn({s.T, s.d}, o);
  w.w.w1 = at::randn({s.E, s.d, s.d_ff}, o).mul_(1.0 / std::sqrt(double(s.d)));
  w.w.w2 = at::randn({s.E, s.d_ff, s.d}, o).mul_(1.0 / std::sqrt(double(s.d_ff)));
  if (is_gated(s.act)) w.w.w3 = at::randn({s.E, s.d, s.d_ff}, o).mul_(1.0 / std::sqrt(double(s.d)));
  if (naive) {
    // Separate leaves, as an eager model with one module per expert holds them: the backward of
    // a slice of a stacked leaf would write a full-size gradient for every expert.
    for (int64_t e = 0; e < s.E; ++e) {
      w.w1s.push_back(w.w.w1[e].clone());
      w.w2s.push_back(w.w.w2[e].clone());
      if (w.w.w3.defined()) w.w3s.push_back(w.w.w3[e].clone());
    }
  }
  // Leaves of its own, as for the naive loop: a slice of the stacked weights would give it a
  // full-size gradient to write.
  w.e1 = w.w.w1[0].clone();
  w.e2 = w.w.w2[0].clone();
  if (w.w.w3.defined()) w.e3 = w.w.w3[0].clone();
  w.x_rep = w.x.repeat_interleave(s.k, 0);
  w.grad_rep = w.grad_out.repeat_interleave(s.k, 0);
  return w;
}

// ---- the implementations
// ---------------------------------------------------------------------

Tensor lib_forward(DeviceWorkload& w) {
  const RoutingPlan plan = build_routing_plan(w.expert_index, w.s.E, PlanLayout::kForDevice);
  const auto pw = pair_weights(plan, w.gate).to(w.dtype);
  return functional::expert_mlp(w.x, plan, pw, w.w, w.s.act);
}

Tensor naive_forward(DeviceWorkload& w) {
  auto out = at::zeros_like(w.x);
  const auto gate = w.gate.to(w.dtype);
  for (int64_t e = 0; e < w.s.E; ++e) {
    const auto nz = at::nonzero(w.expert_index == e);  // [n, 2] (token, slot): a host read
    if (nz.size(0) == 0) continue;
    const auto tok = nz.select(1, 0), slot = nz.select(1, 1);
    const auto cur = w.x.index_select(0, tok);
    const auto h = at::mm(cur, w.w1s[e]);
    const auto a = activate(w.s.act, h, w.w3s.empty() ? Tensor() : at::mm(cur, w.w3s[e]));
    out.index_add_(0, tok, at::mm(a, w.w2s[e]) * gate.index({tok, slot}).unsqueeze(1));
  }
  return out;
}

Tensor grouped_mm_forward(DeviceWorkload& w) {
  using engine::portable::grouped_mm;
  const auto flat = w.expert_index.reshape({-1});
  const auto order = std::get<1>(at::sort(flat, /*stable=*/true, 0, /*descending=*/false));
  const auto token = at::div(order, w.s.k, "floor");
  const auto counts = at::zeros({w.s.E}, flat.options()).scatter_add_(0, flat, at::ones_like(flat));
  const auto offs = counts.cumsum(0).to(at::kInt);
  const auto xs = w.x.index_select(0, token);
  const auto h = grouped_mm(xs, w.w.w1, offs);
  const auto a = activate(w.s.act, h, w.w.w3.defined() ? grouped_mm(xs, w.w.w3, offs) : Tensor());
  const auto y = grouped_mm(a, w.w.w2, offs);
  const auto g = w.gate.reshape({-1}).index_select(0, order).to(w.dtype).unsqueeze(1);
  return at::zeros_like(w.x).index_add(0, token, y * g);
}

Tensor dense_equiv_forward(DeviceWorkload& w) {
  const auto h = at::mm(w.x_rep, w.e1);
  const auto a = activate(w.s.act, h, w.e3.defined() ? at::mm(w.x_rep, w.e3) : Tensor());
  return at::mm(a, w.e2);
}

using Impl = std::function<Tensor(DeviceWorkload&)>;

const std::map<std::string, Impl>& implementations() {
  static const std::map<std::string, Impl> m{{"lib", lib_forward},
                                             {"naive", naive_forward},
                                             {"grouped_mm", grouped_mm_forward},
                                             {"dense_equiv", dense_equiv_forward}};
  return m;
}

// ---- the float64 gate
// -------------------------------------------------------------------------

// The output rows of the first `n` tokens in float64, expert by expert (one expert's weights in
// float64 at a time: G3's would not fit whole).
Tensor reference_rows(const DeviceWorkload& w, int64_t n) {
  const auto x = w.x.narrow(0, 0, n).to(at::kDouble);
  const auto idx = w.expert_index.narrow(0, 0, n);
  const auto gate = w.gate.narrow(0, 0, n).to(at::kDouble);
  auto y = at::zeros({n, w.s.d}, x.options());
  for (int64_t e = 0; e < w.s.E; ++e) {
    const auto nz = at::nonzero(idx == e);
    if (nz.size(0) == 0) continue;
    const auto tok = nz.select(1, 0), slot = nz.select(1, 1);
    const auto xe = x.index_select(0, tok);
    const auto h = at::mm(xe, w.w.w1[e].to(at::kDouble));
    const auto g = w.w.w3.defined() ? at::mm(xe, w.w.w3[e].to(at::kDouble)) : Tensor();
    const auto o = at::mm(activate(w.s.act, h, g), w.w.w2[e].to(at::kDouble));
    y.index_add_(0, tok, o * gate.index({tok, slot}).unsqueeze(1));
  }
  return y;
}

// ---- timing and output
// ------------------------------------------------------------------------

double peak_flops(c10::ScalarType dtype, const at::Device& device) {
  const int64_t n = device.is_cuda() ? 8192 : 1024;
  const auto o = at::TensorOptions().dtype(dtype).device(device);
  const auto a = at::randn({n, n}, o), b = at::randn({n, n}, o);
  auto c = at::empty({n, n}, o);
  std::vector<double> t;
  for (int i = 0; i < 6; ++i) {
    synchronize(device);
    const auto t0 = Clock::now();
    at::mm_out(c, a, b);
    synchronize(device);
    if (i > 0) t.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  return 2.0 * n * n * n / median(t);
}

const char* dtype_name(c10::ScalarType t) { return t == at::kBFloat16 ? "bf16" : "fp32"; }

}  // namespace

int run_device_bench(const Options& o) {
  const at::Device device(o.device);
  if (device.is_cuda() && !torch::cuda::is_available())
    throw std::runtime_error("--device " + o.device + ": no CUDA device is available");
  // TF32 off: fp32 means fp32 here, as in the tests (docs/gpu.md).
  at::globalContext().setAllowTF32CuBLAS(false);
  std::ofstream json;
  if (!o.json.empty()) {
    json.open(o.json);
    if (!json) throw std::runtime_error("cannot write " + o.json);
  }
  const bool have_grouped_mm = engine::portable::have_grouped_mm();
  std::printf("moe_bench --device %s (LibTorch %s); torch._grouped_mm: %s\n", o.device.c_str(),
              TORCH_VERSION, have_grouped_mm ? "present" : "absent (PyTorch 2.8+ has it)");
  std::vector<std::string> impls;
  for (const auto& name : o.impls) {
    if (name == "grouped_mm" && !have_grouped_mm) {
      std::printf("  grouped_mm skipped: this LibTorch has no aten::_grouped_mm\n");
      continue;
    }
    impls.push_back(name);
  }
  const bool naive = std::find(impls.begin(), impls.end(), "naive") != impls.end();
  bool all_ok = true;
  std::mt19937 rng(o.seed + 17);
  for (const auto& dt : o.dtypes) {
    const auto dtype = dt == "bf16" ? at::kBFloat16 : at::kFloat;
    const double peak = peak_flops(dtype, device);
    std::printf("peak %s: %.1f TFLOP/s (square at::mm)\n", dt.c_str(), peak / 1e12);
    for (const auto& sid : o.shapes)
      for (const auto& dist : o.dists) {
        Shape s = shape_by_id(sid);
        if (o.tokens > 0) s.T = o.tokens;
        DeviceWorkload w = make_device_workload(s, dist, dtype, device, o.seed, naive);
        // The gate: forward rows of the first tokens against float64 (the gradients are the
        // device table's, tests/device/).
        std::map<std::string, std::string> check;
        if (o.check) {
          const int64_t n = std::min<int64_t>(s.T, 512);
          const auto ref = reference_rows(w, n);
          const double tol = dtype == at::kBFloat16 ? 2e-2 : 1e-4;
          for (const auto& name : impls) {
            if (name == "dense_equiv") continue;  // another function: the roofline's
            at::NoGradGuard ng;
            const auto got = implementations().at(name)(w).narrow(0, 0, n).to(at::kDouble);
            const double err = (got - ref).norm().item<double>() / ref.norm().item<double>();
            const bool ok = err <= tol;
            all_ok = all_ok && ok;
            std::ostringstream m;
            m << (ok ? "ok " : "FAILED ") << err;
            check[name] = m.str();
          }
        }
        for (const auto& pass : o.passes) {
          const bool bwd = pass == "fwdbwd";
          w.set_requires_grad(bwd);
          std::map<std::string, std::vector<double>> times;
          auto run_one = [&](const std::string& name) {
            synchronize(device);
            const auto t0 = Clock::now();
            if (bwd) {
              implementations().at(name)(w).backward(name == "dense_equiv" ? w.grad_rep
                                                                           : w.grad_out);
            } else {
              at::NoGradGuard ng;
              implementations().at(name)(w);
            }
            synchronize(device);
            if (bwd) w.set_requires_grad(true);  // drop the gradients
            return std::chrono::duration<double>(Clock::now() - t0).count();
          };
          auto order = impls;
          for (int r = 0; r < o.warmup; ++r)
            for (const auto& name : order) run_one(name);
          for (int r = 0; r < o.rounds; ++r) {
            std::shuffle(order.begin(), order.end(), rng);
            for (const auto& name : order) times[name].push_back(run_one(name));
          }
          const double flops = s.forward_flops() * (bwd ? 3.0 : 1.0);
          const double t_equiv = times.count("dense_equiv")
                                     ? median(times["dense_equiv"])
                                     : std::numeric_limits<double>::quiet_NaN();
          const double t_gmm = times.count("grouped_mm") ? median(times["grouped_mm"])
                                                         : std::numeric_limits<double>::quiet_NaN();
          std::printf(
              "\n%s T=%lld d=%lld d_ff=%lld E=%lld k=%lld %s %s %s imbalance %.2f %s (peak %.1f "
              "TFLOP/s)\n",
              s.id.c_str(), (long long)s.T, (long long)s.d, (long long)s.d_ff, (long long)s.E,
              (long long)s.k, to_string(s.act), dt.c_str(), dist.c_str(), w.imbalance, pass.c_str(),
              peak / 1e12);
          std::printf("  %-12s %9s %9s %7s %7s %10s %s\n", "impl", "ms", "TFLOP/s", "peak", "eta",
                      "x grouped", "check");
          for (const auto& name : impls) {
            const double t = median(times[name]);
            const double tf = flops / t / 1e12;
            std::printf("  %-12s %9.3f %9.1f %7.3f %7.3f %10.3f %s\n", name.c_str(), t * 1e3, tf,
                        flops / t / peak, t_equiv / t, t_gmm / t,
                        check.count(name) ? check[name].c_str() : "-");
            if (json.is_open()) {
              json << "{\"impl\":\"" << name << "\",\"device\":\"" << o.device
                   << "\",\"shape_id\":\"" << s.id << "\",\"T\":" << s.T << ",\"d\":" << s.d
                   << ",\"d_ff\":" << s.d_ff << ",\"E\":" << s.E << ",\"k\":" << s.k
                   << ",\"act\":\"" << to_string(s.act) << "\",\"dtype\":\"" << dtype_name(dtype)
                   << "\",\"dist\":\"" << dist << "\",\"imbalance\":" << w.imbalance
                   << ",\"pass\":\"" << pass << "\",\"t_med_ms\":" << t * 1e3
                   << ",\"useful_tflops\":" << tf << ",\"pct_peak\":" << flops / t / peak
                   << ",\"peak_tflops\":" << peak / 1e12;
              if (std::isfinite(t_equiv)) json << ",\"eta\":" << t_equiv / t;
              if (std::isfinite(t_gmm)) json << ",\"x_grouped_mm\":" << t_gmm / t;
              if (check.count(name)) json << ",\"check\":\"" << check[name] << "\"";
              json << "}\n";
            }
          }
          // Written out at once: a run stopped by a time limit keeps the rows it measured.
          std::fflush(stdout);
          if (json.is_open()) json.flush();
          w.set_requires_grad(false);
        }
      }
  }
  if (!all_ok) {
    std::fprintf(stderr,
                 "moe_bench: an implementation failed the correctness gate (see 'check')\n");
    return 2;
  }
  return 0;
}

}  // namespace moe::bench
