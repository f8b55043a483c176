// The expert engine's autograd function: dispatch → grouped expert MLPs → weighted combine over a
// RoutingPlan, and its backward (include/moe/functional.h). This file is backend-agnostic: it
// validates the tensors, picks the backend registered for their device (src/engine/backend.h),
// saves what backward needs and calls the backend's forward and backward. The CPU backend's
// kernels are in src/engine/cpu/.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include "engine/backend.h"
#include "moe/functional.h"

namespace moe::functional {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Which tensors forward keeps for backward.
struct Keep {
  bool any = false;     // backward will run
  bool hidden = false;  // keep h (and g); otherwise backward recomputes them
};

// Custom autograd functions cannot take undefined inputs: an absent optional weight travels as an
// empty tensor (a real w2/b1/b2/w3 is never empty), reaches the backend as an undefined tensor and
// gets an undefined gradient.
at::Tensor absent_as_undefined(const at::Tensor& t) { return t.numel() > 0 ? t : at::Tensor(); }

engine::ExpertProblem problem(const at::Tensor& x, const at::Tensor& pair_weight,
                              const at::Tensor& w1, const at::Tensor& w2, const at::Tensor& w3,
                              const at::Tensor& b1, const at::Tensor& b2,
                              const at::Tensor& expert_offsets, const at::Tensor& token_index,
                              Activation act, const at::Tensor& pair_slot,
                              int64_t slots_per_token) {
  return {x,
          pair_weight,
          w1,
          absent_as_undefined(w2),
          absent_as_undefined(w3),
          absent_as_undefined(b1),
          absent_as_undefined(b2),
          expert_offsets,
          token_index,
          act,
          absent_as_undefined(pair_slot),
          slots_per_token};
}

struct ExpertMLPFunction : public torch::autograd::Function<ExpertMLPFunction> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x,
                            const at::Tensor& pair_weight, const at::Tensor& w1,
                            const at::Tensor& w2, const at::Tensor& w3, const at::Tensor& b1,
                            const at::Tensor& b2, const RoutingPlan& plan, Activation act,
                            Keep keep, const engine::ExpertBackend& backend) {
    // A padded plan's slots let the backend sum each token's rows in slot order.
    const auto pair_slot =
        plan.padded ? plan.pair_slot : at::empty({0}, plan.token_index.options());
    const int64_t K = plan.padded ? plan.slots_per_token : 0;
    const auto p = problem(x.contiguous(), pair_weight.contiguous(), w1, w2, w3, b1, b2,
                           plan.expert_offsets, plan.token_index, act, pair_slot, K);
    auto r = backend.forward(p, keep.any && keep.hidden);
    if (keep.any) {
      ctx->save_for_backward({p.x, p.pair_weight, w1, w2, w3, b1, b2, r.hidden.h, r.hidden.g});
      ctx->saved_data["act"] = static_cast<int64_t>(act);
      ctx->saved_data["expert_offsets"] = plan.expert_offsets;
      ctx->saved_data["token_index"] = plan.token_index;
      ctx->saved_data["pair_slot"] = pair_slot;
      ctx->saved_data["slots_per_token"] = K;
    }
    return r.y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto p = problem(
        s[0], s[1], s[2], s[3], s[4], s[5], s[6], ctx->saved_data["expert_offsets"].toTensor(),
        ctx->saved_data["token_index"].toTensor(),
        static_cast<Activation>(ctx->saved_data["act"].toInt()),
        ctx->saved_data["pair_slot"].toTensor(), ctx->saved_data["slots_per_token"].toInt());
    // dL/dx and dL/dpair_weight only where autograd wants them (e.g. not for a model's input).
    engine::WantedGradients want;
    want.x = ctx->needs_input_grad(0);
    want.pair_weight = ctx->needs_input_grad(1);
    const auto g =
        engine::backend_for(p.x.device())->backward(p, {s[7], s[8]}, grads[0].contiguous(), want);
    // No gradients for the plan, the activation, `keep` and the backend.
    return {g.x, g.pair_weight, g.w1, g.w2, g.w3, g.b1, g.b2, {}, {}, {}, {}};
  }
};
}  // namespace

