// Training checkpoints (include/moe/io/training_state.h).
#include "moe/io/training_state.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>

#include <charconv>
#include <cmath>
#include <cstdio>
#include <limits>
#include <mutex>
#include <set>
#include <sstream>

#include "io/module_loader.h"
#include "moe/io/checkpoint.h"
#include "moe/io/safetensors.h"
#include "nn/optimizer_state.h"

namespace moe::io {
namespace {

constexpr const char* kModel = "model.";
constexpr const char* kOptim = "optim.";

const char* kind_of(torch::optim::Optimizer& o) {
  if (dynamic_cast<torch::optim::AdamW*>(&o)) return "adamw";
  if (dynamic_cast<torch::optim::Adam*>(&o)) return "adam";
  if (dynamic_cast<torch::optim::SGD*>(&o)) return "sgd";
  return nullptr;
}

std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof(buf), "%.17g", v);
  return buf;
}

// The optimizer's parameters by the model's names (a parameter the optimizer does not hold is
// left out).
std::vector<std::pair<std::string, torch::Tensor>> optimized(const torch::nn::Module& model,
                                                             torch::optim::Optimizer& opt) {
  std::set<const void*> held;
  for (const auto& g : opt.param_groups())
    for (const auto& p : g.params()) held.insert(p.unsafeGetTensorImpl());
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : model.named_parameters(/*recurse=*/true))
    if (held.count(p.value().unsafeGetTensorImpl())) out.emplace_back(p.key(), p.value());
  return out;
}

// The tensor fields of an optimizer state, by name.
std::vector<std::pair<std::string, torch::Tensor>> fields(torch::optim::OptimizerParamState* st) {
  if (auto* s = dynamic_cast<torch::optim::AdamParamState*>(st))
    return {{"step", torch::tensor({s->step()}, at::kLong)},
            {"exp_avg", s->exp_avg()},
            {"exp_avg_sq", s->exp_avg_sq()},
            {"max_exp_avg_sq", s->max_exp_avg_sq()}};
  if (auto* s = dynamic_cast<torch::optim::AdamWParamState*>(st))
    return {{"step", torch::tensor({s->step()}, at::kLong)},
            {"exp_avg", s->exp_avg()},
            {"exp_avg_sq", s->exp_avg_sq()},
            {"max_exp_avg_sq", s->max_exp_avg_sq()}};
  if (auto* s = dynamic_cast<torch::optim::SGDParamState*>(st))
    return {{"momentum_buffer", s->momentum_buffer()}};
  return {};
}

// A metadata value in an error message: long ones (a crafted file) cut short.
std::string shown(const std::string& value) {
  return value.size() <= 80 ? value : value.substr(0, 77) + "...";
}

// The learning rate of every parameter group: moe.lr.0 .. moe.lr.<groups - 1>, no other moe.lr.*
// key, and no moe.* key this library does not write.
std::vector<double> read_learning_rates(const std::map<std::string, std::string>& meta,
                                        const std::string& where, size_t groups) {
  const std::string prefix = "moe.lr.";
  for (const auto& [k, v] : meta) {
    if (k.compare(0, 4, "moe.") != 0 || k == "moe.optimizer") continue;
    TORCH_CHECK_VALUE(k.compare(0, prefix.size(), prefix) == 0, where, " holds metadata ", k,
                      " = '", shown(v), "', which this version of the library does not know");
    const std::string g = k.substr(prefix.size());
    bool known = false;
    for (size_t i = 0; i < groups && !known; ++i) known = g == std::to_string(i);
    const std::string keys =
        groups == 1 ? "moe.lr.0" : "moe.lr.0 to moe.lr." + std::to_string(groups - 1);
    TORCH_CHECK_VALUE(known, where, " holds metadata ", k, " = '", shown(v),
                      "' but the optimizer has ", groups, " parameter group",
                      groups == 1 ? "" : "s", " (", keys, ")");
  }
  std::vector<double> out;
  for (size_t g = 0; g < groups; ++g) {
    const auto key = prefix + std::to_string(g);
    TORCH_CHECK_VALUE(meta.count(key), where, " has no learning rate for parameter group ", g, " (",
                      key, "; the optimizer has ", groups, " groups)");
    out.push_back(metadata_double(meta, key, 0, INFINITY, where));
  }
  return out;
}

