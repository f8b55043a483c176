// HyperRouter and SMoE-Dropout (docs/algorithms.md §3): the generated router vs a hand computation
// of the two Linear layers; gradients reach the embedding and the experts, never the hyper-network;
// the inference cache; the k schedules vs the authors' formula; k = E is dense softmax mixing; the
// layers vs the dense float64 reference; bad input.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <torch/optim/adam.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>

#include "moe/io/checkpoint.h"
#include "moe/nn/hyper_router_moe.h"
#include "moe/nn/sparse_moe.h"
#include "moe/routers/hyper_router.h"
#include "moe/routers/k_schedule.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::TopKSchedule;
using moe::nn::HyperRouterKind;
using moe::nn::HyperRouterMoE;
using moe::nn::HyperRouterMoEOptions;
namespace mt = moe::testing;
using Mode = TopKSchedule::Mode;

// θ = W2·relu(W1·e + b1) + b2 by loops, reshaped to [E, d+1].
std::pair<torch::Tensor, torch::Tensor> hand_generated(const moe::HyperRouter& r) {
  const auto e = r->embedding.detach().to(at::kDouble)[0];
  const auto W1 = r->hypernet_w1.to(at::kDouble), b1 = r->hypernet_b1.to(at::kDouble);
  const auto W2 = r->hypernet_w2.to(at::kDouble), b2 = r->hypernet_b2.to(at::kDouble);
  const int64_t h = W1.size(0), de = W1.size(1), n = W2.size(0);
  std::vector<double> hidden(static_cast<size_t>(h));
  for (int64_t i = 0; i < h; ++i) {
    double s = b1[i].item<double>();
    for (int64_t j = 0; j < de; ++j) s += W1[i][j].item<double>() * e[j].item<double>();
    hidden[static_cast<size_t>(i)] = std::max(0.0, s);
  }
  auto theta = torch::zeros({n}, at::kDouble);
  for (int64_t o = 0; o < n; ++o) {
    double s = b2[o].item<double>();
    for (int64_t i = 0; i < h; ++i) s += W2[o][i].item<double>() * hidden[static_cast<size_t>(i)];
    theta[o] = s;
  }
  const int64_t E = r->options.num_experts(), d = r->options.d_model();
  theta = theta.view({E, d + 1});
  return {theta.narrow(1, 0, d).clone(), theta.select(1, d).clone()};
}

HyperRouterMoE make_layer(HyperRouterKind kind, int64_t d, int64_t E, int64_t k, uint64_t seed) {
  torch::manual_seed(seed);
  HyperRouterMoE layer(HyperRouterMoEOptions(d, E)
                           .router(kind)
                           .top_k(k)
                           .hidden_size(6)
                           .hyper_hidden(5)
                           .embedding_dim(3)
                           .router_init_std(0.5));  // spread logits so the top-k is well defined
  layer->to(at::kDouble);
  return layer;
}

// The routing and output of a layer computed from its router's logits by hand.
torch::Tensor reference_output(HyperRouterMoE& layer, const torch::Tensor& x, int64_t k) {
  torch::Tensor W, b;
  if (layer->hyper_router) {
    std::tie(W, b) = hand_generated(layer->hyper_router);
  } else {
    W = layer->random_router->weight.detach();
    b = layer->random_router->bias.detach();
  }
  const auto logits = x.mm(W.t()) + b;
  const auto route = mt::reference_softmax_route(logits, k, /*normalize=*/true);
  const auto& e = layer->experts;
  return mt::dense_moe_reference(x, route.expert_index, route.gate, e->w1, e->w2, e->w3, e->b1,
                                 e->b2, layer->experts->options.activation());
}

TEST(HyperRouter, GeneratedRouterEqualsTheHandComputation) {
  torch::manual_seed(3);
  moe::HyperRouter r(moe::HyperRouterOptions(4, 3).hyper_hidden(6).embedding_dim(5));
  r->to(at::kDouble);
  {
    torch::NoGradGuard g;
    r->hypernet_b1.normal_();  // non-zero biases so that they are checked too
    r->hypernet_b2.normal_();
  }
  const auto [W, b] = r->generate();
  const auto [Wh, bh] = hand_generated(r);
  EXPECT_EQ(W.sizes(), (std::vector<int64_t>{3, 4}));
  EXPECT_CLOSE(W, Wh, 1e-13, 1e-14);
  EXPECT_CLOSE(b, bh, 1e-13, 1e-14);
}

