// The checkpoint metadata of `moe train` (tools/train/resume.h).
#include "train/resume.h"

#include <torch/torch.h>

#include <cmath>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <stdexcept>

#include "cli/run_config.h"
#include "moe/io/safetensors.h"
#include "moe/io/training_state.h"
#include "moe/nn/top_any_moe.h"
#include "train/models.h"

namespace moe::train {
namespace {

using json = nlohmann::json;

// A metadata value as errors quote it: long values (a whole JSON record) are cut.
std::string shown(const std::string& value) {
  return value.size() <= 80 ? value : value.substr(0, 77) + "...";
}

// A DynMoE layer's open window as save_open_records writes it; `fail` names what is wrong.
nn::RoutingRecords parse_open_records(const std::string& text, int64_t experts, int64_t d_model,
                                      const std::function<void(const std::string&)>& fail) {
  const json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  const std::set<std::string> fields = {"expert_counts", "unrouted_sum", "tokens",
                                        "unrouted_tokens"};
  std::set<std::string> found;
  if (j.is_object())
    for (const auto& [k, v] : j.items()) found.insert(k);
  if (found != fields)
    fail(std::string(j.is_discarded() ? "not JSON; " : "") +
         "expected a JSON object with expert_counts, unrouted_sum, tokens and unrouted_tokens");
  auto count = [](const json& v) {
    return v.is_number_unsigned() && v.get<uint64_t>() <= uint64_t{1} << 62;
  };
  auto list = [&](const char* name, int64_t size, const char* of) {
    const auto& a = j.at(name);
    if (!a.is_array() || static_cast<int64_t>(a.size()) != size)
      fail(std::string(name) + " is " + shown(a.dump()) + ", expected an array of " +
           std::to_string(size) + " " + of);
    return a;
  };
  const auto counts = list("expert_counts", experts, "integers >= 0 (the layer's experts)");
  const auto sum = list("unrouted_sum", d_model, "finite numbers (d_model)");
  for (size_t i = 0; i < counts.size(); ++i)
    if (!count(counts[i]))
      fail("expert_counts[" + std::to_string(i) + "] = " + counts[i].dump() +
           ", expected an integer >= 0");
  for (size_t i = 0; i < sum.size(); ++i)
    if (!sum[i].is_number() || !std::isfinite(sum[i].get<double>()))
      fail("unrouted_sum[" + std::to_string(i) + "] = " + sum[i].dump() +
           ", expected a finite number");
  if (!count(j.at("tokens")))
    fail("tokens = " + j.at("tokens").dump() + ", expected an integer >= 0");
  const auto& unrouted = j.at("unrouted_tokens");
  if (!count(unrouted) || unrouted.get<uint64_t>() > j.at("tokens").get<uint64_t>())
    fail("unrouted_tokens = " + unrouted.dump() +
         ", expected an integer in [0, tokens = " + j.at("tokens").dump() + "]");
  nn::RoutingRecords r;
  r.expert_counts = torch::tensor(counts.get<std::vector<int64_t>>(), torch::kLong);
  r.unrouted_sum = torch::tensor(sum.get<std::vector<double>>(), torch::kDouble);
  r.tokens = j.at("tokens").get<int64_t>();
  r.unrouted_count = torch::full({}, unrouted.get<int64_t>(), torch::kLong);
  return r;
}

// Keys a resumed run may change: logging, evaluation, checkpoints, where the data is, and the
// length of the run (which stretches the learning-rate and k schedules from the next step on).
bool may_change_on_resume(const std::string& key) {
  static const char* kKeys[] = {"run.steps",        "run.log_every",        "run.eval_every",
                                "run.eval_batches", "run.checkpoint_every", "data.dir",
                                "data.file"};
  for (const char* k : kKeys)
    if (key == k) return true;
  return false;
}

}  // namespace

void save_open_records(torch::nn::Module& m, std::map<std::string, std::string>* meta) {
  for (const auto& [name, layer] : top_any_layers(m)) {
    if (!layer->recording()) continue;
    const auto& r = layer->records();
    const auto counts = r.expert_counts.to(torch::kLong).contiguous();
    const auto sum = r.unrouted_sum.to(torch::kDouble).contiguous();
    json j = {{"expert_counts", std::vector<int64_t>(counts.data_ptr<int64_t>(),
                                                     counts.data_ptr<int64_t>() + counts.numel())},
              {"unrouted_sum",
               std::vector<double>(sum.data_ptr<double>(), sum.data_ptr<double>() + sum.numel())},
              {"tokens", r.tokens},
              {"unrouted_tokens", r.unrouted_tokens()}};
    (*meta)["top_any_records." + name] = j.dump();
  }
}

OpenRecords read_open_records(torch::nn::Module& m, const io::TensorFile& file,
                              const std::string& path) {
  std::map<std::string, nn::TopAnyMoEImpl*> layers;
  for (const auto& [name, layer] : top_any_layers(m)) layers[name] = layer;
  const std::string prefix = "top_any_records.";
  OpenRecords out;
  for (const auto& [key, text] : file.metadata) {
    if (key.compare(0, prefix.size(), prefix) != 0) continue;
    auto fail = [&](const std::string& what) {
      throw std::runtime_error("moe train --resume: " + path + ": metadata " + key + " = '" +
                               shown(text) + "': " + what);
    };
    const auto it = layers.find(key.substr(prefix.size()));
    if (it == layers.end()) fail("the model has no TopAnyMoE layer of that name");
    const auto w = file.find("model." + it->first + ".router.weight");
    const int64_t experts = w.defined() && w.dim() == 2 ? w.size(0) : it->second->num_experts();
    out.emplace_back(it->second,
                     parse_open_records(text, experts, it->second->options.d_model(), fail));
  }
  return out;
}

ResumePoint read_resume_point(const std::map<std::string, std::string>& meta,
                              const std::string& path, const TrainConfig& c) {
  const std::string where = "moe train --resume: " + path;
  for (const auto& [k, v] : meta)
    if (k != "step" && k != "elapsed_s" && k != "config" && k != "task" &&
        k.rfind("top_any_records.", 0) != 0 && k.rfind("moe.", 0) != 0)
      throw std::runtime_error(where + ": metadata " + k + " = '" + shown(v) +
                               "': not a key of moe train (step, elapsed_s, config, task, "
                               "top_any_records.<layer>)");
  const std::string task = to_string(c.run.task);
  if (meta.count("task") && meta.at("task") != task)
    throw std::runtime_error(where + ": metadata task = '" + shown(meta.at("task")) +
                             "': expected " + task + " (run.task)");
  ResumePoint p;
  p.step = io::metadata_int(meta, "step", 1, std::numeric_limits<int64_t>::max(), where);
  if (p.step > c.run.steps)
    throw std::invalid_argument(
        where + " is at step " + std::to_string(p.step) +
        " but run.steps = " + std::to_string(c.run.steps) +
        "; continue with --set run.steps=N, N >= " + std::to_string(p.step));
  if (meta.count("elapsed_s"))
    p.elapsed_s = io::metadata_double(meta, "elapsed_s", 0, INFINITY, where);
  return p;
}

void check_resume_config(const cli::RunConfig& now, const std::string& saved_text,
                         const std::string& checkpoint) {
  const auto before = cli::RunConfig::from_string(saved_text, checkpoint + " (metadata)").leaves();
  const auto after = now.leaves();
  std::string changes;
  auto note = [&](const std::string& key, const std::string& a, const std::string& b) {
    if (!may_change_on_resume(key)) changes += "\n  " + key + ": " + a + " -> " + b;
  };
  for (const auto& [k, v] : before) {
    const auto it = after.find(k);
    if (it == after.end())
      note(k, v, "(unset)");
    else if (it->second != v)
      note(k, v, it->second);
  }
  for (const auto& [k, v] : after)
    if (before.count(k) == 0) note(k, "(unset)", v);
  if (!changes.empty())
    throw std::invalid_argument(
        "moe train --resume: the configuration differs from the one the checkpoint was trained "
        "with:" +
        changes +
        "\nA resumed run may change only run.steps, run.log_every, run.eval_every, "
        "run.eval_batches, run.checkpoint_every, data.dir and data.file; start a new run "
        "(--out) for anything else");
}

}  // namespace moe::train
