// Access to the per-parameter state of LibTorch optimizers, for layers whose parameters change
// size.
#pragma once

#include <torch/types.h>

#include <functional>
#include <memory>

namespace torch::optim {
class Optimizer;
class OptimizerParamState;
}  // namespace torch::optim

namespace moe::detail {

/// Replaces every state tensor the optimizer keeps for parameter p (Adam/AdamW moments, SGD and
/// RMSprop buffers, Adagrad sums) by fn(tensor). Undefined tensors are left alone; a parameter
/// without state is a no-op. Throws c10::Error (naming `who`) for optimizers whose state it does
/// not know.
void transform_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p,
                           const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                           const char* who);

/// The optimizer's state for parameter p, or nullptr when it has none yet.
torch::optim::OptimizerParamState* find_param_state(torch::optim::Optimizer& optimizer,
                                                    const torch::Tensor& p);

/// Installs `state` as the optimizer's state for p (replacing any).
void set_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p,
                     std::unique_ptr<torch::optim::OptimizerParamState> state);

/// Removes the optimizer's state for p, if any (p then starts afresh, as in a new optimizer).
void erase_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p);

}  // namespace moe::detail
