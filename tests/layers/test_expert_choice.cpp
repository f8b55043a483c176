// Expert-choice routing (docs/algorithms.md §5.4) in a RoutedMoE: the routing against a reference
// written from the definition, the layer against the dense float64 reference, gradients against
// finite differences, capacity rounding, skipped tokens and empty batches.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include "moe/moe.h"
#include "support/finite_differences.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using namespace moe;
using namespace moe::nn;
namespace mt = moe::testing;

RoutedMoE make_layer(int64_t d, int64_t E, int64_t h, double cf, uint64_t seed,
                     NonFinitePolicy policy = NonFinitePolicy::kError) {
  torch::manual_seed(seed);
  const auto ro =
      ExpertChoiceRouterOptions(d, E).capacity_factor(cf).non_finite(policy).name("ECMoE");
  RoutedMoE layer(RoutedMoEOptions(
                      d, [ro] { return ExpertChoiceRouter(ro).ptr(); },
                      ExpertBankOptions(E, d, h).activation(Activation::kGELU).bias(true))
                      .name("ECMoE"));
  layer->to(torch::kDouble);
  {
    torch::NoGradGuard g;  // a router far from uniform, so that the choices are clear
    layer->router_as<ExpertChoiceRouterImpl>().weight.normal_(0.0, 1.0);
  }
  return layer;
}

// From the definition: S = softmax(x·Wᵀ) in float64; expert e takes the C tokens with the largest
// S[:, e] (ties to the lower token index, by a full stable sort).
mt::ReferenceRoute reference_expert_choice(const torch::Tensor& x, const torch::Tensor& W,
                                           int64_t C) {
  const int64_t T = x.size(0), E = W.size(0);
  const auto S = torch::softmax(x.to(torch::kDouble).mm(W.to(torch::kDouble).t()), 1);
  auto index = torch::full({T, E}, -1, torch::kLong);
  auto gate = torch::zeros({T, E}, torch::kDouble);
  const auto picks = mt::reference_topk_indices(S.t().contiguous(), C);  // [E, C]
  for (int64_t e = 0; e < E; ++e) {
    for (int64_t j = 0; j < C; ++j) {
      const int64_t t = picks[e][j].item<int64_t>();
      index[t][e] = e;
      gate[t][e] = S[t][e];
    }
  }
  return {index, gate};
}

TEST(ExpertChoice, RoutingAndOutputMatchTheDefinitionAndTheDenseReference) {
  const int64_t T = 24, d = 6, E = 4, h = 5;
  auto layer = make_layer(d, E, h, 2.0, 1);
  const auto x = torch::randn({T, d}, torch::kDouble);
  const auto out = layer->forward(x);
  auto& router = layer->router_as<ExpertChoiceRouterImpl>();
  const int64_t C = 12;  // T·cf/E = 24·2/4
  EXPECT_EQ(router.capacity(T), C);
  const auto ref = reference_expert_choice(x, router.weight, C);
  EXPECT_TRUE(torch::equal(out.routing.expert_index, ref.expert_index));
  EXPECT_TRUE(mt::all_close(out.routing.gate, ref.gate, 1e-12, 1e-14));
  // Every expert computed exactly C tokens; tokens got 0 to E experts.
  EXPECT_TRUE(torch::equal(out.stats.tokens_per_expert, torch::full({E}, C, torch::kLong)));
  EXPECT_EQ(out.stats.experts_per_token.sum().item<int64_t>(), E * C);
  const auto& e = *layer->experts;
  const auto dense = mt::dense_moe_reference(x, ref.expert_index, ref.gate, e.w1, e.w2, e.w3, e.b1,
                                             e.b2, Activation::kGELU);
  EXPECT_TRUE(mt::all_close(out.output, dense, 1e-10, 1e-12));
  const auto unrouted = (ref.expert_index >= 0).sum(1).eq(0).sum().item<int64_t>();
  EXPECT_EQ(out.stats.tokens_without_expert(), unrouted);
}

