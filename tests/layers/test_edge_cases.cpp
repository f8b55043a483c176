// Edge cases (docs/reliability.md §6 B): empty experts, collapsed routing, one token, 0 tokens, k =
// E, and the non-finite input policy.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "engine/backend.h"
#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/sparse_moe.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
using moe::RouterKind;
using moe::nn::SparseMoE;
using moe::nn::SparseMoEOptions;
namespace mt = moe::testing;

torch::Tensor reference_of(SparseMoE& layer, const torch::Tensor& x, const moe::MoEOutput& out) {
  const auto& ex = layer->experts;
  return mt::dense_moe_reference(x.reshape({-1, x.size(-1)}), out.routing.expert_index,
                                 out.routing.gate, ex->w1, ex->w2, ex->w3, ex->b1, ex->b2,
                                 layer->experts->options.activation());
}

TEST(EdgeCases, EveryTokenToOneExpertAndEmptyExpertsGetZeroGrads) {
  const int64_t d = 6, E = 8;
  SparseMoE layer(SparseMoEOptions(d, E).hidden_size(5).top_k(1).balance_coef(0.0));
  layer->to(at::kDouble);
  // A full-load step first: the empty step must not reuse stale gradient memory (MSLK#158).
  auto warm = torch::randn({64, d}, at::kDouble);
  layer->forward(warm).output.sum().backward();
  layer->zero_grad();
  {
    torch::NoGradGuard g;
    layer->router->weight.zero_();
    layer->router->weight[0].fill_(1.0);  // positive inputs all pick expert 0
  }
  auto x = torch::rand({40, d}, at::kDouble) + 0.1;
  auto out = layer->forward(x);
  EXPECT_EQ(out.stats.tokens_per_expert[0].item<int64_t>(), 40);
  EXPECT_EQ(out.stats.tokens_per_expert.sum().item<int64_t>(), 40);
  EXPECT_CLOSE(out.output, reference_of(layer, x, out), 1e-12, 1e-12);
  out.output.pow(2).sum().backward();
  const auto g1 = layer->experts->w1.grad();
  ASSERT_TRUE(g1.defined());
  EXPECT_GT(g1[0].abs().sum().item<double>(), 0.0);
  EXPECT_EQ(g1.slice(0, 1).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(layer->experts->w2.grad().slice(0, 1).abs().sum().item<double>(), 0.0);
  EXPECT_TRUE(at::isfinite(g1).all().item<bool>());
}

TEST(EdgeCases, OneToken) {
  torch::manual_seed(1);
  SparseMoE layer(SparseMoEOptions(5, 4).hidden_size(3).top_k(2).router(RouterKind::kNoisyTopK));
  layer->to(at::kDouble);
  auto x = torch::randn({1, 5}, at::kDouble);
  auto out = layer->forward(x);
  EXPECT_EQ(out.stats.experts_per_token_min(), 2);
  EXPECT_CLOSE(out.output, reference_of(layer, x, out), 1e-12, 1e-12);
}

void expect_zero_token_batch(torch::nn::Module& m,
                             const std::function<moe::MoEOutput(const torch::Tensor&)>& fwd,
                             std::vector<int64_t> shape) {
  auto x = torch::zeros(shape, torch::requires_grad());
  auto out = fwd(x);
  EXPECT_EQ(out.output.sizes(), x.sizes());
  EXPECT_EQ(out.aux_loss.dim(), 0);
  EXPECT_EQ(out.aux_loss.item<float>(), 0.0f);
  (out.output.sum() + out.aux_loss).backward();
  for (const auto& p : m.named_parameters()) {
    ASSERT_TRUE(p.value().grad().defined()) << p.key();
    EXPECT_EQ(p.value().grad().abs().sum().item<float>(), 0.0f) << p.key();
  }
  EXPECT_EQ(out.stats.dropped_fraction(), 0.0);
}

TEST(EdgeCases, ZeroTokens) {
  for (auto kind : {RouterKind::kSoftmaxTopK, RouterKind::kNoisyTopK, RouterKind::kSwitch}) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{0, 6}, std::vector<int64_t>{2, 0, 6}}) {
      SparseMoE layer(SparseMoEOptions(6, 4)
                          .hidden_size(5)
                          .top_k(2)
                          .router(kind)
                          .activation(Activation::kSwiGLU)
                          .z_loss_coef(1e-3)
                          .capacity_factor(1.0));
      expect_zero_token_batch(
          *layer, [&](const torch::Tensor& x) { return layer->forward(x); }, shape);
    }
  }
  moe::nn::HierarchicalMoE hier(moe::nn::HierarchicalMoEOptions(6, 2, 3).hidden_size(5));
  expect_zero_token_batch(*hier, [&](const torch::Tensor& x) { return hier->forward(x); }, {0, 6});
}

TEST(EdgeCases, KEqualsEIsADenseSoftmaxMixture) {
  torch::manual_seed(2);
  const int64_t d = 7, E = 5;
  SparseMoE layer(SparseMoEOptions(d, E).hidden_size(6).top_k(E).activation(Activation::kGEGLU));
  layer->to(at::kDouble);
  {
    torch::NoGradGuard g;
    layer->router->weight.normal_();
  }
  auto x = torch::randn({9, d}, at::kDouble);
  auto out = layer->forward(x);
  // Dense softmax mixing of every expert, with the gate matrix written out directly.
  const auto probs = torch::softmax(x.matmul(layer->router->weight.t()), -1);
  const auto all = torch::arange(E, at::kLong).repeat({9, 1});
  const auto& ex = layer->experts;
  EXPECT_CLOSE(out.output,
               mt::dense_moe_reference(x, all, probs, ex->w1, ex->w2, ex->w3, ex->b1, ex->b2,
                                       Activation::kGEGLU),
               1e-12, 1e-12);
  EXPECT_EQ(out.stats.experts_per_token_min(), E);
}

