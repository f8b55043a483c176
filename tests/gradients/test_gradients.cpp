// Gradients of the input, router and expert parameters vs central finite differences in float64,
// with the routing held fixed: the noise is re-drawn from the same seed on every evaluation, and
// each perturbed evaluation must reproduce the unperturbed routing table (else the test reports
// it). The loss includes the auxiliary loss, so the importance, load (smooth estimator), balance
// and z-loss gradients are checked too.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <sstream>

#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/sparse_moe.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
using moe::RouterKind;

struct Eval {
  torch::Tensor loss;
  torch::Tensor routing;
};

// Checks d loss / d t for each named tensor at up to `samples` entries.
void check_gradients(const std::function<Eval()>& f,
                     const std::vector<std::pair<std::string, torch::Tensor>>& wrt,
                     int64_t samples) {
  for (auto& [name, t] : wrt) {
    if (t.grad().defined()) t.mutable_grad().zero_();
  }
  Eval base = f();
  base.loss.backward();
  const double eps = 1e-6;
  for (const auto& [name, t] : wrt) {
    ASSERT_TRUE(t.grad().defined()) << name;
    const auto grad = t.grad().clone().reshape({-1});
    auto flat = t.detach().view({-1});  // shares storage with t
    const int64_t n = flat.numel();
    const int64_t step = std::max<int64_t>(1, n / samples);
    for (int64_t i = (n > 1 ? 1 : 0); i < n; i += step) {
      const double orig = flat[i].item<double>();
      double lp, lm;
      {
        torch::NoGradGuard g;
        flat[i] = orig + eps;
        Eval p = f();
        ASSERT_TRUE(torch::equal(p.routing, base.routing))
            << name << "[" << i << "]: routing flipped";
        lp = p.loss.item<double>();
        flat[i] = orig - eps;
        Eval m = f();
        ASSERT_TRUE(torch::equal(m.routing, base.routing))
            << name << "[" << i << "]: routing flipped";
        lm = m.loss.item<double>();
        flat[i] = orig;
      }
      const double fd = (lp - lm) / (2 * eps);
      const double an = grad[i].item<double>();
      EXPECT_NEAR(an, fd, 1e-6 + 1e-5 * std::abs(fd)) << name << "[" << i << "]";
    }
  }
}

struct GradCase {
  RouterKind kind;
  int64_t k;
  Activation act;
  bool bias;
  double capacity_factor;
  bool recompute = false;
};

class SparseMoEGradients : public ::testing::TestWithParam<GradCase> {};

TEST_P(SparseMoEGradients, MatchFiniteDifferences) {
  const auto c = GetParam();
  const int64_t d = 5, E = 4, h = 6, T = 12;
  torch::manual_seed(31);
  moe::nn::SparseMoE layer(moe::nn::SparseMoEOptions(d, E)
                               .hidden_size(h)
                               .top_k(c.k)
                               .router(c.kind)
                               .activation(c.act)
                               .router_bias(c.bias)
                               .expert_bias(c.bias)
                               .capacity_factor(c.capacity_factor)
                               .recompute_hidden(c.recompute)
                               .router_zero_init(false)
                               .router_init_std(1.0)
                               .balance_coef(c.kind == RouterKind::kNoisyTopK ? 0.0 : 0.3)
                               .z_loss_coef(0.05)
                               .importance_coef(0.2)
                               .load_coef(c.kind == RouterKind::kNoisyTopK ? 0.3 : 0.0));
  layer->to(at::kDouble);
  {
    torch::NoGradGuard g;
    if (layer->router->noise_weight.defined()) layer->router->noise_weight.normal_(0, 0.5);
    if (c.bias) {
      layer->experts->b1.normal_();
      layer->experts->b2.normal_();
      layer->router->bias.normal_();
    }
  }
  auto x = torch::randn({T, d}, torch::dtype(at::kDouble).requires_grad(true));
  auto target = torch::randn({T, d}, at::kDouble);
  auto f = [&]() {
    torch::manual_seed(77);
    auto out = layer->forward(x);
    return Eval{(out.output * target).sum() + out.aux_loss, out.routing.expert_index};
  };
  std::vector<std::pair<std::string, torch::Tensor>> wrt{{"x", x}};
  for (const auto& p : layer->named_parameters()) wrt.emplace_back(p.key(), p.value());
  check_gradients(f, wrt, 12);
}

