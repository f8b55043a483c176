// TopAnyRouter and TopAnyMoE vs hand computations (docs/algorithms.md §2.2, §2.3): scores, mask,
// k and weights on fixed weights; the straight-through gradients vs the reference formula; every
// auxiliary term vs loops; the layer vs the dense float64 reference.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "dynmoe/top_any_reference.h"
#include "moe/nn/top_any_moe.h"
#include "moe/routers/top_any_router.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::TopAnyFallback;
using moe::TopAnyRouter;
using moe::TopAnyRouterOptions;
using moe::TopAnyTemperature;
namespace mt = moe::testing;

// A router in float64 with varied thresholds and two free experts, so that tokens get k = 0..E.
TopAnyRouter make_router(TopAnyRouterOptions o, uint64_t seed) {
  torch::manual_seed(seed);
  TopAnyRouter r(o);
  r->to(at::kDouble);
  torch::NoGradGuard g;
  r->threshold.normal_(0.0, 0.6);
  return r;
}

double lambda_of(const TopAnyRouter& r) { return r->logit_scale().item<double>(); }

TEST(TopAnyRouter, InitialisationFollowsTheReference) {
  torch::manual_seed(0);
  TopAnyRouter r(TopAnyRouterOptions(16, 6).initial_active(2));
  // Orthonormal rows (E <= d), zero thresholds, the first E_0 slots active, λ = 1.
  EXPECT_CLOSE(r->weight.mm(r->weight.t()), torch::eye(6), 0, 1e-5);
  EXPECT_TRUE(torch::equal(r->threshold, torch::zeros({6})));
  EXPECT_TRUE(torch::equal(r->active, torch::tensor({1.f, 1.f, 0.f, 0.f, 0.f, 0.f})));
  EXPECT_DOUBLE_EQ(lambda_of(r), 1.0);
  // One name and one kind of tensor for every temperature mode: a parameter, trained or frozen.
  EXPECT_FALSE(r->temperature.requires_grad());
  EXPECT_TRUE(r->named_parameters().contains("temperature"));
  EXPECT_FALSE(r->named_buffers().contains("temperature"));
  TopAnyRouter t(TopAnyRouterOptions(16, 6).temperature(TopAnyTemperature::kTrainable));
  EXPECT_TRUE(t->temperature.requires_grad());
  EXPECT_TRUE(t->named_parameters().contains("temperature"));
  EXPECT_NEAR(lambda_of(t), 10.0, 1e-5);  // init_t = 0.1
  TopAnyRouter n(TopAnyRouterOptions(16, 6).temperature(TopAnyTemperature::kNone));
  EXPECT_FALSE(n->temperature.defined());
  EXPECT_EQ(n->named_parameters().size(), 2u);
}

TEST(TopAnyRouter, TrainableTemperatureIsClampedAtLambda100) {
  TopAnyRouter t(TopAnyRouterOptions(4, 3).temperature(TopAnyTemperature::kTrainable));
  torch::NoGradGuard g;
  t->temperature.fill_(std::log(1e4));
  EXPECT_NEAR(lambda_of(t), 100.0, 1e-3);
}

struct RouteCase {
  TopAnyTemperature temperature;
  TopAnyFallback fallback;
  bool train;
};

class TopAnyRouterVsHand : public ::testing::TestWithParam<RouteCase> {};

