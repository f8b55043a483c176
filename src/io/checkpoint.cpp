// Module checkpoints on safetensors (include/moe/io/checkpoint.h, src/io/module_loader.h).
#include "moe/io/checkpoint.h"

#include <ATen/ATen.h>

#include <set>

#include "io/module_loader.h"
#include "moe/io/safetensors.h"
#include "moe/nn/top_any_moe.h"

namespace moe::io {
namespace detail {
namespace {

// Whether `name` is a per-expert tensor (first dim = expert count) of the layer at `prefix`.
bool per_expert(const std::string& name, const std::string& prefix) {
  if (name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string rest = name.substr(prefix.size());
  return rest == "router.weight" || rest == "router.threshold" || rest == "router.active" ||
         rest.compare(0, 8, "experts.") == 0;
}

// The file's name of the module tensor `name`: its legacy name where `sources` lists one.
std::string source_name(const std::map<std::string, std::string>& sources, const std::string& name,
                        const std::string& prefix) {
  const auto it = sources.find(name);
  return it != sources.end() ? it->second : prefix + name;
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> module_tensors(const torch::nn::Module& m) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : m.named_parameters(/*recurse=*/true)) out.emplace_back(p.key(), p.value());
  for (const auto& b : m.named_buffers(/*recurse=*/true)) out.emplace_back(b.key(), b.value());
  return out;
}

ModuleLoad check_module_load(torch::nn::Module& module, const TensorFile& file,
                             const std::string& path, const std::string& prefix, const char* who) {
  ModuleLoad load;
  // TopAnyMoE layers whose expert count differs from the file's.
  std::vector<std::pair<std::string, torch::nn::Module*>> mods{{"", &module}};
  for (const auto& m : module.named_modules("", /*include_self=*/false))
    mods.emplace_back(m.key() + ".", m.value().get());
  for (const auto& [mprefix, m] : mods) {
    auto* layer = dynamic_cast<nn::TopAnyMoEImpl*>(m);
    if (layer == nullptr) continue;
    const auto w = file.find(prefix + mprefix + "router.weight");
    if (!w.defined() || w.dim() != 2 || w.size(0) == layer->num_experts()) continue;
    TORCH_CHECK_VALUE(layer->layer_options().storage() == nn::ExpertStorage::kResize, who, ": ",
                      path, ": TopAnyMoE '", mprefix, "' has ", layer->num_experts(),
                      " experts but the checkpoint has ", w.size(0),
                      "; a pool-mode layer cannot resize (build it with max_experts=", w.size(0),
                      " or with storage(ExpertStorage::kResize))");
    TORCH_CHECK_VALUE(w.size(0) >= 1 && w.size(0) <= layer->layer_options().max_experts(), who,
                      ": ", path, ": TopAnyMoE '", mprefix,
                      "' allows 1 to max_experts=", layer->layer_options().max_experts(),
                      " experts but the checkpoint has ", w.size(0));
    load.resizes.push_back({layer, mprefix, w.size(0)});
  }
  const auto sources = legacy_sources(module, file, prefix);
  std::set<std::string> used;
  for (const auto& [name, t] : module_tensors(module)) {
    const auto file_name = source_name(sources, name, prefix);
    const auto src = file.find(file_name);
    TORCH_CHECK_VALUE(src.defined(), who, ": ", path, " has no tensor '", file_name,
                      "' (the checkpoint was written for a different model)");
    auto expect = t.sizes().vec();
    for (const auto& r : load.resizes)
      if (per_expert(name, r.prefix) && !expect.empty()) expect[0] = r.count;
    TORCH_CHECK_VALUE(src.sizes().vec() == expect, who, ": ", path, ": tensor '", file_name,
                      "' has shape ", src.sizes(), " in the checkpoint but ",
                      c10::IntArrayRef(expect), " in the model");
    TORCH_CHECK_TYPE(src.scalar_type() == t.scalar_type(), who, ": ", path, ": tensor '", file_name,
                     "' is ", src.scalar_type(), " in the checkpoint but ", t.scalar_type(),
                     " in the model (convert the model with .to() first)");
    load.shapes[name] = expect;
    used.insert(file_name);
  }
  for (const auto& [name, t] : file.tensors) {
    if (name.compare(0, prefix.size(), prefix) != 0) continue;
    TORCH_CHECK_VALUE(used.count(name), who, ": ", path, " holds tensor '", name,
                      "' that the model does not have (the checkpoint was written for a "
                      "different model)");
  }
  return load;
}

void apply_module_load(torch::nn::Module& module, const ModuleLoad& load, const TensorFile& file,
                       const std::string& prefix) {
  for (const auto& r : load.resizes) r.layer->resize_experts(r.count);
  const auto sources = legacy_sources(module, file, prefix);
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : module_tensors(module))
    t.copy_(file.find(source_name(sources, name, prefix)));
}

}  // namespace detail

std::map<std::string, std::string> legacy_sources(const torch::nn::Module& module,
                                                  const TensorFile& file,
                                                  const std::string& prefix) {
  // (named_modules with include_self needs the module in a shared_ptr: the root is added by hand.)
  std::vector<std::pair<std::string, const torch::nn::Module*>> mods{{"", &module}};
  for (const auto& m : module.named_modules("", /*include_self=*/false))
    mods.emplace_back(m.key() + ".", m.value().get());
  std::map<std::string, std::string> sources;
  for (const auto& [at, m] : mods) {
    const auto* declared = dynamic_cast<const LegacyNames*>(m);
    if (declared == nullptr) continue;
    const auto renames = declared->legacy_names();
    bool all_old = !renames.empty(), all_current = true;
    for (const auto& [old_name, name] : renames) {
      all_old = all_old && file.find(prefix + at + old_name).defined();
      all_current = all_current && file.find(prefix + at + name).defined();
    }
    if (!all_old || all_current) continue;
    for (const auto& [old_name, name] : renames) {
      TORCH_CHECK(sources.emplace(at + name, prefix + at + old_name).second,
                  "legacy_sources: two modules rename tensor '", at + name, "'");
    }
  }
  return sources;
}

void save_module(const torch::nn::Module& module, const std::string& path,
                 const std::map<std::string, std::string>& metadata) {
  save_safetensors(path, detail::module_tensors(module), metadata);
}

std::map<std::string, std::string> load_module(torch::nn::Module& module, const std::string& path) {
  const TensorFile file = load_safetensors(path);
  const auto load = detail::check_module_load(module, file, path, "", "load_module");
  detail::apply_module_load(module, load, file, "");
  return file.metadata;
}

}  // namespace moe::io
