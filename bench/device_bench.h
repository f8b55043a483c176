// moe_bench --device DEV: the library on a device (CUDA) side by side with what users would
// otherwise write there, on identical inputs, weights and routing (docs/benchmarks.md,
// docs/gpu.md):
//   lib          routing plan on the device (PlanLayout::kPadded) + the engine's portable backend
//   naive        the Mixtral-style eager loop (nonzero per expert: E host synchronisations)
//   grouped_mm   torch._grouped_mm called directly on the sorted rows (the anchor), where the
//                LibTorch has it (PyTorch 2.8+; found through the dispatcher, so the program
//                builds against any LibTorch)
//   dense_equiv  one expert's MLP on a contiguous [T·k, d] copy of the tokens: eta's denominator
// `--device cpu` runs the same harness on the CPU (make test's smoke test of it).
#pragma once

#include "bench_options.h"

namespace moe::bench {

/// Runs the device harness; returns the exit status (0, 1 on errors, 2 when an implementation
/// fails the float64 correctness gate).
int run_device_bench(const Options& o);

}  // namespace moe::bench
