// The records of metrics.jsonl, one JSON object a line: the one definition in code of what
// `moe train` writes (tools/train/interval_stats.cpp, tools/train/metrics_log.cpp,
// tools/train/run_training.cpp) and `moe report` reads (tools/report/run.cpp). The format is
// described for users in docs/cli.md ("Metrics"); this header names its record kinds and fields and
// holds the records as structs, with to_json for writers and from_json for readers (nlohmann json's
// conventions: `json j = record;`, `rec.get<TrainRecord>()`).
//
//   {"event":"start", ...}                 one per session (a resumed run appends another)
//   {"event":"train","step":..., ...}      TrainRecord: means over a logging interval
//   {"event":"eval","step":...,"split":..} EvalRecord: an evaluation on a split
//   {"event":"end","step":...,...}         EndRecord: the run reached run.steps
//
// Numbers: a double field is always written (a non-finite value as null); a reader finds a number
// missing (an absent key, null, anything but a number) as kMissing, NaN; JSON has no non-finite
// numbers, so NaN always means "missing". A std::optional field is written only when it holds a
// value and read as nullopt when missing. Readers ignore unknown record kinds and keys.
//
// Torch-free (nlohmann json only): the report builds on it without LibTorch.
#pragma once

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace moe::metrics {

/// The file in a run folder.
inline constexpr const char* kFileName = "metrics.jsonl";

/// The kinds of record: the value of key::kEvent.
namespace event {
inline constexpr const char* kStart = "start";
inline constexpr const char* kTrain = "train";
inline constexpr const char* kEval = "eval";
inline constexpr const char* kEnd = "end";
}  // namespace event

/// The keys of the records.
namespace key {
// every record
inline constexpr const char* kEvent = "event";
inline constexpr const char* kStep = "step";  ///< all but start records
// start records (free-form: a reader shows every key; these are the ones the trainer writes)
inline constexpr const char* kTask = "task";
inline constexpr const char* kModel = "model";
inline constexpr const char* kRouter = "router";  ///< "none" for dense and multi-task models
inline constexpr const char* kSteps = "steps";
inline constexpr const char* kParameters = "parameters";
inline constexpr const char* kActiveParameters = "active_parameters";
inline constexpr const char* kThreads = "threads";
inline constexpr const char* kOpenblas = "openblas";
inline constexpr const char* kCpu = "cpu";
inline constexpr const char* kBf16Gemm = "bf16_gemm";
inline constexpr const char* kResumedFrom = "resumed_from";  ///< the checkpoint's step, or null
inline constexpr const char* kTime = "time";
inline constexpr const char* kNumExperts = "num_experts";
inline constexpr const char* kTopK = "top_k";
// train and end records
inline constexpr const char* kElapsedS = "elapsed_s";  ///< the run's time across sessions
// train records
inline constexpr const char* kLoss = "loss";  ///< train: task + auxiliary loss
inline constexpr const char* kTaskLoss = "task_loss";
inline constexpr const char* kAuxLoss = "aux_loss";
inline constexpr const char* kLr = "lr";
inline constexpr const char* kTokensPerS = "tokens_per_s";
inline constexpr const char* kGradNorm = "grad_norm";  ///< before clipping
inline constexpr const char* kMoe = "moe";             ///< the list of LayerRecord
// a task's metrics (train and eval records)
inline constexpr const char* kBpc = "bpc";            ///< lm
inline constexpr const char* kAccuracy = "accuracy";  ///< classify
inline constexpr const char* kMse = "mse";            ///< multitask, per task
inline constexpr const char* kAuc = "auc";            ///< per task
inline constexpr const char* kTokens = "tokens";      ///< evaluated tokens; never written
// eval records
inline constexpr const char* kSplit = "split";
inline constexpr const char* kFullSplit = "full_split";  ///< the final evaluation: whole split
}  // namespace key

/// The keys of a LayerRecord (an entry of key::kMoe).
namespace layer_key {
inline constexpr const char* kName = "name";
inline constexpr const char* kShare = "share";
inline constexpr const char* kCv = "cv";  ///< of the load (for noisy gates the smooth load)
inline constexpr const char* kCvImportance = "cv_importance";  ///< of the gate mass per expert
inline constexpr const char* kDropped = "dropped";
inline constexpr const char* kMeanK = "mean_k";
inline constexpr const char* kActiveExperts = "active_experts";
inline constexpr const char* kUnrouted = "unrouted";
}  // namespace layer_key

/// Eval records: per MoE layer, the mean experts per evaluated token ("mean_k.<layer>") and, for
/// routers that may route a token to no expert, the fraction of such tokens ("unrouted.<layer>").
inline std::string eval_layer_key(const char* layer_field, const std::string& layer) {
  return std::string(layer_field) + "." + layer;
}

/// The split of an eval record without key::kSplit.
inline constexpr const char* kDefaultSplit = "valid";

/// A number a record lacks (see the top of this file).
inline constexpr double kMissing = std::numeric_limits<double>::quiet_NaN();

/// Per-task values are logged under "<prefix><task>" in train records ("mse0", "mse1") and as one
/// list "<prefix>" in eval records ("mse": [task 0, task 1]).
inline std::string per_task_key(const std::string& prefix, size_t task) {
  return prefix + std::to_string(task);
}

/// One MoE layer (or multi-task gate) of a train record.
struct LayerRecord {
  std::string name;
  /// Per expert: its share of the layer's token-expert assignments (gates: of the gate weight).
  /// A reader finds an entry that is not a number as kMissing.
  std::vector<double> share;
  /// Means over the interval. Sparse layers log all six; multi-task gates only cv.
  /// active_experts is a count (written as an integer when it is a whole number).
  std::optional<double> cv, cv_importance, dropped, mean_k, active_experts, unrouted;
};

/// Means over the steps of a logging interval.
struct TrainRecord {
  int64_t step = 0;
  double elapsed_s = kMissing, loss = kMissing, task_loss = kMissing, aux_loss = kMissing;
  double lr = kMissing, tokens_per_s = kMissing;
  /// The task's per-step metrics and the gradient norm, by key: "bpc", "accuracy", "mse0",
  /// "mse1", ..., "grad_norm". A reader keeps every other number of the record here.
  std::map<std::string, double> metrics;
  std::vector<LayerRecord> moe;  ///< written only when not empty

  /// metrics[k]; kMissing when absent.
  double metric(const std::string& k) const {
    const auto it = metrics.find(k);
    return it == metrics.end() ? kMissing : it->second;
  }
  /// The per-task values logged as "<prefix><task>" (a prefix of three characters, "mse" or
  /// "auc"; at most 999 tasks), by task; kMissing for a task in between that is absent.
  std::vector<double> per_task(const std::string& prefix) const {
    std::vector<double> out;
    for (const auto& [k, v] : metrics) {
      if (k.size() <= prefix.size() || k.size() > prefix.size() + 3) continue;
      if (k.compare(0, prefix.size(), prefix) != 0) continue;
      if (k.find_first_not_of("0123456789", prefix.size()) != std::string::npos) continue;
      const size_t task = std::stoul(k.substr(prefix.size()));
      if (out.size() <= task) out.resize(task + 1, kMissing);
      out[task] = v;
    }
    return out;
  }
};

/// What an evaluation measured: numbers by key ("loss", "bpc", "accuracy") and per-task lists
/// ("mse", "auc"). Written into the eval record's object.
struct EvalMetrics {
  std::map<std::string, double> values;
  std::map<std::string, std::vector<double>> per_task;

  /// values[k]; kMissing when absent.
  double value(const std::string& k) const {
    const auto it = values.find(k);
    return it == values.end() ? kMissing : it->second;
  }
  /// per_task[k]; empty when absent.
  std::vector<double> list(const std::string& k) const {
    const auto it = per_task.find(k);
    return it == per_task.end() ? std::vector<double>{} : it->second;
  }
};

struct EvalRecord {
  int64_t step = 0;
  std::string split = kDefaultSplit;
  bool full_split = false;  ///< written only when true
  EvalMetrics metrics;
};

struct EndRecord {
  int64_t step = 0;
  double elapsed_s = kMissing;
};

/// A task's metrics (what TaskData::evaluate returns) as an eval record holds them: the per-task
/// "mse<i>" as one list "mse", without "tokens".
inline EvalMetrics eval_metrics(const std::map<std::string, double>& task_metrics) {
  EvalMetrics m;
  for (const auto& [k, v] : task_metrics) {
    if (k.rfind(key::kMse, 0) == 0)
      m.per_task[key::kMse].push_back(v);
    else if (k != key::kTokens)
      m.values[k] = v;
  }
  return m;
}

// ---- reading: tolerant of missing and mistyped values, as the top of this file says ----------

/// The number at `k`; kMissing when absent or not a number.
template <class Json>
double read_number(const Json& o, const char* k) {
  const auto it = o.find(k);
  return it != o.end() && it->is_number() ? it->template get<double>() : kMissing;
}

template <class Json>
std::optional<double> read_optional(const Json& o, const char* k) {
  const auto it = o.find(k);
  if (it == o.end() || !it->is_number()) return std::nullopt;
  return it->template get<double>();
}

/// A list of numbers (an entry that is not a number: kMissing); a bare number is a list of one.
template <class Json>
std::vector<double> read_numbers(const Json& o, const char* k) {
  std::vector<double> v;
  const auto it = o.find(k);
  if (it == o.end()) return v;
  if (it->is_number()) return {it->template get<double>()};
  if (!it->is_array()) return v;
  v.reserve(it->size());
  for (const auto& e : *it) v.push_back(e.is_number() ? e.template get<double>() : kMissing);
  return v;
}

/// The step of a train, eval or end record: an integer (or a float with a whole value, 10.0).
/// Throws std::invalid_argument naming the record kind when it is absent, null or not an integer.
template <class Json>
int64_t read_step(const Json& rec, const char* kind) {
  const auto it = rec.find(key::kStep);
  if (it == rec.end() || it->is_null())
    throw std::invalid_argument(std::string("a \"") + kind + "\" record without \"step\"");
  if (it->is_number_integer()) return it->template get<int64_t>();
  if (it->is_number_float()) {
    const double d = it->template get<double>();
    if (d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  throw std::invalid_argument("\"step\" is not an integer: " + it->dump());
}

// ---- nlohmann json conversions ------------------------------------------------------------------

template <class Json>
void to_json(Json& j, const LayerRecord& r) {
  j = Json::object();
  j[layer_key::kName] = r.name;
  j[layer_key::kShare] = r.share;
  if (r.cv) j[layer_key::kCv] = *r.cv;
  if (r.cv_importance) j[layer_key::kCvImportance] = *r.cv_importance;
  if (r.dropped) j[layer_key::kDropped] = *r.dropped;
  if (r.mean_k) j[layer_key::kMeanK] = *r.mean_k;
  if (r.active_experts) {
    const double a = *r.active_experts;
    if (a == std::floor(a) && std::fabs(a) < 9e15)
      j[layer_key::kActiveExperts] = static_cast<int64_t>(a);
    else
      j[layer_key::kActiveExperts] = a;
  }
  if (r.unrouted) j[layer_key::kUnrouted] = *r.unrouted;
}

/// A layer without a name (not a string) reads with an empty one.
template <class Json>
void from_json(const Json& j, LayerRecord& r) {
  const auto name = j.find(layer_key::kName);
  r.name = name != j.end() && name->is_string() ? name->template get<std::string>() : "";
  r.share = read_numbers(j, layer_key::kShare);
  r.cv = read_optional(j, layer_key::kCv);
  r.cv_importance = read_optional(j, layer_key::kCvImportance);
  r.dropped = read_optional(j, layer_key::kDropped);
  r.mean_k = read_optional(j, layer_key::kMeanK);
  r.active_experts = read_optional(j, layer_key::kActiveExperts);
  r.unrouted = read_optional(j, layer_key::kUnrouted);
}

template <class Json>
void to_json(Json& j, const TrainRecord& r) {
  j = Json::object();
  j[key::kEvent] = event::kTrain;
  j[key::kStep] = r.step;
  j[key::kElapsedS] = r.elapsed_s;
  j[key::kLoss] = r.loss;
  j[key::kTaskLoss] = r.task_loss;
  j[key::kAuxLoss] = r.aux_loss;
  j[key::kLr] = r.lr;
  j[key::kTokensPerS] = r.tokens_per_s;
  for (const auto& [k, v] : r.metrics) j[k] = v;
  if (!r.moe.empty()) j[key::kMoe] = r.moe;
}

/// Throws std::invalid_argument for a missing or bad step (read_step). A layer entry that is not
/// an object is skipped; one without a name is called "layer <its index among those kept>".
template <class Json>
void from_json(const Json& j, TrainRecord& r) {
  r.step = read_step(j, event::kTrain);
  r.elapsed_s = read_number(j, key::kElapsedS);
  r.loss = read_number(j, key::kLoss);
  r.task_loss = read_number(j, key::kTaskLoss);
  r.aux_loss = read_number(j, key::kAuxLoss);
  r.lr = read_number(j, key::kLr);
  r.tokens_per_s = read_number(j, key::kTokensPerS);
  r.metrics.clear();
  for (const auto& [k, v] : j.items()) {
    if (!v.is_number()) continue;
    bool fixed = false;
    for (const char* f : {key::kStep, key::kElapsedS, key::kLoss, key::kTaskLoss, key::kAuxLoss,
                          key::kLr, key::kTokensPerS})
      fixed = fixed || k == f;
    if (!fixed) r.metrics[k] = v.template get<double>();
  }
  r.moe.clear();
  const auto layers = j.find(key::kMoe);
  if (layers == j.end() || !layers->is_array()) return;
  for (const auto& layer : *layers) {
    if (!layer.is_object()) continue;
    LayerRecord l = layer.template get<LayerRecord>();
    const auto name = layer.find(layer_key::kName);
    if (name == layer.end() || !name->is_string()) l.name = "layer " + std::to_string(r.moe.size());
    r.moe.push_back(std::move(l));
  }
}

/// The fields of an eval record that hold the metrics (the writer of older code adds them to an
/// object of its own).
template <class Json>
void to_json(Json& j, const EvalMetrics& m) {
  j = Json::object();
  for (const auto& [k, v] : m.values) j[k] = v;
  for (const auto& [k, list] : m.per_task) j[k] = list;
}

template <class Json>
void to_json(Json& j, const EvalRecord& r) {
  j = r.metrics;
  j[key::kEvent] = event::kEval;
  j[key::kStep] = r.step;
  j[key::kSplit] = r.split;
  if (r.full_split) j[key::kFullSplit] = true;
}

/// Throws std::invalid_argument for a missing or bad step (read_step). "mse" and "auc" are read as
/// per-task lists (a bare number: a list of one), every other number as a value.
template <class Json>
void from_json(const Json& j, EvalRecord& r) {
  r.step = read_step(j, event::kEval);
  const auto split = j.find(key::kSplit);
  r.split =
      split != j.end() && split->is_string() ? split->template get<std::string>() : kDefaultSplit;
  const auto full = j.find(key::kFullSplit);
  r.full_split = full != j.end() && full->is_boolean() && full->template get<bool>();
  r.metrics = {};
  for (const char* list : {key::kMse, key::kAuc})
    if (j.contains(list)) r.metrics.per_task[list] = read_numbers(j, list);
  for (const auto& [k, v] : j.items())
    if (v.is_number() && k != key::kStep && k != key::kMse && k != key::kAuc)
      r.metrics.values[k] = v.template get<double>();
}

template <class Json>
void to_json(Json& j, const EndRecord& r) {
  j = Json::object();
  j[key::kEvent] = event::kEnd;
  j[key::kStep] = r.step;
  j[key::kElapsedS] = r.elapsed_s;
}

/// Throws std::invalid_argument for a missing or bad step (read_step).
template <class Json>
void from_json(const Json& j, EndRecord& r) {
  r.step = read_step(j, event::kEnd);
  r.elapsed_s = read_number(j, key::kElapsedS);
}

}  // namespace moe::metrics