TEST(HyperRouter, InitialisationAndFrozenParameters) {
  torch::manual_seed(0);
  moe::HyperRouter r(moe::HyperRouterOptions(32, 8).hyper_hidden(64));
  EXPECT_EQ(r->embedding.sizes(), (std::vector<int64_t>{1, 32}));  // d_e defaults to d_model
  EXPECT_EQ(r->hypernet_w2.sizes(), (std::vector<int64_t>{8 * 33, 64}));
  EXPECT_NEAR(r->hypernet_w2.std().item<double>(), 0.02, 0.001);
  EXPECT_NEAR(r->embedding.std().item<double>(), 1.0, 0.3);
  EXPECT_EQ(r->hypernet_b2.abs().max().item<float>(), 0.f);
  int trainable = 0, frozen = 0;
  for (const auto& p : r->named_parameters()) {
    if (p.key() == "embedding") {
      EXPECT_TRUE(p.value().requires_grad());
      ++trainable;
    } else {
      EXPECT_FALSE(p.value().requires_grad()) << p.key();
      ++frozen;
    }
  }
  EXPECT_EQ(trainable, 1);
  EXPECT_EQ(frozen, 4);
}

TEST(HyperRouterMoE, TrainingMovesOnlyTheEmbeddingAndTheExperts) {
  auto layer = make_layer(HyperRouterKind::kHyper, 4, 5, 2, 8);
  const auto w2 = layer->hyper_router->hypernet_w2.clone();
  const auto e0 = layer->hyper_router->embedding.clone();
  torch::optim::Adam opt(layer->parameters(), torch::optim::AdamOptions(1e-2));
  const auto x = torch::randn({20, 4}, at::kDouble);
  for (int i = 0; i < 3; ++i) {
    opt.zero_grad();
    layer->forward(x).output.pow(2).sum().backward();
    opt.step();
  }
  EXPECT_FALSE(layer->hyper_router->hypernet_w2.grad().defined());
  EXPECT_FALSE(layer->hyper_router->hypernet_w1.grad().defined());
  EXPECT_TRUE(mt::bitwise_equal(layer->hyper_router->hypernet_w2, w2));
  EXPECT_FALSE(torch::equal(layer->hyper_router->embedding, e0));
}

// d loss / d e through the generated router, vs central differences with the routing held fixed.
TEST(HyperRouterMoE, EmbeddingGradientMatchesFiniteDifferences) {
  auto layer = make_layer(HyperRouterKind::kHyper, 4, 5, 2, 9);
  const auto x = torch::randn({16, 4}, at::kDouble);
  const auto c = torch::randn({16, 4}, at::kDouble);
  auto eval = [&] {
    auto o = layer->forward(x);
    return std::make_pair((o.output * c).sum(), o.routing.expert_index);
  };
  auto [loss, routing] = eval();
  loss.backward();
  const auto grad = layer->hyper_router->embedding.grad().clone().view(-1);
  auto e = layer->hyper_router->embedding.detach().view(-1);
  const double eps = 1e-6;
  for (int64_t i = 0; i < e.numel(); ++i) {
    const double orig = e[i].item<double>();
    torch::NoGradGuard g;
    e[i] = orig + eps;
    auto [lp, rp] = eval();
    e[i] = orig - eps;
    auto [lm, rm] = eval();
    e[i] = orig;
    ASSERT_TRUE(torch::equal(rp, routing) && torch::equal(rm, routing)) << "routing flipped";
    const double fd = (lp.item<double>() - lm.item<double>()) / (2 * eps);
    EXPECT_NEAR(grad[i].item<double>(), fd, 1e-7 + 1e-6 * std::abs(fd)) << i;
  }
}

