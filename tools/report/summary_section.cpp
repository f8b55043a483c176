// The summary table of the report page (tools/report/sections.h).
#include <algorithm>
#include <map>

#include "report/format.h"
#include "report/sections.h"

namespace moe::report {
namespace {

namespace key = metrics::key;

std::string json_text(const Json& v) {
  if (v.is_null()) return "—";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return num(v.get<double>());
  return v.dump();
}

std::string eval_text(const metrics::EvalRecord& r) {
  const double loss = r.metrics.value(key::kLoss), bpc = r.metrics.value(key::kBpc),
               accuracy = r.metrics.value(key::kAccuracy);
  const auto auc = r.metrics.list(key::kAuc), mse = r.metrics.list(key::kMse);
  std::string s = "step " + std::to_string(r.step);
  if (present(loss)) s += ", loss " + num(loss);
  if (present(bpc)) s += ", bpc " + num(bpc);
  if (present(accuracy)) s += ", accuracy " + num(accuracy);
  if (!auc.empty()) s += ", AUC " + num_list(auc);
  if (!mse.empty()) s += ", MSE " + num_list(mse);
  return s;
}

// Start-record fields; a key whose value changed between launches shows each value in turn.
void start_rows(std::string& out, const Run& run) {
  std::vector<std::string> keys;
  std::map<std::string, std::vector<std::string>> values;
  for (const auto& start : run.starts) {
    for (const auto& [k, value] : start.items()) {
      if (k == key::kEvent) continue;
      auto [it, inserted] = values.try_emplace(k);
      if (inserted) keys.push_back(k);
      const std::string text = json_text(value);
      if (it->second.empty() || it->second.back() != text) it->second.push_back(text);
    }
  }
  for (const auto& k : keys) {
    std::string joined;
    for (const auto& v : values[k]) joined += (joined.empty() ? "" : " → ") + esc(v);
    table_row(out, k, joined);
  }
  if (run.starts.size() > 1)
    table_row(out, "launches", std::to_string(run.starts.size()) + " (resumed)");
}

// The last train loss and metrics, and the last eval of each split.
void final_rows(std::string& out, const Run& run) {
  const metrics::TrainRecord* last_loss = nullptr;
  const metrics::TrainRecord* last_metric = nullptr;
  for (const auto& r : run.train) {
    if (present(r.loss)) last_loss = &r;
    if (present(r.metric(key::kBpc)) || present(r.metric(key::kAccuracy))) last_metric = &r;
  }
  table_row(
      out, "final train loss",
      last_loss ? num(last_loss->loss) + " (step " + std::to_string(last_loss->step) + ")" : "—");
  if (last_metric) {
    std::string s;
    const double bpc = last_metric->metric(key::kBpc);
    const double accuracy = last_metric->metric(key::kAccuracy);
    if (present(bpc)) s += "bpc " + num(bpc) + " ";
    if (present(accuracy)) s += "accuracy " + num(accuracy) + " ";
    table_row(out, "final train metrics", s + "(step " + std::to_string(last_metric->step) + ")");
  }
  for (const auto& split : eval_splits(run)) {
    const metrics::EvalRecord* last = nullptr;
    for (const auto& r : run.eval)
      if (r.split == split) last = &r;
    table_row(out, "last eval (" + split + ")", esc(eval_text(*last)));
  }
  if (run.eval.empty()) table_row(out, "last eval", "— (no eval records)");
}

// Wall time, steps, throughput, replaced records.
void progress_rows(std::string& out, const Run& run) {
  double elapsed = run.end_elapsed_s;
  for (auto it = run.train.rbegin(); !present(elapsed) && it != run.train.rend(); ++it)
    elapsed = it->elapsed_s;
  table_row(
      out, "wall time",
      duration(elapsed) + (run.ended ? "" : " (no end record: still running or stopped early)"));
  const int64_t last_step = std::max(run.train.back().step, run.ended ? run.end_step : int64_t{0});
  table_row(out, "steps",
            std::to_string(last_step) + " (" + std::to_string(run.train.size()) +
                " train records, " + std::to_string(run.eval.size()) + " eval records)");
  double tps = metrics::kMissing;
  for (const auto& r : run.train)
    if (present(r.tokens_per_s)) tps = r.tokens_per_s;
  if (present(tps)) table_row(out, "tokens/s (last logged)", num(tps));
  if (run.replaced > 0)
    table_row(out, "replaced records",
              std::to_string(run.replaced) + " (a later record with the same step kept)");
}

}  // namespace

std::string render_summary(const Run& run) {
  std::string out = "<section id=\"summary\"><h2>Summary</h2><table class=\"summary\">";
  start_rows(out, run);
  final_rows(out, run);
  progress_rows(out, run);
  out += "</table></section>\n";
  return out;
}

}  // namespace moe::report
