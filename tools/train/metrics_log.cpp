// The records of a run (tools/train/metrics_log.h).
#include "train/metrics_log.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "moe/io/atomic_file.h"

namespace moe::train {

using json = nlohmann::json;

std::vector<json> MetricsLog::truncate_after(int64_t step) {
  std::vector<json> records;
  std::ifstream in(path_);
  std::string line, kept;
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
    if (j.value("step", int64_t{0}) <= step && j.value("event", "") != "end") {
      kept += line + "\n";
      records.push_back(std::move(j));
    }
  }
  io::write_file_atomically(path_.string(), kept, "moe train");
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

json metrics_json(const std::map<std::string, double>& m) {
  json j = json::object();
  std::vector<double> mse;
  for (const auto& [k, v] : m) {
    if (k.rfind("mse", 0) == 0)
      mse.push_back(v);
    else if (k != "tokens")
      j[k] = v;
  }
  if (!mse.empty()) j["mse"] = mse;
  return j;
}

std::vector<std::pair<std::string, double>> tensorboard_scalars(const json& rec) {
  std::vector<std::pair<std::string, double>> out;
  const bool train = rec.at("event") == "train";
  const std::string prefix = train ? "train/" : rec.value("split", "valid") + "/";
  for (const auto& [k, v] : rec.items()) {
    if (v.is_number() && k != "step" && k != "elapsed_s")
      out.emplace_back(prefix + k, v.get<double>());
    if (k == "mse" && v.is_array())
      for (size_t i = 0; i < v.size(); ++i)
        if (v[i].is_number())
          out.emplace_back(prefix + "mse" + std::to_string(i), v[i].get<double>());
  }
  if (train && rec.contains("moe"))
    for (const auto& layer : rec.at("moe"))
      for (const char* k : {"cv", "dropped", "mean_k", "active_experts", "unrouted"})
        if (layer.contains(k) && layer.at(k).is_number())
          out.emplace_back("moe/" + layer.at("name").get<std::string>() + "/" + k,
                           layer.at(k).get<double>());
  return out;
}

}  // namespace moe::train
