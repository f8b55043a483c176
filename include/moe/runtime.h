// Process-level settings for programs that use the library (the demo, the benchmark, the CLI).
// Library code never calls these: they change global state of the process.
#pragma once

#include <cstdint>
#include <string>

namespace moe::runtime {

/// Sets the intra-op thread count: `threads` if > 0, else $MOE_NUM_THREADS if set, else every core
/// (libtorch 1.13 defaults to half of them). Returns the count in effect. Throws
/// std::invalid_argument, naming the source (`option`, the program's name for `threads`, or
/// MOE_NUM_THREADS) and the allowed range, for a count below 0 or above max_threads(), or a
/// MOE_NUM_THREADS that is not an integer in [1, max_threads()].
int configure_threads(int threads = 0, const char* option = "--threads");

/// The largest thread count configure_threads accepts: 4 per hardware thread.
int max_threads();

/// LibTorch 1.13 sends bf16 matrix products to oneDNN whenever the CPU has AVX-512, even when
/// ONEDNN_MAX_CPU_ISA (or DNNL_MAX_CPU_ISA) caps oneDNN below the ISAs with bf16 instructions, and
/// oneDNN then throws for want of a kernel. Under such a cap this turns LibTorch's oneDNN path off,
/// as on a CPU without those instructions (moe/cpu.h), so that
/// `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 program ...` runs as on an AVX2-only CPU.
/// configure_threading calls it.
void apply_isa_caps();

/// One threading system per process. ATen's intra-op threads are libgomp's OpenMP pool. OpenBLAS's
/// pthread build (Debian's default) runs a second pool whose worker spins for ~0.1 s after every
/// multi-threaded GEMM; whatever runs on OpenMP threads meanwhile shares a core with it (the
/// engine's small experts ran at half speed), and spinning OpenMP workers do the same to OpenBLAS.
/// OpenBLAS's OpenMP build (Debian: libopenblas0-openmp) runs its GEMMs on libgomp's pool itself.
///
/// Call it first thing in main(); it also calls apply_isa_caps(), and ends the program (exit code
/// 2, the message on stderr) when MOE_BF16_GEMM is malformed. If the process loaded the pthread
/// build and the OpenMP build is installed next to it, this re-executes the program (same argv)
/// with the OpenMP build first on LD_LIBRARY_PATH. If the process still has two pools and
/// OMP_WAIT_POLICY is unset, it re-executes with OMP_WAIT_POLICY=PASSIVE, so that idle OpenMP
/// workers sleep (libgomp and OpenBLAS read their settings once, when they are loaded, hence the
/// re-execution). Returns when nothing is left to change, or when re-execution failed (reported on
/// stderr; the program is correct either way, only slower). MOE_OPENBLAS=keep keeps the loaded
/// build.
void configure_threading(char** argv);

/// Makes freed CPU tensor blocks of 1 MiB and more reusable by later allocations of the same size
/// class (sizes rounded up by at most 1/8), keeping at most `max_cached_bytes` of freed blocks.
/// A training step allocates the same large buffers every step (weight gradients [E, d, h], router
/// intermediates, engine scratch); without the cache glibc maps each fresh and the kernel
/// zero-fills every page (docs/benchmarks.md, "Many experts"). Values are unaffected: only where
/// memory comes from changes. `max_cached_bytes` < 0 takes $MOE_CPU_BLOCK_CACHE_MB (MiB), else 4096
/// MiB; 0 leaves the allocator as it is. Call before creating tensors that should use it (blocks
/// made earlier are freed by their own allocator). Returns whether the cache is on. Throws
/// c10::ValueError for a MOE_CPU_BLOCK_CACHE_MB that is not an integer >= 0.
bool enable_cpu_block_cache(int64_t max_cached_bytes = -1);

/// Bytes of freed blocks the cache holds now (0 without the cache).
int64_t cpu_block_cache_bytes();

/// The OpenBLAS build this process runs: "pthread", "openmp", "sequential", or "" when the BLAS is
/// not OpenBLAS.
std::string openblas_threading();

}  // namespace moe::runtime
