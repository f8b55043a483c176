// The records of a run (tools/train/metrics_log.h).
#include "train/metrics_log.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "moe/io/atomic_file.h"
#include "train/metrics_schema.h"

namespace moe::train {

using json = nlohmann::json;
namespace key = metrics::key;
namespace layer_key = metrics::layer_key;

std::vector<json> MetricsLog::truncate_after(int64_t step) {
  std::string kept;
  auto records = records_up_to(step, &kept);
  io::write_file_atomically(path_.string(), kept, "moe train");
  return records;
}

std::vector<json> MetricsLog::records_up_to(int64_t step, std::string* kept_lines) const {
  std::vector<json> records;
  std::ifstream in(path_);
  std::string line;
  for (int64_t n = 1; std::getline(in, line); ++n) {
    if (line.empty()) continue;
    json j;
    try {
      j = json::parse(line);
    } catch (const json::exception&) {  // e.g. a line cut short by a kill: dropped
      spdlog::warn("{}:{}: not JSON, dropped", path_.string(), n);
      continue;
    }
    // an "end" record at or before the step belongs to a session that finished earlier
    if (j.value(key::kStep, int64_t{0}) <= step &&
        j.value(key::kEvent, "") != metrics::event::kEnd) {
      if (kept_lines != nullptr) *kept_lines += line + "\n";
      records.push_back(std::move(j));
    }
  }
  return records;
}

void MetricsLog::append(const json& j) {
  std::ofstream out(path_, std::ios::app);
  out << j.dump() << "\n";
  out.flush();
  if (!out) throw std::runtime_error("moe train: cannot append to " + path_.string());
}

void MetricsLog::sync() const {
  std::FILE* f = std::fopen(path_.c_str(), "a");
  if (f == nullptr || ::fsync(::fileno(f)) != 0 || std::fclose(f) != 0)
    throw std::runtime_error("moe train: cannot sync " + path_.string());
}

std::vector<std::pair<std::string, double>> tensorboard_scalars(const json& rec) {
  std::vector<std::pair<std::string, double>> out;
  const bool train = rec.at(key::kEvent) == metrics::event::kTrain;
  const std::string prefix =
      train ? "train/" : rec.value(key::kSplit, metrics::kDefaultSplit) + std::string("/");
  for (const auto& [k, v] : rec.items()) {
    if (v.is_number() && k != key::kStep && k != key::kElapsedS)
      out.emplace_back(prefix + k, v.get<double>());
    if (k == key::kMse && v.is_array())
      for (size_t i = 0; i < v.size(); ++i)
        if (v[i].is_number())
          out.emplace_back(prefix + metrics::per_task_key(key::kMse, i), v[i].get<double>());
  }
  if (train && rec.contains(key::kMoe))
    for (const auto& layer : rec.at(key::kMoe))
      for (const char* k : {layer_key::kCv, layer_key::kDropped, layer_key::kMeanK,
                            layer_key::kActiveExperts, layer_key::kUnrouted})
        if (layer.contains(k) && layer.at(k).is_number())
          out.emplace_back("moe/" + layer.at(layer_key::kName).get<std::string>() + "/" + k,
                           layer.at(k).get<double>());
  return out;
}

}  // namespace moe::train