TEST_P(TopAnyRouterVsHand, ScoresMaskKAndWeights) {
  const auto c = GetParam();
  const int64_t d = 7, E = 6, T = 40;
  auto r = make_router(TopAnyRouterOptions(d, E)
                           .initial_active(E)
                           .temperature(c.temperature)
                           .init_temperature(c.temperature == TopAnyTemperature::kTrainable
                                                 ? c10::optional<double>(0.5)
                                                 : c10::nullopt)
                           .fallback(c.fallback),
                       7);
  {
    torch::NoGradGuard g;
    r->active[2] = 0.0;
    r->active[5] = 0.0;
  }
  r->train(c.train);
  const auto x = torch::randn({T, d}, at::kDouble);
  const auto out = r->decide(x);
  const auto ref = mt::top_any_reference(x, r->weight, r->threshold, r->active, lambda_of(r),
                                         !c.train && c.fallback != TopAnyFallback::kZero,
                                         c.fallback == TopAnyFallback::kArgmaxScore);
  EXPECT_CLOSE(out.scores, ref.scores, 1e-12, 1e-14);
  EXPECT_TRUE(torch::equal(out.fired, ref.fired));
  EXPECT_TRUE(torch::equal(out.expert_index, ref.expert_index));
  EXPECT_CLOSE(out.gate.detach(), ref.gate, 1e-14, 1e-15);
  EXPECT_TRUE(torch::equal(out.unrouted, ref.fired.sum(1) == 0));
  // The draw must exercise the cases that matter: tokens with no expert and with several.
  const auto k = ref.fired.sum(1);
  EXPECT_GT((k == 0).sum().item<int64_t>(), 0);
  EXPECT_GT((k >= 2).sum().item<int64_t>(), 0);
  // Free slots never fire.
  EXPECT_FALSE(out.fired.select(1, 2).any().item<bool>());
  EXPECT_FALSE(out.fired.select(1, 5).any().item<bool>());
}

INSTANTIATE_TEST_SUITE_P(
    Cases, TopAnyRouterVsHand,
    ::testing::Values(RouteCase{TopAnyTemperature::kFrozen, TopAnyFallback::kArgmax, true},
                      RouteCase{TopAnyTemperature::kFrozen, TopAnyFallback::kArgmax, false},
                      RouteCase{TopAnyTemperature::kFrozen, TopAnyFallback::kArgmaxScore, false},
                      RouteCase{TopAnyTemperature::kFrozen, TopAnyFallback::kZero, false},
                      RouteCase{TopAnyTemperature::kTrainable, TopAnyFallback::kArgmax, true},
                      RouteCase{TopAnyTemperature::kNone, TopAnyFallback::kArgmax, false}));

// The straight-through estimator (§2.2): for a loss L = Σ c ∘ gate with gate = a / k (k held), the
// gradient reaching s and θ is c/k where s > θ and 0 elsewhere. The reference builds s(W, λ) and
// θ(G, λ) with plain ops and back-propagates that surrogate.
TEST(TopAnyRouter, StraightThroughGradientsMatchTheFormula) {
  const int64_t d = 6, E = 5, T = 30;
  auto r = make_router(TopAnyRouterOptions(d, E)
                           .temperature(TopAnyTemperature::kTrainable)
                           .init_temperature(0.7)
                           .aux_loss_coef(0.0),
                       11);
  {
    torch::NoGradGuard g;
    r->active[4] = 0.0;
  }
  const auto x = torch::randn({T, d}, at::kDouble);
  const auto c = torch::randn({T, E}, at::kDouble);
  const auto out = r->decide(x);
  (out.gate * c).sum().backward();

  const auto W = r->weight.detach().clone().requires_grad_(true);
  const auto G = r->threshold.detach().clone().requires_grad_(true);
  const auto tau = r->temperature.detach().clone().requires_grad_(true);
  const auto lam = tau.exp();
  const auto xn = x / x.norm(2, {1}, true);
  const auto wn = W / W.norm(2, {1}, true);
  const auto s = torch::sigmoid(xn.mm(wn.t()) * lam) * r->active;
  const auto theta = torch::sigmoid(G * lam);
  const auto fired = (s > theta).detach();
  const auto k = fired.sum(1, true).clamp_min(1).to(at::kDouble);
  const auto upstream = fired.to(at::kDouble) * c / k;
  ((s - theta) * upstream).sum().backward();

  EXPECT_CLOSE(r->weight.grad(), W.grad(), 1e-10, 1e-13);
  EXPECT_CLOSE(r->threshold.grad(), G.grad(), 1e-10, 1e-13);
  EXPECT_CLOSE(r->temperature.grad(), tau.grad(), 1e-10, 1e-13);
  // Thresholds of slots that never fired get no task gradient.
  EXPECT_EQ(r->threshold.grad()[4].item<double>(), 0.0);
}

