// The benchmark harness as a function, shared by the moe_bench program and `moe bench`.
#pragma once

namespace moe::bench {

/// Runs the harness with command-line arguments (argv[0] is the program name; see --help).
/// Returns the process exit status: 0, 1 on errors, 2 when an implementation fails the float64
/// correctness gate.
int bench_main(int argc, char** argv);

}  // namespace moe::bench
