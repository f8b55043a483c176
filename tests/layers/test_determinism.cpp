// Determinism: the same seed gives bitwise-identical outputs and gradients across repeats, and at 1
// and 2 intra-op threads where the BLAS keeps its own thread count (OpenBLAS's pthread or
// sequential build): the router's GEMMs and the engine's serial schedule are the BLAS's own, and
// its OpenMP build splits them by the thread count (with the Zen kernels, or at T = 2048, they
// differ in the last bits; README, "Engine").
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <string>

#include "moe/nn/sparse_moe.h"
#include "moe/runtime.h"
#include "support/test_util.h"

namespace {

std::vector<torch::Tensor> run_once(int threads) {
  at::set_num_threads(threads);
  torch::manual_seed(123);
  moe::nn::SparseMoE layer(moe::nn::SparseMoEOptions(64, 8)
                               .hidden_size(96)
                               .top_k(2)
                               .router(moe::RouterKind::kNoisyTopK)
                               .activation(moe::Activation::kSwiGLU)
                               .router_zero_init(false));
  auto x = torch::randn({512, 64}, torch::requires_grad());
  auto out = layer->forward(x);
  (out.output.pow(2).mean() + out.aux_loss).backward();
  std::vector<torch::Tensor> r{out.output.detach(), out.aux_loss.detach(), x.grad()};
  for (const auto& p : layer->parameters()) r.push_back(p.grad());
  return r;
}

TEST(Determinism, BitwiseAcrossRepeats) {
  const auto ref = run_once(at::get_num_threads());
  const auto again = run_once(at::get_num_threads());
  ASSERT_EQ(again.size(), ref.size());
  for (size_t i = 0; i < ref.size(); ++i)
    EXPECT_TRUE(moe::testing::bitwise_equal(again[i], ref[i])) << "tensor " << i;
}

TEST(Determinism, BitwiseAcrossThreadCounts) {
  const std::string blas = moe::runtime::openblas_threading();
  if (blas != "pthread" && blas != "sequential")
    GTEST_SKIP() << "the BLAS's GEMMs may round by the intra-op thread count on "
                 << (blas.empty() ? "this BLAS (not OpenBLAS)" : "OpenBLAS's " + blas + " build");
  const int before = at::get_num_threads();
  const auto ref = run_once(1);
  for (int threads : {1, 2, 2, 1}) {
    const auto again = run_once(threads);
    ASSERT_EQ(again.size(), ref.size());
    for (size_t i = 0; i < ref.size(); ++i)
      EXPECT_TRUE(moe::testing::bitwise_equal(again[i], ref[i]))
          << "tensor " << i << " threads " << threads;
  }
  at::set_num_threads(before);
}

}  // namespace