// rng.cpu must be a state LibTorch's CPU generator accepts: its own dtype and size (those of
// get_state()), and contents that set_state() takes, tried on a scratch generator.
void check_rng_state(const torch::Tensor& t, const std::string& where) {
  TORCH_CHECK_VALUE(t.defined(), where, " has no tensor rng.cpu (the CPU generator's state)");
  int64_t size = 0;
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    size = gen.get_state().numel();
  }
  TORCH_CHECK_VALUE(t.scalar_type() == at::kByte && t.dim() == 1 && t.numel() == size, where,
                    ": tensor rng.cpu is ", t.scalar_type(), " ", t.sizes(),
                    ", expected the CPU generator's state: Byte [", size, "]");
  auto scratch = at::make_generator<at::CPUGeneratorImpl>();
  try {
    scratch.set_state(t);
  } catch (const c10::Error& e) {
    TORCH_CHECK_VALUE(false, where, ": tensor rng.cpu is not a valid CPU generator state (",
                      e.what_without_backtrace(), ")");
  }
}

// The name under which the file keeps the optimizer state of parameter `name`: the name the
// parameter's tensor was read from, i.e. its old name where the model was read through a module's
// legacy names (io::LegacyNames, include/moe/io/checkpoint.h; `sources` as legacy_sources(model,
// file, "model.") returns them), else its current name. A run saved before a rename keeps its
// optimizer state under the old names (README.md, changelog).
std::string state_name(const std::map<std::string, std::string>& sources, const std::string& name) {
  const auto it = sources.find(name);
  if (it == sources.end()) return name;
  const std::string prefix = kModel;
  TORCH_INTERNAL_ASSERT(it->second.compare(0, prefix.size(), prefix) == 0);
  return it->second.substr(prefix.size());
}

