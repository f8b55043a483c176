// HierarchicalMoE vs a hand computation of Shazeer's Appendix B (Eq. 12-14), and vs SparseMoE.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <utility>

#include "moe/losses.h"
#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/sparse_moe.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
using moe::nn::HierarchicalMoE;
using moe::nn::HierarchicalMoEOptions;
namespace mt = moe::testing;

class HierarchicalVsHand : public ::testing::TestWithParam<bool> {};

TEST_P(HierarchicalVsHand, OutputImportanceAndLoad) {
  const bool train = GetParam();
  const int64_t d = 10, a = 3, b = 4, k1 = 2, k2 = 2, h = 7, T = 20;
  torch::manual_seed(21);
  HierarchicalMoE layer(HierarchicalMoEOptions(d, a, b)
                            .hidden_size(h)
                            .top_k(2)
                            .activation(Activation::kSiLU)
                            .importance_coef(0.1)
                            .load_coef(0.2));
  layer->to(at::kDouble);
  {
    torch::NoGradGuard g;
    for (auto& p : layer->named_parameters())
      if (p.key().find("router") != std::string::npos) p.value().normal_(0, 0.7);
  }
  layer->train(train);
  auto x = torch::randn({T, d}, at::kDouble);
  torch::manual_seed(9);
  const auto out = layer->forward(x);

  // Hand computation. Noise: the secondary draw [T·k1, b] comes first, one row per primary slot
  // (token t's choice s1 is row t·k1 + s1); then the primary [T, a].
  torch::Tensor s_noise, p_noise;
  if (train) {
    torch::manual_seed(9);
    s_noise = torch::randn({T * k1, b}, at::kDouble);
    p_noise = torch::randn({T, a}, at::kDouble);
  }
  auto softplus = [](const torch::Tensor& v) { return at::log1p(at::exp(v)); };
  const auto pl = x.matmul(layer->primary_router->weight.t());
  const auto psd = softplus(x.matmul(layer->primary_router->noise_weight.t())) + 1e-2;
  const auto pH = train ? pl + p_noise * psd : pl;
  const auto sl = x.matmul(layer->secondary_router->weight.t());
  const auto ssd = softplus(x.matmul(layer->secondary_router->noise_weight.t())) + 1e-2;
  const auto proute = mt::reference_noisy_route(pl, pH, k1);

  auto idx = torch::full({T, k1 * k2}, -1, at::kLong);
  auto gate = torch::zeros({T, k1 * k2}, at::kDouble);
  auto imp = torch::zeros({a * b}, at::kDouble);
  auto s_load = torch::zeros({a, b}, at::kDouble);
  auto true_load = torch::zeros({a}, at::kDouble);
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t s1 = 0; s1 < k1; ++s1) {
      const int64_t g = proute.expert_index[t][s1].item<int64_t>();
      const double gp = proute.gate[t][s1].item<double>();
      true_load[g] += 1;
      const auto rows = torch::indexing::Slice(g * b, (g + 1) * b);
      const auto cl = sl.index({torch::indexing::Slice(t, t + 1), rows});
      const auto sd = ssd.index({torch::indexing::Slice(t, t + 1), rows});
      const auto hl = train ? cl + s_noise[t * k1 + s1].unsqueeze(0) * sd : cl;
      const auto sr = mt::reference_noisy_route(cl, hl, k2);
      if (train)
        s_load[g] += mt::reference_prob_in_top_k(cl, hl, sd, k2)[0];
      else
        for (int64_t s2 = 0; s2 < k2; ++s2) s_load[g][sr.expert_index[0][s2].item<int64_t>()] += 1;
      for (int64_t s2 = 0; s2 < k2; ++s2) {
        const int64_t e = g * b + sr.expert_index[0][s2].item<int64_t>();
        const double w = gp * sr.gate[0][s2].item<double>();  // Eq. 12
        idx[t][s1 * k2 + s2] = e;
        gate[t][s1 * k2 + s2] = w;
        imp[e] += w;  // Eq. 13
      }
    }
  }
  const auto p_load = train ? mt::reference_prob_in_top_k(pl, pH, psd, k1).sum(0) : true_load;
  const auto load = (p_load / (true_load + 1e-10)).unsqueeze(1) * s_load;  // Eq. 14

  ASSERT_TRUE(torch::equal(out.routing.expert_index, idx));
  EXPECT_CLOSE(out.routing.gate, gate, 1e-12, 1e-14);
  const auto& ex = layer->experts;
  EXPECT_CLOSE(out.output,
               mt::dense_moe_reference(x, idx, gate, ex->w1, ex->w2, ex->w3, ex->b1, ex->b2,
                                       Activation::kSiLU),
               1e-10, 1e-10);
  EXPECT_CLOSE(out.stats.importance, imp, 1e-12, 1e-14);
  EXPECT_CLOSE(out.stats.load, load.reshape({-1}), 1e-10, 1e-12);
  const double aux = train ? 0.1 * moe::cv_squared(imp).item<double>() +
                                 0.2 * moe::cv_squared(load.reshape({-1})).item<double>()
                           : 0.0;
  EXPECT_NEAR(out.aux_loss.item<double>(), aux, 1e-12);
}

