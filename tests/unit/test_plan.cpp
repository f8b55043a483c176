// RoutingPlan construction (the compact counting sort and the padded device sort) and validation
// against hand-built expectations.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "engine/backend.h"
#include "moe/plan.h"
#include "support/host_reads.h"
#include "support/test_util.h"

namespace {

using moe::testing::throws_with;

std::vector<int64_t> vec(const torch::Tensor& t) {
  auto c = t.contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

TEST(RoutingPlan, ExpertMajorAndTokenMajorViews) {
  // 4 tokens, K = 2 slots, 3 experts; -1 = unused slot; expert 1 gets no token.
  auto idx = torch::tensor({2, 0, 0, -1, 2, 0, -1, -1}, at::kLong).view({4, 2});
  auto plan = moe::build_routing_plan(idx, 3);
  EXPECT_EQ(plan.num_rows(), 5);
  EXPECT_EQ(vec(plan.expert_offsets), (std::vector<int64_t>{0, 3, 3, 5}));
  // Expert 0 holds slots 1 (t0), 2 (t1), 5 (t2); expert 2 holds slots 0 (t0), 4 (t2).
  EXPECT_EQ(vec(plan.pair_slot), (std::vector<int64_t>{1, 2, 5, 0, 4}));
  EXPECT_EQ(vec(plan.token_index), (std::vector<int64_t>{0, 1, 2, 0, 2}));
  EXPECT_EQ(vec(plan.token_offsets), (std::vector<int64_t>{0, 2, 3, 5, 5}));
  // Token 0: slot 0 (expert 2, pair 3) then slot 1 (expert 0, pair 0).
  EXPECT_EQ(vec(plan.token_pairs), (std::vector<int64_t>{3, 0, 1, 4, 2}));
  EXPECT_EQ(vec(plan.tokens_per_expert()), (std::vector<int64_t>{3, 0, 2}));
  EXPECT_EQ(vec(plan.experts_per_token()), (std::vector<int64_t>{2, 1, 2, 0}));
  EXPECT_NO_THROW(moe::validate_routing_plan(plan));
}

TEST(RoutingPlan, PairWeightsFollowThePlanOrder) {
  auto idx = torch::tensor({1, 0, 0, 1}, at::kLong).view({2, 2});
  auto gate = torch::tensor({0.25, 0.75, 0.5, 0.125}, at::kDouble).view({2, 2}).requires_grad_();
  auto plan = moe::build_routing_plan(idx, 2);
  auto w = moe::pair_weights(plan, gate);
  // Expert 0: slot 1 (0.75), slot 2 (0.5); expert 1: slot 0 (0.25), slot 3 (0.125).
  EXPECT_TRUE(torch::equal(w, torch::tensor({0.75, 0.5, 0.25, 0.125}, at::kDouble)));
  w.sum().backward();
  EXPECT_TRUE(torch::equal(gate.grad(), torch::ones({2, 2}, at::kDouble)));
}

TEST(RoutingPlan, RandomTablesAreConsistent) {
  torch::manual_seed(3);
  for (int64_t E : {1, 5, 64}) {
    auto idx = torch::randint(-1, E, {257, 3}, at::kLong);
    auto plan = moe::build_routing_plan(idx, E);
    EXPECT_NO_THROW(moe::validate_routing_plan(plan));
    const auto counts = vec(plan.tokens_per_expert());
    for (int64_t e = 0; e < E; ++e) EXPECT_EQ(counts[e], (idx == e).sum().item<int64_t>());
    // Within an expert, tokens ascend.
    const auto off = vec(plan.expert_offsets);
    const auto tok = vec(plan.token_index);
    for (int64_t e = 0; e < E; ++e)
      for (int64_t p = off[e] + 1; p < off[e + 1]; ++p) EXPECT_LE(tok[p - 1], tok[p]);
  }
}

TEST(RoutingPlan, EmptyTableAndAllUnused) {
  auto plan = moe::build_routing_plan(torch::empty({0, 2}, at::kLong), 4);
  EXPECT_EQ(plan.num_rows(), 0);
  EXPECT_EQ(vec(plan.expert_offsets), (std::vector<int64_t>{0, 0, 0, 0, 0}));
  EXPECT_NO_THROW(moe::validate_routing_plan(plan));
  auto none = moe::build_routing_plan(torch::full({3, 2}, -1, at::kLong), 2);
  EXPECT_EQ(none.num_rows(), 0);
  EXPECT_EQ(vec(none.token_offsets), (std::vector<int64_t>{0, 0, 0, 0}));
}

TEST(RoutingPlan, RejectsBadTables) {
  EXPECT_TRUE(throws_with(
      [] {
        moe::build_routing_plan(torch::tensor({0, 4}, at::kLong).view({1, 2}), 4);
      },
      {"expert ids must be in [0, 4)", "4]"}));
  EXPECT_TRUE(throws_with(
      [] {
        moe::build_routing_plan(torch::tensor({-2, 0}, at::kLong).view({1, 2}), 4);
      },
      {"[-2, 0]"}));
  EXPECT_TRUE(throws_with(
      [] {
        moe::build_routing_plan(torch::zeros({2, 2}, at::kInt), 4);
      },
      {"int64", "Int"}));
  EXPECT_TRUE(
      throws_with([] { moe::build_routing_plan(torch::zeros({4}, at::kLong), 4); }, {"[T, K]"}));
}

TEST(RoutingPlan, ValidationCatchesCorruption) {
  auto idx = torch::tensor({0, 1, 1, 0}, at::kLong).view({2, 2});
  auto good = moe::build_routing_plan(idx, 2);
  auto p1 = good;
  p1.expert_offsets = torch::tensor({0, 3, 4}, at::kLong);
  p1.expert_offsets[1] = 5;
  EXPECT_TRUE(throws_with([&] { moe::validate_routing_plan(p1); }, {"expert_offsets"}));
  auto p2 = good;
  p2.token_pairs = torch::tensor({0, 0, 1, 2}, at::kLong);
  EXPECT_TRUE(throws_with([&] { moe::validate_routing_plan(p2); }, {"token_pairs"}));
  auto p3 = good;
  p3.token_index = torch::tensor({1, 1, 0, 0}, at::kLong);
  EXPECT_TRUE(throws_with([&] { moe::validate_routing_plan(p3); }, {"token_index"}));
}

TEST(PaddedPlan, HandExample) {
  // The table of ExpertMajorAndTokenMajorViews: 5 pairs, then the 3 unused slots 3, 6, 7.
  auto idx = torch::tensor({2, 0, 0, -1, 2, 0, -1, -1}, at::kLong).view({4, 2});
  auto plan = moe::build_routing_plan(idx, 3, moe::PlanLayout::kPadded);
  EXPECT_TRUE(plan.padded);
  EXPECT_EQ(plan.num_rows(), 8);
  EXPECT_EQ(vec(plan.expert_offsets), (std::vector<int64_t>{0, 3, 3, 5}));
  EXPECT_EQ(vec(plan.pair_slot), (std::vector<int64_t>{1, 2, 5, 0, 4, 3, 6, 7}));
  EXPECT_EQ(vec(plan.token_index), (std::vector<int64_t>{0, 1, 2, 0, 2, 1, 3, 3}));
  EXPECT_EQ(vec(plan.pair_expert), (std::vector<int64_t>{0, 0, 0, 2, 2, 3, 3, 3}));
  EXPECT_EQ(vec(plan.token_offsets), (std::vector<int64_t>{0, 2, 3, 5, 5}));
  EXPECT_EQ(vec(plan.token_pairs), (std::vector<int64_t>{3, 0, 1, 4, 2, 5, 6, 7}));
  EXPECT_EQ(vec(plan.tokens_per_expert()), (std::vector<int64_t>{3, 0, 2}));
  EXPECT_EQ(vec(plan.experts_per_token()), (std::vector<int64_t>{2, 1, 2, 0}));
  EXPECT_NO_THROW(moe::validate_routing_plan(plan));
  // The unused slots' gates are not 0 here: the padding rows still weigh 0.
  auto gate = torch::arange(1, 9, at::kDouble).view({4, 2}).requires_grad_();
  auto w = moe::pair_weights(plan, gate);
  EXPECT_TRUE(torch::equal(w, torch::tensor({2., 3., 6., 1., 5., 0., 0., 0.}, at::kDouble)));
  w.sum().backward();
  EXPECT_TRUE(torch::equal(gate.grad().view({-1}),
                           torch::tensor({1., 1., 1., 0., 1., 1., 0., 0.}, at::kDouble)));
}

// The padded plan's pairs are the compact plan's, row for row; its other rows are the unused
// slots.
TEST(PaddedPlan, PairsEqualTheCompactPlanOnRandomTables) {
  torch::manual_seed(5);
  for (int64_t E : {1, 5, 64}) {
    for (int64_t K : {1, 3}) {
      auto idx = torch::randint(-1, E, {129, K}, at::kLong);
      const auto compact = moe::build_routing_plan(idx, E);
      const auto padded = moe::build_routing_plan(idx, E, moe::PlanLayout::kPadded);
      EXPECT_NO_THROW(moe::validate_routing_plan(padded));
      const int64_t P = compact.num_rows();
      ASSERT_EQ(padded.num_rows(), idx.numel());
      EXPECT_TRUE(torch::equal(padded.expert_offsets, compact.expert_offsets));
      EXPECT_TRUE(torch::equal(padded.token_offsets, compact.token_offsets));
      for (const auto& [a, b] : {std::pair{padded.pair_slot, compact.pair_slot},
                                 {padded.token_index, compact.token_index},
                                 {padded.pair_expert, compact.pair_expert},
                                 {padded.token_pairs, compact.token_pairs}})
        EXPECT_TRUE(torch::equal(a.narrow(0, 0, P), b));
      const auto unused = (idx.view({-1}) < 0).nonzero().view({-1});
      EXPECT_TRUE(torch::equal(padded.pair_slot.narrow(0, P, idx.numel() - P), unused));
    }
  }
}

TEST(PaddedPlan, EmptyTableAndBadIds) {
  const auto plan =
      moe::build_routing_plan(torch::empty({0, 2}, at::kLong), 4, moe::PlanLayout::kPadded);
  EXPECT_EQ(plan.num_rows(), 0);
  EXPECT_EQ(vec(plan.expert_offsets), (std::vector<int64_t>{0, 0, 0, 0, 0}));
  EXPECT_NO_THROW(moe::validate_routing_plan(plan));
  const auto bad = [](int64_t id) {
    moe::build_routing_plan(torch::tensor({int64_t{0}, id}, at::kLong).view({1, 2}), 4,
                            moe::PlanLayout::kPadded);
  };
  if (moe::engine::portable_path(at::kCPU)) {
    // A device-side assertion: LibTorch's own message, on a GPU an asynchronous error.
    EXPECT_THROW(bad(4), c10::Error);
    EXPECT_THROW(bad(-2), c10::Error);
  } else {
    EXPECT_TRUE(throws_with([&] { bad(4); }, {"expert ids must be in [0, 4)", "4]"}));
    EXPECT_TRUE(throws_with([&] { bad(-2); }, {"[-2, 0]"}));
  }
}

// The padded plan is built without reading the table's values on the portable path (so without a
// host synchronisation on a GPU); the compact one reads it.
TEST(PaddedPlan, BuildsWithoutReadingValues) {
  if (!moe::engine::portable_path(at::kCPU))
    GTEST_SKIP() << "runs on the portable path (the portable.* copy, MOE_ENGINE_BACKEND=portable)";
  const auto idx = torch::randint(-1, 4, {7, 2}, at::kLong);
  const auto gate = torch::rand({7, 2});
  {
    moe::testing::HostReadCounter reads;
    const auto plan = moe::build_routing_plan(idx, 4, moe::PlanLayout::kPadded);
    moe::pair_weights(plan, gate);
    plan.tokens_per_expert();
    plan.experts_per_token();
    EXPECT_EQ(reads.count(), 0) << reads.names();
  }
  moe::testing::HostReadCounter reads;
  moe::build_routing_plan(idx, 4, moe::PlanLayout::kCompact);
  EXPECT_GE(reads.count(), 2) << reads.names();
}

TEST(PaddedPlan, ValidationCatchesCorruptPadding) {
  auto idx = torch::tensor({0, -1, 1, -1}, at::kLong).view({2, 2});
  const auto good = moe::build_routing_plan(idx, 2, moe::PlanLayout::kPadded);
  auto p1 = good;
  p1.pair_expert = torch::tensor({0, 1, 1, 2}, at::kLong);
  EXPECT_TRUE(throws_with([&] { moe::validate_routing_plan(p1); }, {"padding row 2"}));
  auto p2 = good;
  p2.pair_slot = torch::tensor({0, 2, 1, 1}, at::kLong);
  EXPECT_TRUE(throws_with([&] { moe::validate_routing_plan(p2); }, {"pair_slot"}));
  auto p3 = good;
  p3.padded = false;  // then every row must be a pair
  EXPECT_TRUE(throws_with([&] { moe::validate_routing_plan(p3); }, {"expert_offsets"}));
}

}  // namespace
