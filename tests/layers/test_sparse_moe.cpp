// SparseMoE vs a dense float64 reference that evaluates every expert for every token and mixes them
// by a routing table computed by hand in the test (docs/reliability.md §6 A1, A6).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <set>
#include <sstream>

#include "moe/nn/sparse_moe.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
using moe::RouterKind;
using moe::nn::SparseMoE;
using moe::nn::SparseMoEOptions;
namespace mt = moe::testing;

struct Case {
  RouterKind kind;
  int64_t k;
  double capacity_factor;
  Activation act;
  bool bias;
  bool train;
  c10::ScalarType dtype;
};

std::string name_of(const Case& c) {
  std::ostringstream s;
  s << moe::to_string(c.kind) << "_k" << c.k << "_cf" << static_cast<int>(c.capacity_factor * 100)
    << "_" << moe::to_string(c.act) << (c.bias ? "_bias" : "") << (c.train ? "_train" : "_eval")
    << "_" << (c.dtype == at::kDouble ? "f64" : "f32");
  return s.str();
}

class SparseMoEVsDense : public ::testing::TestWithParam<Case> {};

TEST_P(SparseMoEVsDense, OutputAndRoutingMatchTheReference) {
  const Case c = GetParam();
  const int64_t d = 12, h = 10, E = 8;
  const bool noisy = c.kind == RouterKind::kNoisyTopK;
  torch::manual_seed(42);
  SparseMoE layer(SparseMoEOptions(d, E)
                      .hidden_size(h)
                      .top_k(c.k)
                      .router(c.kind)
                      .activation(c.act)
                      .capacity_factor(c.capacity_factor)
                      .router_bias(c.bias)
                      .expert_bias(c.bias)
                      .router_zero_init(false)
                      .router_init_std(1.0));
  layer->to(c.dtype);
  {
    torch::NoGradGuard g;
    if (noisy) layer->router->noise_weight.normal_(0.0, 0.5);
    if (c.bias) {
      layer->router->bias.normal_();
      layer->experts->b1.normal_();
      layer->experts->b2.normal_();
    }
  }
  layer->train(c.train);
  auto x = torch::randn({2, 9, d}, c.dtype);
  torch::manual_seed(7);
  const auto out = layer->forward(x);
  ASSERT_EQ(out.output.sizes(), x.sizes());

  // Hand routing in float64 from the same (dtype-rounded) values.
  const int64_t T = 18;
  const auto x2 = x.reshape({T, d}).to(at::kDouble);
  auto logits = at::matmul(x2, layer->router->weight.to(at::kDouble).t());
  if (c.bias) logits = logits + layer->router->bias.to(at::kDouble);
  mt::ReferenceRoute route;
  auto routed_on = logits;  // what the top-k is taken of
  if (noisy) {
    auto H = logits;
    if (c.train) {
      torch::manual_seed(7);  // the router draws one standard normal [T, E] in router precision
      const auto noise = torch::randn({T, E}, c.dtype).to(at::kDouble);
      const auto sd =
          at::log1p(at::exp(at::matmul(x2, layer->router->noise_weight.to(at::kDouble).t()))) +
          1e-2;
      H = logits + noise * sd;
    }
    route = mt::reference_noisy_route(logits, H, c.k);
    routed_on = H;
  } else {
    route = mt::reference_softmax_route(logits, c.k, c.kind == RouterKind::kSoftmaxTopK);
  }
  if (c.capacity_factor > 0) {
    const auto cap = static_cast<int64_t>(std::ceil(double(T) * c.k / E * c.capacity_factor));
    route = mt::reference_capacity(route, E, cap);
  }

  const double tol = c.dtype == at::kDouble ? 1e-10 : 1e-5;
  if (c.dtype != at::kDouble) {
    ASSERT_GT(mt::topk_margin(routed_on, c.k), 1e-4)
        << "the draw has a near-tie: pick another seed";
  }
  ASSERT_TRUE(torch::equal(out.routing.expert_index, route.expert_index));
  EXPECT_CLOSE(out.routing.gate, route.gate, tol, tol);
  const auto& ex = layer->experts;
  const auto ref = mt::dense_moe_reference(x2, route.expert_index, route.gate, ex->w1, ex->w2,
                                           ex->w3, ex->b1, ex->b2, c.act);
  EXPECT_CLOSE(out.output.reshape({T, d}), ref, tol, tol);

  // Statistics agree with the table.
  for (int64_t e = 0; e < E; ++e)
    EXPECT_EQ(out.stats.tokens_per_expert[e].item<int64_t>(),
              (route.expert_index == e).sum().item<int64_t>());
  const int64_t kept = (route.expert_index >= 0).sum().item<int64_t>();
  EXPECT_NEAR(out.stats.dropped_fraction(), double(T * c.k - kept) / double(T * c.k), 1e-15);
  EXPECT_NEAR(out.stats.experts_per_token_mean(), double(kept) / T, 1e-12);
}

