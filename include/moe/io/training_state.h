// Training checkpoints: the model, the optimizer's per-parameter state and the CPU random-number
// generator in one safetensors file, so that a run can stop and continue bit-exactly.
//
// Tensor names: "model.<parameter or buffer>", "optim.<parameter>.<field>" (Adam/AdamW: step,
// exp_avg, exp_avg_sq, max_exp_avg_sq; SGD: momentum_buffer), "rng.cpu". The metadata holds the
// optimizer kind ("moe.optimizer") and the learning rate of each parameter group
// ("moe.lr.<group>"); keys starting with "moe." are the library's.
#pragma once

#include <torch/nn/module.h>

#include <map>
#include <string>

namespace torch::optim {
class Optimizer;
}

namespace moe::io {

/// Saves atomically (see save_safetensors). Optimizers: Adam, AdamW, SGD; others raise an error.
void save_checkpoint(const torch::nn::Module& model, torch::optim::Optimizer& optimizer,
                     const std::string& path,
                     const std::map<std::string, std::string>& metadata = {});

/// Loads a file written by save_checkpoint into a model and an optimizer built the same way
/// (parameters in the same order). Checks everything before changing anything (the file's
/// checksums, every tensor's name, shape and dtype, the optimizer state's fields, the learning
/// rates, the RNG state), so that a failed load (c10::Error naming the file, the key or tensor, the
/// value and what was expected) leaves the model, the optimizer and the RNG as they were. TopAnyMoE
/// layers in resize mode take the file's expert count; a parameter without state in the file gets
/// none. Modules that declare LegacyNames (include/moe/io/checkpoint.h) also load files written
/// with their old names: a parameter read under its old name finds its optimizer state under the
/// old name too ("optim.<old name>.<field>"), as the file's writer saved it. Returns the caller's
/// metadata.
std::map<std::string, std::string> load_checkpoint(torch::nn::Module& model,
                                                   torch::optim::Optimizer& optimizer,
                                                   const std::string& path);

/// Strict readers of metadata values, for programs that keep their own keys in a checkpoint: the
/// whole value must be a number in [min, max] (finite, for doubles). A missing key or a bad value
/// raises c10::ValueError "<where>: metadata <key> = '<value>': expected ..."; `where` names the
/// program and the file.
int64_t metadata_int(const std::map<std::string, std::string>& metadata, const std::string& key,
                     int64_t min, int64_t max, const std::string& where);
double metadata_double(const std::map<std::string, std::string>& metadata, const std::string& key,
                       double min, double max, const std::string& where);

}  // namespace moe::io
