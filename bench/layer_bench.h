// moe_bench --layers: routed layers with thousands of small experts (docs/benchmarks.md, "Many
// experts").
#pragma once

#include <ostream>
#include <string>
#include <vector>

namespace moe::bench {

/// Throws std::invalid_argument for an id that is not F256, F1024, F4096, H16x16, H32x32, H64x64.
void check_layer_shapes(const std::vector<std::string>& ids);

/// Times each layer shape (training forward + backward) against the dense equivalent, its router
/// alone and, when `naive`, a per-expert loop; prints a table and writes one JSON line per shape.
void run_layer_bench(const std::vector<std::string>& ids, int rounds, int warmup, bool naive,
                     std::ostream* json);

}  // namespace moe::bench
