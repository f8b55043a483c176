// GShard top-2 gating (docs/algorithms.md §1.10, §5.2) in GShardMoE: the routing and the loss
// against a loop-by-loop reference written here from the definition, one level and two; capacity
// and first-choice priority on hand-worked cases; the output against the dense float64 reference;
// gradients against finite differences; bad options and inputs.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <limits>

#include "moe/moe.h"
#include "support/finite_differences.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using namespace moe;
using namespace moe::nn;
namespace mt = moe::testing;

// ---- The reference: one gate over groups, by loops, in float64 ---------------------------------

struct RefGate {
  std::vector<int64_t> e1, e2;      // per token (g·S + s)
  std::vector<double> w1, w2;       // final weights (0 unless kept)
  std::vector<bool> used1, used2;   // kept with a non-zero weight
  std::vector<int64_t> pos1, pos2;  // places (where used)
  double loss = 0;
};

int64_t argmax_lowest(const std::vector<double>& v) {
  int64_t best = 0;
  for (size_t e = 1; e < v.size(); ++e)
    if (v[e] > v[best]) best = e;
  return best;
}

// probs [G, S, E]; importance [G, S] (empty = all 1); u [G, S] uniform draws for "random".
RefGate reference_gate(const torch::Tensor& probs, const std::vector<double>& importance,
                       SecondPolicy policy, double threshold, int64_t C, const torch::Tensor& u) {
  const int64_t G = probs.size(0), S = probs.size(1), E = probs.size(2);
  const auto p = probs.accessor<double, 3>();
  RefGate r;
  const int64_t n = G * S;
  r.e1.resize(n), r.e2.resize(n), r.w1.resize(n), r.w2.resize(n), r.pos1.resize(n, -1),
      r.pos2.resize(n, -1);
  r.used1.resize(n), r.used2.resize(n);
  std::vector<bool> first(n), second(n);
  for (int64_t g = 0; g < G; ++g) {
    std::vector<double> density(E, 0), proxy(E, 0);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = g * S + s;
      const double imp = importance.empty() ? 1.0 : importance[t];
      std::vector<double> row(E);
      for (int64_t e = 0; e < E; ++e) row[e] = p[g][s][e];
      const int64_t e1 = argmax_lowest(row);
      first[t] = imp == 1.0;
      double g1 = first[t] ? row[e1] : 0.0;
      std::vector<double> rest = row;
      if (first[t]) rest[e1] = 0.0;
      const int64_t e2 = argmax_lowest(rest);
      double g2 = rest[e2];
      const double den = g1 + g2 + 1e-9;
      g1 /= den, g2 /= den;
      if (first[t]) {
        density[e1] += 1.0 / S;
        for (int64_t e = 0; e < E; ++e) proxy[e] += row[e] / S;
      }
      bool keep2 = imp > 0;
      if (policy == SecondPolicy::kNone) keep2 = false;
      if (policy == SecondPolicy::kThreshold) keep2 = keep2 && g2 > threshold;
      if (policy == SecondPolicy::kRandom)
        keep2 = keep2 && u[g][s].item<double>() < g2 / std::max(threshold, 1e-9);
      second[t] = keep2;
      r.e1[t] = e1, r.e2[t] = e2, r.w1[t] = g1, r.w2[t] = g2;
    }
    for (int64_t e = 0; e < E; ++e) r.loss += density[e] * proxy[e] * E * E / double(G * E);
    // Places: the first choices in token order, then the second choices (every one made counts
    // for the places of the later ones, as Mesh-TF's cumulative sum does).
    std::vector<int64_t> kept_first(E, 0), seen_second(E, 0);
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = g * S + s;
      const bool keep = first[t] && kept_first[r.e1[t]] < C;
      if (first[t] && keep) r.pos1[t] = kept_first[r.e1[t]]++;
      r.used1[t] = keep && r.w1[t] != 0;
      if (!keep) r.w1[t] = 0;
    }
    for (int64_t s = 0; s < S; ++s) {
      const int64_t t = g * S + s;
      bool keep = false;
      if (second[t]) {
        const int64_t place = kept_first[r.e2[t]] + seen_second[r.e2[t]]++;
        keep = place < C;
        if (keep) r.pos2[t] = place;
      }
      r.used2[t] = keep && r.w2[t] != 0;
      if (!keep) r.w2[t] = 0;
    }
  }
  return r;
}

int64_t ref_capacity(int64_t S, int64_t E, double cf) {
  return std::max<int64_t>(std::min<int64_t>(S, int64_t(std::floor(S * cf / E))), 4);
}

struct RefRoute {
  torch::Tensor expert_index, gate;
  double loss;
};

