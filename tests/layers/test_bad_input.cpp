// Bad inputs raise c10 errors whose message names the argument, the value and what was expected
// (docs/reliability.md §3). Construction errors are ValueError, dtype errors TypeError.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/sparse_moe.h"
#include "support/test_util.h"

namespace {

using moe::nn::HierarchicalMoE;
using moe::nn::HierarchicalMoEOptions;
using moe::nn::SparseMoE;
using moe::nn::SparseMoEOptions;
using moe::testing::throws_with;

SparseMoEOptions base() { return SparseMoEOptions(8, 4).hidden_size(6); }

TEST(BadInput, ConstructionErrorsNameTheArgumentAndValue) {
  struct Row {
    SparseMoEOptions opts;
    std::vector<std::string> parts;
  };
  const std::vector<Row> rows{
      {base().top_k(0), {"top_k", "[1, num_experts=4]", "got 0"}},
      {base().top_k(5), {"top_k", "got 5"}},
      {SparseMoEOptions(8, 0), {"num_experts", ">= 1", "got 0"}},
      {SparseMoEOptions(0, 4), {"d_model", "got 0"}},
      {base().hidden_size(0), {"hidden_size", "got 0"}},
      {base().capacity_factor(-1.0), {"capacity_factor", "got -1"}},
      {base().capacity_factor(std::nan("")), {"capacity_factor", "nan"}},
      {base().min_capacity(-2), {"min_capacity", "got -2"}},
      {base().balance_coef(-0.5), {"balance_coef", "got -0.5"}},
      {base().z_loss_coef(INFINITY), {"z_loss_coef", "inf"}},
      {base().jitter(1.5), {"jitter", "1.5"}},
  };
  for (const auto& r : rows) {
    EXPECT_THROW(SparseMoE{r.opts}, c10::ValueError);
    EXPECT_TRUE(throws_with([&] { SparseMoE{r.opts}; }, r.parts));
  }
  EXPECT_THROW(HierarchicalMoE(HierarchicalMoEOptions(8, 2, 3).primary_top_k(3)), c10::ValueError);
  EXPECT_TRUE(
      throws_with([] { HierarchicalMoE(HierarchicalMoEOptions(8, 2, 3).secondary_top_k(0)); },
                  {"secondary_top_k", "experts_per_group=3", "got 0"}));
  EXPECT_TRUE(
      throws_with([] { HierarchicalMoE(HierarchicalMoEOptions(8, 0, 3)); }, {"groups", "got 0"}));
}

TEST(BadInput, ForwardErrors) {
  SparseMoE layer(base());
  EXPECT_TRUE(throws_with(
      [&] {
        layer->forward(torch::randn({3, 7}));
      },
      {"SparseMoE", "d_model=8", "[3, 7]"}));
  EXPECT_TRUE(throws_with([&] { layer->forward(torch::randn({})); }, {"0-dim"}));
  EXPECT_THROW(layer->forward(torch::ones({3, 8}, at::kLong)), c10::TypeError);
  EXPECT_TRUE(throws_with(
      [&] {
        layer->forward(torch::ones({3, 8}, at::kLong));
      },
      {"floating-point", "Long"}));
  EXPECT_THROW(layer->forward(torch::randn({3, 8}, at::kDouble)), c10::TypeError);
  EXPECT_TRUE(throws_with(
      [&] {
        layer->forward(torch::randn({3, 8}, at::kDouble));
      },
      {"dtype Double", "experts are Float"}));
  EXPECT_TRUE(throws_with(
      [&] {
        layer->forward(torch::empty({3, 8}, torch::device(at::kMeta)));
      },
      {"input x on meta", "experts on cpu"}));
  EXPECT_THROW(layer->forward(torch::Tensor()), c10::Error);
  HierarchicalMoE hier(HierarchicalMoEOptions(8, 2, 2).hidden_size(4));
  EXPECT_TRUE(throws_with(
      [&] {
        hier->forward(torch::randn({2, 5}));
      },
      {"HierarchicalMoE", "d_model=8"}));
  auto nan = torch::randn({4, 8});
  nan[0][0] = std::nanf("");
  {
    torch::NoGradGuard g;
    hier->primary_router->weight.normal_();
  }
  EXPECT_TRUE(
      throws_with([&] { hier->forward(nan); }, {"HierarchicalMoE", "non-finite for 1 of 4"}));
}

}  // namespace
