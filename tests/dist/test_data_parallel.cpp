// all_reduce_gradients between real processes: each rank's gradient of its share of a global mean
// loss, summed over the ranks, equals the single-process gradient on the whole batch.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "dist/rank_runner.h"
#include "moe/distributed.h"
#include "support/test_util.h"

namespace {

using moe::testing::dist::my_rank;

struct Model {
  at::Tensor w1, w2, s;  // float64, float64, float32: two dtypes, so two kinds of bucket
  std::vector<at::Tensor> params() const { return {w1, w2, s}; }
};

Model model() {
  torch::manual_seed(5);
  return {at::randn({4, 3}, at::kDouble).requires_grad_(),
          at::randn({3, 2}, at::kDouble).requires_grad_(), at::full({1}, 1.5f).requires_grad_()};
}

// Σ over the rows of y·probe, divided by the global row count.
at::Tensor loss(const Model& m, const at::Tensor& x, const at::Tensor& probe, int64_t global_rows) {
  const auto y = at::tanh(x.matmul(m.w1)).matmul(m.w2) * m.s.to(at::kDouble);
  return (y * probe).sum() / double(global_rows);
}

TEST(DataParallelRank, Checks) {
  if (my_rank() < 0) GTEST_SKIP() << "one rank of DataParallel.GradientsEqualOneProcess";
  const auto group = moe::testing::dist::join();
  const int W = group->size(), r = group->rank();
  std::vector<int64_t> rows;
  int64_t N = 0, first = 0;
  for (int j = 0; j < W; ++j) {
    rows.push_back(std::vector<int64_t>{6, 0, 9, 4}[j % 4]);
    if (j < r) first += rows.back();
    N += rows.back();
  }
  torch::manual_seed(9);
  const auto x = at::randn({N, 4}, at::kDouble), probe = at::randn({N, 2}, at::kDouble);

  const auto ref = model();
  loss(ref, x, probe, N).backward();

  for (const int64_t bucket_bytes : {int64_t(40), int64_t(25) << 20}) {
    const auto m = model();
    loss(m, x.narrow(0, first, rows[r]), probe.narrow(0, first, rows[r]), N).backward();
    const int64_t made = moe::dist::all_reduce_gradients(group, m.params(), 1.0, bucket_bytes);
    // 40 bytes: w1 (96 B) and w2 (48 B) each alone, then s; 25 MiB: one per dtype.
    EXPECT_EQ(made, bucket_bytes == 40 ? 3 : 2);
    for (size_t i = 0; i < 3; ++i) {
      const double tol = m.params()[i].scalar_type() == at::kFloat ? 1e-6 : 1e-12;
      EXPECT_CLOSE(m.params()[i].grad(), ref.params()[i].grad(), tol, tol) << "parameter " << i;
    }
  }
  group->barrier();
  if (::testing::Test::HasFailure()) std::exit(1);
}

TEST(DataParallel, GradientsEqualOneProcess) {
  if (my_rank() >= 0) GTEST_SKIP() << "parent test";
  if (!moe::dist::available()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  for (const int W : {2, 3})
    EXPECT_TRUE(moe::testing::dist::ranks_pass(W, "DataParallelRank.Checks"));
}

}  // namespace
