// The CPU features that decide which kernels run, and how bf16 products are computed.
//
// LibTorch 1.13 computes a bf16 matrix product through oneDNN only where the CPU has AVX-512
// (cpuinfo's avx512bw/vl/dq); elsewhere a generic loop accumulates in bf16 (a relative error of
// ~2.6e-2 on a 256×512·512×256 product) at ~4 GFLOP/s, 30-40× slower than float32. Every bf16
// product of the library therefore goes through one decision: products run natively in bf16 only
// where the CPU has bf16 dot products; elsewhere their bf16 operands are converted to float32 and
// multiplied by the float32 BLAS (float32 accumulation, float32 speed), while tensors stay in bf16
// storage. Tiny products (at most 16³ multiply-adds), which LibTorch never sends to oneDNN, take
// the float32 path on every CPU. docs/benchmarks.md measures both paths.
#pragma once

#include <cstdint>
#include <string>

namespace moe::cpu {

/// What CPUID and the operating system report (x86-64; all false elsewhere). AVX-512 and AMX count
/// only when the OS saves their registers (XCR0).
struct Features {
  std::string model;         ///< the brand string, e.g. "AMD EPYC 9B45"
  bool avx2 = false;         ///< AVX2 and FMA
  bool avx512 = false;       ///< AVX-512 F, BW, VL and DQ (what LibTorch's oneDNN path requires)
  bool avx512_bf16 = false;  ///< AVX512_BF16: bf16 dot products
  bool amx_bf16 = false;     ///< AMX-BF16 tiles
};

/// The features of this CPU, read once.
const Features& features();

/// How bf16 matrix products are computed.
enum class Bf16Gemm {
  kNative,   ///< in bf16 by LibTorch (oneDNN, float32 accumulation in hardware)
  kFloat32,  ///< operands converted to float32, float32 BLAS, result rounded to bf16 once
};

/// The path bf16 products take now. kNative only where all of these hold:
///  - the CPU has bf16 dot products (AVX512_BF16 or AMX-BF16) and the AVX-512 LibTorch requires;
///  - LibTorch's oneDNN path is enabled (at::globalContext().userEnabledMkldnn(), Python's
///    torch.backends.mkldnn.enabled);
///  - no oneDNN ISA cap (ONEDNN_MAX_CPU_ISA or DNNL_MAX_CPU_ISA) excludes bf16 instructions.
/// The environment variable MOE_BF16_GEMM=native|float32 overrides the choice (read once;
/// "auto" or unset: the rule above); set_bf16_gemm_override does so within a process.
Bf16Gemm bf16_gemm();

/// Where bf16 runs natively, LibTorch 1.13 still sends a product of at most 16³ multiply-adds to
/// its generic bf16-accumulating loop; such a product is computed in float32 instead.
constexpr int64_t kSmallestNativeBf16Product = 16 * 16 * 16 + 1;

/// True when a bf16 product of [m, k]·[k, n] runs natively: bf16_gemm() is kNative and
/// m·n·k >= kSmallestNativeBf16Product.
bool bf16_product_native(int64_t m, int64_t n, int64_t k);

/// For tests and benchmarks that compare the two paths in one process: forces `path` until
/// clear_bf16_gemm_override(). Not thread-safe against concurrent forwards.
void set_bf16_gemm_override(Bf16Gemm path);
void clear_bf16_gemm_override();

/// True when ONEDNN_MAX_CPU_ISA / DNNL_MAX_CPU_ISA is set to an ISA without bf16 instructions
/// (e.g. AVX2). LibTorch 1.13 still sends bf16 products to oneDNN there (it checks the CPU, not
/// the cap), and oneDNN throws for want of a kernel.
bool onednn_isa_cap_excludes_bf16();

/// One line for logs and benchmark headers: the CPU model, the ISA extensions that decide the
/// kernels, any ISA caps in the environment, and the bf16 product path, e.g.
/// "AMD EPYC 9B45; avx2 avx512 avx512_bf16; bf16 GEMM native (oneDNN)".
std::string describe();

/// The name of a path: "native" or "float32".
const char* to_string(Bf16Gemm path);

}  // namespace moe::cpu
