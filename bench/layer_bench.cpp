// moe_bench --layers: whole routed layers in the regime of thousands of small experts (Shazeer et
// al. 2017), forward + backward in training mode, against the dense-equivalent MLP (the same useful
// FLOPs on one contiguous [T·k, d] tensor) and a naive per-expert loop over the same routing
// (docs/benchmarks.md, "Many experts").
#include "layer_bench.h"

#include <ATen/ATen.h>
#include <sys/resource.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <utility>

#include "memory.h"
#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/sparse_moe.h"

namespace moe::bench {
namespace {

using Clock = std::chrono::steady_clock;

// The sizes of the regime: T = 8192 tokens of d = 256, expert hidden 64, 4 experts per token
// (flat noisy top-4, or top-2 groups × top-2 experts).
constexpr int64_t kTokens = 8192, kModel = 256, kHidden = 64, kPerToken = 4;

struct LayerShape {
  std::string id;
  int64_t groups = 0;   ///< 0: flat
  int64_t experts = 0;  ///< flat: E; hierarchical: experts per group
  int64_t total() const { return groups > 0 ? groups * experts : experts; }
};

LayerShape layer_shape(const std::string& id) {
  for (const int64_t e : {256, 1024, 4096})
    if (id == "F" + std::to_string(e)) return {id, 0, e};
  for (const int64_t g : {16, 32, 64})
    if (id == "H" + std::to_string(g) + "x" + std::to_string(g)) return {id, g, g};
  throw std::invalid_argument("unknown layer shape '" + id +
                              "' (F256, F1024, F4096, H16x16, H32x32, H64x64)");
}

nn::RoutedMoE make_layer(const LayerShape& s) {
  std::shared_ptr<nn::RoutedMoEImpl> layer;
  if (s.groups == 0) {
    layer = nn::SparseMoE(nn::SparseMoEOptions(kModel, s.experts)
                              .router(RouterKind::kNoisyTopK)
                              .top_k(kPerToken)
                              .hidden_size(kHidden))
                .ptr();
  } else {
    layer = nn::HierarchicalMoE(nn::HierarchicalMoEOptions(kModel, s.groups, s.experts)
                                    .primary_top_k(2)
                                    .secondary_top_k(2)
                                    .hidden_size(kHidden))
                .ptr();
  }
  return nn::RoutedMoE(layer);
}

double seconds(const std::function<void()>& f) {
  const auto t0 = Clock::now();
  f();
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// CPU time of this process in the kernel and in user space, in seconds.
std::pair<double, double> cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return {u.ru_stime.tv_sec + u.ru_stime.tv_usec * 1e-6,
          u.ru_utime.tv_sec + u.ru_utime.tv_usec * 1e-6};
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The naive loop a user would write for the same routing: for each expert, gather its tokens, run
// the MLP, scatter-add the weighted rows (Mixtral's reference style), forward + backward.
void naive_step(const torch::Tensor& x, const torch::Tensor& expert_index,
                const torch::Tensor& gate, const ExpertBank& experts,
                const torch::Tensor& grad_out) {
  const auto flat_e = expert_index.reshape({-1});
  const auto flat_g = gate.reshape({-1});
  const int64_t K = expert_index.size(1);
  auto y = at::zeros_like(x);  // accumulated in place: one [T, d] buffer, not one per expert
  for (int64_t e = 0; e < experts->w1.size(0); ++e) {
    const auto slots = (flat_e == e).nonzero().squeeze(1);
    if (slots.numel() == 0) continue;
    const auto tokens = at::floor_divide(slots, K);
    const auto h = at::relu(x.index_select(0, tokens).mm(experts->w1[e]));
    y.index_add_(0, tokens, h.mm(experts->w2[e]) * flat_g.index_select(0, slots).unsqueeze(1));
  }
  y.backward(grad_out);
}

struct LayerResult {
  double layer = 0, dense = 0, router = 0, naive = 0;
  double system_share = 0;  ///< kernel CPU time / all CPU time of the layer's steps
  int64_t peak_bytes = 0;
};

LayerResult measure(const LayerShape& s, int rounds, int warmup, bool naive) {
  torch::manual_seed(0);
  auto layer = make_layer(s);
  layer->train();
  const auto x = torch::randn({kTokens, kModel}).requires_grad_();
  const auto grad_out = torch::randn({kTokens, kModel});
  // dense equivalent: one MLP over [T·k, d] with the weights of one expert's shape
  const auto xd = torch::randn({kTokens * kPerToken, kModel}).requires_grad_();
  const auto w1 = (torch::randn({kModel, kHidden}) * 0.05).requires_grad_();
  const auto w2 = (torch::randn({kHidden, kModel}) * 0.05).requires_grad_();
  const auto grad_dense = torch::randn({kTokens * kPerToken, kModel});

  auto layer_step = [&] {
    const auto out = layer->forward(x);
    ((out.output * grad_out).sum() + out.aux_loss).backward();
  };
  auto dense_step = [&] { at::relu(xd.mm(w1)).mm(w2).backward(grad_dense); };
  auto router_step = [&] {
    const auto r = layer->router_interface().route(x);
    (r.gate.sum() + r.aux_loss).backward();
  };
  for (int i = 0; i < warmup; ++i) {
    layer_step();
    dense_step();
  }
  LayerResult r;
  std::vector<double> tl, td, tr;
  double sys = 0, user = 0;
  for (int i = 0; i < rounds; ++i) {
    const auto c0 = cpu_seconds();
    tl.push_back(seconds(layer_step));
    const auto c1 = cpu_seconds();
    sys += c1.first - c0.first;
    user += c1.second - c0.second;
    td.push_back(seconds(dense_step));
    tr.push_back(seconds(router_step));
  }
  r.layer = median(tl);
  r.dense = median(td);
  r.router = median(tr);
  r.system_share = sys / (sys + user);
  r.peak_bytes = peak_tensor_bytes(layer_step);
  // The naive loop's backward allocates and zero-fills a [T, d] gradient per expert (index_select's
  // backward): 90 s a step at E = 1024 on the 2-core machine. It runs up to E = 256.
  if (naive && s.total() <= 256) {
    torch::Tensor idx, gate;
    {
      torch::NoGradGuard g;
      const auto routing = layer->router_interface().route(x);
      idx = routing.expert_index;
      gate = routing.gate;
    }
    std::vector<double> tn;
    for (int i = 0; i < std::max(1, rounds / 2); ++i)
      tn.push_back(seconds([&] { naive_step(x, idx, gate, layer->experts, grad_out); }));
    r.naive = median(tn);
  }
  return r;
}

}  // namespace

void check_layer_shapes(const std::vector<std::string>& ids) {
  for (const auto& id : ids) layer_shape(id);
}

void run_layer_bench(const std::vector<std::string>& ids, int rounds, int warmup, bool naive,
                     std::ostream* json) {
  std::printf(
      "\nmany experts: T=%lld d=%lld expert hidden %lld, %lld experts per token, fp32, training "
      "forward + backward, median of %d\n",
      static_cast<long long>(kTokens), static_cast<long long>(kModel),
      static_cast<long long>(kHidden), static_cast<long long>(kPerToken), rounds);
  std::printf("  %-8s %6s %10s %10s %7s %10s %8s %10s %9s %8s\n", "layer", "E", "ms", "dense ms",
              "eta", "router ms", "router%", "naive ms", "peak MiB", "system%");
  for (const auto& id : ids) {
    const LayerShape s = layer_shape(id);
    const auto r = measure(s, rounds, warmup, naive);
    std::printf("  %-8s %6lld %10.1f %10.1f %7.3f %10.1f %7.1f%% %10.1f %9.1f %7.1f%%\n",
                s.id.c_str(), static_cast<long long>(s.total()), r.layer * 1e3, r.dense * 1e3,
                r.dense / r.layer, r.router * 1e3, 100 * r.router / r.layer, r.naive * 1e3,
                r.peak_bytes / 1048576.0, 100 * r.system_share);
    std::fflush(stdout);
    if (json != nullptr)
      *json << "{\"layer\":\"" << s.id << "\",\"E\":" << s.total() << ",\"groups\":" << s.groups
            << ",\"T\":" << kTokens << ",\"d\":" << kModel << ",\"hidden\":" << kHidden
            << ",\"per_token\":" << kPerToken << ",\"t_med_ms\":" << r.layer * 1e3
            << ",\"dense_ms\":" << r.dense * 1e3 << ",\"eta\":" << r.dense / r.layer
            << ",\"router_ms\":" << r.router * 1e3 << ",\"naive_ms\":" << r.naive * 1e3
            << ",\"peak_mem_delta_bytes\":" << r.peak_bytes
            << ",\"system_share\":" << r.system_share << "}\n";
  }
}

}  // namespace moe::bench
