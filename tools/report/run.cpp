// Reading a run for the report (tools/report/run.h).
#include "report/run.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <unordered_map>

namespace moe::report {
namespace {

namespace fs = std::filesystem;

[[noreturn]] void fail_at(const std::string& path, int64_t line, const std::string& what) {
  throw std::runtime_error(path + ": line " + std::to_string(line) + ": " + what);
}

// The records of a run by their key, while the file is read: a later record with the same key
// replaces an earlier one (a resumed run writes the steps after its checkpoint again).
struct Records {
  std::map<int64_t, metrics::TrainRecord> train;
  std::map<std::pair<std::string, int64_t>, metrics::EvalRecord> eval;
};

// One non-blank line; false: a last line cut short (a record being written), left out.
bool read_record(Run& run, Records& by_key, const std::string& line, int64_t line_no,
                 bool last_line) {
  const std::string& path = run.metrics_path;
  Json rec;
  try {
    rec = Json::parse(line);
  } catch (const Json::parse_error& e) {
    if (last_line) return false;
    // nlohmann numbers lines from 1 within the text it was given (one line here): keep only the
    // column and the reason.
    std::string why = e.what();
    const auto at = why.find("column");
    fail_at(path, line_no,
            "invalid JSON" + (at == std::string::npos ? ": " + why : " at " + why.substr(at)));
  }
  if (!rec.is_object()) fail_at(path, line_no, "not a JSON object: " + line.substr(0, 60));
  const auto event_it = rec.find(metrics::key::kEvent);
  if (event_it == rec.end() || !event_it->is_string())
    fail_at(path, line_no, "a record without \"event\" (a string)");
  const std::string event = event_it->get<std::string>();
  try {
    if (event == metrics::event::kStart) {
      run.starts.push_back(std::move(rec));
    } else if (event == metrics::event::kTrain) {
      auto r = rec.get<metrics::TrainRecord>();
      const int64_t step = r.step;
      run.replaced += by_key.train.insert_or_assign(step, std::move(r)).second ? 0 : 1;
    } else if (event == metrics::event::kEval) {
      auto r = rec.get<metrics::EvalRecord>();
      auto key = std::make_pair(r.split, r.step);
      run.replaced += by_key.eval.insert_or_assign(std::move(key), std::move(r)).second ? 0 : 1;
    } else if (event == metrics::event::kEnd) {
      const auto r = rec.get<metrics::EndRecord>();
      run.ended = true;
      run.end_step = r.step;
      run.end_elapsed_s = r.elapsed_s;
    }
  } catch (const std::invalid_argument& e) {  // the step (metrics::read_step)
    fail_at(path, line_no, e.what());
  }
  return true;
}

}  // namespace

std::string folder_name(const std::string& dir) {
  fs::path p = fs::absolute(fs::path(dir)).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  return name.empty() ? dir : name;
}

Run load_run(const std::string& dir, bool require_train) {
  Run run;
  run.name = folder_name(dir);
  run.metrics_path = (fs::path(dir) / metrics::kFileName).string();
  const std::string& path = run.metrics_path;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw std::runtime_error(path + ": metrics file not found (is \"" + dir +
                             "\" a run folder written by `moe train`?)");
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error(path + ": cannot open the metrics file");

  Records by_key;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(file, line)) {
    ++line_no;
    const auto last = line.find_last_not_of(" \t\r\n");
    if (last == std::string::npos) continue;  // blank line
    line.resize(last + 1);
    ++run.records;
    // A last line without its newline is a record that a running `moe train` is writing: the
    // report of a run in progress shows what is complete.
    if (!read_record(run, by_key, line, line_no, file.eof())) {
      --run.records;
      break;
    }
  }
  if (file.bad())
    throw std::runtime_error(path + ": read error after line " + std::to_string(line_no));
  if (require_train && by_key.train.empty())
    throw std::runtime_error(path + ": no train records (" + std::to_string(run.records) +
                             " records read): nothing to report");
  for (auto& [step, r] : by_key.train) run.train.push_back(std::move(r));
  for (auto& [key, r] : by_key.eval) run.eval.push_back(std::move(r));
  return run;
}

std::vector<std::string> eval_splits(const Run& run) {
  std::vector<std::string> splits;
  for (const auto& r : run.eval)
    if (splits.empty() || splits.back() != r.split) splits.push_back(r.split);
  return splits;
}

std::vector<Layer> collect_layers(const Run& run) {
  std::vector<Layer> layers;
  std::unordered_map<std::string, size_t> index;
  for (const auto& r : run.train) {
    for (const auto& record : r.moe) {
      auto [it, inserted] = index.emplace(record.name, layers.size());
      if (inserted) layers.push_back(Layer{record.name, {}, 0});
      Layer& layer = layers[it->second];
      layer.records.emplace_back(r.step, &record);
      layer.experts = std::max(layer.experts, record.share.size());
    }
  }
  return layers;
}

}  // namespace moe::report
