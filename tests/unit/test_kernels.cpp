// CPU data-movement kernels vs naive loops written in the test.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>

#include "kernels/cpu/kernels.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

namespace k = moe::kernels::cpu;

TEST(Kernels, GatherMatchesLoop) {
  torch::manual_seed(1);
  const int64_t T = 7, P = 11, d = 5;
  auto src = torch::randn({T, d}, at::kDouble);
  auto index = torch::randint(0, T, {P}, at::kLong);
  auto dst = torch::empty({P, d}, at::kDouble);
  k::gather_rows<double>(src.data_ptr<double>(), index.data_ptr<int64_t>(), P, d,
                         dst.data_ptr<double>());
  for (int64_t i = 0; i < P; ++i) EXPECT_TRUE(torch::equal(dst[i], src[index[i].item<int64_t>()]));
}

TEST(Kernels, ScatterAddMatchesLoopWithRepeatedRows) {
  torch::manual_seed(2);
  // d = 37 is not a multiple of the 16-column blocks; n·d is large enough for several tasks.
  const int64_t T = 9, n = 3000, d = 37;
  auto src = torch::randn({n, d}, at::kDouble);
  auto index = torch::randint(0, T, {n}, at::kLong);  // every row of dst many times
  auto w = torch::randn({n}, at::kDouble);
  auto start = torch::randn({T, d}, at::kDouble);
  for (bool weighted : {true, false}) {
    auto dst = start.clone();
    k::scatter_add_rows<double, double>(src.data_ptr<double>(), index.data_ptr<int64_t>(),
                                        weighted ? w.data_ptr<double>() : nullptr, n, d,
                                        dst.data_ptr<double>());
    auto expect = start.clone();
    auto e = expect.accessor<double, 2>();
    auto s = src.accessor<double, 2>();
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < d; ++c)
        e[index[i].item<int64_t>()][c] += (weighted ? w[i].item<double>() : 1.0) * s[i][c];
    EXPECT_CLOSE(dst, expect, 1e-12, 1e-12);
  }
}

TEST(Kernels, HiddenOutputBackwardMatchesLoops) {
  torch::manual_seed(3);
  const int64_t n = 40, h = 21;  // h not a multiple of the 8 partial sums
  const auto g0 = torch::randn({n, h}, at::kDouble);
  const auto hid = torch::randn({n, h}, at::kDouble);
  const auto w = torch::randn({n}, at::kDouble);
  const auto f0 = torch::randn({n, h}, at::kDouble);
  const auto u = torch::randn({n, h}, at::kDouble);
  using k::HiddenGrad;
  for (auto mode : {HiddenGrad::kPlain, HiddenGrad::kReLU, HiddenGrad::kGated}) {
    // The hidden output a: relu(h) for kReLU, f·u for kGated, anything for kPlain.
    const auto a = mode == HiddenGrad::kReLU    ? hid.clamp_min(0)
                   : mode == HiddenGrad::kGated ? (f0 * u)
                                                : hid;
    auto g = g0.clone(), f = f0.clone();
    auto dot = torch::empty({n}, at::kDouble);
    k::hidden_output_backward<double>(g.data_ptr<double>(), a.data_ptr<double>(),
                                      w.data_ptr<double>(), n, h, dot.data_ptr<double>(), mode,
                                      f.data_ptr<double>(), u.data_ptr<double>());
    for (int64_t i = 0; i < n; ++i) {
      double expect = 0;
      for (int64_t c = 0; c < h; ++c) expect += g0[i][c].item<double>() * a[i][c].item<double>();
      EXPECT_NEAR(dot[i].item<double>(), expect, 1e-12);
      for (int64_t c = 0; c < h; ++c) {
        const double da = w[i].item<double>() * g0[i][c].item<double>();
        double want_g = da, want_f = f0[i][c].item<double>();
        if (mode == HiddenGrad::kReLU) want_g = hid[i][c].item<double>() > 0 ? da : 0.0;
        if (mode == HiddenGrad::kGated) {
          want_f = f0[i][c].item<double>() * da;
          want_g = da * u[i][c].item<double>();
        }
        EXPECT_NEAR(g[i][c].item<double>(), want_g, 1e-14) << i << "," << c;
        EXPECT_NEAR(f[i][c].item<double>(), want_f, 1e-14) << i << "," << c;
      }
    }
  }
}

TEST(Kernels, BFloat16AccumulatesInFloat) {
  // 1024 rows of 2^-10 each sum to exactly 1 in float32; a bf16 running sum stalls at 0.25, where
  // 2^-10 is half a bf16 ulp and rounds away.
  const int64_t n = 1024, d = 1;
  auto rows = torch::full({n, d}, 1.0 / 1024, at::kBFloat16);
  auto index = torch::zeros({n}, at::kLong);
  auto out = torch::zeros({1, d}, at::kFloat);
  k::scatter_add_rows<c10::BFloat16, float>(rows.data_ptr<c10::BFloat16>(),
                                            index.data_ptr<int64_t>(), nullptr, n, d,
                                            out.data_ptr<float>());
  EXPECT_EQ(out.item<float>(), 1.0f);
  // The dot of 1024 products 2^-5·2^-5 accumulates in float32 too.
  auto g = torch::full({1, 1024}, 1.0 / 32, at::kBFloat16);
  const auto a = g.clone();
  auto w = torch::ones({1}, at::kBFloat16);
  auto dot = torch::empty({1}, at::kBFloat16);
  k::hidden_output_backward<c10::BFloat16>(
      g.data_ptr<c10::BFloat16>(), a.data_ptr<c10::BFloat16>(), w.data_ptr<c10::BFloat16>(), 1,
      1024, dot.data_ptr<c10::BFloat16>(), k::HiddenGrad::kPlain, nullptr, nullptr);
  EXPECT_EQ(dot.item<float>(), 1.0f);
}

}  // namespace
