// The DynMoE auto-tuning demonstration (docs/dynmoe.md): a TopAnyMoE starting with E_0 = 2 of at
// most 16 experts learns a 6-cluster regression task. Asserts what the mechanism guarantees at
// every update (experts are added while tokens go unrouted; exactly the experts without
// activations are removed), that the expert count settles, and how the loss compares with softmax
// top-2 models of fixed size, and that experts idle after a distribution shift are removed. Nothing
// is tuned toward the number of clusters. The outcome bounds (settling before the last 20%, the MSE
// ratios) are empirical: a 3000-step float32 run's trajectory depends on the BLAS kernel and the
// thread count, and the bounds hold with margin across 3 seeds (docs/dynmoe.md) and with both
// OpenBLAS's Cooperlake and Zen kernels (the same outcome: 13 experts, ratio 2.51).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>

#include "experiments/dynmoe_autotune.h"

namespace {

using moe::experiments::AutotuneConfig;

struct Counts {
  int64_t additions = 0, removals = 0, updates = 0;
};

// What the mechanism guarantees at every update (§2.4): exactly the idle experts are removed; one
// expert is added when tokens went unrouted and a slot is free (Σ R_S = 0 with unrouted tokens has
// probability 0 with this data); nothing changes between updates.
Counts check_updates(const AutotuneConfig& c, const moe::experiments::AutotuneResult& r) {
  Counts n;
  int64_t active = c.initial_experts;
  for (const auto& p : r.history) {
    if (!p.updated) {
      EXPECT_EQ(p.active, active) << "step " << p.step << ": the set changed without an update";
      continue;
    }
    ++n.updates;
    EXPECT_EQ(p.removed_count, p.window_idle) << "step " << p.step;
    const int64_t after_removal = active - p.removed_count;
    const bool expect_add = p.window_unrouted > 0 && after_removal < c.max_experts;
    EXPECT_EQ(p.added, expect_add) << "step " << p.step << ": " << p.window_unrouted
                                   << " unrouted tokens, " << after_removal << " experts left";
    EXPECT_EQ(p.active, after_removal + (p.added ? 1 : 0)) << "step " << p.step;
    n.additions += p.added ? 1 : 0;
    n.removals += p.removed_count;
    active = p.active;
  }
  EXPECT_EQ(n.updates, (c.steps - 2 * c.window) / c.period + 1);
  return n;
}

TEST(DynMoEAutotune, AddsWhileUnroutedSettlesAndLearns) {
  AutotuneConfig c;  // the defaults: E_0 = 2, E_max = 16, window(20, 60), 3000 steps of 128
  c.task.clusters(6).seed(0);
  const auto r = moe::experiments::train_dynmoe(c);
  ASSERT_EQ(static_cast<int64_t>(r.history.size()), c.steps);
  const Counts n = check_updates(c, r);
  const int64_t additions = n.additions, removals = n.removals, updates = n.updates;
  EXPECT_GT(additions, 0);
  // Settled: no change over the last 20% of training.
  const auto tail = r.history.begin() + static_cast<std::ptrdiff_t>(c.steps * 8 / 10);
  EXPECT_TRUE(std::all_of(tail, r.history.end(),
                          [&](const auto& p) { return p.active == r.final_active; }));

  double best = 1e9;
  for (int64_t E : {2, 4, 8, 16}) best = std::min(best, moe::experiments::train_topk(c, E, 2));
  const auto test = moe::data::ClusterRegression(c.task).sample(4096, 7);
  const double variance = test.y.var().item<double>();
  std::printf(
      "DynMoE: %lld experts (%lld added, %lld removed over %lld updates), mean k %.2f, "
      "test MSE %.5f; best top-2 MoE %.5f (ratio %.2f); target variance %.4f\n",
      static_cast<long long>(r.final_active), static_cast<long long>(additions),
      static_cast<long long>(removals), static_cast<long long>(updates), r.test_mean_k, r.test_mse,
      best, r.test_mse / best, variance);
  // Learned the task: over 90% of the target variance explained.
  EXPECT_LT(r.test_mse, 0.1 * variance);
  // The measured gap to the best fixed top-2 model (docs/dynmoe.md: 2.5x on this task, where the
  // issue asked for 10%); this bound guards against regressions, not the goal.
  EXPECT_LT(r.test_mse, 3.5 * best);
}

// After a shift of the input distribution to one cluster, experts that served the others receive
// no token in a window and are removed.
TEST(DynMoEAutotune, RemovesExpertsThatGoIdleAfterADistributionShift) {
  AutotuneConfig c;
  c.task.clusters(6).seed(0);
  c.shift_step = 2000;
  c.shift_clusters = 1;
  const auto r = moe::experiments::train_dynmoe(c);
  const Counts n = check_updates(c, r);
  std::printf(
      "shift to 1 cluster at step %lld: %lld removed, %lld added, %lld experts at the end\n",
      static_cast<long long>(c.shift_step), static_cast<long long>(n.removals),
      static_cast<long long>(n.additions), static_cast<long long>(r.final_active));
  EXPECT_GT(n.removals, 0);
}

// The diagnostic of docs/dynmoe.md: from freeze_router_step on, no expert is added or removed (and
// the router gets no update), while the experts still learn.
TEST(DynMoEAutotune, FrozenRouterKeepsTheExpertSetAndTheExpertsLearn) {
  AutotuneConfig c;
  c.task.clusters(6).seed(0);
  c.steps = 600;
  c.freeze_router_step = 300;
  const auto r = moe::experiments::train_dynmoe(c);
  ASSERT_EQ(static_cast<int64_t>(r.history.size()), c.steps);
  const auto at_freeze = r.history[c.freeze_router_step - 1];
  double before = 0, after = 0;
  for (int64_t i = 0; i < c.steps; ++i) {
    const auto& p = r.history[i];
    if (i < c.freeze_router_step) {
      if (i >= c.freeze_router_step - 50) before += p.loss / 50;
      continue;
    }
    EXPECT_FALSE(p.updated || p.added || p.removed) << "step " << p.step;
    EXPECT_EQ(p.active, at_freeze.active) << "step " << p.step;
    if (i >= c.steps - 50) after += p.loss / 50;
  }
  EXPECT_LT(after, before) << "the experts stopped learning after the router was frozen";
}

}  // namespace
