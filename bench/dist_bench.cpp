// moe_bench_dist: a routed MoE layer with its experts spread over W processes of this machine
// (Gloo over the loopback interface) against the same layer in one process with the same total
// number of threads, on the same global batch (docs/distributed.md, "Measured").
//
//   moe_bench_dist [--world 2] [--tokens 8192] [--d 512] [--hidden 1024] [--experts 16] [--k 2]
//                  [--router noisy_topk] [--reps 10] [--threads N]
//
// The program measures the one-process step (forward + backward) itself, then starts W copies of
// itself as the ranks; rank 0 prints the comparison, the forward split into routing, exchange and
// experts (the slowest rank's time per phase), and the bytes moved per step against the cost model
// 4·k·d·sizeof·(W-1)/W bytes per token.
#include <ATen/Parallel.h>
#include <sys/wait.h>
#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "moe/distributed.h"
#include "moe/nn/data_parallel.h"
#include "moe/nn/sparse_moe.h"
#include "moe/runtime.h"

namespace {

struct Options {
  int world = 2, reps = 10, threads = 0;
  int64_t tokens = 8192, d = 512, hidden = 1024, experts = 16, k = 2;
  std::string router = "noisy_topk";
};

Options parse(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) throw std::invalid_argument("moe_bench_dist: " + a + " needs a value");
    const std::string v = argv[++i];
    if (a == "--world")
      o.world = std::stoi(v);
    else if (a == "--reps")
      o.reps = std::stoi(v);
    else if (a == "--threads")
      o.threads = std::stoi(v);
    else if (a == "--tokens")
      o.tokens = std::stoll(v);
    else if (a == "--d")
      o.d = std::stoll(v);
    else if (a == "--hidden")
      o.hidden = std::stoll(v);
    else if (a == "--experts")
      o.experts = std::stoll(v);
    else if (a == "--k")
      o.k = std::stoll(v);
    else if (a == "--router")
      o.router = v;
    else
      throw std::invalid_argument("moe_bench_dist: unknown option " + a);
  }
  if (o.world < 2 || o.reps < 1 || o.tokens < o.world || o.experts % o.world != 0)
    throw std::invalid_argument(
        "moe_bench_dist: need --world >= 2, --reps >= 1, --tokens >= world and --experts a "
        "multiple of --world");
  if (o.threads <= 0)
    o.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  return o;
}

moe::RouterKind router_kind(const std::string& name) {
  if (name == "noisy_topk") return moe::RouterKind::kNoisyTopK;
  if (name == "softmax_topk") return moe::RouterKind::kSoftmaxTopK;
  if (name == "switch") return moe::RouterKind::kSwitch;
  throw std::invalid_argument(
      "moe_bench_dist: --router must be noisy_topk, softmax_topk or switch");
}

