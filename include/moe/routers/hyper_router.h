// HyperRouter (Do et al., EMNLP 2023; docs/algorithms.md §3.2): the router's weight and bias are
// generated on every training forward by a frozen random hyper-network from a trainable embedding:
//
//   θ = W2·relu(W1·e + b1) + b2        θ ∈ R^{E·(d+1)}, reshaped to [E, d+1]
//   W_r = θ[:, :d], b_r = θ[:, d];  logits = x·W_rᵀ + b_r;  top-k, softmax over the k selected
//
// Parameters: router.embedding [1, d_e] (N(0, 1), trainable), router.hypernet_w1 [h, d_e],
// router.hypernet_b1 [h], router.hypernet_w2 [E·(d+1), h], router.hypernet_b2 [E·(d+1)] (N(0, 0.02)
// weights, zero biases; frozen: requires_grad = false, never updated).
#pragma once

#include <c10/util/Optional.h>
#include <torch/arg.h>
#include <torch/nn/cloneable.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <string>
#include <utility>

#include "moe/router.h"

namespace moe {

/// Example: HyperRouter r(HyperRouterOptions(/*d_model=*/256,
/// /*num_experts=*/16).hyper_hidden(64));
struct HyperRouterOptions {
  HyperRouterOptions(int64_t d_model, int64_t num_experts)
      : d_model_(d_model), num_experts_(num_experts) {}
  TORCH_ARG(int64_t, d_model);
  TORCH_ARG(int64_t, num_experts);
  TORCH_ARG(int64_t, top_k) = 2;
  TORCH_ARG(int64_t, hyper_hidden) = 256;  ///< h (the authors use 64 for enwik8, 256 for WT103)
  /// d_e, default d_model (the authors' code; the paper calls it low-dimensional).
  TORCH_ARG(c10::optional<int64_t>, embedding_dim) = c10::nullopt;
  TORCH_ARG(double, init_std) = 0.02;  ///< of the hyper-network weights (Transformer-XL init)
  /// Off by default, as in the paper; for ablations.
  TORCH_ARG(double, balance_coef) = 0.0;
  TORCH_ARG(double, z_loss_coef) = 0.0;
  TORCH_ARG(bool, aux_loss_in_eval) = false;
  TORCH_ARG(NonFinitePolicy, non_finite) = NonFinitePolicy::kError;
  TORCH_ARG(std::string, name) = "HyperRouter";
};

class HyperRouterImpl : public torch::nn::Cloneable<HyperRouterImpl>, public RouterInterface {
 public:
  explicit HyperRouterImpl(HyperRouterOptions options);
  void reset() override;
  void reset_parameters() override;
  void pretty_print(std::ostream& stream) const override;

  using RouterInterface::route;
  RoutingResult route(const torch::Tensor& x, const BatchShards& batch) override;
  RoutingResult forward(const torch::Tensor& x) { return route(x); }
  int64_t num_experts() const override { return options.num_experts(); }
  std::string kind() const override { return "hyper"; }

  /// The generated router (W_r [E, d], b_r [E]), differentiable w.r.t. the embedding. In eval mode
  /// route() computes it once and reuses it until the embedding (or the hyper-network) changes or
  /// the module goes back to training.
  std::pair<torch::Tensor, torch::Tensor> generate() const;
  /// Sets k (1 <= k <= E), e.g. from a TopKSchedule or to evaluate at another k.
  void set_top_k(int64_t k) override;
  int64_t top_k() const override { return options.top_k(); }
  /// Whether the next eval route() would reuse the cached router.
  bool cache_valid() const;

  HyperRouterOptions options;
  torch::Tensor embedding, hypernet_w1, hypernet_b1, hypernet_w2, hypernet_b2;

 private:
  int64_t versions() const;
  torch::Tensor cached_weight_, cached_bias_;
  int64_t cached_version_ = -1;
  const void* cached_storage_ = nullptr;
};
TORCH_MODULE(HyperRouter);

}  // namespace moe
