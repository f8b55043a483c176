// Process-level settings for programs that use the library (the demo, the benchmark, the CLI).
// Library code never calls these: they change global state of the process.
#pragma once

namespace moe::runtime {

/// Sets the intra-op thread count: `threads` if > 0, else $MOE_NUM_THREADS if set, else every core
/// (libtorch 1.13 defaults to half of them). Returns the count in effect.
int configure_threads(int threads = 0);

/// OpenMP workers that spin after a parallel region steal the cores from OpenBLAS's own threads
/// (1.2-1.5x slower eager code on 2 cores). libgomp reads OMP_WAIT_POLICY once, when it is loaded,
/// so a program must have it in its environment from the start: if it is unset, this sets it to
/// PASSIVE and re-executes the program (same argv). Call it first thing in main(); it returns only
/// when the policy is already set (or re-execution failed, which is reported on stderr).
void ensure_passive_omp_wait(char** argv);

}  // namespace moe::runtime