torch::Tensor expert_mlp(const torch::Tensor& x, const RoutingPlan& plan,
                         const torch::Tensor& pair_weight, const ExpertWeights& w,
                         Activation activation, bool recompute_hidden) {
  TORCH_CHECK(x.dim() == 2, "expert_mlp: x must be [T, d], got ", x.sizes());
  const int64_t T = x.size(0), d = x.size(1);
  TORCH_CHECK(plan.num_tokens == T, "expert_mlp: the plan is for ", plan.num_tokens,
              " tokens but x has ", T);
  TORCH_CHECK(w.w1.defined() && w.w1.dim() == 3 && w.w1.size(1) == d,
              "expert_mlp: w1 must be [E, d=", d, ", h], got ",
              w.w1.defined() ? w.w1.sizes() : at::IntArrayRef{});
  const int64_t E = w.w1.size(0), h = w.w1.size(2);
  TORCH_CHECK(plan.num_experts == E, "expert_mlp: the plan is for ", plan.num_experts,
              " experts but w1 has ", E);
  // Without w2 the experts have one layer and output h columns.
  const int64_t out = w.w2.defined() ? w.w2.size(-1) : h;
  if (w.w2.defined())
    TORCH_CHECK(w.w2.dim() == 3 && w.w2.size(0) == E && w.w2.size(1) == h && out >= 1,
                "expert_mlp: w2 must be [", E, ", ", h, ", out], got ", w.w2.sizes());
  if (is_gated(activation)) {
    TORCH_CHECK(w.w3.defined() && w.w3.sizes() == w.w1.sizes(), "expert_mlp: activation ",
                to_string(activation), " needs w3 of shape ", w.w1.sizes());
  }
  if (w.b1.defined())
    TORCH_CHECK(w.b1.sizes() == at::IntArrayRef({E, h}), "expert_mlp: b1 must be [", E, ", ", h,
                "], got ", w.b1.sizes());
  if (w.b2.defined()) {
    TORCH_CHECK(w.w2.defined(), "expert_mlp: b2 given without w2 (one-layer experts have no b2)");
    TORCH_CHECK(w.b2.sizes() == at::IntArrayRef({E, out}), "expert_mlp: b2 must be [", E, ", ", out,
                "], got ", w.b2.sizes());
  }
  TORCH_CHECK(pair_weight.dim() == 1 && pair_weight.size(0) == plan.num_rows(),
              "expert_mlp: pair_weight must be [rows=", plan.num_rows(), "], got ",
              pair_weight.sizes());
  const auto dt = x.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16,
                   "expert_mlp: x must be float32, float64 or bfloat16, got ", dt);
  for (const auto* t : {&pair_weight, &w.w1, &w.w2, &w.w3, &w.b1, &w.b2}) {
    if (!t->defined()) continue;
    TORCH_CHECK_TYPE(t->scalar_type() == dt, "expert_mlp: every tensor must have x's dtype ", dt,
                     ", got ", t->scalar_type());
    TORCH_CHECK(t->device() == x.device(), "expert_mlp: input on ", x.device(), " but a weight on ",
                t->device());
  }
  // The backend of the tensors' device; backward looks it up again from the saved x.
  const auto backend = engine::backend_for(x.device());
  // Forward keeps what backward needs only when a backward can happen.
  Keep keep;
  keep.any = at::GradMode::is_enabled();
  if (keep.any) {
    bool any_grad = false;
    for (const auto* t : {&x, &pair_weight, &w.w1, &w.w2, &w.w3, &w.b1, &w.b2})
      any_grad = any_grad || (t->defined() && t->requires_grad());
    keep.any = any_grad;
  }
  keep.hidden = !recompute_hidden;
  // Absent optional weights travel as empty tensors (see absent_as_undefined).
  const auto absent = at::empty({0}, x.options());
  auto or_absent = [&](const at::Tensor& t) { return t.defined() ? t : absent; };
  return ExpertMLPFunction::apply(x, pair_weight, w.w1, or_absent(w.w2), or_absent(w.w3),
                                  or_absent(w.b1), or_absent(w.b2), plan, activation, keep,
                                  *backend);
}

}  // namespace moe::functional
