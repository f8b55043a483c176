// expert_parallel_mlp between real processes against the single-process expert_mlp on the
// concatenated batch: every rank draws the whole problem from one seed, runs its share through
// the expert-parallel path and compares its outputs and gradients with its rows and experts of the
// single-process run (float64 to 1e-10, float32 to 1e-5).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "dist/rank_runner.h"
#include "moe/distributed.h"
#include "moe/functional.h"
#include "moe/plan.h"
#include "support/test_util.h"

namespace {

namespace mt = moe::testing;
using moe::testing::dist::my_rank;

struct Problem {
  at::Tensor x, index, gate, probe;
  moe::functional::ExpertWeights w;
};

// The whole problem: `tokens[r]` tokens on rank r, K = 2 slots (some unused), E experts.
Problem draw(const std::vector<int64_t>& tokens, int64_t E, bool skewed, at::ScalarType dtype) {
  torch::manual_seed(11);
  int64_t T = 0;
  for (auto t : tokens) T += t;
  const int64_t d = 5, h = 4, K = 2;
  Problem p;
  auto o = at::TensorOptions(dtype);
  p.x = at::randn({T, d}, o);
  p.index = skewed ? at::zeros({T, K}, at::kLong) : at::randint(0, E, {T, K}, at::kLong);
  if (skewed) p.index.select(1, 1).fill_(1);  // everything to rank 0's experts
  for (int64_t t = 0; t < T; t += 3) p.index[t][1] = -1;
  p.gate = at::rand({T, K}, o);
  p.probe = at::randn({T, d}, o);
  p.w.w1 = at::randn({E, d, h}, o) * 0.5;
  p.w.w2 = at::randn({E, h, d}, o) * 0.5;
  p.w.b1 = at::randn({E, h}, o);
  p.w.b2 = at::randn({E, d}, o);
  return p;
}

moe::functional::ExpertWeights with_grad(const moe::functional::ExpertWeights& w, int64_t first,
                                         int64_t count) {
  moe::functional::ExpertWeights out;
  out.w1 = w.w1.narrow(0, first, count).clone().requires_grad_();
  out.w2 = w.w2.narrow(0, first, count).clone().requires_grad_();
  out.b1 = w.b1.narrow(0, first, count).clone().requires_grad_();
  out.b2 = w.b2.narrow(0, first, count).clone().requires_grad_();
  return out;
}

void check_case(const std::shared_ptr<moe::dist::ProcessGroup>& group, bool skewed,
                at::ScalarType dtype) {
  const int W = group->size(), r = group->rank();
  const int64_t E = 2 * W, El = 2;
  std::vector<int64_t> tokens;
  for (int j = 0; j < W; ++j) tokens.push_back(std::vector<int64_t>{5, 0, 7, 3}[j % 4]);
  const auto p = draw(tokens, E, skewed, dtype);
  int64_t first = 0;
  for (int j = 0; j < r; ++j) first += tokens[j];
  const int64_t T = tokens[r];
  const auto act = moe::Activation::kGELU;

  // Single process, the whole batch and every expert.
  const auto all_w = with_grad(p.w, 0, E);
  const auto all_x = p.x.clone().requires_grad_();
  const auto all_gate = p.gate.clone().requires_grad_();
  const auto plan = moe::build_routing_plan(p.index, E);
  const auto ref =
      moe::functional::expert_mlp(all_x, plan, moe::pair_weights(plan, all_gate), all_w, act);
  (ref * p.probe).sum().backward();

  // This rank's share.
  const auto w = with_grad(p.w, r * El, El);
  const auto x = p.x.narrow(0, first, T).clone().requires_grad_();
  const auto gate = p.gate.narrow(0, first, T).clone().requires_grad_();
  const auto y =
      moe::dist::expert_parallel_mlp(group, x, p.index.narrow(0, first, T), gate, E, w, act);
  (y * p.probe.narrow(0, first, T)).sum().backward();

  const double tol = dtype == at::kDouble ? 1e-10 : 1e-5;
  SCOPED_TRACE(::testing::Message()
               << "rank " << r << " of " << W << (skewed ? " skewed" : "") << " " << dtype);
  EXPECT_CLOSE(y, ref.narrow(0, first, T), tol, tol);
  if (T > 0) {
    EXPECT_CLOSE(x.grad(), all_x.grad().narrow(0, first, T), tol, tol);
    EXPECT_CLOSE(gate.grad(), all_gate.grad().narrow(0, first, T), tol, tol);
  }
  EXPECT_CLOSE(w.w1.grad(), all_w.w1.grad().narrow(0, r * El, El), tol, tol);
  EXPECT_CLOSE(w.w2.grad(), all_w.w2.grad().narrow(0, r * El, El), tol, tol);
  EXPECT_CLOSE(w.b1.grad(), all_w.b1.grad().narrow(0, r * El, El), tol, tol);
  EXPECT_CLOSE(w.b2.grad(), all_w.b2.grad().narrow(0, r * El, El), tol, tol);
}

TEST(ExpertParallelRank, Checks) {
  if (my_rank() < 0) GTEST_SKIP() << "one rank of ExpertParallel.EqualsOneProcess";
  const auto group = moe::testing::dist::join();
  for (const bool skewed : {false, true})
    for (const auto dtype : {at::kDouble, at::kFloat}) check_case(group, skewed, dtype);
  // Bad input fails on every rank before any exchange.
  EXPECT_TRUE(mt::throws_with(
      [&] {
        moe::dist::expert_parallel_mlp(group, at::zeros({1, 5}), at::zeros({1, 1}, at::kLong),
                                       at::ones({1, 1}), 2 * group->size() + 1, {},
                                       moe::Activation::kReLU);
      },
      {"must be a multiple of the world size"}));
  group->barrier();
  if (::testing::Test::HasFailure()) std::exit(1);
}

TEST(ExpertParallel, EqualsOneProcess) {
  if (my_rank() >= 0) GTEST_SKIP() << "parent test";
  if (!moe::dist::available()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  for (const int W : {2, 3, 4})
    EXPECT_TRUE(moe::testing::dist::ranks_pass(W, "ExpertParallelRank.Checks"));
}

}  // namespace