TEST(HyperRouter, InferenceCacheEqualsTheLiveRouterAndIsInvalidated) {
  auto layer = make_layer(HyperRouterKind::kHyper, 4, 6, 2, 10);
  auto& r = layer->hyper_router;
  const auto x = torch::randn({12, 4}, at::kDouble);
  const auto live = layer->forward(x).output.detach();  // training: generated on the fly
  layer->eval();
  EXPECT_FALSE(r->cache_valid());
  const auto cached = layer->forward(x).output;
  EXPECT_TRUE(r->cache_valid());
  EXPECT_CLOSE(cached, live, 1e-13, 1e-14);
  EXPECT_CLOSE(cached, reference_output(layer, x, 2), 1e-10, 1e-12);
  // An in-place change of e (an optimizer step, a checkpoint load) invalidates the cache.
  {
    torch::NoGradGuard g;
    r->embedding.add_(torch::randn_like(r->embedding));
  }
  EXPECT_FALSE(r->cache_valid());
  const auto after = layer->forward(x).output;
  EXPECT_CLOSE(after, reference_output(layer, x, 2), 1e-10, 1e-12);
  EXPECT_FALSE(torch::allclose(after, cached));
  // Back in training, the cache is not used.
  layer->train();
  EXPECT_FALSE(r->cache_valid());
}

TEST(TopKSchedule, ValuesAtChosenStepsFollowTheAuthorsFormula) {
  // The shipped setting: 8 -> 16 over 400k steps. r(8·t/T) + 8, Python rounding (half to even).
  const TopKSchedule lin(Mode::kLinearIncrease, 8, 16, 400000);
  EXPECT_EQ(lin.at(0), 8);
  EXPECT_EQ(lin.at(24999), 8);   // 0.49998
  EXPECT_EQ(lin.at(25000), 8);   // 0.5 -> 0 (half to even)
  EXPECT_EQ(lin.at(75000), 10);  // 1.5 -> 2
  EXPECT_EQ(lin.at(200000), 12);
  EXPECT_EQ(lin.at(400000), 16);
  EXPECT_EQ(lin.at(900000), 16);
  const TopKSchedule dec(Mode::kLinearDecrease, 2, 10, 100);
  EXPECT_EQ(dec.at(0), 10);
  EXPECT_EQ(dec.at(50), 6);  // r(-4) + 10
  EXPECT_EQ(dec.at(100), 2);
  // cos(π·t/2T): t = T/3 gives cos(π/6) = 0.8660; 8·0.866 = 6.93 -> 7.
  const TopKSchedule cinc(Mode::kCosineIncrease, 8, 16, 300);
  EXPECT_EQ(cinc.at(0), 8);
  EXPECT_EQ(cinc.at(100), 9);  // r(-6.93) + 16 = 9
  EXPECT_EQ(cinc.at(300), 16);
  const TopKSchedule cdec(Mode::kCosineDecrease, 8, 16, 300);
  EXPECT_EQ(cdec.at(0), 16);
  EXPECT_EQ(cdec.at(100), 15);  // r(6.93) + 8
  EXPECT_EQ(cdec.at(300), 8);
  // 0.99^(t div (T div 300)): T = 3000, t = 500 -> 0.99^50 = 0.605; r(-8·0.605) + 16 = 11.
  const TopKSchedule exp_inc(Mode::kExpIncrease, 8, 16, 3000);
  EXPECT_EQ(exp_inc.at(0), 8);
  EXPECT_EQ(exp_inc.at(500), 11);
  const TopKSchedule up(Mode::kMultiStepIncrease, 1, 16, 100);
  EXPECT_EQ(up.at(0), 1);
  EXPECT_EQ(up.at(19), 1);
  EXPECT_EQ(up.at(20), 2);
  EXPECT_EQ(up.at(79), 8);
  EXPECT_EQ(up.at(80), 16);
  EXPECT_EQ(up.at(100), 16);  // the reference would index past its list here
  const TopKSchedule down(Mode::kMultiStepDecrease, 2, 8, 100);
  EXPECT_EQ(down.at(0), 8);  // 16 clipped to k_max
  EXPECT_EQ(down.at(45), 4);
  EXPECT_EQ(down.at(99), 2);  // 1 clipped to k_min
  EXPECT_EQ(TopKSchedule::constant(3).at(12345), 3);
}