TEST(EdgeCases, NonFiniteInputIsAnErrorByDefault) {
  SparseMoE layer(SparseMoEOptions(4, 3).hidden_size(5).top_k(1).router_zero_init(false));
  auto x = torch::randn({10, 4});
  x[3][1] = std::nanf("");
  EXPECT_TRUE(
      mt::throws_with([&] { layer->forward(x); }, {"SparseMoE", "non-finite for 1 of 10 tokens"}));
  x[3][1] = INFINITY;
  x[5][0] = -INFINITY;
  EXPECT_TRUE(mt::throws_with([&] { layer->forward(x); }, {"non-finite for 2 of 10 tokens"}));
}

TEST(EdgeCases, NonFiniteNoisyRouterWeightsAreAnErrorUnderEitherPolicy) {
  // The noisy router's fused gate checks the input rows; NaN logits of finite inputs are the
  // weights' fault, whatever the policy.
  for (auto policy : {moe::NonFinitePolicy::kError, moe::NonFinitePolicy::kSkip}) {
    SparseMoE layer(SparseMoEOptions(4, 3)
                        .hidden_size(5)
                        .top_k(1)
                        .router(RouterKind::kNoisyTopK)
                        .non_finite(policy));
    {
      torch::NoGradGuard no_grad;
      layer->router->noise_weight[1][2] = std::nanf("");
    }
    if (moe::engine::portable_path(at::kCPU)) {
      // A device-side assertion there (docs/gpu.md): LibTorch's message.
      EXPECT_THROW(layer->forward(torch::randn({6, 4})), c10::Error);
    } else {
      EXPECT_TRUE(mt::throws_with(
          [&] {
            layer->forward(torch::randn({6, 4}));
          },
          {"SparseMoE", "non-finite for finite inputs", "router weights"}));
    }
    layer->eval();  // inference does not read the noise weights
    EXPECT_NO_THROW(layer->forward(torch::randn({6, 4})));
  }
}

TEST(EdgeCases, NonFiniteSkipPolicyZeroesOnlyThoseTokens) {
  torch::manual_seed(3);
  for (auto kind : {RouterKind::kSoftmaxTopK, RouterKind::kNoisyTopK}) {
    SparseMoE layer(SparseMoEOptions(4, 3)
                        .hidden_size(5)
                        .top_k(2)
                        .router(kind)
                        .router_zero_init(false)
                        .non_finite(moe::NonFinitePolicy::kSkip));
    layer->eval();
    auto x = torch::randn({10, 4});
    auto clean = layer->forward(x).output;
    auto bad = x.clone();
    bad[3][1] = std::nanf("");
    bad[7][0] = INFINITY;
    auto out = layer->forward(bad);
    EXPECT_EQ(out.stats.skipped_tokens(), 2);
    EXPECT_EQ(out.output[3].abs().sum().item<float>(), 0.0f);
    EXPECT_EQ(out.output[7].abs().sum().item<float>(), 0.0f);
    // The other tokens are unaffected up to the BLAS's rounding: the skipped tokens move their rows
    // within the experts' GEMMs, and no BLAS promises that a row's result does not depend on its
    // position (OpenBLAS's kernels measured bitwise equal).
    for (int64_t t : {0, 1, 2, 4, 5, 6, 8, 9})
      EXPECT_CLOSE(out.output[t], clean[t], 1e-6, 1e-7) << t;
    // Gradients stay finite.
    layer->train();
    auto xb = bad.clone().requires_grad_();
    auto o = layer->forward(xb);
    (o.output.sum() + o.aux_loss).backward();
    for (const auto& p : layer->parameters())
      EXPECT_TRUE(at::isfinite(p.grad()).all().item<bool>());
    EXPECT_EQ(xb.grad()[3].abs().sum().item<float>(), 0.0f);
  }
}

TEST(EdgeCases, CapacityBoundsAndDroppedFraction) {
  torch::manual_seed(6);
  for (double cf : {0.5, 1.0, 1.25, 2.0}) {
    const int64_t T = 128, E = 8, k = 2;
    SparseMoE layer(
        SparseMoEOptions(6, E).hidden_size(4).top_k(k).capacity_factor(cf).router_init_std(1.0));
    auto out = layer->forward(torch::randn({T, 6}));
    const auto cap = static_cast<int64_t>(std::ceil(double(T) * k / E * cf));
    EXPECT_LE(out.stats.tokens_per_expert.max().item<int64_t>(), cap);
    const int64_t kept = out.stats.tokens_per_expert.sum().item<int64_t>();
    EXPECT_NEAR(out.stats.dropped_fraction(), double(T * k - kept) / (T * k), 1e-15);
    if (cf == 0.5) {
      EXPECT_GT(out.stats.dropped_fraction(), 0.0);
    }
  }
}

}  // namespace