// One level: x [G·S, d], W [E, d].
RefRoute reference_flat(const torch::Tensor& x, const torch::Tensor& W, int64_t S,
                        SecondPolicy policy, double thr, double cf, const torch::Tensor& u) {
  const int64_t T = x.size(0), E = W.size(0), G = T / S;
  const auto probs = torch::softmax(x.mm(W.t()), 1).view({G, S, E}).contiguous();
  const auto r = reference_gate(probs, {}, policy, thr, ref_capacity(S, E, cf), u);
  auto index = torch::full({T, 2}, -1, torch::kLong);
  auto gate = torch::zeros({T, 2}, torch::kDouble);
  for (int64_t t = 0; t < T; ++t) {
    if (r.used1[t]) index[t][0] = r.e1[t], gate[t][0] = r.w1[t];
    if (r.used2[t]) index[t][1] = r.e2[t], gate[t][1] = r.w2[t];
  }
  return {index, gate, r.loss};
}

// Two levels: Wo [E_o, d], Wi [E_o, E_i, d]; u_outer [G, S], u_inner [E_o, G, C_o].
RefRoute reference_two_level(const torch::Tensor& x, const torch::Tensor& Wo,
                             const torch::Tensor& Wi, int64_t S, SecondPolicy policy, double thr,
                             double cf, const torch::Tensor& u_outer,
                             const torch::Tensor& u_inner) {
  const int64_t T = x.size(0), Eo = Wo.size(0), Ei = Wi.size(1), G = T / S, d = x.size(1);
  const int64_t Co = ref_capacity(S, Eo, cf), Ci = ref_capacity(Co, Ei, cf);
  const auto probs = torch::softmax(x.mm(Wo.t()), 1).view({G, S, Eo}).contiguous();
  const auto o = reference_gate(probs, {}, policy, thr, Co, u_outer);
  // The slots: token and importance.
  std::vector<int64_t> slot_token(Eo * G * Co, -1);
  std::vector<double> importance(Eo * G * Co, 0.0);
  std::vector<int64_t> slot_of(T * 2, -1);  // token t's choice j: slot_of[2t + j], -1 if unused
  auto slot_x = torch::zeros({Eo, G, Co, d}, torch::kDouble);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t g = t / S;
    for (int j = 0; j < 2; ++j) {
      const bool used = j == 0 ? o.used1[t] : o.used2[t];
      if (!used) continue;
      const int64_t e = j == 0 ? o.e1[t] : o.e2[t], pos = j == 0 ? o.pos1[t] : o.pos2[t];
      const int64_t slot = (e * G + g) * Co + pos;
      slot_of[2 * t + j] = slot;
      slot_token[slot] = t;
      importance[slot] = j == 0 ? 1.0 : 0.5;  // by the choice (the docs say why)
      slot_x[e][g][pos] = x[t];
    }
  }
  auto inner_probs = torch::zeros({Eo, G, Co, Ei}, torch::kDouble);
  for (int64_t e = 0; e < Eo; ++e)
    inner_probs[e] =
        torch::softmax(slot_x[e].reshape({G * Co, d}).mm(Wi[e].t()), 1).view({G, Co, Ei});
  const auto in = reference_gate(inner_probs.view({Eo * G, Co, Ei}).contiguous(), importance,
                                 policy, thr, Ci, u_inner.reshape({Eo * G, Co}));
  auto index = torch::full({T, 4}, -1, torch::kLong);
  auto gate = torch::zeros({T, 4}, torch::kDouble);
  for (int64_t t = 0; t < T; ++t) {
    for (int j = 0; j < 2; ++j) {
      const int64_t slot = slot_of[2 * t + j];
      if (slot < 0) continue;
      const int64_t e = j == 0 ? o.e1[t] : o.e2[t];
      const double w = j == 0 ? o.w1[t] : o.w2[t];
      for (int m = 0; m < 2; ++m) {
        if (!(m == 0 ? in.used1[slot] : in.used2[slot])) continue;
        index[t][2 * j + m] = e * Ei + (m == 0 ? in.e1[slot] : in.e2[slot]);
        gate[t][2 * j + m] = w * (m == 0 ? in.w1[slot] : in.w2[slot]);
      }
    }
  }
  return {index, gate, o.loss + in.loss};
}

GShardMoE make_layer(int64_t d, std::vector<int64_t> experts, int64_t h, SecondPolicy policy,
                     double cf, uint64_t seed) {
  torch::manual_seed(seed);
  GShardMoE layer(GShardMoEOptions(d, experts)
                      .hidden_size(h)
                      .second_policy_train(policy)
                      .second_policy_eval(policy)
                      .capacity_factor_train(cf)
                      .capacity_factor_eval(2 * cf)
                      .expert_bias(true)
                      .activation(Activation::kGELU));
  layer->to(torch::kDouble);
  return layer;
}