TEST(HyperRouterMoE, ScheduleDrivesKInTrainingAndInferenceKOverridesIt) {
  torch::manual_seed(1);
  HyperRouterMoE layer(HyperRouterMoEOptions(4, 6).hidden_size(3).hyper_hidden(4).k_schedule(
      TopKSchedule(Mode::kLinearIncrease, 1, 5, 4)));
  const auto x = torch::randn({7, 4});
  std::vector<int64_t> widths;
  for (int i = 0; i < 6; ++i) widths.push_back(layer->forward(x).routing.expert_index.size(1));
  EXPECT_EQ(widths, (std::vector<int64_t>{1, 2, 3, 4, 5, 5}));  // r(4t/4) + 1, clipped
  EXPECT_EQ(layer->step(), 6);
  layer->eval();
  EXPECT_EQ(layer->forward(x).routing.expert_index.size(1), 5);
  for (int64_t k : {1, 2, 4, 6}) {
    layer->set_inference_top_k(k);
    EXPECT_EQ(layer->forward(x).routing.expert_index.size(1), k);
  }
  EXPECT_EQ(layer->step(), 6);  // eval forwards do not advance the schedule
  layer->set_inference_top_k(c10::nullopt);
  EXPECT_EQ(layer->forward(x).routing.expert_index.size(1), 5);
  // A resumed layer evaluates with the k of its latest training step, before any training forward.
  layer->set_step(2);  // steps 0, 1 done: k(1) = 2
  EXPECT_EQ(layer->forward(x).routing.expert_index.size(1), 2);
  layer->train();
  EXPECT_EQ(layer->forward(x).routing.expert_index.size(1), 3);  // step 2: k = 3
}

class HyperRouterMoEVsDense
    : public ::testing::TestWithParam<std::tuple<HyperRouterKind, int64_t>> {};

