// Deterministic top-k: ties go to the lowest expert index (docs/algorithms.md §1.9).
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "moe/gating.h"
#include "support/reference.h"

namespace {

TEST(TopK, TiesGoToTheLowestIndex) {
  auto v = torch::tensor({1.0, 3.0, 3.0, 2.0, 3.0}, at::kFloat).view({1, 5});
  auto [idx, val] = moe::topk_lowest_index(v, 3);
  EXPECT_TRUE(torch::equal(idx, torch::tensor({1, 2, 4}, at::kLong).view({1, 3})));
  EXPECT_TRUE(torch::equal(val, torch::tensor({3.0f, 3.0f, 3.0f}).view({1, 3})));
  auto all_equal = torch::zeros({2, 6}, at::kDouble);
  EXPECT_TRUE(torch::equal(std::get<0>(moe::topk_lowest_index(all_equal, 6)),
                           torch::arange(6, at::kLong).repeat({2, 1})));
}

TEST(TopK, MatchesAStableSortOnHeavilyTiedData) {
  torch::manual_seed(0);
  // Small integer range: many ties. k spans the insertion path (<= 16) and the partial-sort path.
  for (int64_t E : {1, 3, 8, 33, 257}) {
    auto v = torch::randint(0, 5, {64, E}).to(at::kFloat);
    for (int64_t k : {int64_t(1), std::min<int64_t>(E, 2), std::min<int64_t>(E, 4),
                      std::min<int64_t>(E, 16), std::min<int64_t>(E, 17), E}) {
      auto [idx, val] = moe::topk_lowest_index(v, k);
      EXPECT_TRUE(torch::equal(idx, moe::testing::reference_topk_indices(v, k)))
          << "E=" << E << " k=" << k;
      EXPECT_TRUE(torch::equal(val, v.gather(1, idx)));
    }
  }
}

TEST(TopK, ValuesCarryGradients) {
  auto v = torch::tensor({0.5, -1.0, 2.0}, at::kDouble).view({1, 3}).requires_grad_();
  auto [idx, val] = moe::topk_lowest_index(v, 2);
  val.sum().backward();
  EXPECT_TRUE(torch::equal(v.grad(), torch::tensor({1.0, 0.0, 1.0}, at::kDouble).view({1, 3})));
}

TEST(TopK, RejectsKOutOfRange) {
  auto v = torch::zeros({2, 4});
  EXPECT_THROW(moe::topk_lowest_index(v, 0), c10::Error);
  EXPECT_THROW(moe::topk_lowest_index(v, 5), c10::Error);
}

}  // namespace
