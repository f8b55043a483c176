// Run configuration of the `moe` command: a TOML file, command-line overrides (`--set
// model.num_experts=16`), typed reads with clear errors, and the effective configuration written
// back into the run folder. Only tools/ parses strings (docs/design.md §2); the library takes typed
// options.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moe::cli {

class RunConfig {
 public:
  RunConfig();
  ~RunConfig();
  RunConfig(const RunConfig&);
  RunConfig& operator=(const RunConfig&);

  /// Parses a TOML file; syntax errors name the file, line and column (std::invalid_argument).
  static RunConfig from_file(const std::string& path);
  static RunConfig from_string(const std::string& text, const std::string& source = "<string>");

  /// Applies "dotted.key=value". The value is read as TOML (42, 0.5, true, "s", [1, 2]); anything
  /// that is not valid TOML is taken as a string (paths need no quotes). Missing tables are
  /// created; a key path through a non-table value is an error.
  void set(const std::string& assignment);

  bool has(const std::string& key) const;
  /// Typed reads: the default when the key is absent, an error naming the key, the expected type
  /// and the value found when the type differs (an integer is accepted where a float is asked).
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_double(const std::string& key, double fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  std::vector<int64_t> get_int_list(const std::string& key,
                                    const std::vector<int64_t>& fallback) const;

  /// Every leaf key (dotted) present in the configuration that no get_* / has() call has asked
  /// for: after a program has read everything it understands, these are typos or keys of another
  /// task, and are reported as errors.
  std::vector<std::string> unread_keys() const;

  /// Every leaf key (dotted) with its value as TOML text, e.g. {"run.lr": "0.002"}.
  std::map<std::string, std::string> leaves() const;

  /// The configuration as TOML text, and written to a file (the run folder's config.toml).
  std::string to_toml() const;
  void write(const std::string& path) const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace moe::cli
