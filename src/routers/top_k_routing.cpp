// route_top_k: the shared tail of the top-k routers (src/routers/top_k_routing.h).
#include "routers/top_k_routing.h"

#include <ATen/ATen.h>

#include "engine/backend.h"
#include "moe/gating.h"
#include "moe/losses.h"
#include "routers/non_finite.h"

namespace moe::detail {
namespace {

// The weighted auxiliary loss of a top-k router and its unweighted terms. `anchor` keeps every
// parameter in the graph (a zero-token batch still gets zero, not undefined, gradients); `logits`
// are needed by the balance and z losses only.
void add_aux_losses(RoutingResult& out, const torch::Tensor& anchor, const torch::Tensor& logits,
                    const torch::Tensor& valid, const torch::Tensor& chosen,
                    const LossCoefficients& c, const BatchShards& batch) {
  auto aux = anchor.sum() * 0.0;
  auto term = [&](const char* name, double coef, const torch::Tensor& value) {
    aux = aux + coef * value;
    out.loss_terms.emplace_back(name, value.detach());
  };
  // out.importance and out.load are already the global batch's.
  if (c.importance > 0) term("importance", c.importance, cv_squared(out.importance));
  if (c.load > 0) term("load", c.load, cv_squared(out.load));
  if (c.balance > 0 || c.z > 0) {
    // Means over the valid tokens of the global batch: sums over the shards divided by its count.
    // Invalid rows are masked, not removed, so that no size depends on the data.
    const int64_t E = logits.size(1);
    const auto zero = at::zeros({}, logits.options());
    const auto masked = [&](const torch::Tensor& t) {
      return valid.defined() ? at::where(valid.view({-1, 1}).expand_as(t), t, zero) : t;
    };
    const auto count = valid.defined()
                           ? valid.sum().to(logits.scalar_type())
                           : at::full({}, static_cast<double>(logits.size(0)), logits.options());
    const auto n = batch.sum(count).clamp_min(1);
    if (c.balance > 0) {
      // Invalid tokens chose no expert (their slots are -1).
      const auto f = batch.sum(assignment_counts(chosen, E, logits.options())) / n;
      const auto P = batch.sum(masked(at::softmax(logits, -1)).sum(0)) / n;
      term("balance", c.balance, static_cast<double>(E) * (f * P).sum());
    }
    if (c.z > 0) {
      const auto lse2 = at::logsumexp(logits, -1, /*keepdim=*/true).pow(2);
      term("z", c.z, batch.sum(masked(lse2).sum()) / n);
    }
  }
  out.aux_loss = aux;
}

// Capacity over the global batch (docs/algorithms.md §5.2): first choices before second choices,
// earlier tokens first. A shard's slot s of expert e starts after the slot-s pairs of the shards
// before it and after the pairs of every shard's earlier slots.
torch::Tensor capacity_fill_before(const torch::Tensor& expert_index, int64_t E,
                                   const BatchShards& batch) {
  if (batch.whole()) return {};
  const int64_t K = expert_index.size(1);
  const auto& idx = expert_index;
  auto counts = at::zeros({K, E + 1}, idx.options());
  counts.scatter_add_(1, (idx.t() + 1).contiguous(), at::ones({K, idx.size(0)}, idx.options()));
  counts = counts.narrow(1, 1, E).contiguous();  // [K, E] without the -1 column
  const auto before = batch.sum_before(counts);
  const auto total = batch.sum(counts);
  return before + (total.cumsum(0) - total);
}

// Non-finite values from finite (or zeroed) inputs are the weights' fault: an error under either
// policy. Deciding to raise reads one flag; the portable path asserts on the device instead, which
// reads nothing back (docs/gpu.md).
void check_weights_finite(const torch::Tensor& t, const TopKRule& rule, const char* what) {
  if (engine::portable_path(t.device())) {
    at::_assert_async(at::isfinite(t).all());
    return;
  }
  TORCH_CHECK_VALUE(at::isfinite(t).all().item<bool>(), rule.who, ": ", what,
                    " are non-finite for finite inputs: the router weights contain NaN or Inf");
}

// The unfused gate: the [T, E] logits first (the reference for the fused noisy gate, and what the
// balance and z losses need).
TopKGate gate_from_logits(torch::Tensor& xr, torch::Tensor& logits, FiniteTokens& finite,
                          const RouterWeights& w, const TopKRule& rule, bool training,
                          const BatchShards& batch) {
  logits = at::linear(xr, w.weight, w.bias);
  finite = check_finite_tokens(logits, rule.non_finite, rule.who, "router logits");
  const auto& valid = finite.valid;
  if (valid.defined()) {
    // Recomputed from zeroed rows, so that the skipped tokens add nothing (not NaN) to the weights'
    // gradient. (On the portable path under kSkip `valid` is always there: two GEMMs of the small
    // router, against a host read.)
    xr = zero_invalid_rows(xr, valid);
    logits = at::linear(xr, w.weight, w.bias);
    check_weights_finite(logits, rule, "router logits");
  }
  if (rule.kind != RouterKind::kNoisyTopK) {
    return softmax_top_k_gating(logits, rule.top_k, rule.normalize, valid);
  }
  // Without noise (inference, or noisy gating off) the gate is the clean top-k: the noise logits
  // are not computed at all.
  const bool noisy = training && w.noise_weight.defined();
  const auto noise_logits = noisy ? at::linear(xr, w.noise_weight) : torch::Tensor();
  if (noisy) check_weights_finite(noise_logits, rule, "router noise logits");
  const auto noise =
      noisy ? shard_of_global_draw(batch, logits.size(0), 1, logits.size(1), logits.options(),
                                   [](at::Tensor& t) { t.normal_(); })
            : torch::Tensor();
  return noisy_top_k_gating(logits, noise_logits, noise, rule.top_k, rule.noise_epsilon, valid);
}

}  // namespace

void check_router_input(const torch::Tensor& x, int64_t d_model, const std::string& who) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) == d_model, who, ": expected router input of shape [T, ",
              d_model, "], got ", x.sizes());
}

