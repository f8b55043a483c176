// Writing a file so that a reader (or a crash) never sees it half-written: a temporary file in the
// same folder, fsync, rename over the target, fsync of the folder (docs/reliability.md, checkpoint
// safety). A process killed at any point leaves either the old file or the new one.
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

namespace moe::io {

/// Writes the concatenation of `chunks` (pointer, byte count) to `path` atomically. `who` prefixes
/// error messages (e.g. "save_safetensors"). Errors (c10::Error) name the file and the OS error;
/// the temporary file is removed and `path` is left as it was.
void write_file_atomically(const std::string& path,
                           const std::vector<std::pair<const void*, size_t>>& chunks,
                           const char* who = "write_file_atomically");

inline void write_file_atomically(const std::string& path, const std::string& text,
                                  const char* who = "write_file_atomically") {
  write_file_atomically(path, {{text.data(), text.size()}}, who);
}

}  // namespace moe::io
