// The expert engine's backend boundary.
//
// The engine computes y[t] = Σ_{pairs p of token t} w_p · expert_{e(p)}(x[t]) over a RoutingPlan,
// and its backward. Its autograd function (src/autograd/expert_mlp.cpp) validates the tensors,
// looks up the backend registered for their device type, and hands the backend one
// ExpertProblem; the backend owns everything below that: kernels, scratch, threads, dtypes of
// computation. The CPU backend lives in src/engine/cpu/ (cpu_backend.cpp drives the plan,
// expert_ffn_cpu.cpp holds the kernels as forward/backward pairs).
//
// Devices without a backend of their own run the portable backend (ATen operations only,
// src/engine/portable/). Adding a faster one (say CUDA): new files that implement ExpertBackend,
// plus one registration,
// either a line in builtin_backends() (src/engine/backend.cpp) or a call to register_backend()
// from the backend's own code. Neither the autograd function nor the layers change.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/DeviceType.h>

#include <memory>
#include <vector>

#include "moe/types.h"

namespace moe::engine {

/// One call of the engine as a backend receives it. Every tensor lives on one device and has one
/// dtype (float32, float64 or bfloat16; the plan's tensors are int64); x and pair_weight are
/// contiguous. Absent optional weights are undefined (w3 is present for gated activations). Without
/// w2 (and b2) the experts have one layer, o = act(x·w1 + b1), and the output width is h; with w2
/// it is w2's last dimension `out`, which may differ from d.
struct ExpertProblem {
  at::Tensor x;               ///< [T, d]
  at::Tensor pair_weight;     ///< [rows], in plan order
  at::Tensor w1;              ///< [E, d, h]
  at::Tensor w2;              ///< [E, h, out] or undefined (one-layer experts: out = h)
  at::Tensor w3;              ///< [E, d, h] or undefined
  at::Tensor b1;              ///< [E, h] or undefined
  at::Tensor b2;              ///< [E, out] or undefined (always without w2)
  at::Tensor expert_offsets;  ///< [E+1]: the pairs of expert e are [offsets[e], offsets[e+1])
  at::Tensor token_index;     ///< [rows]: the token of each pair
  Activation act = Activation::kReLU;
  /// A padded plan's pair_slot ([rows] = [T·K]: the slot t·K + s of each row) and K; undefined
  /// and 0 otherwise. With them a backend can sum each token's rows in slot order, which does not
  /// depend on the device (src/plan/sum_by_token.h).
  at::Tensor pair_slot;
  int64_t slots_per_token = 0;
};
// A padded plan (include/moe/plan.h) gives token_index and pair_weight more rows than the
// P = expert_offsets[E] pairs: a backend computes the pairs only and returns a zero pair_weight
// gradient for the padding rows.

/// What forward keeps of its hidden layer for backward, in x's dtype ([P, h] each), or undefined
/// (backward then recomputes it). Its contents are the backend's own business: backward gets back
/// exactly what forward returned.
struct SavedHidden {
  at::Tensor h, g;
};

/// The output width of p's experts: w2's last dimension, or h for one-layer experts.
inline int64_t output_width(const ExpertProblem& p) {
  return p.w2.defined() ? p.w2.size(2) : p.w1.size(2);
}

struct ForwardResult {
  at::Tensor y;        ///< [T, out], x's dtype
  SavedHidden hidden;  ///< defined only when forward was asked to keep the hidden layer
};

/// Which gradients backward must compute: the others may come back undefined (skipping dL/dx
/// saves one GEMM per expert and the sum into the token rows).
struct WantedGradients {
  bool x = true;
  bool pair_weight = true;
};

/// dL/d of every input of ExpertProblem, in its dtype; undefined for an absent weight or one not
/// wanted.
struct ExpertGradients {
  at::Tensor x, pair_weight, w1, w2, w3, b1, b2;
};

/// A device's implementation of the engine. Implementations are stateless between calls (one
/// object serves every layer and thread) and must give deterministic results.
class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;

  /// y for problem p; keeps the hidden layer in the result when keep_hidden.
  virtual ForwardResult forward(const ExpertProblem& p, bool keep_hidden) const = 0;

  /// The gradients of p's inputs from dy = dL/dy [T, out] (contiguous, x's dtype), with `hidden`
  /// as forward returned it; the weights' always, x's and pair_weight's as `want` says.
  virtual ExpertGradients backward(const ExpertProblem& p, const SavedHidden& hidden,
                                   const at::Tensor& dy, const WantedGradients& want) const = 0;
};

/// Registers (or replaces) the backend for tensors of `type`. Thread-safe.
void register_backend(c10::DeviceType type, std::shared_ptr<const ExpertBackend> backend);

/// The backend for tensors on `device`: the one registered for its type, else the portable backend
/// (src/engine/portable/portable_backend.h), which runs on every device.
/// MOE_ENGINE_BACKEND=portable (read once) gives every device the portable backend, the CPU
/// included.
std::shared_ptr<const ExpertBackend> backend_for(const c10::Device& device);

/// Whether the layers take their portable path for tensors on `device`: every device but the CPU,
/// and the CPU too under MOE_ENGINE_BACKEND=portable. On the portable path, routing and the plan
/// use ATen operations only and read nothing back from the device (docs/gpu.md); on the CPU's own
/// path they use the host kernels of src/kernels/cpu/.
bool portable_path(const c10::Device& device);

/// The device types that have a backend, in DeviceType order.
std::vector<c10::DeviceType> registered_backends();

}  // namespace moe::engine
