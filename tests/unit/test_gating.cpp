// Gating functions vs the formulas of docs/algorithms.md computed by hand in the test.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <cmath>
#include <random>
#include <vector>

#include "moe/gating.h"
#include "routers/grouped_linear.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::testing::throws_with;

double softplus(double v) { return std::log1p(std::exp(v)); }
double Phi(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

TEST(NoisyTopKGating, MatchesShazeerFormulasByHand) {
  torch::manual_seed(7);
  const int64_t T = 6, E = 5, k = 2;
  const double eps = 1e-2;
  auto clean = torch::randn({T, E}, at::kDouble);
  auto noise_logits = torch::randn({T, E}, at::kDouble);
  auto noise = torch::randn({T, E}, at::kDouble);
  auto g = moe::noisy_top_k_gating(clean, noise_logits, noise, k, eps);

  auto c = clean.accessor<double, 2>();
  auto nl = noise_logits.accessor<double, 2>();
  auto z = noise.accessor<double, 2>();
  std::vector<double> load(E, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> H(E), sd(E);
    for (int64_t e = 0; e < E; ++e) {
      sd[e] = softplus(nl[t][e]) + eps;  // Eq. 4 with t2t's 0.01 floor
      H[e] = c[t][e] + z[t][e] * sd[e];
    }
    auto Ht = torch::tensor(H, at::kDouble).view({1, E});
    auto top = moe::testing::reference_topk_indices(Ht, k + 1)[0];
    const int64_t i0 = top[0].item<int64_t>(), i1 = top[1].item<int64_t>();
    EXPECT_EQ(g.expert_index[t][0].item<int64_t>(), i0);
    EXPECT_EQ(g.expert_index[t][1].item<int64_t>(), i1);
    const double den = std::exp(H[i0]) + std::exp(H[i1]);  // softmax over the k kept (Eq. 3, 5)
    EXPECT_NEAR(g.gate[t][0].item<double>(), std::exp(H[i0]) / den, 1e-14);
    EXPECT_NEAR(g.gate[t][1].item<double>(), std::exp(H[i1]) / den, 1e-14);
    const double thr_in = H[top[k].item<int64_t>()], thr_out = H[top[k - 1].item<int64_t>()];
    for (int64_t e = 0; e < E; ++e) {
      const double thr = H[e] > thr_in ? thr_in : thr_out;
      const double p = Phi((c[t][e] - thr) / sd[e]);  // Eq. 9
      EXPECT_NEAR(g.in_top_k[t][e].item<double>(), p, 1e-12);
      load[e] += p;  // Eq. 10
    }
  }
  EXPECT_CLOSE(g.load, torch::tensor(load, at::kDouble), 1e-12, 1e-12);
}

TEST(NoisyTopKGating, LoadEstimatorMatchesMonteCarlo) {
  // P(x, i): probability that i is in the top k when only its own noise is re-drawn (Eq. 8).
  torch::manual_seed(11);
  const int64_t T = 4, E = 6, k = 2, draws = 40000;
  auto clean = torch::randn({T, E}, at::kDouble) * 0.5;
  auto noise_logits = torch::randn({T, E}, at::kDouble) * 0.5;
  auto noise = torch::randn({T, E}, at::kDouble);
  auto g = moe::noisy_top_k_gating(clean, noise_logits, noise, k, 1e-2);
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> H(E), sd(E);
    for (int64_t e = 0; e < E; ++e) {
      sd[e] = softplus(noise_logits[t][e].item<double>()) + 1e-2;
      H[e] = clean[t][e].item<double>() + noise[t][e].item<double>() * sd[e];
    }
    for (int64_t i = 0; i < E; ++i) {
      int64_t hits = 0;
      for (int64_t n = 0; n < draws; ++n) {
        const double hi = clean[t][i].item<double>() + normal(rng) * sd[i];
        int64_t above = 0;
        for (int64_t j = 0; j < E; ++j)
          if (j != i && H[j] > hi) ++above;
        if (above < k) ++hits;
      }
      const double mc = static_cast<double>(hits) / draws;
      EXPECT_NEAR(g.in_top_k[t][i].item<double>(), mc, 0.01) << "token " << t << " expert " << i;
    }
  }
}

