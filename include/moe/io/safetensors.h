// safetensors files: a little-endian u64 header length N, N bytes of JSON describing each tensor
// (dtype, shape, data_offsets into the byte buffer) plus an optional "__metadata__" string map,
// then the byte buffer. Readable from Python without pickle (docs/design.md §4).
#pragma once

#include <torch/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moe::io {

/// Metadata keys "moe.crc32c.<tensor name>" hold the CRC-32C (moe/io/crc32c.h) of each tensor's
/// bytes as 8 hex digits. save_safetensors writes them and reserves the prefix; load_safetensors
/// checks them and leaves them out of TensorFile::metadata.
inline constexpr char kChecksumPrefix[] = "moe.crc32c.";

struct TensorFile {
  std::vector<std::pair<std::string, torch::Tensor>> tensors;  ///< in file order (by offset)
  std::map<std::string, std::string> metadata;

  /// The tensor called `name`, or an undefined tensor.
  torch::Tensor find(const std::string& name) const;
};

/// Writes `tensors` (CPU copies of them; any device; float64/32/16, bfloat16, int64/32/16/8,
/// uint8, bool) atomically: a temporary file in the same folder, fsync, rename over `path`, fsync
/// of the folder. A crash at any point leaves either the old file or the new one. Each tensor's
/// checksum goes into the metadata (kChecksumPrefix). Throws c10::Error naming the path and the OS
/// error; c10::ValueError for a metadata key starting with kChecksumPrefix.
void save_safetensors(const std::string& path,
                      const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// Reads and validates a file: header length within the file (and <= 100 MB), valid JSON, known
/// dtypes, non-negative shapes, shape × dtype size = byte length, offsets inside the buffer, no
/// overlaps or holes, BOOL bytes 0/1, and each tensor's checksum where the file has them (files of
/// other tools have none and are read without). A corrupted or truncated file raises c10::Error
/// naming the path, the tensor and the problem. (A name repeated in the JSON keeps its last entry,
/// as JSON parsers do.)
TensorFile load_safetensors(const std::string& path);

}  // namespace moe::io