TEST_P(HyperRouterMoEVsDense, OutputMatchesTheReference) {
  const auto [kind, k] = GetParam();
  auto layer = make_layer(kind, 5, 6, k, 21);
  const auto x = torch::randn({25, 5}, at::kDouble);
  for (bool train : {true, false}) {
    layer->train(train);
    EXPECT_CLOSE(layer->forward(x).output, reference_output(layer, x, k), 1e-10, 1e-12);
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, HyperRouterMoEVsDense,
                         ::testing::Combine(::testing::Values(HyperRouterKind::kHyper,
                                                              HyperRouterKind::kFrozenRandom,
                                                              HyperRouterKind::kTrainable),
                                            ::testing::Values(1, 2, 4)));

// With k = E every expert is used with the softmax over all logits: dense mixing.
TEST(HyperRouterMoE, KEqualsEIsDenseSoftmaxMixing) {
  auto layer = make_layer(HyperRouterKind::kHyper, 4, 5, 2, 4);
  layer->eval();
  layer->set_inference_top_k(5);
  const auto x = torch::randn({9, 4}, at::kDouble);
  const auto [W, b] = hand_generated(layer->hyper_router);
  const auto p = torch::softmax(x.mm(W.t()) + b, 1);
  const auto idx = torch::arange(5, at::kLong).expand({9, 5});
  const auto& e = layer->experts;
  const auto expect = mt::dense_moe_reference(x, idx, p, e->w1, e->w2, e->w3, e->b1, e->b2,
                                              layer->experts->options.activation());
  EXPECT_CLOSE(layer->forward(x).output, expect, 1e-10, 1e-12);
}

// kTrainable is SMoE-Dropout's router with gradients: same initialisation, no auxiliary loss, and
// both router tensors receive a gradient from the task loss.
TEST(SMoE, TrainableRouterLearnsWithoutAuxLoss) {
  torch::manual_seed(6);
  HyperRouterMoE layer(HyperRouterMoEOptions(64, 16).router(HyperRouterKind::kTrainable));
  const auto& r = layer->random_router;
  ASSERT_TRUE(r);
  EXPECT_TRUE(r->weight.requires_grad());
  EXPECT_TRUE(r->bias.requires_grad());
  EXPECT_NEAR(r->weight.std().item<double>(), 0.02, 0.002);
  EXPECT_EQ(r->bias.abs().max().item<float>(), 0.f);
  const auto out = layer->forward(torch::randn({10, 64}));
  EXPECT_EQ(out.aux_loss.item<float>(), 0.f);
  out.output.square().sum().backward();
  EXPECT_GT(r->weight.grad().abs().sum().item<double>(), 0);
  EXPECT_GT(r->bias.grad().abs().sum().item<double>(), 0);
}

TEST(SMoEDropout, RouterIsRandomFrozenWithZeroBiasAndNoAuxLoss) {
  torch::manual_seed(5);
  HyperRouterMoE layer(HyperRouterMoEOptions(64, 16).router(HyperRouterKind::kFrozenRandom));
  const auto& r = layer->random_router;
  EXPECT_FALSE(r->weight.requires_grad());
  EXPECT_FALSE(r->bias.requires_grad());
  EXPECT_NEAR(r->weight.std().item<double>(), 0.02, 0.002);
  EXPECT_EQ(r->bias.abs().max().item<float>(), 0.f);
  const auto out = layer->forward(torch::randn({10, 64}));
  EXPECT_EQ(out.aux_loss.item<float>(), 0.f);
  // The same through SparseMoE: a frozen router and k set from outside.
  moe::nn::SparseMoE s(moe::nn::SparseMoEOptions(8, 4).freeze_router(true).router_bias(true));
  EXPECT_FALSE(s->router->weight.requires_grad());
  s->set_top_k(3);
  EXPECT_EQ(s->forward(torch::randn({5, 8})).routing.expert_index.size(1), 3);
}

TEST(HyperRouterMoEBadInput, ClearErrors) {
  EXPECT_TRUE(mt::throws_with([] { TopKSchedule(Mode::kLinearIncrease, 9, 8, 100); },
                              {"k_min=9", "k_max=8"}));
  EXPECT_TRUE(
      mt::throws_with([] { TopKSchedule(Mode::kLinearIncrease, 1, 8, 0); }, {"total_steps", "0"}));
  EXPECT_TRUE(mt::throws_with([] { TopKSchedule(Mode::kLinearIncrease, 0, 8, 10); }, {"k_min"}));
  EXPECT_TRUE(mt::throws_with([] { HyperRouterMoE(HyperRouterMoEOptions(4, 4).top_k(5)); },
                              {"top_k", "num_experts=4", "5"}));
  EXPECT_TRUE(mt::throws_with(
      [] {
        HyperRouterMoE(
            HyperRouterMoEOptions(4, 4).k_schedule(TopKSchedule(Mode::kLinearIncrease, 2, 8, 10)));
      },
      {"k_max=8", "num_experts=4"}));
  HyperRouterMoE layer(HyperRouterMoEOptions(4, 4).hidden_size(2).hyper_hidden(3));
  EXPECT_TRUE(mt::throws_with([&] { layer->set_inference_top_k(5); }, {"top_k", "5"}));
  EXPECT_TRUE(mt::throws_with([&] { layer->set_top_k(0); }, {"top_k", "0"}));
  EXPECT_TRUE(mt::throws_with([&] { layer->forward(torch::randn({3, 5})); }, {"d_model=4"}));
  auto x = torch::randn({3, 4});
  x[1][0] = INFINITY;
  EXPECT_TRUE(mt::throws_with([&] { layer->forward(x); }, {"HyperRouterMoE", "1 of 3"}));
  EXPECT_TRUE(mt::throws_with(
      [] { moe::HyperRouter(moe::HyperRouterOptions(4, 4).hyper_hidden(0)); }, {"hyper_hidden"}));
}

// The same routers as SparseMoE router kinds.
TEST(SparseMoERouterKinds, HyperAndFrozenRandomMatchTheReference) {
  const int64_t d = 5, E = 6, k = 2;
  const auto x = torch::randn({15, d}, at::kDouble);
  for (auto kind : {moe::RouterKind::kHyper, moe::RouterKind::kFrozenRandom}) {
    torch::manual_seed(30);
    moe::nn::SparseMoE layer(moe::nn::SparseMoEOptions(d, E)
                                 .router(kind)
                                 .top_k(k)
                                 .hidden_size(4)
                                 .hyper_hidden(7)
                                 .router_init_std(0.5));
    layer->to(at::kDouble);
    torch::Tensor W, b;
    if (kind == moe::RouterKind::kHyper) {
      ASSERT_TRUE(layer->hyper_router);
      EXPECT_FALSE(layer->router);
      std::tie(W, b) = hand_generated(layer->hyper_router);
      EXPECT_EQ(layer->named_parameters().size(), 5u + 2u);  // embedding, hypernet_*, w1, w2
      EXPECT_TRUE(layer->named_parameters().contains("router.embedding"));
    } else {
      ASSERT_TRUE(layer->router);
      EXPECT_FALSE(layer->router->weight.requires_grad());
      ASSERT_TRUE(layer->router->bias.defined());
      EXPECT_FALSE(layer->router->bias.requires_grad());
      W = layer->router->weight.detach();
      b = layer->router->bias.detach();
    }
    const auto route = mt::reference_softmax_route(x.mm(W.t()) + b, k, /*normalize=*/true);
    const auto& e = layer->experts;
    const auto expect = mt::dense_moe_reference(x, route.expert_index, route.gate, e->w1, e->w2,
                                                e->w3, e->b1, e->b2, moe::Activation::kReLU);
    const auto out = layer->forward(x);
    EXPECT_CLOSE(out.output, expect, 1e-10, 1e-12) << moe::to_string(kind);
    EXPECT_EQ(out.aux_loss.item<double>(), 0.0) << moe::to_string(kind);  // no aux loss by default
    layer->set_top_k(E);
    EXPECT_EQ(layer->forward(x).routing.expert_index.size(1), E);
  }
  EXPECT_TRUE(mt::throws_with(
      [] {
        moe::nn::SparseMoE(
            moe::nn::SparseMoEOptions(4, 4).router(moe::RouterKind::kHyper).capacity_factor(1.0));
      },
      {"dropless", "capacity_factor"}));
  EXPECT_TRUE(mt::throws_with(
      [] { moe::TopKRouter(moe::RouterOptions(4, 4).kind(moe::RouterKind::kHyper)); },
      {"kHyper", "HyperRouter"}));
}

TEST(HyperRouterMoE, Bf16ExpertsKeepAFloat32Router) {
  torch::manual_seed(32);
  HyperRouterMoE layer(
      HyperRouterMoEOptions(16, 6).hidden_size(24).hyper_hidden(8).router_init_std(0.5));
  layer->to(at::kBFloat16);
  EXPECT_EQ(layer->experts->w1.scalar_type(), at::kBFloat16);
  EXPECT_EQ(layer->hyper_router->embedding.scalar_type(), at::kFloat);
  EXPECT_EQ(layer->hyper_router->hypernet_w2.scalar_type(), at::kFloat);
  layer->eval();
  const auto x = torch::randn({40, 16}).to(at::kBFloat16);
  const auto out = layer->forward(x);
  EXPECT_EQ(out.output.scalar_type(), at::kBFloat16);
  const auto [W, b] = hand_generated(layer->hyper_router);
  const auto logits = x.to(at::kDouble).mm(W.t()) + b;
  ASSERT_GT(mt::topk_margin(logits, 2), 1e-4) << "the draw has a near-tie: pick another seed";
  const auto route = mt::reference_softmax_route(logits, 2, true);
  EXPECT_TRUE(torch::equal(out.routing.expert_index, route.expert_index));
  const auto& e = layer->experts;
  const auto expect = mt::dense_moe_reference(x.to(at::kDouble), route.expert_index, route.gate,
                                              e->w1.to(at::kDouble), e->w2.to(at::kDouble), {}, {},
                                              {}, moe::Activation::kReLU);
  EXPECT_CLOSE(out.output, expect, 1.6e-2, 1e-2);
}

// A checkpoint load changes the embedding in place: a layer that had cached its router must not
// keep using the old one.
TEST(HyperRouterMoE, CheckpointLoadInvalidatesTheInferenceCache) {
  const auto path = (std::filesystem::temp_directory_path() /
                     ("moe_hyper_" + std::to_string(::getpid()) + ".safetensors"))
                        .string();
  auto a = make_layer(HyperRouterKind::kHyper, 4, 6, 2, 40);
  auto b = make_layer(HyperRouterKind::kHyper, 4, 6, 2, 41);
  const auto x = torch::randn({12, 4}, at::kDouble);
  a->eval();
  b->eval();
  const auto before = b->forward(x).output;  // b caches its own router
  EXPECT_TRUE(b->hyper_router->cache_valid());
  moe::io::save_module(*a, path);
  moe::io::load_module(*b, path);
  EXPECT_FALSE(b->hyper_router->cache_valid());
  EXPECT_TRUE(mt::bitwise_equal(b->forward(x).output, a->forward(x).output));
  EXPECT_FALSE(torch::equal(before, a->forward(x).output));
  // The schedule position travels with the checkpoint.
  a->set_step(123);
  moe::io::save_module(*a, path);
  moe::io::load_module(*b, path);
  EXPECT_EQ(b->step(), 123);
  std::filesystem::remove(path);
}

}  // namespace