TEST(NoisyTopKGating, WithoutNoiseOrWithKEqualEUsesHardCounts) {
  auto clean = torch::tensor({{3.0, 1.0, 2.0}, {0.0, 5.0, 1.0}}, at::kDouble);
  auto g = moe::noisy_top_k_gating(clean, torch::Tensor(), torch::Tensor(), 2, 1e-2);
  EXPECT_TRUE(torch::equal(g.expert_index, torch::tensor({{0, 2}, {1, 2}}, at::kLong)));
  EXPECT_TRUE(torch::equal(g.load, torch::tensor({1.0, 1.0, 2.0}, at::kDouble)));
  const double e1 = std::exp(1.0);
  EXPECT_NEAR(g.gate[0][0].item<double>(), e1 / (e1 + 1.0), 1e-15);
  auto full =
      moe::noisy_top_k_gating(clean, torch::zeros_like(clean), torch::randn_like(clean), 3, 1e-2);
  EXPECT_TRUE(torch::equal(full.load, torch::tensor({2.0, 2.0, 2.0}, at::kDouble)));
}

TEST(NoisyTopKGating, InvalidTokensGetNoExpertAndNoLoad) {
  auto clean = torch::tensor({{3.0, 1.0}, {0.0, 5.0}}, at::kDouble);
  auto valid = torch::tensor({true, false});
  auto g = moe::noisy_top_k_gating(clean, torch::Tensor(), torch::Tensor(), 1, 1e-2, valid);
  EXPECT_TRUE(torch::equal(g.expert_index, torch::tensor({{0}, {-1}}, at::kLong)));
  EXPECT_EQ(g.gate[1][0].item<double>(), 0.0);
  EXPECT_TRUE(torch::equal(g.load, torch::tensor({1.0, 0.0}, at::kDouble)));
}

TEST(SoftmaxTopKGating, RenormalisedOrRaw) {
  auto logits = torch::tensor({{1.0, 2.0, 0.0, 2.0}}, at::kDouble);
  const double z = std::exp(1.0) + 2 * std::exp(2.0) + 1.0;
  auto raw = moe::softmax_top_k_gating(logits, 2, /*normalize=*/false);
  EXPECT_TRUE(
      torch::equal(raw.expert_index, torch::tensor({{1, 3}}, at::kLong)));  // tie: lower first
  EXPECT_NEAR(raw.gate[0][0].item<double>(), std::exp(2.0) / z, 1e-15);
  EXPECT_NEAR(raw.gate[0][1].item<double>(), std::exp(2.0) / z, 1e-15);
  auto norm = moe::softmax_top_k_gating(logits, 2, /*normalize=*/true);
  EXPECT_NEAR(norm.gate[0][0].item<double>(), 0.5, 1e-15);
  EXPECT_TRUE(torch::equal(norm.load, torch::tensor({0.0, 1.0, 0.0, 1.0}, at::kDouble)));
}

// The fused kernel vs the unfused composition of ATen ops, values and gradients, on random logits.
TEST(SoftmaxTopKGating, FusedKernelMatchesTheOpComposition) {
  torch::manual_seed(9);
  for (bool normalize : {false, true}) {
    for (int64_t k : {1, 3, 7}) {
      auto logits = (torch::randn({37, 7}, at::kDouble) * 2).requires_grad_();
      auto [idx, gate] = moe::fused_softmax_top_k(logits, k, normalize);
      EXPECT_TRUE(torch::equal(idx, moe::testing::reference_topk_indices(logits, k)));
      auto l2 = logits.detach().clone().requires_grad_();
      auto ref = torch::softmax(l2, -1).gather(1, idx);
      if (normalize) ref = ref / ref.sum(-1, true);
      EXPECT_CLOSE(gate, ref, 1e-14, 1e-15);
      auto w = torch::randn({37, k}, at::kDouble);
      (gate * w).sum().backward();
      (ref * w).sum().backward();
      EXPECT_CLOSE(logits.grad(), l2.grad(), 1e-12, 1e-14);
    }
  }
}