// The tensor fields an optimizer kind keeps per parameter.
std::vector<const char*> field_names(const std::string& kind) {
  if (kind == "sgd") return {"momentum_buffer"};
  return {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
}

bool uses_amsgrad(torch::optim::Optimizer& opt, const torch::Tensor& p) {
  for (auto& g : opt.param_groups())
    for (const auto& q : g.params())
      if (q.unsafeGetTensorImpl() == p.unsafeGetTensorImpl()) {
        if (auto* o = dynamic_cast<torch::optim::AdamOptions*>(&g.options())) return o->amsgrad();
        if (auto* o = dynamic_cast<torch::optim::AdamWOptions*>(&g.options())) return o->amsgrad();
      }
  return false;
}

// Every optim.* tensor: a field of `kind` for a parameter the optimizer holds, with the
// parameter's dtype and (loaded) shape; Adam's step one int64 >= 0; a parameter's state complete
// (Adam: step, exp_avg and exp_avg_sq together, max_exp_avg_sq too with amsgrad) or absent. A
// parameter's fields are looked up under state_name(sources, name).
void check_optimizer_state(const torch::nn::Module& model, torch::optim::Optimizer& opt,
                           const std::string& kind, const TensorFile& file,
                           const detail::ModuleLoad& load,
                           const std::map<std::string, std::string>& sources,
                           const std::string& where) {
  std::set<std::string> known;
  for (const auto& [name, p] : optimized(model, opt)) {
    const auto& shape = load.shapes.at(name);
    const auto stored = kOptim + state_name(sources, name);
    std::vector<std::string> present, missing;
    for (const char* field : field_names(kind)) {
      const auto key = stored + "." + field;
      known.insert(key);
      const auto t = file.find(key);
      (t.defined() ? present : missing).push_back(field);
      if (!t.defined()) continue;
      if (std::string(field) == "step") {
        TORCH_CHECK_VALUE(t.numel() == 1 && t.scalar_type() == at::kLong, where, ": tensor ", key,
                          " is ", t.scalar_type(), " ", t.sizes(), ", expected one int64");
        TORCH_CHECK_VALUE(t.item<int64_t>() >= 0, where, ": tensor ", key, " = ", t.item<int64_t>(),
                          ", expected a step count >= 0");
        continue;
      }
      TORCH_CHECK_VALUE(t.sizes().vec() == shape && t.scalar_type() == p.scalar_type(), where,
                        ": tensor ", key, " is ", t.scalar_type(), " ", t.sizes(), ", expected ",
                        p.scalar_type(), " ", c10::IntArrayRef(shape));
    }
    if (kind == "sgd" || present.empty()) continue;
    bool complete = file.find(stored + ".step").defined() &&
                    file.find(stored + ".exp_avg").defined() &&
                    file.find(stored + ".exp_avg_sq").defined();
    if (uses_amsgrad(opt, p))
      complete = complete && file.find(stored + ".max_exp_avg_sq").defined();
    TORCH_CHECK_VALUE(complete, where, ": the ", kind, " state of parameter ", name,
                      " is incomplete: it has ", c10::Join(", ", present), " but not ",
                      c10::Join(", ", missing));
  }
  for (const auto& [name, t] : file.tensors)
    TORCH_CHECK_VALUE(name.compare(0, 6, kOptim) != 0 || known.count(name), where,
                      " holds optimizer state '", name, "' that a ", kind,
                      " optimizer of this model does not have");
}

// Installs the file's state (under state_name(sources, name), as checked) for every parameter the
// optimizer holds; a parameter without state in the file gets none (as in a fresh optimizer),
// whatever it had before.
void apply_optimizer_state(const torch::nn::Module& model, torch::optim::Optimizer& opt,
                           const std::string& kind, const TensorFile& file,
                           const std::map<std::string, std::string>& sources) {
  for (const auto& [name, p] : optimized(model, opt)) {
    const auto stored = kOptim + state_name(sources, name);
    auto get = [&](const char* field) {
      const auto t = file.find(stored + "." + field);
      return t.defined() ? t.to(p.device()) : torch::Tensor();
    };
    std::unique_ptr<torch::optim::OptimizerParamState> state;
    if (kind == "sgd") {
      if (const auto m = get("momentum_buffer"); m.defined()) {
        auto st = std::make_unique<torch::optim::SGDParamState>();
        st->momentum_buffer(m);
        state = std::move(st);
      }
    } else if (const auto step = file.find(stored + ".step"); step.defined()) {
      auto fill = [&](auto st) {
        st->step(step.item<int64_t>());
        st->exp_avg(get("exp_avg"));
        st->exp_avg_sq(get("exp_avg_sq"));
        st->max_exp_avg_sq(get("max_exp_avg_sq"));
        return st;
      };
      if (kind == "adam")
        state = fill(std::make_unique<torch::optim::AdamParamState>());
      else
        state = fill(std::make_unique<torch::optim::AdamWParamState>());
    }
    if (state)
      moe::detail::set_param_state(opt, p, std::move(state));
    else
      moe::detail::erase_param_state(opt, p);
  }
}

}  // namespace

void save_checkpoint(const torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                     const std::string& path, const std::map<std::string, std::string>& metadata) {
  const char* kind = kind_of(optimizer);
  TORCH_CHECK_VALUE(kind != nullptr, "save_checkpoint: ", path,
                    ": only Adam, AdamW and SGD optimizer states can be saved");
  std::map<std::string, std::string> meta;
  for (const auto& [k, v] : metadata) {
    TORCH_CHECK_VALUE(k.compare(0, 4, "moe.") != 0, "save_checkpoint: metadata key '", k,
                      "' is reserved (keys starting with 'moe.')");
    meta[k] = v;
  }
  meta["moe.optimizer"] = kind;
  for (size_t g = 0; g < optimizer.param_groups().size(); ++g)
    meta["moe.lr." + std::to_string(g)] = exact(optimizer.param_groups()[g].options().get_lr());

  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& [name, t] : detail::module_tensors(model))
    tensors.emplace_back(kModel + name, t);
  for (const auto& [name, p] : optimized(model, optimizer)) {
    auto* st = moe::detail::find_param_state(optimizer, p);
    if (st == nullptr) continue;
    for (const auto& [field, v] : fields(st))
      if (v.defined()) tensors.emplace_back(kOptim + name + "." + field, v);
  }
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    tensors.emplace_back("rng.cpu", gen.get_state());
  }
  save_safetensors(path, tensors, meta);
}

