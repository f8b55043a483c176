// moe_bench's command line: the options, their parsing and --help (docs/benchmarks.md).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::bench {

struct Options {
  std::vector<std::string> shapes{"C0", "C1", "C2", "C3", "C4", "C5"};
  std::vector<std::string> dists{"uniform"};
  std::vector<std::string> dtypes{"fp32"};
  std::vector<std::string> passes{"fwd", "fwdbwd"};
  std::vector<std::string> impls{"lib", "naive", "dense_dispatch", "dense_equiv"};
  int64_t tokens = 0;  // > 0: override T of every shape (small-T latency runs)
  int rounds = 5;
  int warmup = 2;
  int threads = 0;
  uint64_t seed = 0;
  std::string json;
  bool check = true;
  std::vector<std::string> layers;  // --layers: whole layers with many experts instead of shapes
  bool naive_layers = true;
  bool block_cache = true;  // moe::runtime::enable_cpu_block_cache
  /// --device: the device harness (device_bench.h) on this device; empty: the CPU harness.
  std::string device;
};

/// Prints --help.
void usage();

/// Reads argv (std::invalid_argument naming a bad flag or value); --help prints usage and exits.
Options parse(int argc, char** argv);

}  // namespace moe::bench