std::vector<Case> all_cases() {
  std::vector<Case> cases;
  const Activation acts[] = {Activation::kReLU, Activation::kGELU, Activation::kSiLU,
                             Activation::kSwiGLU, Activation::kGEGLU};
  int i = 0;
  for (auto dtype : {at::kDouble, at::kFloat})
    for (auto kind : {RouterKind::kSoftmaxTopK, RouterKind::kNoisyTopK, RouterKind::kSwitch})
      for (int64_t k : {1, 2, 4})
        for (double cf : {0.0, 1.0}) {
          const bool train = kind != RouterKind::kNoisyTopK || (i % 2 == 0);
          cases.push_back({kind, k, cf, acts[i % 5], i % 3 == 0, train, dtype});
          ++i;
        }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Grid, SparseMoEVsDense, ::testing::ValuesIn(all_cases()),
                         [](const auto& info) { return name_of(info.param); });

TEST(SparseMoE, ParameterNamesAndShapes) {
  SparseMoE noisy(SparseMoEOptions(6, 4)
                      .hidden_size(5)
                      .router(RouterKind::kNoisyTopK)
                      .activation(Activation::kSwiGLU)
                      .expert_bias(true));
  std::map<std::string, std::vector<int64_t>> got;
  for (const auto& p : noisy->named_parameters()) got[p.key()] = p.value().sizes().vec();
  const std::map<std::string, std::vector<int64_t>> expect{
      {"router.weight", {4, 6}}, {"router.noise_weight", {4, 6}}, {"experts.w1", {4, 6, 5}},
      {"experts.w2", {4, 5, 6}}, {"experts.w3", {4, 6, 5}},       {"experts.b1", {4, 5}},
      {"experts.b2", {4, 6}}};
  EXPECT_EQ(got, expect);
  // Shazeer §1.5: both gate matrices start at zero.
  EXPECT_EQ(noisy->router->weight.abs().sum().item<float>(), 0.0f);
  EXPECT_EQ(noisy->router->noise_weight.abs().sum().item<float>(), 0.0f);
  SparseMoE plain(SparseMoEOptions(6, 4).hidden_size(5));
  std::set<std::string> names;
  for (const auto& p : plain->named_parameters()) names.insert(p.key());
  EXPECT_EQ(names, (std::set<std::string>{"router.weight", "experts.w1", "experts.w2"}));
}

TEST(SparseMoE, OneExpertIsBitwiseAPlainFFN) {
  // MegaBlocks' degenerate case: E = 1, k = 1, dropless => exactly the dense FFN, forward and
  // grads.
  torch::manual_seed(3);
  SparseMoE layer(SparseMoEOptions(16, 1).hidden_size(24).top_k(1));
  auto x = torch::randn({33, 16}, torch::requires_grad());
  auto out = layer->forward(x);
  auto w1 = layer->experts->w1[0].detach().clone().requires_grad_();
  auto w2 = layer->experts->w2[0].detach().clone().requires_grad_();
  auto x2 = x.detach().clone().requires_grad_();
  auto ffn = torch::relu(x2.mm(w1)).mm(w2);
  EXPECT_TRUE(mt::bitwise_equal(out.output, ffn));
  auto g = torch::randn_like(ffn);
  out.output.backward(g);
  ffn.backward(g);
  EXPECT_TRUE(mt::bitwise_equal(layer->experts->w1.grad()[0], w1.grad()));
  EXPECT_TRUE(mt::bitwise_equal(layer->experts->w2.grad()[0], w2.grad()));
  EXPECT_TRUE(mt::bitwise_equal(x.grad(), x2.grad()));
}

