// The two engine schedules (one expert at a time with a multi-threaded BLAS; many experts
// at once, in chunks of consecutive experts) against the dense float64 reference, output and every
// gradient (the reference's gradients come from autograd through plain LibTorch ops). Shapes are
// chosen so that each schedule, several chunks, a token sent twice to one expert and zero pair
// weights all occur.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <string>

#include "moe/cpu.h"
#include "moe/functional.h"
#include "moe/plan.h"
#include "moe/runtime.h"
#include "support/reference.h"
#include "support/test_util.h"

namespace {

using moe::Activation;
namespace mt = moe::testing;

struct Case {
  const char* name;
  int64_t T, E, K, d, h;
  Activation act;
  bool bias;
  bool recompute;
  at::ScalarType dtype = at::kDouble;  // of the engine's inputs; the reference runs in float64
  bool bf16_float32_path = false;      // bf16: force the float32 path (moe/cpu.h), else automatic
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

struct Result {
  torch::Tensor y;
  std::vector<torch::Tensor> grads;  // x, gate, w1, w2, (w3), (b1, b2)
};

struct Inputs {
  torch::Tensor x, expert_index, gate, w1, w2, w3, b1, b2, probe;
};

Inputs make_inputs(const Case& c) {
  torch::manual_seed(2024);
  const auto f64 = torch::dtype(at::kDouble);
  Inputs in;
  in.x = torch::randn({c.T, c.d}, f64);
  // Slot s of token t: a random expert; every 7th token repeats its first expert in slot 1 (the
  // same token twice in one expert's rows); every 11th slot is unused.
  in.expert_index = torch::randint(0, c.E, {c.T, c.K}, torch::kLong);
  auto ei = in.expert_index.accessor<int64_t, 2>();
  for (int64_t t = 0; t < c.T; ++t) {
    if (c.K > 1 && t % 7 == 0) ei[t][1] = ei[t][0];
    for (int64_t s = 0; s < c.K; ++s)
      if ((t * c.K + s) % 11 == 5) ei[t][s] = -1;
  }
  in.gate = torch::rand({c.T, c.K}, f64);
  in.gate.index_put_({torch::arange(0, c.T, 13), 0}, 0.0);  // zero weights still get gradients
  in.w1 = torch::randn({c.E, c.d, c.h}, f64) / std::sqrt(double(c.d));
  in.w2 = torch::randn({c.E, c.h, c.d}, f64) / std::sqrt(double(c.h));
  if (moe::is_gated(c.act)) in.w3 = torch::randn({c.E, c.d, c.h}, f64) / std::sqrt(double(c.d));
  if (c.bias) {
    in.b1 = torch::randn({c.E, c.h}, f64);
    in.b2 = torch::randn({c.E, c.d}, f64);
  }
  in.probe = torch::randn({c.T, c.d}, f64);
  return in;
}

std::vector<torch::Tensor> leaves(const Inputs& in) {
  std::vector<torch::Tensor> v{in.x, in.gate, in.w1, in.w2};
  for (const auto* t : {&in.w3, &in.b1, &in.b2})
    if (t->defined()) v.push_back(*t);
  return v;
}

Inputs with_grad(const Inputs& in) {
  Inputs r = in;
  for (auto* t : {&r.x, &r.gate, &r.w1, &r.w2, &r.w3, &r.b1, &r.b2})
    if (t->defined()) *t = t->detach().clone().requires_grad_(true);
  return r;
}

Result grads_of(const torch::Tensor& y, const Inputs& in) {
  (y * in.probe).sum().backward();
  Result r{y.detach(), {}};
  for (const auto& t : leaves(in)) r.grads.push_back(t.grad());
  return r;
}

// The inputs in `dtype` (float inputs are drawn in float64 and rounded).
Inputs cast(const Inputs& in, at::ScalarType dtype) {
  Inputs r = in;
  for (auto* t : {&r.x, &r.gate, &r.w1, &r.w2, &r.w3, &r.b1, &r.b2, &r.probe})
    if (t->defined()) *t = t->to(dtype);
  return r;
}

Result run_engine(const Inputs& base, const Case& c) {
  if (c.bf16_float32_path) moe::cpu::set_bf16_gemm_override(moe::cpu::Bf16Gemm::kFloat32);
  struct Clear {
    ~Clear() { moe::cpu::clear_bf16_gemm_override(); }
  } clear;
  const auto in = with_grad(cast(base, c.dtype));
  const auto plan = moe::build_routing_plan(in.expert_index, c.E);
  const auto pw = moe::pair_weights(plan, in.gate);
  const auto y = moe::functional::expert_mlp(in.x, plan, pw, {in.w1, in.w2, in.w3, in.b1, in.b2},
                                             c.act, c.recompute);
  return grads_of(y, in);
}

Result run_reference(const Inputs& base, const Case& c) {
  const auto in = with_grad(cast(cast(base, c.dtype), at::kDouble));
  const auto y = mt::dense_moe_reference(in.x, in.expert_index, in.gate, in.w1, in.w2, in.w3, in.b1,
                                         in.b2, c.act);
  return grads_of(y, in);
}

class EngineSchedules : public ::testing::TestWithParam<Case> {};

TEST_P(EngineSchedules, OutputAndGradientsMatchTheDenseReference) {
  const Case c = GetParam();
  const auto in = make_inputs(c);
  const auto got = run_engine(in, c);
  const auto ref = run_reference(in, c);
  // float32: sums of at most d + h = 56 rounded products per GEMM, a few GEMMs deep. bf16: NMSE
  // <= 1e-4 for the output and every gradient. Not elementwise: with biases an output row sums
  // expert outputs several times its size, and the native path rounds each of them to bf16
  // (measured: 1 of 24000 outputs 0.049 off where the float32 path keeps them in float32).
  const bool f64 = c.dtype == at::kDouble, bf16 = c.dtype == at::kBFloat16;
  if (bf16) {
    EXPECT_LE(mt::nmse(got.y, ref.y), 1e-4);
  } else {
    EXPECT_CLOSE(got.y, ref.y, f64 ? 1e-10 : 2e-5, f64 ? 1e-10 : 2e-5);
  }
  ASSERT_EQ(got.grads.size(), ref.grads.size());
  const char* names[] = {"x", "gate", "w1", "w2", "w3/b1", "b1/b2", "b2"};
  for (size_t i = 0; i < ref.grads.size(); ++i) {
    ASSERT_TRUE(got.grads[i].defined()) << names[i];
    EXPECT_EQ(got.grads[i].scalar_type(), c.dtype) << names[i];
    if (bf16) {
      EXPECT_LE(mt::nmse(got.grads[i], ref.grads[i]), 1e-4) << names[i];
    } else {
      EXPECT_CLOSE(got.grads[i], ref.grads[i], f64 ? 1e-9 : 1e-4, f64 ? 1e-9 : 1e-4) << names[i];
    }
  }
}

TEST_P(EngineSchedules, BitwiseTheSameOnEveryRun) {
  const Case c = GetParam();
  const auto in = make_inputs(c);
  const auto first = run_engine(in, c);
  const auto second = run_engine(in, c);
  EXPECT_TRUE(mt::bitwise_equal(first.y, second.y));
  for (size_t i = 0; i < first.grads.size(); ++i)
    EXPECT_TRUE(mt::bitwise_equal(first.grads[i], second.grads[i])) << "gradient " << i;
}

// The engine's own work (which expert runs where, the column-split sums into the token rows, the
// elementwise passes in fixed row blocks) does not depend on the thread count. The serial
// schedule's GEMMs are the BLAS's own: OpenBLAS's pthread build keeps its thread count whatever
// at::set_num_threads says, while its OpenMP build (and other BLAS libraries that run on the
// OpenMP pool) follow it, and may split a GEMM differently at one and two threads (measured with
// the Zen and Haswell kernels: the results differ in the last bits). So the serial schedule is
// compared only on OpenBLAS's pthread or sequential build.
TEST_P(EngineSchedules, BitwiseTheSameAtOneAndTwoThreads) {
  const Case c = GetParam();
  const std::string blas = moe::runtime::openblas_threading();
  if (c.dtype == at::kBFloat16 && !c.bf16_float32_path &&
      moe::cpu::bf16_gemm() == moe::cpu::Bf16Gemm::kNative)
    GTEST_SKIP() << "oneDNN's bf16 GEMMs follow the intra-op thread count";
  if (std::strncmp(c.name, "serial", 6) == 0 && blas != "pthread" && blas != "sequential")
    GTEST_SKIP() << "the serial schedule's multi-threaded GEMMs may round by the thread count on "
                 << (blas.empty() ? "this BLAS (not OpenBLAS)" : "OpenBLAS's " + blas + " build");
  const auto in = make_inputs(c);
  const int before = at::get_num_threads();
  at::set_num_threads(1);
  const auto one = run_engine(in, c);
  at::set_num_threads(2);
  const auto two = run_engine(in, c);
  at::set_num_threads(before);
  EXPECT_TRUE(mt::bitwise_equal(one.y, two.y));
  for (size_t i = 0; i < one.grads.size(); ++i)
    EXPECT_TRUE(mt::bitwise_equal(one.grads[i], two.grads[i])) << "gradient " << i;
}

// Serial: fewer than 4 busy experts; the *_large cases have ~1000 rows of h = 40 per expert, more
// than ATen's grain of 32768 elements, so their elementwise passes are split into blocks (ATen's
// own split moved float32 SiLU's results with the thread count; float64's exp rounded alike).
// Parallel: 64 experts of ~128 rows each; ~8200 pairs make two chunks of at most 4096 rows (a
// mutation that drops the chunk offset in the sum fails these).
INSTANTIATE_TEST_SUITE_P(
    Shapes, EngineSchedules,
    ::testing::Values(
        Case{"serial_relu_bias", 1500, 3, 2, 16, 24, Activation::kReLU, true, false},
        Case{"serial_swiglu", 1500, 3, 2, 16, 24, Activation::kSwiGLU, false, false},
        Case{"serial_gelu_recompute", 1200, 2, 2, 8, 12, Activation::kGELU, true, true},
        Case{"serial_silu_large_f32", 1500, 3, 2, 16, 40, Activation::kSiLU, false, false,
             at::kFloat},
        Case{"serial_swiglu_large_recompute_f32", 1500, 3, 2, 16, 40, Activation::kSwiGLU, true,
             true, at::kFloat},
        Case{"serial_gelu_large_f32", 1500, 3, 2, 16, 40, Activation::kGELU, false, false,
             at::kFloat},
        // bf16 on the float32 path (biases, both schedules, gated units, recompute) and on the
        // automatic one; an expert without tokens occurs in the chunks cases (64 experts).
        Case{"serial_relu_bias_Bf16_float32", 1500, 3, 2, 16, 24, Activation::kReLU, true, false,
             at::kBFloat16, true},
        Case{"serial_swiglu_recompute_Bf16_float32", 1500, 3, 2, 16, 24, Activation::kSwiGLU, false,
             true, at::kBFloat16, true},
        Case{"chunks_geglu_bias_Bf16_float32", 3000, 64, 3, 8, 12, Activation::kGEGLU, true, false,
             at::kBFloat16, true},
        Case{"chunks_silu_recompute_Bf16_float32", 3000, 64, 3, 8, 12, Activation::kSiLU, true,
             true, at::kBFloat16, true},
        Case{"serial_gelu_bias_Bf16_auto", 1500, 3, 2, 16, 24, Activation::kGELU, true, false,
             at::kBFloat16, false},
        Case{"chunks_relu", 3000, 64, 3, 8, 12, Activation::kReLU, false, false},
        Case{"chunks_geglu_bias", 3000, 64, 3, 8, 12, Activation::kGEGLU, true, false},
        Case{"chunks_silu_recompute", 3000, 64, 3, 8, 12, Activation::kSiLU, true, true},
        Case{"chunks_relu_recompute", 3000, 64, 3, 8, 12, Activation::kReLU, true, true}),
    [](const auto& info) { return std::string(info.param.name); });

// ctest runs these tests a second time on OpenBLAS's OpenMP build (the one the programs load,
// include/moe/runtime.h), by putting its directory on LD_LIBRARY_PATH; this checks that the run
// really is on it.
TEST(EngineThreading, RunsOnTheOpenBLASBuildOfLdLibraryPath) {
  const char* path = std::getenv("LD_LIBRARY_PATH");
  if (path == nullptr || std::strstr(path, "/openblas-openmp") == nullptr)
    GTEST_SKIP() << "only in the ctest entries that run on OpenBLAS's OpenMP build";
  EXPECT_EQ(mt::mapped_openblas_build(), "openmp");
  EXPECT_EQ(moe::runtime::openblas_threading(), "openmp");
}

}  // namespace
