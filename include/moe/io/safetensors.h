// safetensors files: a little-endian u64 header length N, N bytes of JSON describing each tensor
// (dtype, shape, data_offsets into the byte buffer) plus an optional "__metadata__" string map,
// then the byte buffer. Readable from Python without pickle (DESIGN.md §4).
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moe::io {

struct TensorFile {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  ///< in file order (by offset)
  std::map<std::string, std::string> metadata;

  /// The tensor called `name`, or an undefined tensor.
  torch::Tensor find(const std::string& name) const;
};

/// Writes `tensors` (CPU copies of them; any device; float64/32/16, bfloat16, int64/32/16/8,
/// uint8, bool) atomically: a temporary file in the same folder, fsync, rename over `path`, fsync
/// of the folder. A crash at any point leaves either the old file or the new one. Throws
/// c10::Error naming the path and the OS error.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Reads and validates a file: header length within the file (and <= 100 MB), valid JSON, known
/// dtypes, non-negative shapes, shape × dtype size = byte length, offsets inside the buffer, no
/// overlaps or holes, BOOL bytes 0/1. A corrupted or truncated file raises c10::Error naming the
/// path and the problem. (A name repeated in the JSON keeps its last entry, as JSON parsers do.)
TensorFile load_safetensors(const std::string& path);

}  // namespace moe::io
