// moe::runtime::enable_cpu_block_cache (include/moe/runtime.h): freed large blocks come back for
// the next allocation of their size class, values are unaffected, the cap holds, and a bad
// MOE_CPU_BLOCK_CACHE_MB is named. Each test runs in its own process under ctest; run directly,
// the environment test comes first, before the cache is on.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <vector>

#include "moe/runtime.h"
#include "support/test_util.h"

namespace {

using moe::testing::throws_with;

TEST(CpuBlockCache, TheEnvironmentSetsItOffOrIsNamedWhenBad) {
  setenv("MOE_CPU_BLOCK_CACHE_MB", "0", 1);
  EXPECT_FALSE(moe::runtime::enable_cpu_block_cache());
  EXPECT_EQ(moe::runtime::cpu_block_cache_bytes(), 0);
  setenv("MOE_CPU_BLOCK_CACHE_MB", "lots", 1);
  EXPECT_TRUE(throws_with([] { moe::runtime::enable_cpu_block_cache(); },
                          {"MOE_CPU_BLOCK_CACHE_MB", "integer >= 0", "'lots'"}));
  unsetenv("MOE_CPU_BLOCK_CACHE_MB");
}

TEST(CpuBlockCache, ReusesFreedBlocksKeepsValuesAndHoldsTheCap) {
  ASSERT_TRUE(moe::runtime::enable_cpu_block_cache(int64_t{16} << 20));
  const int64_t n = int64_t{1} << 20;  // 4 MiB of float32
  auto a = at::ones({n});
  const void* where = a.data_ptr();
  a = at::Tensor();
  EXPECT_EQ(moe::runtime::cpu_block_cache_bytes(), 4 << 20);
  // The same size class gets the same block back; what it held does not leak into at::zeros.
  auto b = at::zeros({n});
  EXPECT_EQ(b.data_ptr(), where);
  EXPECT_EQ(moe::runtime::cpu_block_cache_bytes(), 0);
  EXPECT_EQ(b.max().item<float>(), 0.0f);  // (reductions to a scalar: no large temporaries)
  EXPECT_EQ(b.min().item<float>(), 0.0f);
  // Small tensors bypass the cache.
  { auto small = at::ones({1000}); }
  EXPECT_EQ(moe::runtime::cpu_block_cache_bytes(), 0);
  // Ten 4 MiB blocks freed at once: four are kept (16 MiB), six go back to the system.
  std::vector<at::Tensor> many;
  for (int i = 0; i < 10; ++i) many.push_back(at::full({n}, static_cast<float>(i)));
  for (int i = 0; i < 10; ++i) EXPECT_EQ(many[i][n - 1].item<float>(), static_cast<float>(i));
  many.clear();
  EXPECT_EQ(moe::runtime::cpu_block_cache_bytes(), 16 << 20);
}

}  // namespace
