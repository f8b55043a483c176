// Auxiliary losses vs hand computations, and the flow of their gradients.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "moe/gating.h"
#include "moe/losses.h"
#include "moe/nn/sparse_moe.h"
#include "support/test_util.h"

namespace {

TEST(Losses, CvSquaredUsesPopulationVarianceAndEps) {
  const std::vector<double> v{1.0, 2.0, 3.0, 6.0};
  const double n = 4 + 1e-10;
  const double mean = 12.0 / n;
  double var = 0;
  for (double x : v) var += (x - mean) * (x - mean);
  var /= n;
  EXPECT_NEAR(moe::cv_squared(torch::tensor(v, at::kDouble)).item<double>(),
              var / (mean * mean + 1e-10), 1e-15);
  EXPECT_EQ(moe::cv_squared(torch::zeros({0}, at::kDouble)).item<double>(), 0.0);
  EXPECT_EQ(moe::cv_squared(torch::zeros({5}, at::kDouble)).item<double>(), 0.0);
}

TEST(Losses, BalanceLossAnalyticValues) {
  const int64_t T = 8, E = 4, k = 2;
  // Balanced: every expert chosen by 4 of the 8 tokens, uniform probabilities → exactly k.
  auto idx =
      torch::tensor({0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3}, at::kLong).view({T, k});
  auto uniform = torch::full({T, E}, 0.25, at::kDouble);
  EXPECT_NEAR(moe::balance_loss(uniform, idx).item<double>(), 2.0, 1e-15);
  // Collapse: every token picks experts 0 and 1 with all probability there → E.
  auto collapsed_idx = torch::tensor({0, 1}, at::kLong).repeat({T, 1});
  auto collapsed_p = torch::tensor({0.5, 0.5, 0.0, 0.0}, at::kDouble).repeat({T, 1});
  const double collapsed = moe::balance_loss(collapsed_p, collapsed_idx).item<double>();
  EXPECT_NEAR(collapsed, 4.0, 1e-15);
  EXPECT_GT(collapsed, 2.0);
  // A random case against E · Σ_e f_e P_e written out.
  torch::manual_seed(2);
  auto p = torch::softmax(torch::randn({T, E}, at::kDouble), -1);
  auto r = torch::randint(0, E, {T, k}, at::kLong);
  double expect = 0;
  for (int64_t e = 0; e < E; ++e) {
    const double f = (r == e).sum().item<double>() / T;
    expect += f * p.select(1, e).mean().item<double>();
  }
  EXPECT_NEAR(moe::balance_loss(p, r).item<double>(), E * expect, 1e-14);
  EXPECT_EQ(moe::balance_loss(torch::zeros({0, E}, at::kDouble), torch::zeros({0, k}, at::kLong))
                .item<double>(),
            0.0);
}

TEST(Losses, ZLossIsMeanSquaredLogSumExp) {
  auto logits = torch::tensor({{1.0, 2.0, 3.0}, {-1.0, 0.0, 0.5}}, at::kDouble);
  double expect = 0;
  for (int t = 0; t < 2; ++t) {
    double s = 0;
    for (int e = 0; e < 3; ++e) s += std::exp(logits[t][e].item<double>());
    expect += std::log(s) * std::log(s);
  }
  EXPECT_NEAR(moe::router_z_loss(logits).item<double>(), expect / 2, 1e-14);
  EXPECT_EQ(moe::router_z_loss(torch::zeros({0, 3}, at::kDouble)).item<double>(), 0.0);
}

TEST(Losses, ImportanceIsGateMassPerExpert) {
  auto idx = torch::tensor({{0, 2}, {2, -1}}, at::kLong);
  auto gate = torch::tensor({{0.7, 0.3}, {0.9, 0.1}}, at::kDouble);
  EXPECT_CLOSE(moe::importance(idx, gate, 3), torch::tensor({0.7, 0.0, 1.2}, at::kDouble), 1e-15,
               0);
}

// Megatron's check: backward of out.sum()*0 + aux leaves only the aux-loss gradient.
double router_grad_norm(moe::nn::SparseMoEOptions o) {
  torch::manual_seed(0);
  moe::nn::SparseMoE layer(o);
  auto x = torch::randn({32, 8});
  auto out = layer->forward(x);
  (out.output.sum() * 0 + out.aux_loss).backward();
  return layer->router->weight.grad().abs().sum().item<double>();
}

TEST(Losses, AuxLossGradientFlowsOnlyWhenEnabled) {
  auto base = moe::nn::SparseMoEOptions(8, 4).hidden_size(16).top_k(2);
  EXPECT_EQ(router_grad_norm(base.balance_coef(0.0).z_loss_coef(0.0)), 0.0);
  EXPECT_GT(router_grad_norm(base.balance_coef(1e-2).z_loss_coef(0.0)), 0.0);
  EXPECT_GT(router_grad_norm(base.balance_coef(0.0).z_loss_coef(1e-3)), 0.0);
  auto noisy = moe::nn::SparseMoEOptions(8, 4)
                   .hidden_size(16)
                   .top_k(2)
                   .router(moe::RouterKind::kNoisyTopK)
                   .router_zero_init(false);
  EXPECT_EQ(router_grad_norm(noisy.importance_coef(0.0).load_coef(0.0)), 0.0);
  EXPECT_GT(router_grad_norm(noisy.importance_coef(1e-2).load_coef(0.0)), 0.0);
  EXPECT_GT(router_grad_norm(noisy.importance_coef(0.0).load_coef(1e-2)), 0.0);
}

TEST(Losses, SparseMoEAuxLossMatchesTheWeightedSum) {
  torch::manual_seed(1);
  moe::nn::SparseMoE layer(
      moe::nn::SparseMoEOptions(8, 4).hidden_size(16).top_k(2).balance_coef(0.03).z_loss_coef(
          0.002));
  auto x = torch::randn({20, 8});
  auto out = layer->forward(x);
  auto logits = torch::matmul(x, layer->router->weight.t()).detach();
  auto probs = torch::softmax(logits, -1);
  const double expect = 0.03 * moe::balance_loss(probs, out.routing.expert_index).item<double>() +
                        0.002 * moe::router_z_loss(logits).item<double>();
  EXPECT_NEAR(out.aux_loss.item<double>(), expect, 1e-6);
  layer->eval();
  EXPECT_EQ(layer->forward(x).aux_loss.item<double>(), 0.0);  // training only by default
}

}  // namespace
