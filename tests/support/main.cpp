// The test programs' main: GoogleTest's, after two process-level settings.
//
// MOE_TEST_NO_NATIVE_BF16=1 (the no_native_bf16.* runs of tests/CMakeLists.txt) runs the process as
// if the CPU had no bf16 dot products (an AVX2-only CPU such as AMD Zen 2/3): the library's float32
// path for bf16 products (MOE_BF16_GEMM=float32 unless set otherwise), ATen's AVX2 kernels
// (ATEN_CPU_CAPABILITY=avx2) and oneDNN capped at AVX2 (ONEDNN_MAX_CPU_ISA=AVX2). ATen and oneDNN
// read these on their first use, after main() starts; child processes inherit them. One variable,
// because ctest's ENVIRONMENT property cannot pass a list through gtest_discover_tests.
//
// Then moe::runtime::apply_isa_caps turns LibTorch's oneDNN bf16 path off under such a cap, so
// that any bf16 product that bypasses the library takes LibTorch's bf16-accumulating fallback, as
// on that CPU, and fails the bf16 tolerances.
#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>

#include "moe/runtime.h"

int main(int argc, char** argv) {
  const char* no_bf16 = std::getenv("MOE_TEST_NO_NATIVE_BF16");
  if (no_bf16 != nullptr && std::strcmp(no_bf16, "1") == 0) {
    setenv("MOE_BF16_GEMM", "float32", 0);  // MOE_BF16_GEMM=native: the old behaviour
    setenv("ATEN_CPU_CAPABILITY", "avx2", 1);
    setenv("ONEDNN_MAX_CPU_ISA", "AVX2", 1);
  }
  moe::runtime::apply_isa_caps();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