TEST(TopAnyRouter, AuxiliaryTermsMatchHandComputations) {
  const int64_t d = 5, E = 6, T = 25;
  auto r = make_router(TopAnyRouterOptions(d, E).aux_loss_coef(0.01), 3);
  {
    torch::NoGradGuard g;
    r->weight.normal_();  // not orthogonal, so the diversity term is non-zero
    r->active[1] = 0.0;
    r->active[4] = 0.0;
  }
  const auto x = torch::randn({T, d}, at::kDouble);
  const auto out = r->decide(x);
  const auto W = r->weight.detach();
  auto cosine = [&](int64_t i, int64_t j) {
    return W[i].dot(W[j]).item<double>() /
           (W[i].norm().item<double>() * W[j].norm().item<double>());
  };
  // Diversity: Frobenius norm over active pairs (i, j) of cos(i, j) − [i = j].
  double div = 0, simple = 0;
  for (int64_t i = 0; i < E; ++i) {
    simple += W[i].norm().item<double>() / E;
    for (int64_t j = 0; j < E; ++j) {
      if (r->active[i].item<double>() == 0 || r->active[j].item<double>() == 0) continue;
      const double v = cosine(i, j) - (i == j ? 1.0 : 0.0);
      div += v * v;
    }
  }
  div = std::sqrt(div);
  // Balance over tokens with k > 0 (GShard form scaled by E²), efficiency over all T·E entries.
  const auto fired = out.fired;
  double bal = 0, eff = 0;
  int64_t nz = 0;
  std::vector<double> me(E, 0.0), ce(E, 0.0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t k = fired[t].sum().item<int64_t>();
    eff += static_cast<double>(k) / static_cast<double>(T * E);
    if (k == 0) continue;
    ++nz;
    for (int64_t e = 0; e < E; ++e) {
      if (!fired[t][e].item<bool>()) continue;
      me[e] += 1.0 / static_cast<double>(k);
      ce[e] += 1.0;
    }
  }
  for (int64_t e = 0; e < E; ++e) bal += (me[e] / nz) * (ce[e] / nz) / E;
  bal *= static_cast<double>(E * E);
  EXPECT_NEAR(out.term("diversity"), div, 1e-12);
  EXPECT_NEAR(out.term("simplicity"), simple, 1e-12);
  EXPECT_NEAR(out.term("balance"), bal, 1e-12);
  EXPECT_NEAR(out.term("efficiency"), eff, 1e-12);
  EXPECT_NEAR(out.aux_loss.item<double>(), 0.01 * (div + simple + bal + eff), 1e-12);

  // The Tutel set keeps only diversity + simplicity.
  r->options.tutel_losses();
  const auto tutel = r->decide(x);
  EXPECT_NEAR(tutel.aux_loss.item<double>(), 0.01 * (div + simple), 1e-12);
  EXPECT_EQ(tutel.term("balance"), 0.0);
  // No loss in eval unless asked for.
  r->eval();
  EXPECT_EQ(r->decide(x).aux_loss.item<double>(), 0.0);
}

TEST(TopAnyRouter, DiversityGradientIsFiniteWithOneActiveExpert) {
  auto r = make_router(TopAnyRouterOptions(4, 3).initial_active(1), 5);
  const auto x = torch::randn({6, 4}, at::kDouble);
  const auto out = r->decide(x);
  EXPECT_EQ(out.term("diversity"), 0.0);
  out.aux_loss.backward();
  EXPECT_TRUE(at::isfinite(r->weight.grad()).all().item<bool>());
}

