// Access to the per-parameter state of LibTorch optimizers, for layers whose parameters change size.
#pragma once

#include <torch/types.h>

#include <functional>

namespace torch::optim {
class Optimizer;
}

namespace moe::detail {

/// Replaces every state tensor the optimizer keeps for parameter p (Adam/AdamW moments, SGD and
/// RMSprop buffers, Adagrad sums) by fn(tensor). Undefined tensors are left alone; a parameter
/// without state is a no-op. Throws c10::Error (naming `who`) for optimizers whose state it does
/// not know.
void transform_param_state(torch::optim::Optimizer& optimizer, const torch::Tensor& p,
                           const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                           const char* who);

}  // namespace moe::detail
