// Module checkpoints on safetensors (include/moe/io/checkpoint.h).
#include "moe/io/checkpoint.h"

#include <ATen/ATen.h>

#include <set>

#include "moe/io/safetensors.h"
#include "moe/nn/top_any_moe.h"

namespace moe::io {
namespace {

std::vector<std::pair<std::string, torch::Tensor>> module_tensors(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : m.named_buffers(/*recurse=*/true)) out.emplace_back(b.key(), b.value());
  return out;
}

// The TopAnyMoE layers that must take the checkpoint's expert count: (layer, prefix, count).
// Raises, before anything is changed, when a layer cannot.
struct Resize {
  nn::TopAnyMoEImpl* layer;
  std::string prefix;
  int64_t count;
};

std::vector<Resize> plan_resizes(torch::nn::Module& module, const TensorFile& file,
                                 const std::string& path) {
  std::vector<std::pair<std::string, torch::nn::Module*>> mods{{"", &module}};
  for (const auto& m : module.named_modules("", /*include_self=*/false))
    mods.emplace_back(m.key() + ".", m.value().get());
  std::vector<Resize> out;
  for (const auto& [prefix, m] : mods) {
    auto* layer = dynamic_cast<nn::TopAnyMoEImpl*>(m);
    if (layer == nullptr) continue;
    const auto w = file.find(prefix + "router.weight");
    if (!w.defined() || w.dim() != 2 || w.size(0) == layer->num_slots()) continue;
    TORCH_CHECK_VALUE(layer->options.storage() == nn::ExpertStorage::kResize, "load_module: ", path,
                      ": TopAnyMoE '", prefix, "' has ", layer->num_slots(),
                      " expert slots but the checkpoint has ", w.size(0),
                      "; a pool-mode layer cannot resize (build it with max_experts=", w.size(0),
                      " or with storage(ExpertStorage::kResize))");
    TORCH_CHECK_VALUE(w.size(0) <= layer->options.max_experts(), "load_module: ", path,
                      ": TopAnyMoE '", prefix, "' allows at most max_experts=",
                      layer->options.max_experts(), " but the checkpoint has ", w.size(0));
    out.push_back({layer, prefix, w.size(0)});
  }
  return out;
}

// Whether `name` is a per-expert tensor (first dim = expert count) of the layer at `prefix`.
bool per_expert(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string rest = name.substr(prefix.size());
  return rest == "router.weight" || rest == "router.threshold" || rest == "router.active" ||
         rest.compare(0, 8, "experts.") == 0;
}

}  // namespace

void save_module(const torch::nn::Module& module, const std::string& path,
                 const std::map<std::string, std::string>& metadata) {
  save_safetensors(path, module_tensors(module), metadata);
}

std::map<std::string, std::string> load_module(torch::nn::Module& module,
                                               const std::string& path) {
  const TensorFile file = load_safetensors(path);
  // Everything is checked before anything changes: a failed load leaves the model as it was.
  const auto resizes = plan_resizes(module, file, path);
  std::set<std::string> used;
  for (const auto& [name, t] : module_tensors(module)) {
    const auto src = file.find(name);
    TORCH_CHECK_VALUE(src.defined(), "load_module: ", path, " has no tensor '", name,
                      "' (the checkpoint was written for a different model)");
    auto expect = t.sizes().vec();
    for (const auto& r : resizes)
      if (per_expert(name, r.prefix) && !expect.empty()) expect[0] = r.count;
    TORCH_CHECK_VALUE(src.sizes().vec() == expect, "load_module: ", path, ": tensor '", name,
                      "' has shape ", src.sizes(), " in the checkpoint but ", c10::IntArrayRef(expect),
                      " in the model");
    TORCH_CHECK_TYPE(src.scalar_type() == t.scalar_type(), "load_module: ", path, ": tensor '",
                     name, "' is ", src.scalar_type(), " in the checkpoint but ", t.scalar_type(),
                     " in the model (convert the model with .to() first)");
    used.insert(name);
  }
  for (const auto& [name, t] : file.tensors)
    TORCH_CHECK_VALUE(used.count(name), "load_module: ", path, " holds tensor '", name,
                      "' that the model does not have (the checkpoint was written for a "
                      "different model)");
  for (const auto& r : resizes) r.layer->resize_experts(r.count);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : module_tensors(module)) t.copy_(file.find(name));
  return file.metadata;
}

}  // namespace moe::io