TEST(TopAnyRouter, AnEmptyBatchHasAFiniteZeroAuxLoss) {
  auto r = make_router(TopAnyRouterOptions(4, 3), 5);
  const auto out = r->decide(torch::zeros({0, 4}, at::kDouble));
  EXPECT_TRUE(std::isfinite(out.aux_loss.item<double>()));
  EXPECT_EQ(out.term("efficiency"), 0.0);
}

TEST(TopAnyRouter, BalanceIsZeroWhenNoTokenFires) {
  auto r = make_router(TopAnyRouterOptions(4, 3), 5);
  {
    torch::NoGradGuard g;
    r->threshold.fill_(50.0);  // sigmoid(50) ≈ 1 > every score
  }
  const auto out = r->decide(torch::randn({8, 4}, at::kDouble));
  EXPECT_FALSE(out.fired.any().item<bool>());
  EXPECT_EQ(out.term("balance"), 0.0);
  EXPECT_EQ(out.term("efficiency"), 0.0);
  EXPECT_TRUE(torch::equal(out.gate.detach(), torch::zeros({8, 3}, at::kDouble)));
}

// --- TopAnyMoE vs the dense reference
// --------------------------------------------------------------

struct LayerCase {
  moe::Activation act;
  bool bias;
  bool train;
};

class TopAnyMoEVsDense : public ::testing::TestWithParam<LayerCase> {};