TEST(ExpertChoice, CapacityRoundsUpAndStaysWithinTheBatch) {
  ExpertChoiceRouter r(ExpertChoiceRouterOptions(4, 4).capacity_factor(1.0));
  EXPECT_EQ(r->capacity(10), 3);  // ceil(2.5)
  EXPECT_EQ(r->capacity(1), 1);   // at least 1
  EXPECT_EQ(r->capacity(0), 0);
  ExpertChoiceRouter wide(ExpertChoiceRouterOptions(4, 4).capacity_factor(100.0));
  EXPECT_EQ(wide->capacity(10), 10);  // at most T: every expert takes every token
  EXPECT_THROW(ExpertChoiceRouter(ExpertChoiceRouterOptions(4, 4).capacity_factor(0.0)),
               c10::ValueError);
}

// d/dθ of Σ out·R by central differences in float64, for the input, the router and the experts.
TEST(ExpertChoice, GradientsMatchFiniteDifferences) {
  const int64_t T = 10, d = 4, E = 3, h = 3;
  auto layer = make_layer(d, E, h, 1.5, 2);
  auto x = torch::randn({T, d}, torch::kDouble).requires_grad_(true);
  const auto R = torch::randn({T, d}, torch::kDouble);
  auto loss_of = [&] { return (layer->forward(x).output * R).sum(); };
  const auto before = layer->forward(x).routing.expert_index;
  auto& W = layer->router_as<ExpertChoiceRouterImpl>().weight;
  std::vector<torch::Tensor> params{x, W, layer->experts->w1, layer->experts->b2};
  mt::expect_gradients_match_finite_differences(loss_of, params, /*stride=*/3);
  // The perturbations were small enough not to change any choice.
  EXPECT_TRUE(torch::equal(layer->forward(x).routing.expert_index, before));
}

TEST(ExpertChoice, SkippedTokensAreNeverTakenAndOthersAreUnaffected) {
  const int64_t T = 12, d = 4, E = 3;
  auto layer = make_layer(d, E, 5, 2.0, 3, NonFinitePolicy::kSkip);
  auto x = torch::randn({T, d}, torch::kDouble);
  x[5][1] = std::numeric_limits<double>::quiet_NaN();
  const auto out = layer->forward(x);
  EXPECT_TRUE(torch::all(out.routing.expert_index[5] == -1).item<bool>());
  EXPECT_TRUE(torch::all(out.output[5] == 0).item<bool>());
  EXPECT_EQ(out.stats.skipped_tokens(), 1);
  EXPECT_FALSE(torch::any(torch::isnan(out.output)).item<bool>());

  auto strict = make_layer(d, E, 5, 2.0, 3);
  EXPECT_TRUE(mt::throws_with([&] { strict->forward(x); }, {"ECMoE", "non-finite for 1 of 12"}));
}

TEST(ExpertChoice, EmptyBatchGivesAnEmptyOutputAndZeroGradients) {
  auto layer = make_layer(4, 3, 5, 2.0, 4);
  const auto x = torch::zeros({0, 4}, torch::kDouble);
  const auto out = layer->forward(x);
  EXPECT_EQ(out.output.sizes(), x.sizes());
  (out.output.sum() + out.aux_loss).backward();
  EXPECT_TRUE(layer->router_as<ExpertChoiceRouterImpl>().weight.grad().defined());
}

TEST(ExpertChoice, TheRouterIsRegisteredUnderItsNameAndHasNoTopK) {
  auto layer = make_layer(4, 3, 5, 2.0, 5);
  const auto names = layer->named_parameters().keys();
  EXPECT_NE(std::find(names.begin(), names.end(), "router.weight"), names.end());
  EXPECT_EQ(layer->router_interface().kind(), "expert_choice");
  EXPECT_EQ(layer->top_k(), 0);
  EXPECT_THROW(layer->router_interface().set_top_k(2), c10::ValueError);
  EXPECT_THROW(layer->router_as<TopKRouterImpl>(), c10::TypeError);
}

}  // namespace
