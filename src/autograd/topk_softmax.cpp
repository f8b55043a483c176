// Autograd wrapper of the fused softmax top-k router kernel (kernels/cpu/router.cpp); ATen
// operations on the portable path.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "engine/backend.h"
#include "kernels/cpu/kernels.h"
#include "moe/gating.h"

namespace moe {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

struct TopKSoftmaxFunction : public torch::autograd::Function<TopKSoftmaxFunction> {
  // Returns {gate [T, k], expert_index [T, k] (not differentiable)}.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& logits, int64_t k,
                               bool normalize) {
    const auto l = logits.contiguous();
    const int64_t T = l.size(0), E = l.size(1);
    auto idx = at::empty({T, k}, l.options().dtype(at::kLong));
    auto gate = at::empty({T, k}, l.options());
    auto lse = at::empty({T}, l.options());
    AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "topk_softmax_forward", [&] {
      kernels::cpu::topk_softmax_forward<scalar_t>(
          l.data_ptr<scalar_t>(), T, E, k, normalize, idx.data_ptr<int64_t>(),
          gate.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>());
    });
    ctx->save_for_backward({l, lse, idx, gate});
    ctx->saved_data["normalize"] = normalize;
    ctx->mark_non_differentiable({idx});
    return {gate, idx};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto& l = s[0];
    const auto& lse = s[1];
    const auto& idx = s[2];
    const auto& gate = s[3];
    const bool normalize = ctx->saved_data["normalize"].toBool();
    const auto dgate = grads[0].defined() ? grads[0].contiguous() : at::zeros_like(gate);
    const int64_t T = l.size(0), E = l.size(1), k = idx.size(1);
    auto dl = at::empty_like(l);
    AT_DISPATCH_FLOATING_TYPES(l.scalar_type(), "topk_softmax_backward", [&] {
      kernels::cpu::topk_softmax_backward<scalar_t>(
          l.data_ptr<scalar_t>(), lse.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
          gate.data_ptr<scalar_t>(), dgate.data_ptr<scalar_t>(), nullptr, T, E, k, normalize,
          dl.data_ptr<scalar_t>());
    });
    return {dl, at::Tensor(), at::Tensor()};
  }
};

}  // namespace

std::tuple<torch::Tensor, torch::Tensor> fused_softmax_top_k(const torch::Tensor& logits, int64_t k,
                                                             bool normalize) {
  TORCH_CHECK(logits.dim() == 2, "fused_softmax_top_k: expected [T, E] logits, got ",
              logits.sizes());
  TORCH_CHECK_VALUE(k >= 1 && k <= logits.size(1), "fused_softmax_top_k: k must be in [1, ",
                    logits.size(1), "], got ", k);
  TORCH_CHECK_TYPE(logits.scalar_type() == at::kFloat || logits.scalar_type() == at::kDouble,
                   "fused_softmax_top_k: expected float32 or float64 logits, got ",
                   logits.scalar_type());
  if (engine::portable_path(logits.device())) {
    // ATen's softmax and a stable sort, differentiated by autograd; the same gate as the kernel.
    auto [idx, top] = topk_lowest_index(logits, k);
    const auto gate = normalize ? at::softmax(top, -1)
                                : at::exp(top - at::logsumexp(logits, -1, /*keepdim=*/true));
    return {idx, gate};
  }
  auto out = TopKSoftmaxFunction::apply(logits, k, normalize);
  return {out[1], out[0]};
}

}  // namespace moe
