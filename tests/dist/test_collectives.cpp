// moe::dist's collectives between real processes: the parent test starts W copies of this program
// as the ranks of one Gloo group (they meet through a FileStore); each rank checks what it received
// and the gradients that came back against values it computes alone, and exits non-zero on a
// mismatch.
#include <ATen/ATen.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "dist/rank_runner.h"
#include "moe/distributed.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
using moe::testing::dist::join;
using moe::testing::dist::my_rank;

// Rows rank `from` sends rank `to`: uneven, and zero for some pairs (to itself included).
int64_t rows_between(int from, int to) { return (from + 2 * to) % 3; }

// The value of row i of the rows `from` sends `to`, and the probe the receiver weights it with.
double row_value(int from, int to, int64_t i) { return 1000.0 * from + 100.0 * to + i; }
double probe_value(int from, int to, int64_t i) { return 7.0 * from + 3.0 * to + i + 0.5; }

TEST(CollectivesRank, Checks) {
  if (my_rank() < 0) GTEST_SKIP() << "one rank of Collectives.BetweenRealProcesses";
  const auto group = join();
  const int r = group->rank(), W = group->size();
  ASSERT_EQ(r, my_rank());

  // Uneven all-to-all of rows, values and gradient.
  std::vector<int64_t> send, recv;
  for (int j = 0; j < W; ++j) {
    send.push_back(rows_between(r, j));
    recv.push_back(rows_between(j, r));
  }
  std::vector<double> rows, expect, probe, expect_grad;
  for (int j = 0; j < W; ++j)
    for (int64_t i = 0; i < send[j]; ++i) {
      rows.push_back(row_value(r, j, i));
      expect_grad.push_back(probe_value(r, j, i));
    }
  for (int j = 0; j < W; ++j)
    for (int64_t i = 0; i < recv[j]; ++i) {
      expect.push_back(row_value(j, r, i));
      probe.push_back(probe_value(j, r, i));
    }
  const int64_t n_send = static_cast<int64_t>(rows.size());
  auto x = at::tensor(rows, at::kDouble).view({n_send, 1}).repeat({1, 3}).requires_grad_();
  const auto y = moe::dist::all_to_all_rows(group, x, send, recv);
  const int64_t n_recv = static_cast<int64_t>(expect.size());
  ASSERT_EQ(y.sizes(), (std::vector<int64_t>{n_recv, 3}));
  EXPECT_TRUE(at::equal(y, at::tensor(expect, at::kDouble).view({n_recv, 1}).repeat({1, 3})));
  (y * at::tensor(probe, at::kDouble).view({n_recv, 1})).sum().backward();
  EXPECT_TRUE(
      at::equal(x.grad(), at::tensor(expect_grad, at::kDouble).view({n_send, 1}).repeat({1, 3})));

  // The counts of that exchange, as the ranks would agree on them.
  EXPECT_EQ(group->exchange_counts(send), recv);

  // All-reduce: every rank gets the sum; the gradient is the sum of every rank's gradient.
  auto v = at::full({4}, double(r + 1)).requires_grad_();
  const auto s = moe::dist::all_reduce_sum(group, v);
  EXPECT_TRUE(at::equal(s, at::full({4}, W * (W + 1) / 2.0, at::kDouble)));
  (s * double(r + 1)).sum().backward();
  EXPECT_TRUE(at::equal(v.grad(), at::full({4}, W * (W + 1) / 2.0, at::kDouble)));

  // Bad counts are refused before any communication (so the other ranks are not left waiting on
  // a collective this rank never joins: every rank makes the same mistake here).
  EXPECT_TRUE(moe::testing::throws_with(
      [&] { group->all_to_all(x.detach(), std::vector<int64_t>(W, n_send + 1), recv); },
      {"send counts add up to"}));
  group->barrier();
  if (::testing::Test::HasFailure()) std::exit(1);
}

TEST(Collectives, BetweenRealProcesses) {
  if (my_rank() >= 0) GTEST_SKIP() << "parent test";
  if (!moe::dist::available()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  for (const int W : {2, 3, 4})
    EXPECT_TRUE(moe::testing::dist::ranks_pass(W, "CollectivesRank.Checks"));
}

TEST(Collectives, ARankThatNeverJoinsMakesTheOthersFailInTime) {
  if (my_rank() >= 0) GTEST_SKIP() << "parent test";
  if (!moe::dist::available()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  // Rank 1 of 2 never starts: rank 0 must give up with an error within the store's timeout.
  const std::string store =
      (fs::temp_directory_path() / ("moe_dist_alone_" + std::to_string(::getpid()))).string();
  fs::remove(store);
  const auto t0 = std::chrono::steady_clock::now();
  EXPECT_ANY_THROW(
      moe::dist::ProcessGroup::gloo_file(store, 0, 2, std::chrono::milliseconds(1500)));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  fs::remove(store);
}

TEST(Collectives, LauncherEnvironmentIsChecked) {
  if (my_rank() >= 0) GTEST_SKIP() << "parent test";
  if (!moe::dist::available()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  ::unsetenv("RANK");
  EXPECT_TRUE(moe::testing::throws_with(
      [] { moe::dist::ProcessGroup::gloo_from_env(std::chrono::seconds(1)); },
      {"RANK", "is not set"}));
  ::setenv("RANK", "two", 1);
  ::setenv("WORLD_SIZE", "2", 1);
  EXPECT_TRUE(moe::testing::throws_with(
      [] { moe::dist::ProcessGroup::gloo_from_env(std::chrono::seconds(1)); },
      {"RANK must be a non-negative integer", "two"}));
  ::unsetenv("RANK");
  ::unsetenv("WORLD_SIZE");
}

}  // namespace
