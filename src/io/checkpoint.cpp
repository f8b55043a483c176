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

// Gives every resizable TopAnyMoE the expert count of the checkpoint, or explains why it cannot.
void match_expert_counts(torch::nn::Module& module, const TensorFile& file,
                         const std::string& path) {
  std::vector<std::pair<std::string, torch::nn::Module*>> mods{{"", &module}};
  for (const auto& m : module.named_modules("", /*include_self=*/false))
    mods.emplace_back(m.key() + ".", m.value().get());
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
    layer->resize_experts(w.size(0));
  }
}

}  // namespace

void save_module(const torch::nn::Module& module, const std::string& path,
                 const std::map<std::string, std::string>& metadata) {
  save_safetensors(path, module_tensors(module), metadata);
}

std::map<std::string, std::string> load_module(torch::nn::Module& module,
                                               const std::string& path) {
  const TensorFile file = load_safetensors(path);
  match_expert_counts(module, file, path);
  std::set<std::string> used;
  torch::NoGradGuard no_grad;
  for (auto& [name, t] : module_tensors(module)) {
    const auto src = file.find(name);
    TORCH_CHECK_VALUE(src.defined(), "load_module: ", path, " has no tensor '", name,
                      "' (the checkpoint was written for a different model)");
    TORCH_CHECK_VALUE(src.sizes() == t.sizes(), "load_module: ", path, ": tensor '", name,
                      "' has shape ", src.sizes(), " in the checkpoint but ", t.sizes(),
                      " in the model");
    TORCH_CHECK_TYPE(src.scalar_type() == t.scalar_type(), "load_module: ", path, ": tensor '",
                     name, "' is ", src.scalar_type(), " in the checkpoint but ", t.scalar_type(),
                     " in the model (convert the model with .to() first)");
    t.copy_(src);
    used.insert(name);
  }
  for (const auto& [name, t] : file.tensors)
    TORCH_CHECK_VALUE(used.count(name), "load_module: ", path, " holds tensor '", name,
                      "' that the model does not have (the checkpoint was written for a "
                      "different model)");
  return file.metadata;
}

}  // namespace moe::io
