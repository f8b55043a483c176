// ExpertBank: the experts' parameters stacked per expert, evaluated as one grouped computation.
//
//   experts.w1 [E, d, h]   experts.w2 [E, h, d]   experts.w3 [E, d, h] (gated units only)
//   experts.b1 [E, h]      experts.b2 [E, d]      (with bias(true))
//
// Expert e computes  y = act(x·w1[e] + b1[e]) · w2[e] + b2[e],  or for SwiGLU/GEGLU
//                    y = (act(x·w1[e] + b1[e]) * (x·w3[e])) · w2[e] + b2[e].
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include "moe/plan.h"
#include "moe/types.h"

namespace moe {

/// Example: ExpertBank bank(ExpertBankOptions(/*num_experts=*/8, /*d_model=*/512, /*hidden=*/2048)
///                               .activation(Activation::kSwiGLU));
struct ExpertBankOptions {
  ExpertBankOptions(int64_t num_experts, int64_t d_model, int64_t hidden_size)
      : num_experts_(num_experts), d_model_(d_model), hidden_size_(hidden_size) {}
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, hidden_size);
  TORCH_ARG(Activation, activation) = Activation::kReLU;
  TORCH_ARG(bool, bias) = false;
  TORCH_ARG(ExpertInit, init) = ExpertInit::kGlorotUniform;
  TORCH_ARG(double, init_std) = 0.02;  ///< for ExpertInit::kNormal
  /// Recompute the hidden layer in backward instead of storing it (saves P·h values, 2·P·h for
  /// gated units, for one more GEMM per expert).
  TORCH_ARG(bool, recompute_hidden) = false;
  /// The global id of this bank's expert 0 when the bank holds a slice of a layer's experts
  /// (expert parallelism: RoutedMoEImpl::distribute_experts).
  TORCH_ARG(int64_t, first_expert) = 0;
};

class ExpertBankImpl : public torch::nn::Cloneable<ExpertBankImpl> {
 public:
  explicit ExpertBankImpl(ExpertBankOptions options);
  void reset() override;
  void reset_parameters();
  void pretty_print(std::ostream& stream) const override;

  /// y [T, d] = Σ_{pairs p of token t} pair_weight[p] · expert_{e(p)}(x[t]).
  /// x: [T, d]; pair_weight: [P] in plan order (see pair_weights()), differentiable.
  torch::Tensor forward(const torch::Tensor& x, const RoutingPlan& plan,
                        const torch::Tensor& pair_weight);

  ExpertBankOptions options;
  torch::Tensor w1, w2, w3, b1, b2;
};
TORCH_MODULE(ExpertBank);

}  // namespace moe