TEST(Capacity, FormulaAndLimits) {
  EXPECT_EQ(moe::expert_capacity(10, 2, 4, 1.25, 0), 7);  // ceil(10·2/4·1.25) = ceil(6.25)
  EXPECT_EQ(moe::expert_capacity(10, 2, 4, 1.0, 0), 5);
  EXPECT_EQ(moe::expert_capacity(1, 1, 8, 1.0, 4), 4);  // min_capacity
  EXPECT_TRUE(
      throws_with([] { moe::expert_capacity(10, 2, 4, 0.0, 0); }, {"capacity_factor", "0"}));
  EXPECT_TRUE(throws_with([] { moe::expert_capacity(10, 2, 4, std::nan(""), 0); },
                          {"capacity_factor", "nan"}));
  EXPECT_TRUE(throws_with([] { moe::expert_capacity(1 << 20, 8, 1, 1e6, 0); }, {"2^31"}));
}

TEST(Capacity, FirstChoicesArePlacedBeforeSecondChoices) {
  auto idx = torch::tensor({{0, 1}, {1, 0}, {0, 1}, {0, 1}}, at::kLong);
  auto [kept, dropped] = moe::apply_capacity(idx, 2, 2);
  // Slot 0: t0→0, t1→1, t2→0 fill; t3→0 dropped. Slot 1: t0→1 fits; t1→0, t2→1, t3→1 dropped.
  EXPECT_TRUE(torch::equal(kept, torch::tensor({{0, 1}, {1, -1}, {0, -1}, {-1, -1}}, at::kLong)));
  EXPECT_EQ(dropped.item<int64_t>(), 4);
}

TEST(Capacity, RandomTablesRespectTheBound) {
  torch::manual_seed(4);
  for (double cf : {0.5, 1.0, 1.25, 2.0}) {
    const int64_t T = 333, k = 2, E = 8;
    auto idx = torch::randint(0, E, {T, k}, at::kLong);
    const int64_t cap = moe::expert_capacity(T, k, E, cf, 0);
    auto [kept, dropped] = moe::apply_capacity(idx, E, cap);
    EXPECT_EQ((kept >= 0).sum().item<int64_t>() + dropped.item<int64_t>(), T * k);
    for (int64_t e = 0; e < E; ++e) EXPECT_LE((kept == e).sum().item<int64_t>(), cap);
  }
}

}  // namespace

namespace {

// grouped_linear against the same product written with one at::linear per group and a cat, whose
// gradients come from LibTorch's own autograd; group 2 has no rows.
TEST(GroupedLinear, MatchesPerGroupLinearsWithGradients) {
  torch::manual_seed(4);
  const std::vector<int64_t> rows{3, 5, 0, 2};
  const int64_t d = 6, n = 4, G = 4, P = 10;
  const auto x = torch::randn({P, d}, at::kDouble).requires_grad_();
  const auto w = torch::randn({G, n, d}, at::kDouble).requires_grad_();
  const auto offsets = torch::tensor({0, 3, 8, 8, 10}, at::kLong);
  const auto y = moe::detail::grouped_linear(x, w, offsets);
  std::vector<torch::Tensor> parts;
  for (int64_t g = 0, r = 0; g < G; r += rows[g], ++g)
    parts.push_back(at::linear(x.narrow(0, r, rows[g]), w[g]));
  const auto ref = torch::cat(parts);
  ASSERT_EQ(y.sizes(), ref.sizes());
  EXPECT_TRUE(torch::allclose(y, ref, 1e-12, 1e-12));
  const auto dy = torch::randn_like(ref);
  const auto got = torch::autograd::grad({y}, {x, w}, {dy});
  const auto want = torch::autograd::grad({ref}, {x, w}, {dy});
  EXPECT_TRUE(torch::allclose(got[0], want[0], 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(got[1], want[1], 1e-12, 1e-12));
  EXPECT_EQ(got[1][2].abs().max().item<double>(), 0.0);  // the empty group
  EXPECT_THROW(moe::detail::grouped_linear(x, w, torch::tensor({0, 3, 8, 8, 9}, at::kLong)),
               c10::Error);
}

}  // namespace