INSTANTIATE_TEST_SUITE_P(Modes, HierarchicalVsHand, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "train" : "eval"; });

TEST(HierarchicalMoE, OneGroupEqualsSparseMoE) {
  const int64_t d = 8, E = 6, k = 2, h = 9;
  torch::manual_seed(5);
  HierarchicalMoE hier(
      HierarchicalMoEOptions(d, 1, E).hidden_size(h).primary_top_k(1).secondary_top_k(k));
  moe::nn::SparseMoE flat(
      moe::nn::SparseMoEOptions(d, E).hidden_size(h).top_k(k).router(moe::RouterKind::kNoisyTopK));
  {
    torch::NoGradGuard g;
    hier->secondary_router->weight.normal_();
    hier->secondary_router->noise_weight.normal_(0, 0.5);
    hier->primary_router->weight.normal_();
    flat->router->weight.copy_(hier->secondary_router->weight);
    flat->router->noise_weight.copy_(hier->secondary_router->noise_weight);
    flat->experts->w1.copy_(hier->experts->w1);
    flat->experts->w2.copy_(hier->experts->w2);
  }
  auto x = torch::randn({31, d});
  for (bool train : {false, true}) {
    hier->train(train);
    flat->train(train);
    torch::manual_seed(17);
    auto a = hier->forward(x);
    torch::manual_seed(17);
    auto b = flat->forward(x);
    EXPECT_TRUE(torch::equal(a.routing.expert_index, b.routing.expert_index));
    EXPECT_TRUE(mt::bitwise_equal(a.output, b.output)) << "train=" << train;
    EXPECT_TRUE(torch::equal(a.stats.tokens_per_expert, b.stats.tokens_per_expert));
    EXPECT_NEAR(a.aux_loss.item<double>(), b.aux_loss.item<double>(), 1e-7);
  }
}

TEST(HierarchicalMoE, ParameterNames) {
  HierarchicalMoE layer(HierarchicalMoEOptions(4, 2, 3).hidden_size(5));
  std::map<std::string, std::vector<int64_t>> got;
  for (const auto& p : layer->named_parameters()) got[p.key()] = p.value().sizes().vec();
  const std::map<std::string, std::vector<int64_t>> expect{
      {"primary_router.weight", {2, 4}},   {"primary_router.noise_weight", {2, 4}},
      {"secondary_router.weight", {6, 4}}, {"secondary_router.noise_weight", {6, 4}},
      {"experts.w1", {6, 4, 5}},           {"experts.w2", {6, 5, 4}}};
  EXPECT_EQ(got, expect);
}

// noisy_gating(false): no noise_weight, and a training forward routes as inference does (whose
// routing HierarchicalVsHand checks by hand), whatever the seed.
TEST(HierarchicalMoE, NoisyGatingOffRoutesAsInferenceInTraining) {
  torch::manual_seed(2);
  HierarchicalMoE layer(HierarchicalMoEOptions(6, 3, 4).hidden_size(5).noisy_gating(false));
  std::set<std::string> names;
  for (const auto& p : layer->named_parameters()) names.insert(p.key());
  EXPECT_EQ(names, (std::set<std::string>{"primary_router.weight", "secondary_router.weight",
                                          "experts.w1", "experts.w2"}));
  {
    torch::NoGradGuard g;
    layer->primary_router->weight.normal_();
    layer->secondary_router->weight.normal_();
  }
  const auto x = torch::randn({25, 6});
  layer->eval();
  const auto inference = layer->forward(x);
  layer->train();
  for (int seed : {1, 2}) {
    torch::manual_seed(seed);
    const auto training = layer->forward(x);
    EXPECT_TRUE(torch::equal(training.routing.expert_index, inference.routing.expert_index));
    EXPECT_TRUE(mt::bitwise_equal(training.output, inference.output));
  }
}

}  // namespace
