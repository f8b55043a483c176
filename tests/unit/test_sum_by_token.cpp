// The engine's combine (src/plan/sum_by_token.h): each token's rows summed, in slot order for a
// padded plan (deterministic on every device), with index_add for a compact one; bf16 in float32.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "moe/plan.h"
#include "plan/sum_by_token.h"
#include "support/test_util.h"

namespace {

using moe::plan::sum_by_token;

// Slots (t, s): (0,0) → expert 2, (0,1) unused, (1,0) → expert 0, (1,1) → expert 2. Expert-major
// pairs: token 1 (expert 0), token 0 (expert 2), token 1 (expert 2); rows 1, 10, 100.
TEST(SumByToken, HandExampleOnBothLayouts) {
  const auto index = at::tensor({2, -1, 0, 2}, at::kLong).view({2, 2});
  const auto rows = at::tensor({1.0, 10.0, 100.0}, at::kDouble).view({3, 1});
  const auto expected = at::tensor({10.0, 101.0}, at::kDouble).view({2, 1});
  const auto compact = moe::build_routing_plan(index, 3);
  EXPECT_TRUE(torch::equal(sum_by_token(rows, compact.token_index, {}, 0, 2), expected));
  const auto padded = moe::build_routing_plan(index, 3, moe::PlanLayout::kPadded);
  ASSERT_EQ(padded.num_rows(), 4);
  EXPECT_TRUE(
      torch::equal(sum_by_token(rows, padded.token_index, padded.pair_slot, 2, 2), expected));
  // All rows of the padded plan, the padding row zero, as the multi-task models pass them.
  const auto all_rows = at::cat({rows, at::zeros({1, 1}, rows.options())});
  EXPECT_TRUE(
      torch::equal(sum_by_token(all_rows, padded.token_index, padded.pair_slot, 2, 2), expected));
}

TEST(SumByToken, PaddedEqualsIndexAddOnRandomTables) {
  torch::manual_seed(8);
  for (int trial = 0; trial < 5; ++trial) {
    const int64_t T = 37, K = 3, E = 5;
    const auto index = at::randint(-1, E, {T, K}, at::kLong);
    const auto compact = moe::build_routing_plan(index, E);
    const auto padded = moe::build_routing_plan(index, E, moe::PlanLayout::kPadded);
    const auto rows = at::randn({compact.num_rows(), 4}, at::kDouble);
    const auto by_index_add = sum_by_token(rows, compact.token_index, {}, 0, T);
    const auto by_slot = sum_by_token(rows, padded.token_index, padded.pair_slot, K, T);
    EXPECT_CLOSE(by_slot, by_index_add, 1e-14, 1e-14);
  }
}

// bf16 rows are summed in float32: 256 + 1 + 1 = 258, where a bf16 running sum would stay at
// 256 (257 rounds to 256, bf16 having 8 significant bits).
TEST(SumByToken, Bf16SumsInFloat32) {
  const auto index = at::tensor({0, 1, 2}, at::kLong).view({1, 3});
  const auto rows = at::tensor({256.0f, 1.0f, 1.0f}).view({3, 1}).to(at::kBFloat16);
  const auto padded = moe::build_routing_plan(index, 3, moe::PlanLayout::kPadded);
  const auto y = sum_by_token(rows, padded.token_index, padded.pair_slot, 3, 1);
  EXPECT_EQ(y.scalar_type(), at::kFloat);
  EXPECT_EQ(y.item<float>(), 258.0f);
  const auto compact = moe::build_routing_plan(index, 3);
  EXPECT_EQ(sum_by_token(rows, compact.token_index, {}, 0, 1).item<float>(), 258.0f);
}

TEST(SumByToken, RejectsSlotsOfAnotherShape) {
  const auto index = at::tensor({0, 1}, at::kLong).view({1, 2});
  const auto padded = moe::build_routing_plan(index, 2, moe::PlanLayout::kPadded);
  EXPECT_TRUE(moe::testing::throws_with(
      [&] {
        sum_by_token(at::ones({2, 1}), padded.token_index, padded.pair_slot, 3, 1);
      },
      {"pair_slot has 2 entries for 1 tokens of 3 slots"}));
}

}  // namespace
