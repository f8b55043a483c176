// Module checkpoints: every parameter and buffer of a torch::nn::Module, by its dotted name, in one
// safetensors file (include/moe/io/safetensors.h).
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <string>

#include "moe/io/safetensors.h"

namespace moe::io {

/// Implemented by a module whose tensors earlier versions of the library saved under other names:
/// the loaders (load_module, load_checkpoint) read a checkpoint written with those names.
///
/// legacy_names() maps each old name to the current one, both relative to the module (e.g. "w0" →
/// "w1"; "2.weight" → "1.weight" for a child module "2"), listing only the names that changed. A
/// file is read through the map when it holds every old name of the map and lacks at least one
/// current name that the map renames; otherwise by the current names. The whole map applies or
/// none of it, so a rename chain (old w1 → w2, old w0 → w1) cannot mix the two layouts. Nested
/// modules that declare legacy names must not rename the same tensor.
class LegacyNames {
 public:
  virtual ~LegacyNames() = default;
  virtual std::map<std::string, std::string> legacy_names() const = 0;
};

/// Where `file` holds each tensor of `module` that is read under a legacy name: {current name →
/// file name}, the current names as in named_parameters()/named_buffers(), the file names with
/// `prefix` (the module's tensors live under `prefix` in the file). Tensors read under their
/// current name (prefix + name) are not listed.
std::map<std::string, std::string> legacy_sources(const torch::nn::Module& module,
                                                  const TensorFile& file,
                                                  const std::string& prefix = "");

/// Saves named_parameters() and named_buffers() of `module` (atomically) with `metadata`.
void save_module(const torch::nn::Module& module, const std::string& path,
                 const std::map<std::string, std::string>& metadata = {});

/// Loads a checkpoint written by save_module into `module` and returns its metadata. Every
/// parameter and buffer must be in the file with the same shape and dtype, and the file may hold
/// nothing else; errors name the tensor, both shapes and what to do. TopAnyMoE layers in resize
/// mode first take the file's expert count; a layer that cannot resize gets a clear error. Modules
/// that declare LegacyNames also load files written with their old names.
std::map<std::string, std::string> load_module(torch::nn::Module& module, const std::string& path);

}  // namespace moe::io