INSTANTIATE_TEST_SUITE_P(
    Routers, SparseMoEGradients,
    ::testing::Values(GradCase{RouterKind::kSoftmaxTopK, 2, Activation::kSiLU, true, 0.0},
                      GradCase{RouterKind::kSoftmaxTopK, 1, Activation::kGELU, false, 0.0},
                      GradCase{RouterKind::kSwitch, 1, Activation::kSwiGLU, false, 0.0},
                      GradCase{RouterKind::kSwitch, 2, Activation::kGEGLU, true, 1.0},
                      GradCase{RouterKind::kNoisyTopK, 2, Activation::kSiLU, false, 0.0},
                      GradCase{RouterKind::kNoisyTopK, 3, Activation::kReLU, true, 0.0},
                      GradCase{RouterKind::kNoisyTopK, 4, Activation::kSwiGLU, false, 0.0},
                      GradCase{RouterKind::kNoisyTopK, 2, Activation::kGELU, false, 1.0},
                      GradCase{RouterKind::kSoftmaxTopK, 2, Activation::kSwiGLU, true, 0.0, true},
                      GradCase{RouterKind::kNoisyTopK, 2, Activation::kReLU, true, 1.0, true}),
    [](const auto& info) {
      const auto& c = info.param;
      return std::string(moe::to_string(c.kind)) + "_k" + std::to_string(c.k) + "_" +
             moe::to_string(c.act) + (c.bias ? "_bias" : "") +
             (c.capacity_factor > 0 ? "_capacity" : "") + (c.recompute ? "_recompute" : "");
    });

TEST(RecomputeHidden, GivesBitwiseTheSameGradients) {
  for (auto act : {Activation::kReLU, Activation::kSwiGLU}) {
    std::vector<torch::Tensor> grads[2];
    for (bool recompute : {false, true}) {
      torch::manual_seed(3);
      moe::nn::SparseMoE layer(moe::nn::SparseMoEOptions(16, 4)
                                   .hidden_size(24)
                                   .top_k(2)
                                   .activation(act)
                                   .expert_bias(true)
                                   .recompute_hidden(recompute)
                                   .router_init_std(1.0));
      auto x = torch::randn({50, 16}, torch::requires_grad());
      auto out = layer->forward(x);
      (out.output.pow(2).sum() + out.aux_loss).backward();
      grads[recompute].push_back(x.grad());
      for (const auto& p : layer->parameters()) grads[recompute].push_back(p.grad());
    }
    for (size_t i = 0; i < grads[0].size(); ++i)
      EXPECT_TRUE(moe::testing::bitwise_equal(grads[0][i], grads[1][i]))
          << moe::to_string(act) << " " << i;
  }
}

TEST(HierarchicalMoEGradients, MatchFiniteDifferences) {
  torch::manual_seed(8);
  const int64_t d = 5;
  moe::nn::HierarchicalMoE layer(moe::nn::HierarchicalMoEOptions(d, 3, 3)
                                     .hidden_size(4)
                                     .top_k(2)
                                     .activation(Activation::kSiLU)
                                     .importance_coef(0.3)
                                     .load_coef(0.4));
  layer->to(at::kDouble);
  {
    torch::NoGradGuard g;
    for (auto& p : layer->named_parameters())
      if (p.key().find("router") != std::string::npos) p.value().normal_(0, 0.6);
  }
  auto x = torch::randn({10, d}, torch::dtype(at::kDouble).requires_grad(true));
  auto target = torch::randn({10, d}, at::kDouble);
  auto f = [&]() {
    torch::manual_seed(5);
    auto out = layer->forward(x);
    return Eval{(out.output * target).sum() + out.aux_loss, out.routing.expert_index};
  };
  std::vector<std::pair<std::string, torch::Tensor>> wrt{{"x", x}};
  for (const auto& p : layer->named_parameters()) wrt.emplace_back(p.key(), p.value());
  check_gradients(f, wrt, 10);
}

}  // namespace
