// What a `moe train` configuration needs in memory, estimated from the configuration alone before
// anything is allocated, and the check that rejects a configuration the machine cannot hold.
// Without it an absurd width or depth (`--set moe.hidden=10000000`) was killed by the kernel's OOM
// killer, or ended after a minute in LibTorch's allocator message naming no key (docs/cli.md,
// "Memory check").
//
// The parameter count is exact up to biases of options the trainer never turns on, the
// activations an upper bound of what one training step keeps for its backward pass. Arithmetic is
// in long double, so values near INT64_MAX give huge numbers, not overflows.
#pragma once

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "train/train_config.h"

namespace moe::train {

/// One part of the estimate and the configuration keys (with their values) it grows with.
struct MemoryTerm {
  std::string what;
  long double bytes = 0;
  std::vector<std::string> keys;  ///< "moe.hidden = 128", ...
};

struct MemoryEstimate {
  long double parameters = 0;  ///< the model's parameter count
  long double bytes = 0;       ///< the sum of the terms
  std::vector<MemoryTerm> terms;
};

/// The memory the process may use: the smaller of MemAvailable (/proc/meminfo) and the cgroup's
/// limit (v2 memory.max, v1 memory.limit_in_bytes). `bytes` is +inf when neither is known.
struct MemoryLimit {
  long double bytes = std::numeric_limits<long double>::infinity();
  std::string description;  ///< "MemAvailable 20.1 GiB, cgroup limit 4 GiB"
};

/// What every process needs before its model and data: LibTorch, thread pools, allocator slack. A
/// term of every estimate, and added to the data of `moe data synthetic`.
inline constexpr long double kProcessBaseBytes = 256.0L * (1 << 20);

/// The bytes of `moe data synthetic --samples n --dim dim` (and of generating that data for a
/// multitask run): float64 features, their float32 copy, the labels' sine terms.
long double synthetic_data_bytes(int64_t samples, int64_t dim);

/// The estimate for `c`. `vocab_size` (lm) and `input_dim` (multitask) when known; 0 = their
/// bounds from the configuration (256 byte symbols; data.dim).
MemoryEstimate estimate_memory(const TrainConfig& c, int64_t vocab_size = 0, int64_t input_dim = 0);

/// "1.5 GiB", "3.2 TiB", "4e+30 bytes".
std::string format_bytes(long double b);

MemoryLimit available_memory();

/// Throws std::invalid_argument when the estimate of `c` exceeds what `limit` allows, naming the
/// largest parts with their keys and values.
void check_memory(const TrainConfig& c, const MemoryLimit& limit = available_memory(),
                  int64_t vocab_size = 0, int64_t input_dim = 0);

}  // namespace moe::train