moe::nn::SparseMoE make_layer(const Options& o) {
  torch::manual_seed(1);
  return moe::nn::SparseMoE(moe::nn::SparseMoEOptions(o.d, o.experts)
                                .router(router_kind(o.router))
                                .top_k(o.k)
                                .hidden_size(o.hidden));
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// The one-process step on the global batch: median seconds of forward + backward.
double one_process_step(const Options& o) {
  at::set_num_threads(o.threads);
  auto layer = make_layer(o);
  torch::manual_seed(2);
  const auto x = torch::randn({o.tokens, o.d}), probe = torch::randn({o.tokens, o.d});
  std::vector<double> times;
  for (int i = 0; i < o.reps + 2; ++i) {
    layer->zero_grad();
    const auto t0 = std::chrono::steady_clock::now();
    const auto out = layer->forward(x);
    ((out.output * probe).sum() + out.aux_loss).backward();
    if (i >= 2) times.push_back(seconds_since(t0));
  }
  return median(times);
}

// The slowest rank's value.
double max_over_ranks(const std::shared_ptr<moe::dist::ProcessGroup>& g, double v) {
  const auto all = moe::dist::all_gather_rows(g, torch::full({1}, v, torch::kDouble));
  return all.max().item<double>();
}

int rank_main(const Options& o) {
  const auto group = moe::dist::ProcessGroup::gloo_from_env(std::chrono::milliseconds(120 * 1000));
  const int W = group->size(), r = group->rank();
  at::set_num_threads(std::max(1, o.threads / W));
  auto layer = make_layer(o);
  layer->distribute_experts(group);
  torch::manual_seed(2);
  const auto x_all = torch::randn({o.tokens, o.d}), probe_all = torch::randn({o.tokens, o.d});
  const int64_t n = o.tokens / W + (r < o.tokens % W ? 1 : 0);
  const int64_t first = r * (o.tokens / W) + std::min<int64_t>(r, o.tokens % W);
  const auto x = x_all.narrow(0, first, n), probe = probe_all.narrow(0, first, n);

  // Training steps: forward, backward, gradient averaging.
  std::vector<double> steps;
  for (int i = 0; i < o.reps + 2; ++i) {
    layer->zero_grad();
    group->barrier();
    const auto t0 = std::chrono::steady_clock::now();
    const auto out = layer->forward(x);
    (double(W) * (out.output * probe).sum() + out.aux_loss).backward();
    moe::nn::synchronize_gradients(group, *layer);
    if (i >= 2) steps.push_back(max_over_ranks(group, seconds_since(t0)));
  }

  // The forward by phase, through the layer's parts.
  moe::dist::ExpertParallelProfile prof;
  double routing = 0;
  const auto& e = *layer->experts;
  torch::NoGradGuard no_grad;
  for (int i = 0; i < o.reps; ++i) {
    group->barrier();
    const auto t0 = std::chrono::steady_clock::now();
    const auto shards = moe::dist::batch_shards(group, n);
    const auto routed = layer->router_interface().route(x, *shards);
    routing += seconds_since(t0);
    moe::dist::expert_parallel_mlp(group, x, routed.expert_index, routed.gate, o.experts,
                                   {e.w1, e.w2, e.w3, e.b1, e.b2}, e.options.activation(), &prof);
  }
  const double reps = o.reps;
  const double t_route = max_over_ranks(group, routing / reps);
  const double t_counts = max_over_ranks(group, prof.counts_s / reps);
  const double t_dispatch = max_over_ranks(group, prof.dispatch_s / reps);
  const double t_experts = max_over_ranks(group, prof.experts_s / reps);
  const double t_return = max_over_ranks(group, prof.return_s / reps);
  const double t_combine = max_over_ranks(group, prof.combine_s / reps);
  // Bytes one step moves between ranks: rows there and back in the forward, the same sizes of
  // gradient rows in the backward.
  const double rows = static_cast<double>(prof.rows_sent + prof.rows_received) / reps;
  auto bytes = torch::full({1}, 2 * rows * o.d * 4.0, torch::kDouble);
  group->all_reduce_sum(bytes);
  const double step = median(steps);

  if (r == 0) {
    const double one = std::atof(std::getenv("MOE_BENCH_DIST_ONE"));
    const double model = 4.0 * o.k * o.d * 4.0 * (W - 1) / W;
    std::printf(
        "  %d processes x %d thread(s), Gloo on loopback: step %8.1f ms  %9.0f tokens/s  "
        "%.2fx one process\n",
        W, std::max(1, o.threads / W), step * 1e3, o.tokens / step, one / step);
    std::printf(
        "  forward by phase (slowest rank, ms): routing %.1f | counts %.2f | dispatch %.1f "
        "| experts %.1f | return %.1f | gather+combine %.1f\n",
        t_route * 1e3, t_counts * 1e3, t_dispatch * 1e3, t_experts * 1e3, t_return * 1e3,
        t_combine * 1e3);
    std::printf(
        "  bytes between ranks per step (forward + backward): %.2f MB = %.0f B per token; "
        "cost model 4*k*d*4*(W-1)/W = %.0f B per token\n",
        bytes.item<double>() / 1e6, bytes.item<double>() / o.tokens, model);
  }
  return 0;
}

std::string cpu_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

}  // namespace

int main(int argc, char** argv) {
  // As moe_bench and the CLI: one OpenMP pool (OpenBLAS's OpenMP build), the block cache.
  moe::runtime::configure_threading(argv);
  try {
    moe::runtime::enable_cpu_block_cache();
    const Options o = parse(argc, argv);
    if (std::getenv("MOE_BENCH_DIST_ONE") != nullptr) return rank_main(o);
    std::printf(
        "moe_bench_dist: %s router, T=%lld tokens, d=%lld, h=%lld, E=%lld, k=%lld, float32, "
        "%s\n",
        o.router.c_str(), static_cast<long long>(o.tokens), static_cast<long long>(o.d),
        static_cast<long long>(o.hidden), static_cast<long long>(o.experts),
        static_cast<long long>(o.k), cpu_name().c_str());
    const double one = one_process_step(o);
    std::printf("  1 process  x %d thread(s):                  step %8.1f ms  %9.0f tokens/s\n",
                o.threads, one * 1e3, o.tokens / one);
    std::fflush(stdout);
    // The ranks: copies of this program with the launcher environment.
    const std::string port = std::to_string(moe::dist::free_loopback_port());
    std::vector<pid_t> pids;
    for (int r = 0; r < o.world; ++r) {
      const pid_t pid = ::fork();
      if (pid == 0) {
        ::setenv("RANK", std::to_string(r).c_str(), 1);
        ::setenv("WORLD_SIZE", std::to_string(o.world).c_str(), 1);
        ::setenv("MASTER_ADDR", "127.0.0.1", 1);
        ::setenv("MASTER_PORT", port.c_str(), 1);
        ::setenv("MOE_BENCH_DIST_ONE", std::to_string(one).c_str(), 1);
        ::execv("/proc/self/exe", argv);
        std::_Exit(127);
      }
      pids.push_back(pid);
    }
    int failed = 0;
    for (const pid_t p : pids) {
      int status = 0;
      ::waitpid(p, &status, 0);
      failed += !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    }
    return failed == 0 ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
