// The fused noisy top-k gate (fused_noisy_top_k_gating) against the unfused one — itself checked
// against Shazeer's formulas by hand in test_gating.cpp — and against finite differences.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/autograd.h>

#include <vector>

#include "moe/gating.h"
#include "support/test_util.h"

namespace {

using moe::testing::throws_with;

struct Inputs {
  torch::Tensor x, w, b, wn;
};

Inputs random_inputs(int64_t T, int64_t d, int64_t E, c10::ScalarType dtype, bool bias) {
  Inputs in;
  in.x = torch::randn({T, d}, dtype).requires_grad_();
  in.w = torch::randn({E, d}, dtype).requires_grad_();
  in.b = bias ? torch::randn({E}, dtype).requires_grad_() : torch::Tensor();
  in.wn = (torch::randn({E, d}, dtype) * 0.5).requires_grad_();
  return in;
}

// The unfused gate: logits, noise logits and one randn [T, E] drawn after `seed`.
moe::TopKGate unfused(const Inputs& in, int64_t k, bool noisy, uint64_t seed,
                      const torch::Tensor& valid = {}) {
  const auto x = valid.defined() ? in.x.masked_fill(~valid.unsqueeze(1), 0.0) : in.x;
  const auto clean = at::linear(x, in.w, in.b);
  torch::manual_seed(seed);
  if (!noisy) return moe::noisy_top_k_gating(clean, {}, {}, k, 1e-2, valid);
  const auto noise = torch::randn(clean.sizes(), clean.options().requires_grad(false));
  return moe::noisy_top_k_gating(clean, at::linear(x, in.wn), noise, k, 1e-2, valid);
}

moe::TopKGate fused(const Inputs& in, int64_t k, bool noisy, uint64_t seed,
                    const torch::Tensor& valid = {}, int64_t block_rows = 16) {
  const auto x = valid.defined() ? in.x.masked_fill(~valid.unsqueeze(1), 0.0) : in.x;
  torch::manual_seed(seed);
  return moe::fused_noisy_top_k_gating(x, in.w, in.b, noisy ? in.wn : torch::Tensor(), k, 1e-2,
                                       valid, block_rows);
}

// Gradients of Σ gate·rg + Σ load·rl with respect to the inputs that have them.
std::vector<torch::Tensor> grads_of(const moe::TopKGate& g, const Inputs& in,
                                    const torch::Tensor& rg, const torch::Tensor& rl) {
  const auto loss = (g.gate * rg).sum() + (g.load * rl).sum();
  std::vector<torch::Tensor> wrt{in.x, in.w, in.wn};
  if (in.b.defined()) wrt.push_back(in.b);
  return torch::autograd::grad({loss}, wrt, {}, true, false, true);
}

void expect_same_gate(const moe::TopKGate& a, const moe::TopKGate& b, double tol) {
  ASSERT_TRUE(torch::equal(a.expert_index, b.expert_index));
  EXPECT_CLOSE(a.gate, b.gate, tol, tol);
  EXPECT_CLOSE(a.load, b.load, tol, tol);
}

TEST(FusedNoisyGating, MatchesUnfusedValuesAndGradientsInFloat64) {
  // 100 tokens in blocks of 16 rows: the noise of seven blocks equals one [T, E] draw.
  for (const bool bias : {false, true}) {
    for (const int64_t k : {1, 2, 6}) {
      torch::manual_seed(3);
      const auto in = random_inputs(100, 5, 7, at::kDouble, bias);
      const auto ref = unfused(in, k, true, 21);
      const auto got = fused(in, k, true, 21);
      expect_same_gate(got, ref, 1e-12);
      const auto rg = torch::randn({100, k}, at::kDouble), rl = torch::randn({7}, at::kDouble);
      const auto gr = grads_of(ref, in, rg, rl), gf = grads_of(got, in, rg, rl);
      for (size_t i = 0; i < gr.size(); ++i) EXPECT_CLOSE(gf[i], gr[i], 1e-10, 1e-10) << i;
    }
  }
}

TEST(FusedNoisyGating, GradientsMatchFiniteDifferences) {
  // Central differences of the loss with the noise re-drawn from the same seed each time.
  torch::manual_seed(5);
  const int64_t T = 20, d = 3, E = 6, k = 2;
  const auto in = random_inputs(T, d, E, at::kDouble, true);
  const auto rg = torch::randn({T, k}, at::kDouble), rl = torch::randn({E}, at::kDouble);
  auto loss_of = [&] {
    const auto g = fused(in, k, true, 9);
    return ((g.gate * rg).sum() + (g.load * rl).sum()).item<double>();
  };
  const auto g = grads_of(fused(in, k, true, 9), in, rg, rl);
  const double h = 1e-6;
  const std::vector<std::pair<torch::Tensor, torch::Tensor>> checks{
      {in.x, g[0]}, {in.w, g[1]}, {in.wn, g[2]}, {in.b, g[3]}};
  for (const auto& [param, grad] : checks) {
    auto flat = param.detach().view({-1});
    for (int64_t i = 0; i < flat.numel(); i += 3) {
      const double v = flat[i].item<double>();
      flat[i].fill_(v + h);
      const double up = loss_of();
      flat[i].fill_(v - h);
      const double down = loss_of();
      flat[i].fill_(v);
      EXPECT_NEAR(grad.view({-1})[i].item<double>(), (up - down) / (2 * h), 1e-6) << i;
    }
  }
}

TEST(FusedNoisyGating, Float32BlocksDrawTheSameNoiseAsOneRandn) {
  // E = 3 and 37 rows: blocks of 16, 16 and 5 rows, whose last 15 values would be drawn
  // differently alone; the fused gate merges such a tail into the block before it.
  for (const int64_t E : {3, 8}) {
    torch::manual_seed(1);
    const auto in = random_inputs(37, 4, E, at::kFloat, false);
    const auto ref = unfused(in, 2, true, 17);
    for (const int64_t rows : {16, 32, 0}) {
      const auto got = fused(in, 2, true, 17, {}, rows);
      expect_same_gate(got, ref, 1e-5);
    }
  }
}

TEST(FusedNoisyGating, WithoutNoiseIsTheCleanTopKWithHardCounts) {
  torch::manual_seed(2);
  const auto in = random_inputs(40, 4, 5, at::kDouble, true);
  const auto ref = unfused(in, 2, false, 0);
  const auto got = fused(in, 2, false, 0);
  expect_same_gate(got, ref, 1e-12);
  const auto rg = torch::randn({40, 2}, at::kDouble), rl = torch::zeros({5}, at::kDouble);
  const auto gr = grads_of(ref, in, rg, rl), gf = grads_of(got, in, rg, rl);
  for (size_t i = 0; i < 2; ++i) EXPECT_CLOSE(gf[i], gr[i], 1e-12, 1e-12) << i;
  EXPECT_FALSE(gf[2].defined() && gf[2].abs().sum().item<double>() != 0.0);
}

TEST(FusedNoisyGating, KEqualToEUsesHardCounts) {
  torch::manual_seed(4);
  const auto in = random_inputs(10, 3, 4, at::kDouble, false);
  const auto ref = unfused(in, 4, true, 6);
  const auto got = fused(in, 4, true, 6);
  expect_same_gate(got, ref, 1e-12);
  EXPECT_TRUE(torch::equal(got.load, torch::full({4}, 10.0, at::kDouble)));
}

TEST(FusedNoisyGating, InvalidTokensGetNoExpertNoLoadAndNoGradient) {
  torch::manual_seed(8);
  const auto in = random_inputs(50, 4, 6, at::kDouble, true);
  auto valid = torch::ones({50}, at::kBool);
  for (int64_t t : {0, 17, 18, 49}) valid[t] = false;
  const auto ref = unfused(in, 2, true, 13, valid);
  const auto got = fused(in, 2, true, 13, valid);
  expect_same_gate(got, ref, 1e-12);
  EXPECT_EQ(got.expert_index[17][0].item<int64_t>(), -1);
  EXPECT_EQ(got.gate[17][1].item<double>(), 0.0);
  const auto rg = torch::randn({50, 2}, at::kDouble), rl = torch::randn({6}, at::kDouble);
  const auto gr = grads_of(ref, in, rg, rl), gf = grads_of(got, in, rg, rl);
  for (size_t i = 0; i < gr.size(); ++i) EXPECT_CLOSE(gf[i], gr[i], 1e-10, 1e-10) << i;
  EXPECT_EQ(gf[0][17].abs().sum().item<double>(), 0.0);
}

TEST(FusedNoisyGating, RejectsBadArguments) {
  const auto x = torch::randn({4, 3});
  const auto w = torch::randn({5, 3});
  auto nan_w = w.clone();
  nan_w[2][1] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_TRUE(throws_with([&] { moe::fused_noisy_top_k_gating(x, nan_w, {}, w, 2, 1e-2); },
                          {"non-finite for finite inputs", "router weights"}));
  EXPECT_TRUE(throws_with([&] { moe::fused_noisy_top_k_gating(x, w, {}, {}, 6, 1e-2); },
                          {"k must be in [1, 5], got 6"}));
  EXPECT_TRUE(throws_with(
      [&] {
        moe::fused_noisy_top_k_gating(x, torch::randn({5, 4}), {}, {}, 1, 1e-2);
      },
      {"x [T, d] and weight [E, d]", "[4, 3]", "[5, 4]"}));
  EXPECT_TRUE(
      throws_with([&] { moe::fused_noisy_top_k_gating(x.to(at::kBFloat16), w, {}, {}, 1, 1e-2); },
                  {"float32 or float64", "BFloat16"}));
  EXPECT_TRUE(
      throws_with([&] { moe::fused_noisy_top_k_gating(x, w, torch::zeros({4}), {}, 1, 1e-2); },
                  {"bias must be [5]", "[4]"}));
}

}  // namespace