TEST_P(TopAnyMoEVsDense, OutputMatchesTheReference) {
  const auto c = GetParam();
  const int64_t d = 8, h = 9, E = 6, T = 33;
  torch::manual_seed(19);
  moe::nn::TopAnyMoE layer(moe::nn::TopAnyMoEOptions(d, E)
                               .initial_experts(5)
                               .hidden_size(h)
                               .activation(c.act)
                               .expert_bias(c.bias)
                               .copy_initial_expert(false));
  layer->to(at::kDouble);
  {
    torch::NoGradGuard g;
    layer->router->threshold.normal_(0.8, 0.5);  // high enough that some tokens activate none
    if (c.bias) {
      layer->experts->b1.normal_();
      layer->experts->b2.normal_();
    }
  }
  layer->train(c.train);
  const auto x = torch::randn({3, 11, d}, at::kDouble);
  const auto out = layer->forward(x);
  const auto xf = x.reshape({T, d});
  const auto& rt = layer->router;
  const auto ref = mt::top_any_reference(xf, rt->weight, rt->threshold, rt->active, 1.0, !c.train);
  const auto& b = layer->experts;
  const auto expect = mt::dense_moe_reference(xf, ref.expert_index, ref.gate, b->w1, b->w2, b->w3,
                                              b->b1, b->b2, c.act);
  EXPECT_CLOSE(out.output.reshape({T, d}), expect, 1e-10, 1e-12);
  EXPECT_TRUE(torch::equal(out.routing.expert_index, ref.expert_index));
  // Statistics of the step.
  const auto k_train = ref.fired.sum(1);
  EXPECT_EQ(out.stats.active_experts(), 5);
  EXPECT_EQ(out.stats.tokens_without_expert(), (k_train == 0).sum().item<int64_t>());
  EXPECT_EQ(out.stats.experts_per_token_min(), ref.k.min().item<int64_t>());
  EXPECT_EQ(out.stats.experts_per_token_max(), ref.k.max().item<int64_t>());
  EXPECT_NEAR(out.stats.experts_per_token_mean(), ref.k.to(at::kDouble).mean().item<double>(),
              1e-12);
  EXPECT_TRUE(torch::equal(out.stats.tokens_per_expert, (ref.expert_index >= 0).sum(0)));
  if (c.train) {
    // Tokens with k = 0 give exactly zero output in training.
    const auto none = (k_train == 0).nonzero().view(-1);
    ASSERT_GT(none.numel(), 0);
    EXPECT_EQ(out.output.reshape({T, d}).index_select(0, none).abs().max().item<double>(), 0.0);
  } else {
    EXPECT_GE(out.stats.experts_per_token_min(), 1);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, TopAnyMoEVsDense,
                         ::testing::Values(LayerCase{moe::Activation::kReLU, false, true},
                                           LayerCase{moe::Activation::kReLU, false, false},
                                           LayerCase{moe::Activation::kSwiGLU, true, true},
                                           LayerCase{moe::Activation::kGELU, true, false}));

// Gradients of the expert weights vs central differences (the routing does not depend on them). The
// input's gradient includes the straight-through term by design, which differences cannot see.
TEST(TopAnyMoE, GradientsMatchFiniteDifferences) {
  const int64_t d = 5, h = 4, E = 4, T = 10;
  torch::manual_seed(23);
  moe::nn::TopAnyMoE layer(
      moe::nn::TopAnyMoEOptions(d, E).initial_experts(4).hidden_size(h).copy_initial_expert(false));
  layer->to(at::kDouble);
  const auto x = torch::randn({T, d}, at::kDouble);
  const auto c = torch::randn({T, d}, at::kDouble);
  auto loss_of = [&] {
    auto o = layer->forward(x);
    return std::make_pair((o.output * c).sum() + o.aux_loss, o.routing.expert_index);
  };
  auto [loss, routing] = loss_of();
  loss.backward();
  const double eps = 1e-6;
  for (auto* t : {&layer->experts->w1, &layer->experts->w2}) {
    const auto grad = t->grad().clone().view(-1);
    auto flat = t->detach().view(-1);
    for (int64_t i = 0; i < flat.numel(); i += std::max<int64_t>(1, flat.numel() / 12)) {
      const double orig = flat[i].item<double>();
      torch::NoGradGuard g;
      flat[i] = orig + eps;
      auto [lp, rp] = loss_of();
      flat[i] = orig - eps;
      auto [lm, rm] = loss_of();
      flat[i] = orig;
      ASSERT_TRUE(torch::equal(rp, routing) && torch::equal(rm, routing)) << "routing flipped";
      const double fd = (lp.item<double>() - lm.item<double>()) / (2 * eps);
      EXPECT_NEAR(grad[i].item<double>(), fd, 1e-6 + 1e-5 * std::abs(fd));
    }
  }
}

// bf16 experts, float32 router (docs/reliability.md §6 A2): routing equals the float64 reference
// on the same bf16 inputs; values within the bf16 layer tolerance of a float64 computation on the
// rounded inputs and weights.
TEST(TopAnyMoE, Bf16ExpertsKeepAFloat32Router) {
  const int64_t d = 16, h = 24, E = 6, T = 64;
  torch::manual_seed(31);
  moe::nn::TopAnyMoE layer(
      moe::nn::TopAnyMoEOptions(d, E).initial_experts(5).hidden_size(h).copy_initial_expert(false));
  layer->to(at::kBFloat16);
  EXPECT_EQ(layer->experts->w1.scalar_type(), at::kBFloat16);
  EXPECT_EQ(layer->router->weight.scalar_type(), at::kFloat);
  layer->eval();
  const auto x = torch::randn({T, d}).to(at::kBFloat16);
  const auto out = layer->forward(x);
  EXPECT_EQ(out.output.scalar_type(), at::kBFloat16);
  const auto& rt = layer->router;
  const auto ref = mt::top_any_reference(x, rt->weight, rt->threshold, rt->active, 1.0, true);
  EXPECT_TRUE(torch::equal(out.routing.expert_index, ref.expert_index));
  const auto& b = layer->experts;
  const auto expect =
      mt::dense_moe_reference(x.to(at::kDouble), ref.expert_index, ref.gate, b->w1.to(at::kDouble),
                              b->w2.to(at::kDouble), {}, {}, {}, moe::Activation::kReLU);
  EXPECT_CLOSE(out.output, expect, 1.6e-2, 1e-2);
}

}  // namespace
