// metrics.jsonl, the records of a `moe train` run (one JSON object a line: start, train, eval,
// end; tools/train/metrics_schema.h, docs/cli.md), and the scalars of those records for the
// TensorBoard event file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <utility>
#include <vector>

namespace moe::train {

class MetricsLog {
 public:
  explicit MetricsLog(const std::filesystem::path& path) : path_(path) {}

  /// A resumed run drops the records after the checkpoint's step: they will be written again.
  /// Lines that are not JSON (cut short by a kill) are dropped too. Returns the records kept.
  std::vector<nlohmann::json> truncate_after(int64_t step);
  /// The records truncate_after would keep, without changing the file (the ranks of a run on
  /// several processes that do not write); `kept_lines`, if given, gets their lines.
  std::vector<nlohmann::json> records_up_to(int64_t step, std::string* kept_lines = nullptr) const;
  /// One record, flushed at once; errors name the file.
  void append(const nlohmann::json& j);
  /// Before a checkpoint: the records up to its step must survive whatever survives it.
  void sync() const;

 private:
  std::filesystem::path path_;
};

/// The scalars of a train or eval record, for TensorBoard: train/<key>, moe/<layer>/<key>,
/// <split>/<key> (and <split>/mse<i> for the per-task list).
std::vector<std::pair<std::string, double>> tensorboard_scalars(const nlohmann::json& rec);

}  // namespace moe::train
