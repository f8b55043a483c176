// Training checkpoints: the model, the optimizer's per-parameter state and the CPU random-number
// generator in one safetensors file, so that a run can stop and continue bit-exactly.
//
// Tensor names: "model.<parameter or buffer>", "optim.<parameter>.<field>" (Adam/AdamW: step,
// exp_avg, exp_avg_sq, max_exp_avg_sq; SGD: momentum_buffer), "rng.cpu". The learning rate of each
// parameter group is kept in the metadata ("optim.lr.<group>").
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
/// (parameters in the same order). Checks everything before changing anything; TopAnyMoE layers in
/// resize mode take the file's expert count. Returns the caller's metadata.
std::map<std::string, std::string> load_checkpoint(torch::nn::Module& model,
                                                   torch::optim::Optimizer& optimizer,
                                                   const std::string& path);

}  // namespace moe::io
