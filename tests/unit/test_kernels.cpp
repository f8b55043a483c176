// CPU data-movement kernels vs naive loops written in the test.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cpu/kernels.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

namespace k = moe::kernels::cpu;

TEST(Kernels, GatherAndCombineMatchLoops) {
  torch::manual_seed(1);
  const int64_t T = 7, P = 11, d = 5;
  auto src = torch::randn({T, d}, at::kDouble);
  auto index = torch::randint(0, T, {P}, at::kLong);
  auto dst = torch::empty({P, d}, at::kDouble);
  k::gather_rows<double>(src.data_ptr<double>(), index.data_ptr<int64_t>(), P, d,
                         dst.data_ptr<double>());
  for (int64_t i = 0; i < P; ++i) EXPECT_TRUE(torch::equal(dst[i], src[index[i].item<int64_t>()]));

  // Token-major CSR: token t owns pairs [off[t], off[t+1]).
  auto rows = torch::randn({P, d}, at::kDouble);
  auto w = torch::randn({P}, at::kDouble);
  auto offsets = torch::tensor({0, 2, 2, 5, 6, 9, 10, 11}, at::kLong);
  auto pairs = torch::randperm(P, at::kLong);
  auto out = torch::empty({T, d}, at::kDouble);
  k::combine_rows<double>(rows.data_ptr<double>(), w.data_ptr<double>(),
                          offsets.data_ptr<int64_t>(), pairs.data_ptr<int64_t>(), T, d,
                          out.data_ptr<double>());
  for (int64_t t = 0; t < T; ++t) {
    auto expect = torch::zeros({d}, at::kDouble);
    for (int64_t j = offsets[t].item<int64_t>(); j < offsets[t + 1].item<int64_t>(); ++j) {
      const int64_t p = pairs[j].item<int64_t>();
      expect += w[p] * rows[p];
    }
    EXPECT_CLOSE(out[t], expect, 1e-15, 1e-15);
  }

  auto scaled = torch::empty({P, d}, at::kDouble);
  k::gather_scale_rows<double>(src.data_ptr<double>(), index.data_ptr<int64_t>(),
                               w.data_ptr<double>(), P, d, scaled.data_ptr<double>());
  auto dots = torch::empty({P}, at::kDouble);
  k::gather_dot_rows<double>(src.data_ptr<double>(), index.data_ptr<int64_t>(),
                             rows.data_ptr<double>(), P, d, dots.data_ptr<double>());
  for (int64_t i = 0; i < P; ++i) {
    auto s = src[index[i].item<int64_t>()];
    EXPECT_CLOSE(scaled[i], w[i] * s, 1e-15, 1e-15);
    EXPECT_NEAR(dots[i].item<double>(), (s * rows[i]).sum().item<double>(), 1e-13);
  }
}

TEST(Kernels, BFloat16AccumulatesInFloat) {
  // 256 rows of 1/256 each: a bf16 running sum would stall, a float accumulator gives exactly 1.
  const int64_t P = 256, d = 1;
  auto rows = torch::full({P, d}, 1.0 / 256, at::kBFloat16);
  auto offsets = torch::tensor({int64_t(0), P}, at::kLong);
  auto pairs = torch::arange(P, at::kLong);
  auto out = torch::empty({1, d}, at::kBFloat16);
  k::combine_rows<c10::BFloat16>(rows.data_ptr<c10::BFloat16>(), nullptr,
                                 offsets.data_ptr<int64_t>(), pairs.data_ptr<int64_t>(), 1, d,
                                 out.data_ptr<c10::BFloat16>());
  EXPECT_EQ(out.item<float>(), 1.0f);
}

}  // namespace