void expect_output_is_dense_reference(GShardMoE& layer, const torch::Tensor& x,
                                      const MoEOutput& out, const RefRoute& ref) {
  const auto& e = *layer->experts;
  const auto x2 = x.reshape({-1, x.size(-1)});
  const auto dense = mt::dense_moe_reference(x2, ref.expert_index, ref.gate, e.w1, e.w2, e.w3, e.b1,
                                             e.b2, Activation::kGELU);
  EXPECT_TRUE(mt::all_close(out.output.reshape(x2.sizes()), dense, 1e-10, 1e-12));
}

// ---- Tests --------------------------------------------------------------------------------------

TEST(GShard, OneLevelMatchesTheReferenceForEveryPolicyInBothModes) {
  const int64_t b = 3, n = 20, d = 6, E = 4, h = 5;
  for (const auto policy :
       {SecondPolicy::kAll, SecondPolicy::kNone, SecondPolicy::kThreshold, SecondPolicy::kRandom}) {
    for (const bool training : {true, false}) {
      SCOPED_TRACE(std::string(to_string(policy)) + (training ? " training" : " eval"));
      auto layer = make_layer(d, {E}, h, policy, 1.0, 1);
      layer->train(training);
      const auto x = torch::randn({b, n, d}, torch::kDouble);
      torch::manual_seed(77);
      const auto out = layer->forward(x);
      torch::manual_seed(77);  // the same draw as the layer's: U(0,1) [groups, S] in float64
      const auto u = torch::rand({b, n}, torch::kDouble);
      const double cf = training ? 1.0 : 2.0;
      const auto ref =
          reference_flat(x.reshape({-1, d}), layer->router->weight, n, policy, 0.2, cf, u);
      EXPECT_TRUE(torch::equal(out.routing.expert_index, ref.expert_index));
      EXPECT_TRUE(mt::all_close(out.routing.gate, ref.gate, 1e-12, 1e-14));
      EXPECT_NEAR(out.aux_loss.item<double>(), 1e-2 * ref.loss, 1e-14);  // in eval too
      expect_output_is_dense_reference(layer, x, out, ref);
    }
  }
}

TEST(GShard, TwoLevelsMatchTheReference) {
  const int64_t b = 2, n = 24, d = 5, h = 4;
  for (const auto policy :
       {SecondPolicy::kAll, SecondPolicy::kNone, SecondPolicy::kThreshold, SecondPolicy::kRandom}) {
    for (const bool training : {true, false}) {
      SCOPED_TRACE(std::string(to_string(policy)) + (training ? " training" : " eval"));
      auto layer = make_layer(d, {3, 2}, h, policy, 1.0, 2);
      layer->train(training);
      const auto x = torch::randn({b, n, d}, torch::kDouble);
      torch::manual_seed(5);
      const auto out = layer->forward(x);
      const auto& r = *layer->router;
      const double cf = training ? 1.0 : 2.0;
      const int64_t Co = r.capacity(n, 3);
      EXPECT_EQ(Co, training ? 8 : 16);  // ⌊24·cf/3⌋
      EXPECT_EQ(r.capacity(Co, 2), training ? 4 : 16);
      torch::manual_seed(5);
      const auto u_outer = torch::rand({b, n}, torch::kDouble);
      const auto u_inner = torch::rand({3, b, Co}, torch::kDouble);
      const auto ref = reference_two_level(x.reshape({-1, d}), r.outer_weight, r.inner_weight, n,
                                           policy, 0.2, cf, u_outer, u_inner);
      EXPECT_TRUE(torch::equal(out.routing.expert_index, ref.expert_index));
      EXPECT_TRUE(mt::all_close(out.routing.gate, ref.gate, 1e-12, 1e-14));
      EXPECT_NEAR(out.aux_loss.item<double>(), 1e-2 * ref.loss, 1e-14);
      expect_output_is_dense_reference(layer, x, out, ref);
      if (training && policy != SecondPolicy::kNone) {
        // Some choices were dropped and some tokens kept two inner experts.
        EXPECT_GT(out.stats.dropped.item<int64_t>(), 0);
        const auto first_group = out.routing.expert_index.narrow(1, 0, 2) >= 0;
        EXPECT_GT((first_group.sum(1) == 2).sum().item<int64_t>(), 0);
      }
    }
  }
}