TEST(SparseMoE, IdenticalExpertsWithKEqualEIsOneFFN) {
  torch::manual_seed(4);
  SparseMoE layer(SparseMoEOptions(8, 4).hidden_size(12).top_k(4).activation(Activation::kGELU));
  {
    torch::NoGradGuard g;
    layer->experts->w1.copy_(layer->experts->w1[0].expand_as(layer->experts->w1));
    layer->experts->w2.copy_(layer->experts->w2[0].expand_as(layer->experts->w2));
    layer->router->weight.normal_();
  }
  auto x = torch::randn({10, 8});
  auto ffn = mt::reference_activation(Activation::kGELU, x.mm(layer->experts->w1[0]))
                 .mm(layer->experts->w2[0]);
  EXPECT_CLOSE(layer->forward(x).output, ffn, 1e-5, 1e-6);
}

TEST(SparseMoE, NonContiguousInputEqualsContiguous) {
  torch::manual_seed(5);
  SparseMoE layer(SparseMoEOptions(8, 4).hidden_size(12).top_k(2));
  layer->eval();
  auto base = torch::randn({8, 10});
  auto xt = base.t();  // [10, 8], non-contiguous
  ASSERT_FALSE(xt.is_contiguous());
  EXPECT_TRUE(mt::bitwise_equal(layer->forward(xt).output, layer->forward(xt.contiguous()).output));
}

TEST(SparseMoE, CloneCopiesEveryParameter) {
  SparseMoE layer(SparseMoEOptions(8, 4).hidden_size(12).router(RouterKind::kNoisyTopK));
  {
    torch::NoGradGuard g;
    layer->router->weight.normal_();
  }
  auto copy = std::dynamic_pointer_cast<moe::nn::SparseMoEImpl>(layer->clone());
  ASSERT_TRUE(copy);
  auto a = layer->named_parameters(), b = copy->named_parameters();
  ASSERT_EQ(a.size(), b.size());
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << p.key();
}

}  // namespace

// noisy_gating(false): the noisy router gates on the clean logits in training too (Eq. 3 without
// the noise of Eq. 4), has no noise_weight, and its load loss counts the hard assignments.
TEST(SparseMoE, NoisyGatingOffRoutesOnTheCleanLogitsInTraining) {
  const int64_t d = 10, h = 6, E = 6, k = 2, T = 16;
  torch::manual_seed(3);
  SparseMoE layer(SparseMoEOptions(d, E)
                      .hidden_size(h)
                      .top_k(k)
                      .router(RouterKind::kNoisyTopK)
                      .noisy_gating(false)
                      .importance_coef(0.1)
                      .load_coef(0.2)
                      .router_zero_init(false)
                      .router_init_std(1.0));
  layer->to(at::kDouble);
  EXPECT_FALSE(layer->router->noise_weight.defined());
  EXPECT_FALSE(layer->named_parameters().contains("router.noise_weight"));
  layer->train();
  const auto x = torch::randn({T, d}, at::kDouble);
  const auto out = layer->forward(x);

  const auto logits = x.matmul(layer->router->weight.to(at::kDouble).t());
  const auto route = mt::reference_noisy_route(logits, logits, k);
  ASSERT_TRUE(torch::equal(out.routing.expert_index, route.expert_index));
  EXPECT_CLOSE(out.routing.gate, route.gate, 1e-12, 1e-12);
  const auto& ex = layer->experts;
  EXPECT_CLOSE(out.output,
               mt::dense_moe_reference(x, route.expert_index, route.gate, ex->w1, ex->w2, ex->w3,
                                       ex->b1, ex->b2, Activation::kReLU),
               1e-10, 1e-10);
  // The losses by hand: CV² = population variance / mean² of the importance (the gate sums) and
  // of the hard counts.
  auto cv2 = [](std::vector<double> v) {
    double mean = 0, var = 0;
    for (double a : v) mean += a / v.size();
    for (double a : v) var += (a - mean) * (a - mean) / v.size();
    return var / (mean * mean);
  };
  std::vector<double> imp(E, 0.0), count(E, 0.0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t s = 0; s < k; ++s) {
      const int64_t e = route.expert_index[t][s].item<int64_t>();
      imp[e] += route.gate[t][s].item<double>();
      count[e] += 1;
    }
  EXPECT_NEAR(out.aux_loss.item<double>(), 0.1 * cv2(imp) + 0.2 * cv2(count), 1e-8);
  // Deterministic in training: another seed, the same routing.
  torch::manual_seed(99);
  EXPECT_TRUE(torch::equal(layer->forward(x).routing.expert_index, route.expert_index));
}
