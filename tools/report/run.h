// Reading a run for the report (tools/report/report.h): its metrics.jsonl as the records of
// tools/train/metrics_schema.h, the last of each step kept, and the MoE layers gathered across
// the train records.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "train/metrics_schema.h"

namespace moe::report {

using Json = nlohmann::ordered_json;  // keeps the start record's keys in file order

struct Run {
  std::string name;                         // the folder's name
  std::string metrics_path;                 // as given, for messages
  std::vector<Json> starts;                 // every start record, in file order
  std::vector<metrics::TrainRecord> train;  // ascending step; the last record of each step
  std::vector<metrics::EvalRecord> eval;    // by split, then ascending step; the last of each
  int64_t records = 0;                      // non-blank lines
  int64_t replaced = 0;                     // records replaced by a later one (resumed runs)
  bool ended = false;
  int64_t end_step = 0;
  double end_elapsed_s = metrics::kMissing;
};

/// Reads DIR/metrics.jsonl. require_train: the run itself (not a compare dir) must have train
/// records. Errors (std::runtime_error) name the file, the line and the problem; a last line
/// without its newline that is not JSON is a record being written, and is left out.
Run load_run(const std::string& dir, bool require_train);

/// The folder's own name: "runs/a/" and "runs/a" give "a", "." gives the current folder's name.
std::string folder_name(const std::string& dir);

/// The splits of the eval records, in the order of Run::eval.
std::vector<std::string> eval_splits(const Run& run);

/// Everything logged about one MoE layer, in step order.
struct Layer {
  std::string name;
  std::vector<std::pair<int64_t, const metrics::LayerRecord*>> records;  // into Run::train
  size_t experts = 0;  // the longest share list seen
};

/// The layers of the train records, in order of first appearance.
std::vector<Layer> collect_layers(const Run& run);

/// A statistic of a layer record as a number: NaN when the record lacks it.
inline double stat(const std::optional<double>& v) { return v.value_or(metrics::kMissing); }

}  // namespace moe::report