std::map<std::string, std::string> load_checkpoint(torch::nn::Module& model,
                                                   torch::optim::Optimizer& optimizer,
                                                   const std::string& path) {
  const char* who = "load_checkpoint";
  const TensorFile file = load_safetensors(path);
  const std::string where = std::string(who) + ": " + path;
  const char* kind = kind_of(optimizer);
  const auto saved_kind =
      file.metadata.count("moe.optimizer") ? file.metadata.at("moe.optimizer") : "";
  TORCH_CHECK_VALUE(kind != nullptr && saved_kind == kind, where, " holds ",
                    saved_kind.empty() ? "no optimizer state (not a save_checkpoint file?)"
                                       : saved_kind + " state",
                    " but the optimizer is ", kind ? kind : "of another type");

  // Check everything first: a failed load changes nothing.
  const auto lrs = read_learning_rates(file.metadata, where, optimizer.param_groups().size());
  check_rng_state(file.find("rng.cpu"), where);
  const auto load = detail::check_module_load(model, file, path, kModel, who);
  // The model's tensors that were read under old names: their optimizer state is stored under the
  // same old names (a run saved before a rename, include/moe/io/checkpoint.h).
  const auto sources = legacy_sources(model, file, kModel);
  check_optimizer_state(model, optimizer, kind, file, load, sources, where);
  for (const auto& [name, t] : file.tensors)
    TORCH_CHECK_VALUE(
        name.compare(0, 6, kModel) == 0 || name.compare(0, 6, kOptim) == 0 || name == "rng.cpu",
        where, " holds tensor '", name,
        "', which is not model.*, optim.* or rng.cpu (not a save_checkpoint file?)");

  // Then apply; nothing below throws on a checked file.
  detail::apply_module_load(model, load, file, kModel);
  for (size_t g = 0; g < lrs.size(); ++g) optimizer.param_groups()[g].options().set_lr(lrs[g]);
  apply_optimizer_state(model, optimizer, kind, file, sources);
  {
    at::Generator gen = at::detail::getDefaultCPUGenerator();  // shares the default generator
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(file.find("rng.cpu"));
  }
  std::map<std::string, std::string> meta;
  for (const auto& [k, v] : file.metadata)
    if (k.compare(0, 4, "moe.") != 0) meta[k] = v;
  return meta;
}

namespace {

const std::string& metadata_value(const std::map<std::string, std::string>& metadata,
                                  const std::string& key, const std::string& where,
                                  const char* expected) {
  const auto it = metadata.find(key);
  TORCH_CHECK_VALUE(it != metadata.end(), where, " has no metadata ", key, " (expected ", expected,
                    ")");
  return it->second;
}

}  // namespace

int64_t metadata_int(const std::map<std::string, std::string>& metadata, const std::string& key,
                     int64_t min, int64_t max, const std::string& where) {
  const std::string expected =
      max == std::numeric_limits<int64_t>::max()
          ? "an integer >= " + std::to_string(min)
          : "an integer in [" + std::to_string(min) + ", " + std::to_string(max) + "]";
  const auto& text = metadata_value(metadata, key, where, expected.c_str());
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  TORCH_CHECK_VALUE(!text.empty() && ec == std::errc() && end == text.data() + text.size() &&
                        v >= min && v <= max,
                    where, ": metadata ", key, " = '", shown(text), "': expected ", expected);
  return v;
}

double metadata_double(const std::map<std::string, std::string>& metadata, const std::string& key,
                       double min, double max, const std::string& where) {
  std::ostringstream e;
  e << "a finite number ";
  if (std::isinf(max))
    e << ">= " << min;
  else
    e << "in [" << min << ", " << max << "]";
  const std::string expected = e.str();
  const auto& text = metadata_value(metadata, key, where, expected.c_str());
  double v = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  TORCH_CHECK_VALUE(!text.empty() && ec == std::errc() && end == text.data() + text.size() &&
                        std::isfinite(v) && v >= min && v <= max,
                    where, ": metadata ", key, " = '", shown(text), "': expected ", expected);
  return v;
}

}  // namespace moe::io
