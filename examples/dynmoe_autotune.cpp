// DynMoE auto-tuning example (docs/dynmoe.md): a TopAnyMoE starting with 2 experts (at most 16)
// learns a regression task made of M clusters with their own target functions; it prints the active
// expert count and the mean number of experts per token over training, the final count next to M,
// and the test MSE next to softmax top-2 MoEs with E = 2, 4, 8, 16.
//
//   build/examples/dynmoe_autotune [--clusters M] [--steps N] [--seed S] [--pool]
//       [--freeze-router STEP]   (diagnostic: fixed routing and expert set from STEP on)
//       other flags: see the option loop below and docs/dynmoe.md
#include "experiments/dynmoe_autotune.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "moe/runtime.h"

int main(int argc, char** argv) {
  moe::runtime::configure_threading(argv);
  try {
    moe::runtime::configure_threads();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dynmoe_autotune: %s\n", e.what());
    return 2;
  }
  moe::experiments::AutotuneConfig c;
  c.task.clusters(6).seed(0);
  bool baselines = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "dynmoe_autotune: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::atoll(argv[++i]);
    };
    if (a == "--clusters")
      c.task.clusters(next());
    else if (a == "--steps")
      c.steps = next();
    else if (a == "--seed")
      c.seed = static_cast<uint64_t>(next());
    else if (a == "--pool")
      c.storage = moe::nn::ExpertStorage::kPoolMask;
    else if (a == "--trainable-temperature")
      c.temperature = moe::TopAnyTemperature::kTrainable;
    else if (a == "--aux-coef")
      c.aux_loss_coef = std::atof(argv[++i]);
    else if (a == "--lr")
      c.lr = std::atof(argv[++i]);
    else if (a == "--noise")
      c.task.noise(std::atof(argv[++i]));
    else if (a == "--e0")
      c.initial_experts = next();
    else if (a == "--tutel-losses")
      c.tutel_losses = true;
    else if (a == "--shift") {
      c.shift_step = next();
      c.shift_clusters = next();
    } else if (a == "--emax")
      c.max_experts = next();
    else if (a == "--window")
      c.window = next();
    else if (a == "--period")
      c.period = next();
    else if (a == "--independent")
      c.copy_initial_expert = false;
    else if (a == "--freeze-router")
      c.freeze_router_step = next();
    else if (a == "--no-baselines")
      baselines = false;
    else {
      std::fprintf(stderr,
                   "usage: dynmoe_autotune [--clusters M] [--steps N] [--seed S] [--pool]\n");
      return a == "--help" ? 0 : 2;
    }
  }
  std::printf(
      "task: %lld clusters, dim %lld; TopAnyMoE E_0=%lld, E_max=%lld, window %lld every %lld "
      "forwards, %lld steps of %lld\n",
      static_cast<long long>(c.task.clusters()), static_cast<long long>(c.task.dim()),
      static_cast<long long>(c.initial_experts), static_cast<long long>(c.max_experts),
      static_cast<long long>(c.window), static_cast<long long>(c.period),
      static_cast<long long>(c.steps), static_cast<long long>(c.batch));
  std::printf("%8s %8s %8s %10s %10s  %s\n", "step", "active", "mean k", "unrouted", "train mse",
              "event");
  const auto r = moe::experiments::train_dynmoe(c, [&](const moe::experiments::AutotunePoint& p) {
    if (p.added || p.removed || p.step % (c.steps / 20) == 0) {
      std::printf("%8lld %8lld %8.2f %9.1f%% %10.4f  %s%s\n", static_cast<long long>(p.step),
                  static_cast<long long>(p.active), p.mean_k, 100 * p.unrouted, p.loss,
                  p.added ? "added " : "", p.removed ? "removed" : "");
    }
  });
  std::printf(
      "\nDynMoE: %lld active experts at the end (M = %lld clusters), mean k %.2f on the test "
      "set, test MSE %.4f\n",
      static_cast<long long>(r.final_active), static_cast<long long>(c.task.clusters()),
      r.test_mean_k, r.test_mse);
  std::printf(
      "  test tokens that fired no expert: %.1f%% (given their argmax expert alone); test MSE "
      "over the tokens that fired: %.4f\n",
      100 * r.test_unrouted, r.test_mse_routed);
  for (int64_t E : {2, 4, 8, 16}) {
    if (!baselines) break;
    std::printf("top-2 SparseMoE, E = %2lld: test MSE %.4f\n", static_cast<long long>(E),
                moe::experiments::train_topk(c, E, 2));
  }
  return 0;
}
