// Enumerations shared by every layer of the library (routers, experts, kernels).
//
// Plain C++ only: kernels include this header without any torch header.
#pragma once

namespace moe {

/// How a token chooses its experts (docs/ALGORITHMS.md §1, §5).
enum class RouterKind {
  kSoftmaxTopK,  ///< softmax over all experts, keep the top k (renormalised over them by default)
  kNoisyTopK,    ///< Shazeer et al. 2017: noisy logits, softmax over the k kept (§1.2)
  kSwitch,       ///< Switch Transformer: top-1 softmax probability, no renormalisation (§5.1)
};

/// Expert MLP activation. The gated units use three matrices: act(x·w1) * (x·w3), then ·w2.
enum class Activation { kReLU, kGELU, kSiLU, kSwiGLU, kGEGLU };

/// Initialisation of the stacked expert weights.
enum class ExpertInit {
  kGlorotUniform,  ///< U(±sqrt(6/(fan_in+fan_out))), the TF default used by Shazeer's experts
                   ///< (§1.5)
  kLinearDefault,  ///< U(±1/sqrt(fan_in)), as torch::nn::Linear's default
  kNormal,         ///< N(0, init_std)
};

/// What a layer does with tokens whose router logits are not finite (NaN/Inf input).
enum class NonFinitePolicy {
  kError,  ///< raise an error naming the layer and the number of bad tokens (default)
  kSkip,   ///< route such tokens to no expert: their output row is 0, other tokens are unaffected
};

inline bool is_gated(Activation a) { return a == Activation::kSwiGLU || a == Activation::kGEGLU; }

inline const char* to_string(RouterKind k) {
  switch (k) {
    case RouterKind::kSoftmaxTopK:
      return "softmax_topk";
    case RouterKind::kNoisyTopK:
      return "noisy_topk";
    case RouterKind::kSwitch:
      return "switch";
  }
  return "?";
}

inline const char* to_string(Activation a) {
  switch (a) {
    case Activation::kReLU:
      return "relu";
    case Activation::kGELU:
      return "gelu";
    case Activation::kSiLU:
      return "silu";
    case Activation::kSwiGLU:
      return "swiglu";
    case Activation::kGEGLU:
      return "geglu";
  }
  return "?";
}

inline const char* to_string(ExpertInit i) {
  switch (i) {
    case ExpertInit::kGlorotUniform:
      return "glorot_uniform";
    case ExpertInit::kLinearDefault:
      return "linear_default";
    case ExpertInit::kNormal:
      return "normal";
  }
  return "?";
}

}  // namespace moe
