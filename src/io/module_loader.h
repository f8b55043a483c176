// Loading a module's tensors from a TensorFile in two phases, check then apply, so that a failed
// load changes nothing. Shared by load_module and load_checkpoint.
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "moe/io/safetensors.h"

namespace moe::nn {
class TopAnyMoEImpl;
}

namespace moe::io::detail {

/// named_parameters() then named_buffers(), recursively.
std::vector<std::pair<std::string, torch::Tensor>> module_tensors(const torch::nn::Module& m);

struct ModuleLoad {
  struct Resize {
    nn::TopAnyMoEImpl* layer;
    std::string prefix;  ///< the layer's name prefix, e.g. "blocks.0.moe."
    int64_t count;
  };
  std::vector<Resize> resizes;
  std::map<std::string, std::vector<int64_t>> shapes;  ///< every tensor's shape after the load
};

/// Checks the file's tensors `prefix + name` against the module: every tensor present with the
/// shape it will have (TopAnyMoE layers in resize mode take the file's expert count; other layers
/// raise) and the same dtype, and no file tensor under `prefix` the module lacks. Changes nothing.
/// `who` starts the error messages.
ModuleLoad check_module_load(torch::nn::Module& module, const TensorFile& file,
                             const std::string& path, const std::string& prefix, const char* who);

/// Resizes and copies as checked.
void apply_module_load(torch::nn::Module& module, const ModuleLoad& load, const TensorFile& file,
                       const std::string& prefix);

}  // namespace moe::io::detail
