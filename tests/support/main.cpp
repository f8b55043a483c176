// The test programs' main: GoogleTest's, after two process-level settings.
//
// MOE_TEST_NO_NATIVE_BF16=1 (the no_native_bf16.* runs of tests/CMakeLists.txt) runs the process as
// if the CPU had no bf16 dot products (an AVX2-only CPU such as AMD Zen 2/3):
//  - the library's float32 path for bf16 products (MOE_BF16_GEMM=float32 unless set otherwise;
//    MOE_BF16_GEMM=native reproduces the library before that path existed);
//  - OpenBLAS's AVX2 kernels (OPENBLAS_CORETYPE=Haswell unless the environment sets a core:
//    OpenBLAS reads it when it is loaded, so the program re-executes itself once; only on CPUs
//    with AVX2, as the next);
//  - ATen's AVX2 kernels (ATEN_CPU_CAPABILITY=avx2; Debian's LibTorch 1.13 has no AVX-512 kernels,
//    a LibTorch built with them would use them) and oneDNN capped at AVX2
//    (ONEDNN_MAX_CPU_ISA=AVX2), read on their first use;
//  - then moe::runtime::apply_isa_caps turns LibTorch's oneDNN bf16 path off under that cap, so
//    any bf16 product that bypasses the library takes LibTorch's bf16-accumulating fallback, as on
//    such a CPU, and fails the bf16 tolerances.
// One variable, because ctest's ENVIRONMENT property cannot pass a list through
// gtest_discover_tests (a second NAME=VALUE in the list is taken for a property name, silently).
// Other variables come as arguments instead: --moe-env=NAME=VALUE sets NAME before anything reads
// it (the portable.*, small_experts.* and per_expert.* copies). Child processes inherit the
// settings.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "moe/cpu.h"
#include "moe/runtime.h"

int main(int argc, char** argv) {
  // --moe-env=NAME=VALUE: set, and removed from the arguments GoogleTest sees.
  const char* const prefix = "--moe-env=";
  int kept = 1;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], prefix, std::strlen(prefix)) != 0) {
      argv[kept++] = argv[i];
      continue;
    }
    const char* setting = argv[i] + std::strlen(prefix);
    const char* eq = std::strchr(setting, '=');
    if (eq == nullptr || eq == setting) {
      std::fprintf(stderr, "test main: %s must be --moe-env=NAME=VALUE\n", argv[i]);
      return 2;
    }
    setenv(std::string(setting, eq).c_str(), eq + 1, 1);
  }
  argc = kept;
  argv[argc] = nullptr;
  const char* no_bf16 = std::getenv("MOE_TEST_NO_NATIVE_BF16");
  if (no_bf16 != nullptr && std::strcmp(no_bf16, "1") == 0) {
    setenv("MOE_BF16_GEMM", "float32", 0);
    setenv("ONEDNN_MAX_CPU_ISA", "AVX2", 1);
    // ATen and OpenBLAS do not check these against the CPU: AVX2 kernels on a CPU without AVX2
    // would die of SIGILL. Such a CPU runs its own (older) kernels, and the float32 path anyway.
    const bool avx2 = moe::cpu::features().avx2;
    if (avx2) setenv("ATEN_CPU_CAPABILITY", "avx2", 1);
    if (avx2 && std::getenv("OPENBLAS_CORETYPE") == nullptr) {
      setenv("OPENBLAS_CORETYPE", "Haswell", 1);
      execv("/proc/self/exe", argv);
      std::fprintf(stderr, "test main: could not re-execute with OPENBLAS_CORETYPE (%s)\n",
                   std::strerror(errno));
      return 1;
    }
  }
  moe::runtime::apply_isa_caps();
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