at::Tensor shard_of_global_draw(const BatchShards& batch, int64_t local_rows,
                                int64_t rows_per_token, int64_t cols,
                                const at::TensorOptions& options,
                                const std::function<void(at::Tensor&)>& fill) {
  auto all = at::empty({batch.total_rows() * rows_per_token, cols}, options);
  fill(all);
  if (batch.whole()) return all;
  return all.narrow(0, batch.row_offset() * rows_per_token, local_rows * rows_per_token);
}

RoutingResult route_top_k(torch::Tensor xr, const RouterWeights& w, const TopKRule& rule,
                          bool training, const BatchShards& batch) {
  const int64_t T = xr.size(0), E = rule.num_experts, k = rule.top_k;
  const auto& c = rule.coefficients;
  const bool fused = rule.kind == RouterKind::kNoisyTopK && !engine::portable_path(xr.device()) &&
                     c.balance == 0 && c.z == 0;
  torch::Tensor logits;
  FiniteTokens finite;
  TopKGate g;
  if (fused) {
    // The input rows decide which tokens are valid: non-finite logits of finite inputs are an
    // error of the weights, raised by the fused gate.
    finite = check_finite_tokens(xr, rule.non_finite, rule.who, "router inputs");
    if (finite.valid.defined()) xr = zero_invalid_rows(xr, finite.valid);
    const bool noisy = training && w.noise_weight.defined();
    try {
      g = fused_noisy_top_k_gating(xr, w.weight, w.bias, noisy ? w.noise_weight : torch::Tensor(),
                                   k, rule.noise_epsilon, finite.valid, /*block_rows=*/0,
                                   {batch.row_offset(), batch.total_rows()});
    } catch (const c10::ValueError& e) {  // name the layer
      TORCH_CHECK_VALUE(false, rule.who, ": ", e.what_without_backtrace());
    }
  } else {
    g = gate_from_logits(xr, logits, finite, w, rule, training, batch);
  }
  const auto& valid = finite.valid;

  RoutingResult out;
  out.skipped_tokens = finite.skipped;
  out.assigned = (T - finite.skipped) * k;
  out.importance = batch.sum(importance(g.expert_index, g.gate, E));
  out.load = batch.sum(g.load);
  out.expert_index = g.expert_index;
  out.gate = g.gate;
  out.dropped = at::zeros({}, out.assigned.options());
  if (rule.capacity_factor > 0) {
    const int64_t cap =
        expert_capacity(batch.total_rows(), k, E, rule.capacity_factor, rule.min_capacity);
    std::tie(out.expert_index, out.dropped) =
        apply_capacity(g.expert_index, E, cap, capacity_fill_before(g.expert_index, E, batch));
    out.gate = out.gate * (out.expert_index >= 0).to(out.gate.scalar_type());
  }
  const auto& anchor = fused ? g.gate : logits;
  if (training || rule.aux_loss_in_eval) {
    add_aux_losses(out, anchor, logits, valid, g.expert_index, c, batch);
  } else {
    out.aux_loss = anchor.sum() * 0.0;
  }
  return out;
}

}  // namespace moe::detail
