// Small helpers shared by the tests.
#pragma once

#include <gtest/gtest.h>
#include <torch/types.h>

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace moe::testing {

/// Max |a - b| and whether every element satisfies |a - b| <= atol + rtol·|b|. Compared in float64.
::testing::AssertionResult all_close(const torch::Tensor& actual, const torch::Tensor& expected,
                                     double rtol, double atol);

/// Normalised mean squared error ||a - b||² / ||b||², in float64.
double nmse(const torch::Tensor& actual, const torch::Tensor& expected);

/// The smallest gap, over the rows of `logits` [T, E], between the k-th and (k+1)-th largest
/// value, in float64 (infinity when k >= E). A routing computed in float32 (or from bf16 inputs)
/// equals a float64 reference's only when this gap exceeds the float32 rounding of the logits:
/// tests that compare routings assert it, so that a draw with a near-tie fails clearly.
double topk_margin(const torch::Tensor& logits, int64_t k);

/// True iff the two tensors are bitwise equal (same shape, dtype and bytes).
bool bitwise_equal(const torch::Tensor& a, const torch::Tensor& b);

/// Runs f and expects a c10::Error (or subclass) whose message contains every one of `parts`.
::testing::AssertionResult throws_with(const std::function<void()>& f,
                                       const std::vector<std::string>& parts);

/// A shell command's exit status (-1 if it did not exit normally) and its stdout + stderr.
struct CommandResult {
  int status = -1;
  std::string output;
};
CommandResult run_command(const std::string& command);

/// The OpenBLAS build mapped into this process, read from /proc/self/maps (Debian's directory
/// names): "openmp", "pthread", or "" when neither is mapped.
std::string mapped_openblas_build();

/// The directory of OpenBLAS's OpenMP build next to the mapped pthread build, "" if not installed.
std::string openblas_openmp_dir_next_to_mapped();

/// A fresh folder under the system temp folder, removed with everything in it at scope exit.
struct TempDir {
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::filesystem::path path;
};

}  // namespace moe::testing

#define EXPECT_CLOSE(a, b, rtol, atol) \
  EXPECT_TRUE(::moe::testing::all_close((a), (b), (rtol), (atol)))
