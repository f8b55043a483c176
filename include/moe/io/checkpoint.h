// Module checkpoints: every parameter and buffer of a torch::nn::Module, by its dotted name, in one
// safetensors file (include/moe/io/safetensors.h).
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <string>

namespace moe::io {

/// Saves named_parameters() and named_buffers() of `module` (atomically) with `metadata`.
void save_module(const torch::nn::Module& module, const std::string& path,
                 const std::map<std::string, std::string>& metadata = {});

/// Loads a checkpoint written by save_module into `module` and returns its metadata. Every
/// parameter and buffer must be in the file with the same shape and dtype, and the file may hold
/// nothing else; errors name the tensor, both shapes and what to do. TopAnyMoE layers in resize
/// mode first take the file's expert count; a layer that cannot resize gets a clear error.
std::map<std::string, std::string> load_module(torch::nn::Module& module, const std::string& path);

}  // namespace moe::io
