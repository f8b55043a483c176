// ExpertChoiceRouter: expert-choice routing (Zhou et al. 2022; docs/algorithms.md §5.4). The
// experts choose the tokens: with S = softmax(x·Wᵀ + b) over the experts, expert e takes the C
// tokens of the batch with the largest S[:, e], C = min(T, max(1, ceil(T·cf/E))), and weighs
// them by S[t, e] (not renormalised). A token may be taken by 0 to E experts; one taken by none
// gets a zero output. Every expert processes exactly C tokens, so no balancing loss is needed.
//
// The library's choices where the paper is silent: C rounds up and is at least 1 and at most T;
// ties for an expert's last places go to the lowest token index; tokens skipped for non-finite
// values (NonFinitePolicy::kSkip) are never taken. A token's output depends on the other tokens
// of its batch (the selection is over the batch).
//
// Parameters: router.weight [E, d] (N(0, init_std)), router.bias [E] (with bias(true)).
// Result: expert_index / gate are [T, E]: column e holds e where expert e took token t, else -1.
#pragma once

#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <string>

#include "moe/router.h"

namespace moe {

/// Example: ExpertChoiceRouter r(ExpertChoiceRouterOptions(/*d_model=*/512, /*num_experts=*/16)
///                                   .capacity_factor(2.0));
struct ExpertChoiceRouterOptions {
  ExpertChoiceRouterOptions(int64_t d_model, int64_t num_experts)
      : d_model_(d_model), num_experts_(num_experts) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  /// cf: tokens per expert C = T·cf/E, on average cf experts per token (the paper's default 2).
  TORCH_ARG(double, capacity_factor) = 2.0;
  TORCH_ARG(bool, bias) = false;
  TORCH_ARG(double, init_std) = 0.02;
  /// ST-MoE's router z-loss (off by default; the method needs no auxiliary loss).
  TORCH_ARG(double, z_loss_coef) = 0.0;
  TORCH_ARG(bool, aux_loss_in_eval) = false;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  TORCH_ARG(std::string, name) = "ExpertChoiceRouter";  ///< the layer named in error messages
};

class ExpertChoiceRouterImpl : public torch::nn::Cloneable<ExpertChoiceRouterImpl>,
                               public RouterInterface {
 public:
  explicit ExpertChoiceRouterImpl(ExpertChoiceRouterOptions options);
  void reset() override;
  void reset_parameters() override;
  void pretty_print(std::ostream& stream) const override;

  using RouterInterface::route;
  RoutingResult route(const torch::Tensor& x, const BatchShards& batch) override;
  RoutingResult forward(const torch::Tensor& x) { return route(x); }
  int64_t num_experts() const override { return options.num_experts(); }
  std::string kind() const override { return "expert_choice"; }
  /// C for a batch of T tokens.
  int64_t capacity(int64_t num_tokens) const;

  ExpertChoiceRouterOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(ExpertChoiceRouter);

}  // namespace moe
