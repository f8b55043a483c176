// Training checkpoints (include/moe/io/training_state.h).
#include "moe/io/training_state.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/optimizer.h>
#include <torch/optim/sgd.h>

#include <cstdio>
#include <mutex>
#include <set>

#include "io/module_loader.h"
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
  const char* kind = kind_of(optimizer);
  const auto saved_kind =
      file.metadata.count("moe.optimizer") ? file.metadata.at("moe.optimizer") : "";
  TORCH_CHECK_VALUE(kind != nullptr && saved_kind == kind, who, ": ", path, " holds ",
                    saved_kind.empty() ? "no optimizer state (not a save_checkpoint file?)"
                                       : saved_kind + " state",
                    " but the optimizer is ", kind ? kind : "of another type");
  TORCH_CHECK_VALUE(file.find("rng.cpu").defined(), who, ": ", path, " has no rng.cpu state");
  const auto groups = optimizer.param_groups().size();
  for (size_t g = 0; g < groups; ++g)
    TORCH_CHECK_VALUE(file.metadata.count("moe.lr." + std::to_string(g)), who, ": ", path,
                      " has no learning rate for parameter group ", g, " (", groups, " groups)");

  // Check everything first.
  const auto load = detail::check_module_load(model, file, path, kModel, who);
  std::set<std::string> known;
  for (const auto& [name, p] : optimized(model, optimizer)) {
    const auto& shape = load.shapes.at(name);
    for (const char* field : {"exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"}) {
      const auto key = kOptim + name + "." + field;
      const auto t = file.find(key);
      known.insert(key);
      if (!t.defined()) continue;
      TORCH_CHECK_VALUE(t.sizes().vec() == shape && t.scalar_type() == p.scalar_type(), who, ": ",
                        path, ": ", key, " is ", t.scalar_type(), t.sizes(), ", expected ",
                        p.scalar_type(), c10::IntArrayRef(shape));
    }
    const auto step_key = kOptim + name + ".step";
    known.insert(step_key);
    if (const auto s = file.find(step_key); s.defined())
      TORCH_CHECK_VALUE(s.numel() == 1 && s.scalar_type() == at::kLong, who, ": ", path, ": ",
                        step_key, " must be one int64");
  }
  for (const auto& [name, t] : file.tensors)
    TORCH_CHECK_VALUE(name.compare(0, 6, kOptim) != 0 || known.count(name), who, ": ", path,
                      " holds optimizer state '", name,
                      "' for a parameter the optimizer does not have");

  // Then apply.
  detail::apply_module_load(model, load, file, kModel);
  for (size_t g = 0; g < groups; ++g)
    optimizer.param_groups()[g].options().set_lr(
        std::stod(file.metadata.at("moe.lr." + std::to_string(g))));
  for (const auto& [name, p] : optimized(model, optimizer)) {
    auto get = [&](const char* field) {
      const auto t = file.find(kOptim + name + "." + field);
      return t.defined() ? t.to(p.device()) : torch::Tensor();
    };
    const auto step = file.find(kOptim + name + ".step");
    const auto exp_avg = get("exp_avg"), momentum = get("momentum_buffer");
    if (std::string(kind) == "sgd") {
      if (!momentum.defined()) continue;
      auto st = std::make_unique<torch::optim::SGDParamState>();
      st->momentum_buffer(momentum);
      moe::detail::set_param_state(optimizer, p, std::move(st));
    } else if (exp_avg.defined() && step.defined()) {
      if (std::string(kind) == "adam") {
        auto st = std::make_unique<torch::optim::AdamParamState>();
        st->step(step.item<int64_t>());
        st->exp_avg(exp_avg);
        st->exp_avg_sq(get("exp_avg_sq"));
        st->max_exp_avg_sq(get("max_exp_avg_sq"));
        moe::detail::set_param_state(optimizer, p, std::move(st));
      } else {
        auto st = std::make_unique<torch::optim::AdamWParamState>();
        st->step(step.item<int64_t>());
        st->exp_avg(exp_avg);
        st->exp_avg_sq(get("exp_avg_sq"));
        st->max_exp_avg_sq(get("max_exp_avg_sq"));
        moe::detail::set_param_state(optimizer, p, std::move(st));
      }
    }
  }
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

}  // namespace moe::io