// The one place where the library departs from lucidrains (docs/python.md): an outer first choice
// tied with the second has the weight 0.5 / (1 + 1e-9) < 0.5, which lucidrains takes for a second
// choice, whose slot gets one inner expert. Here it stays a first choice and gets two.
TEST(GShard, AFirstChoiceTiedWithTheSecondIsStillAFirstChoice) {
  auto layer = make_layer(4, {2, 2}, 3, SecondPolicy::kAll, 4.0, 6);
  {
    torch::NoGradGuard g;
    layer->router->outer_weight.zero_();  // every token: outer probabilities (0.5, 0.5)
  }
  const auto out = layer->forward(torch::randn({1, 4, 4}, torch::kDouble));
  const auto& index = out.routing.expert_index;  // [T, 4]: (outer choice, inner choice)
  // First choice (group 0, the lower index): two inner experts; second choice: its one.
  EXPECT_TRUE(torch::all(index.narrow(1, 0, 2) >= 0).item<bool>()) << index;
  EXPECT_TRUE(torch::all(index.narrow(1, 0, 2) < 2).item<bool>()) << index;
  EXPECT_TRUE(torch::all(index.select(1, 2) == -1).item<bool>()) << index;
  EXPECT_TRUE(torch::all(index.select(1, 3) >= 2).item<bool>()) << index;
  // The first choice's weight is below 0.5, which is what lucidrains' rule would have read.
  const auto first = out.routing.gate.narrow(1, 0, 2).sum(1);
  EXPECT_TRUE(torch::all(first < 0.5).item<bool>()) << first;
}

TEST(GShard, CapacityFollowsMeshTensorFlow) {
  GShardRouter r(GShardRouterOptions(8, {16}));
  EXPECT_EQ(r->capacity(1024, 16), 80);  // ⌊1024·1.25/16⌋
  r->eval();
  EXPECT_EQ(r->capacity(1024, 16), 128);  // capacity_factor_eval 2
  EXPECT_EQ(r->capacity(3, 16), 4);       // at least min_capacity, even above the group size
  EXPECT_EQ(r->capacity(10, 1), 10);      // at most the group size
  EXPECT_EQ(r->capacity(320, 4), 160);    // lucidrains' (4, 4) inner gate in eval: ⌊320·2/4⌋
}

// A one-level layer on d = 2 whose gate logits are the input itself (router.weight = I).
GShardMoE identity_gate_layer(GShardMoEOptions options) {
  GShardMoE layer(options.hidden_size(3));
  torch::NoGradGuard g;
  layer->router->weight.copy_(torch::eye(2));
  return layer;
}

// Six tokens, two experts, capacity 3: tokens 0, 2, 3 prefer expert 0 and 1, 4, 5 expert 1. The
// first choices fill both buffers, so every second choice is dropped, although token 1's second
// choice comes before tokens 2 and 3 in token order.
TEST(GShard, FirstChoicesTakeTheirPlacesBeforeAnySecondChoice) {
  auto layer = identity_gate_layer(GShardMoEOptions(2, {2})
                                       .second_policy_train(SecondPolicy::kAll)
                                       .capacity_factor_train(0.1)
                                       .min_capacity(3));
  const auto x =
      torch::tensor({{2.0, 0.0}, {0.0, 2.0}, {1.0, 0.0}, {3.0, 0.0}, {0.0, 1.0}, {0.0, 3.0}})
          .view({1, 6, 2});
  const auto out = layer->forward(x);
  EXPECT_TRUE(torch::equal(out.routing.expert_index.select(1, 0),
                           torch::tensor({0, 1, 0, 0, 1, 1}, torch::kLong)));
  EXPECT_TRUE(
      torch::equal(out.routing.expert_index.select(1, 1), torch::full({6}, -1, torch::kLong)));
  EXPECT_EQ(out.stats.dropped.item<int64_t>(), 6);
  // The kept weights are the pair-renormalised ones, not renormalised again: token 0 has
  // softmax(2, 0) = (0.881, 0.119), so its first weight stays 0.881.
  EXPECT_NEAR(out.routing.gate[0][0].item<float>(), 1 / (1 + std::exp(-2.0)), 1e-6);
  // With room for every choice, each token keeps both.
  auto roomy = identity_gate_layer(
      GShardMoEOptions(2, {2}).second_policy_train(SecondPolicy::kAll).capacity_factor_train(2.0));
  EXPECT_TRUE(torch::all(roomy->forward(x).routing.expert_index >= 0).item<bool>());
}

