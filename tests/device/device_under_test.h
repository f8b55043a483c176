// The device the device table runs on (tests/device/, docs/gpu.md).
//
// MOE_TEST_DEVICE names it ("cuda" unless set). test_device runs the table on CUDA where a CUDA
// device is present and skips every case with a message where none is; its portable.* copy
// (tests/CMakeLists.txt) runs the same table on the CPU's portable path, so that make test checks
// the table itself on every machine.
#pragma once

#include <ATen/Context.h>
#include <gtest/gtest.h>
#include <torch/cuda.h>
#include <torch/types.h>

#include <cmath>
#include <cstdlib>
#include <string>

#include "support/test_util.h"

namespace moe::testing {

inline at::Device device_under_test() {
  const char* name = std::getenv("MOE_TEST_DEVICE");
  return at::Device(name != nullptr && *name != '\0' ? name : "cuda");
}

/// Empty when the device can run the table; else why it cannot (the skip message). On CUDA, turns
/// TF32 off: the float32 cases compare to 1e-5, which TF32's 10-bit mantissa would not meet.
inline std::string device_unavailable() {
  const auto device = device_under_test();
  if (device.is_cuda()) {
    if (!torch::cuda::is_available())
      return "no CUDA device here (torch::cuda::is_available() is false): the CUDA table runs "
             "where one is present; its portable.* copy ran the same cases on the CPU";
    at::globalContext().setAllowTF32CuBLAS(false);
    at::globalContext().setAllowTF32CuDNN(false);
  } else if (!device.is_cpu()) {
    return "MOE_TEST_DEVICE=" + device.str() + ": the table runs on cuda or cpu";
  }
  return "";
}

/// actual (on any device) vs a float64 reference. float32: every element to rtol 1e-5 and atol
/// 1e-5. bfloat16: a squared error of at most bf16_nmse·||ref||² (an NMSE of 1e-4 for a few bf16
/// roundings) plus 1e-6 per element: an RMS floor of 1e-3 for values that are differences of
/// O(1) bf16 terms, such as a router's gradient (∝ o_i - o_j) or one that is zero but for rounding
/// (a normalised top-1 gate is 1 whatever the logits).
inline void expect_matches(const torch::Tensor& actual, const torch::Tensor& ref,
                           c10::ScalarType dtype, const std::string& what,
                           double bf16_nmse = 1e-4) {
  SCOPED_TRACE(what);
  ASSERT_TRUE(actual.defined() && ref.defined())
      << "missing (actual " << actual.defined() << ", reference " << ref.defined() << ")";
  const auto a = actual.detach().to(at::kCPU).to(at::kDouble);
  const auto b = ref.detach().to(at::kCPU).to(at::kDouble);
  ASSERT_EQ(a.sizes(), b.sizes());
  if (dtype == at::kBFloat16) {
    const double err = (a - b).pow(2).sum().item<double>();
    const double norm = b.pow(2).sum().item<double>();
    const auto n = static_cast<double>(b.numel());
    EXPECT_LE(err, bf16_nmse * norm + 1e-6 * n)
        << "NMSE " << err / norm << ", RMS error " << std::sqrt(err / n);
  } else {
    EXPECT_CLOSE(a, b, 1e-5, 1e-5);
  }
}

}  // namespace moe::testing

#define MOE_SKIP_WITHOUT_TEST_DEVICE()                                      \
  if (const std::string why = ::moe::testing::device_unavailable(); true) { \
    if (!why.empty()) GTEST_SKIP() << why;                                  \
  }