TEST(GShard, ThresholdPolicyKeepsSecondWeightsAboveIt) {
  auto layer = identity_gate_layer(GShardMoEOptions(2, {2})
                                       .second_policy_train(SecondPolicy::kThreshold)
                                       .capacity_factor_train(4.0));
  // g2 = softmax(a, 0)[1] = 1 / (1 + e^a): 0.269 for a = 1 (kept), 0.047 for a = 3 (not).
  const auto x = torch::tensor({{1.0, 0.0}, {3.0, 0.0}}).view({1, 2, 2});
  const auto index = layer->forward(x).routing.expert_index;
  EXPECT_EQ(index[0][1].item<int64_t>(), 1);
  EXPECT_EQ(index[1][1].item<int64_t>(), -1);
}

TEST(GShard, GradientsMatchFiniteDifferences) {
  for (const auto& experts : {std::vector<int64_t>{3}, std::vector<int64_t>{2, 2}}) {
    SCOPED_TRACE(experts.size() == 1 ? "one level" : "two levels");
    auto layer = make_layer(4, experts, 3, SecondPolicy::kAll, 1.0, 3);
    auto x = torch::randn({2, 8, 4}, torch::kDouble).requires_grad_(true);
    const auto R = torch::randn({2, 8, 4}, torch::kDouble);
    auto loss_of = [&] {
      const auto out = layer->forward(x);
      return (out.output * R).sum() + 10 * out.aux_loss;
    };
    const auto before = layer->forward(x).routing.expert_index;
    std::vector<torch::Tensor> params{x, layer->experts->w1, layer->experts->b2};
    for (auto& p : layer->router->parameters()) params.push_back(p);
    mt::expect_gradients_match_finite_differences(loss_of, params, /*stride=*/2);
    EXPECT_TRUE(torch::equal(layer->forward(x).routing.expert_index, before));
  }
}

TEST(GShard, SkippedTokensTakeNoPlace) {
  auto layer = make_layer(4, {3}, 3, SecondPolicy::kAll, 1.0, 4);
  GShardMoE skipping(GShardMoEOptions(4, {3}).hidden_size(3).non_finite(NonFinitePolicy::kSkip));
  skipping->to(torch::kDouble);
  auto x = torch::randn({1, 10, 4}, torch::kDouble);
  x[0][3][2] = std::numeric_limits<double>::quiet_NaN();
  const auto out = skipping->forward(x);
  EXPECT_TRUE(torch::all(out.routing.expert_index[3] == -1).item<bool>());
  EXPECT_TRUE(torch::all(out.output[0][3] == 0).item<bool>());
  EXPECT_FALSE(torch::any(torch::isnan(out.output)).item<bool>());
  EXPECT_FALSE(torch::isnan(out.aux_loss).item<bool>());
  EXPECT_TRUE(mt::throws_with([&] { layer->forward(x); }, {"GShardMoE", "non-finite for 1 of 10"}));
}

TEST(GShard, BadOptionsAndInputsAreNamed) {
  EXPECT_TRUE(mt::throws_with([] { GShardMoE(GShardMoEOptions(4, {})); },
                              {"GShardMoE", "experts must hold one count"}));
  EXPECT_TRUE(mt::throws_with(
      [] {
        GShardMoE(GShardMoEOptions(4, {4, 0}));
      },
      {"every expert count must be >= 1, got 0"}));
  EXPECT_TRUE(mt::throws_with([] { GShardMoE(GShardMoEOptions(4, {4}).capacity_factor_eval(0)); },
                              {"capacity_factor_eval must be finite and > 0, got 0"}));
  EXPECT_TRUE(
      mt::throws_with([] { GShardMoE(GShardMoEOptions(4, {4}).second_threshold_train(-1)); },
                      {"second_threshold_train must be finite and >= 0, got -1"}));
  EXPECT_TRUE(mt::throws_with([] { second_policy_from_string("sometimes", "MoE"); },
                              {"MoE", "all, none, threshold, random", "'sometimes'"}));
  GShardMoE layer(GShardMoEOptions(4, {4}).group_size(5));
  EXPECT_TRUE(mt::throws_with(
      [&] {
        layer->forward(torch::randn({12, 4}));
      },
      {"GShardMoE", "12 tokens", "group_size=5"}));
  EXPECT_TRUE(mt::throws_with([&] { layer->forward(torch::randn({10, 3})); }, {"GShardMoE"}));
  // An empty batch: empty output, a zero loss with every parameter in the graph.
  GShardMoE two(GShardMoEOptions(4, {2, 2}).hidden_size(3));
  const auto out = two->forward(torch::zeros({0, 5, 4}));
  EXPECT_EQ(out.output.sizes(), (std::vector<int64_t>{0, 5, 4}));
  EXPECT_EQ(out.aux_loss.item<float>(), 0.0f);
}

}  // namespace
