// Noisy top-k gating fused with its two linear maps, block by block over the tokens
// (include/moe/gating.h, docs/algorithms.md §1.2, §1.4, docs/benchmarks.md "Many experts").
//
// With thousands of experts every [T, E] tensor of the unfused gate is hundreds of MB: the clean
// and noise logits, the noise, the standard deviations, H, the load probabilities and each of their
// gradients. Here a block of rows at a time goes through GEMM → softplus → noise → top-(k+1) →
// gates → load probabilities, in [rows, E] buffers of about a million elements that are reused
// from block to block. What the backward needs is kept per token (the k+1 winners, their values,
// noise and softplus slopes); the backward recomputes a block's clean and noise logits (two more
// GEMMs than the unfused gate) instead of storing them, so memory stays linear in T·k plus E·d.
#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cmath>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "moe/gating.h"

namespace moe {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr double kSqrt2 = 1.4142135623730951;
constexpr double kInvSqrtPi = 0.5641895835477563;  // d/da erf(a) = 2/√π·exp(-a²), halved by P

// Row ranges of the blocks. Every block but the last has a multiple of 16 rows, and the last one
// has at least 16 elements: ATen's CPU normal_ fills 16 values at a time (and draws the tail of a
// tensor whose size is not a multiple of 16 differently), so drawing the noise block after block
// gives the same numbers as one randn of [T, E]: the fused gate is a drop-in for the unfused one.
std::vector<int64_t> block_starts(int64_t T, int64_t E, int64_t block_rows) {
  int64_t B = block_rows > 0 ? block_rows : (int64_t(1) << 21) / (2 * E);
  B = std::max<int64_t>(16, (B + 15) / 16 * 16);
  std::vector<int64_t> starts;
  for (int64_t r = 0; r < T; r += B) starts.push_back(r);
  if (starts.size() > 1 && (T - starts.back()) * E < 16) starts.pop_back();
  starts.push_back(T);
  return starts;
}

struct Blocks {
  std::vector<int64_t> starts;
  int64_t max_rows = 0;
  Blocks(int64_t T, int64_t E, int64_t block_rows) : starts(block_starts(T, E, block_rows)) {
    for (size_t i = 0; i + 1 < starts.size(); ++i)
      max_rows = std::max(max_rows, starts[i + 1] - starts[i]);
  }
  size_t count() const { return starts.size() - 1; }
  int64_t begin(size_t i) const { return starts[i]; }
  int64_t rows(size_t i) const { return starts[i + 1] - starts[i]; }
};

// The clean and (when `noise` is defined) noise logits of the rows xb, each with the GEMM that
// at::linear runs, so that the fused gate rounds as the unfused one does.
void block_logits(at::Tensor& clean, at::Tensor& noise, const at::Tensor& xb,
                  const at::Tensor& weight, const at::Tensor& bias,
                  const at::Tensor& noise_weight) {
  if (bias.defined()) {
    at::addmm_out(clean, bias, xb, weight.t());
  } else {
    at::mm_out(clean, xb, weight.t());
  }
  if (noise.defined()) at::mm_out(noise, xb, noise_weight.t());
}

// a = (clean - threshold) / (√2·std + 1e-20) for every expert of the block (Eq. 9 before Φ). The
// competitor of an expert is the k-th largest noisy logit, except for the experts strictly above
// the (k+1)-th, whose competitor is the (k+1)-th (t2t's _ProbInTopK). `d` holds √2·std + 1e-20.
void load_arguments(at::Tensor& a, const at::Tensor& clean, const at::Tensor& d,
                    const at::Tensor& top_idx, const at::Tensor& top_val, int64_t k) {
  const auto thr_in = top_val.narrow(1, k, 1);
  const auto thr_out = top_val.narrow(1, k - 1, 1);
  at::sub_out(a, clean, thr_out);
  a.div_(d);
  const auto kept = top_idx.narrow(1, 0, k);
  const auto above = at::gt(top_val.narrow(1, 0, k), thr_in);
  const auto a_in = (clean.gather(1, kept) - thr_in) / d.gather(1, kept);
  a.scatter_(1, kept, at::where(above, a_in, a.gather(1, kept)));
}

struct FusedNoisyGateFunction : public torch::autograd::Function<FusedNoisyGateFunction> {
  // Returns {gate [T, k], load [E], expert_index [T, k] (not differentiable)}.
  // LibTorch 1.13's Function::apply takes no undefined tensors: an absent bias, noise weight or
  // mask arrives as an empty tensor.
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                               const at::Tensor& bias_or_empty, const at::Tensor& noise_or_empty,
                               int64_t k, double noise_epsilon, const at::Tensor& valid_or_empty,
                               int64_t block_rows, int64_t row_offset, int64_t total_rows) {
    const auto present = [](const at::Tensor& t) { return t.numel() > 0 ? t : at::Tensor(); };
    const auto bias = present(bias_or_empty), noise_weight = present(noise_or_empty),
               valid = present(valid_or_empty);
    ctx->set_materialize_grads(false);  // an unused load (no load loss) costs no backward pass
    const int64_t T = x.size(0), E = weight.size(0);
    const bool noisy = noise_weight.defined();
    const bool estimator = noisy && k < E;  // otherwise the load is the count of choices
    const int64_t m = estimator ? k + 1 : k;
    const auto opts = x.options();
    // The blocks cover the global batch (x's rows are [row_offset, row_offset + T) of it): the
    // noise of every block is drawn, and a block's rows outside x are drawn and dropped.
    const Blocks blocks(total_rows, E, block_rows);

    auto top_idx = at::empty({T, m}, opts.dtype(at::kLong));
    auto top_val = at::empty({T, m}, opts);
    auto gate = at::empty({T, k}, opts);
    // Per winner: its noise and σ'(noise logit) = d std / d noise logit, for the backward.
    auto top_noise = noisy ? at::empty({T, m}, opts) : at::Tensor();
    auto top_dstd = noisy ? at::empty({T, m}, opts) : at::Tensor();
    auto erf_sum = at::zeros({E}, opts.dtype(at::kDouble));
    int64_t bad_rows = 0;

    auto C = at::empty({blocks.max_rows, E}, opts);
    auto N = noisy ? at::empty({blocks.max_rows, E}, opts) : at::Tensor();
    auto S = noisy ? at::empty({blocks.max_rows, E}, opts) : at::Tensor();
    auto Z = noisy ? at::empty({blocks.max_rows, E}, opts) : at::Tensor();
    auto H = at::empty({blocks.max_rows, E}, opts);
    auto A = estimator ? at::empty({blocks.max_rows, E}, opts) : at::Tensor();
    for (size_t i = 0; i < blocks.count() && bad_rows == 0; ++i) {
      const int64_t g0 = blocks.begin(i), g1 = g0 + blocks.rows(i);
      const int64_t lo = std::max(g0, row_offset), hi = std::min(g1, row_offset + T);
      at::Tensor Zb;
      if (noisy) {
        auto Zg = Z.narrow(0, 0, g1 - g0);
        Zg.normal_();
        if (lo < hi) Zb = Zg.narrow(0, lo - g0, hi - lo);
      }
      if (lo >= hi) continue;
      const int64_t r0 = lo - row_offset, B = hi - lo;
      auto clean = C.narrow(0, 0, B);
      auto nl = noisy ? N.narrow(0, 0, B) : at::Tensor();
      block_logits(clean, nl, x.narrow(0, r0, B), weight, bias, noise_weight);
      auto Hb = H.narrow(0, 0, B);
      auto Sb = noisy ? S.narrow(0, 0, B) : at::Tensor();
      if (noisy) {
        at::softplus_out(Sb, nl, 1, 20);
        Sb.add_(noise_epsilon);
        at::addcmul_out(Hb, clean, Zb, Sb);
      } else {
        Hb.copy_(clean);
      }
      auto bad = at::logical_not(at::isfinite(Hb).all(1));
      if (valid.defined()) bad.logical_and_(valid.narrow(0, r0, B));
      bad_rows += bad.sum().item<int64_t>();
      if (bad_rows > 0) break;

      auto idx_b = top_idx.narrow(0, r0, B);
      auto val_b = top_val.narrow(0, r0, B);
      AT_DISPATCH_FLOATING_TYPES(Hb.scalar_type(), "fused_noisy_top_k", [&] {
        kernels::cpu::topk_rows<scalar_t>(Hb.data_ptr<scalar_t>(), B, E, m,
                                          idx_b.data_ptr<int64_t>(), val_b.data_ptr<scalar_t>());
      });
      gate.narrow(0, r0, B).copy_(at::softmax(val_b.narrow(1, 0, k), 1));
      if (!noisy) continue;
      top_noise.narrow(0, r0, B).copy_(Zb.gather(1, idx_b));
      top_dstd.narrow(0, r0, B).copy_(at::sigmoid(nl.gather(1, idx_b)));
      if (!estimator) continue;
      auto Db = Sb.mul_(kSqrt2).add_(1e-20);
      auto Ab = A.narrow(0, 0, B);
      load_arguments(Ab, clean, Db, idx_b, val_b, k);
      Ab.erf_();
      if (valid.defined()) Ab.masked_fill_(at::logical_not(valid.narrow(0, r0, B)).unsqueeze(1), 0);
      erf_sum.add_(Ab.sum(0, false, at::kDouble));
    }
    TORCH_CHECK_VALUE(bad_rows == 0,
                      "noisy top-k gating: router logits are non-finite for finite inputs: the "
                      "router weights contain NaN or Inf, or the logits overflow");

    const int64_t n_valid = valid.defined() ? valid.sum().item<int64_t>() : T;
    auto expert_index = top_idx.narrow(1, 0, k).contiguous();
    if (valid.defined()) {
      const auto invalid = at::logical_not(valid).unsqueeze(1);
      expert_index.masked_fill_(invalid, -1);
      gate.masked_fill_(invalid, 0);
    }
    // Σ_x Φ(a) = Σ_x (1 + erf(a)) / 2 over the valid tokens (Eq. 10).
    auto load = estimator ? ((erf_sum + double(n_valid)) * 0.5).to(opts)
                          : assignment_counts(expert_index, E, opts);

    ctx->save_for_backward(
        {x, weight, bias, noise_weight, valid, top_idx, top_val, gate, top_noise, top_dstd});
    ctx->saved_data["k"] = k;
    ctx->saved_data["E"] = E;
    ctx->saved_data["eps"] = noise_epsilon;
    ctx->saved_data["block_rows"] = block_rows;
    ctx->mark_non_differentiable({expert_index});
    return {gate, load, expert_index};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto s = ctx->get_saved_variables();
    const auto &x = s[0], &weight = s[1], &bias = s[2], &noise_weight = s[3], &valid = s[4],
               &top_idx = s[5], &top_val = s[6], &gate = s[7], &top_noise = s[8], &top_dstd = s[9];
    const int64_t k = ctx->saved_data["k"].toInt(), E = ctx->saved_data["E"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble();
    const int64_t T = x.size(0), m = top_idx.size(1);
    const bool noisy = noise_weight.defined(), estimator = m == k + 1;
    // One GEMM per block for both weight gradients and one for dx: dL = [dclean, dnoise].
    const auto wcat = noisy ? at::cat({weight, noise_weight}) : weight;
    const int64_t nE = wcat.size(0);
    const auto& dgate = grads[0];
    const auto dload = estimator && grads[1].defined() ? grads[1] : at::Tensor();
    const auto opts = x.options();
    const Blocks blocks(T, E, ctx->saved_data["block_rows"].toInt());

    auto dwcat = at::zeros_like(wcat);
    auto dbias = bias.defined() ? at::zeros({E}, opts) : at::Tensor();
    const bool need_dx = ctx->needs_input_grad(0);
    auto dx = need_dx ? at::empty_like(x) : at::Tensor();
    // d load_e / d a = 1/√π·exp(-a²) per token; folded with dL/dload_e into one row vector.
    const auto dload_scaled = dload.defined() ? dload * kInvSqrtPi : at::Tensor();

    auto dL = at::empty({blocks.max_rows, nE}, opts);
    auto C = dload.defined() ? at::empty({blocks.max_rows, E}, opts) : at::Tensor();
    auto N = dload.defined() ? at::empty({blocks.max_rows, E}, opts) : at::Tensor();
    auto A = dload.defined() ? at::empty({blocks.max_rows, E}, opts) : at::Tensor();
    for (size_t i = 0; i < blocks.count(); ++i) {
      const int64_t r0 = blocks.begin(i), B = blocks.rows(i);
      const auto xb = x.narrow(0, r0, B);
      const auto idx_b = top_idx.narrow(0, r0, B);
      const auto val_b = top_val.narrow(0, r0, B);
      auto dLb = dL.narrow(0, 0, B);
      auto dclean = dLb.narrow(1, 0, E);
      auto dnoise = noisy ? dLb.narrow(1, E, E) : at::Tensor();
      // dH at the m winners of each token: the softmax over the kept k, then the two thresholds.
      auto dH = at::zeros({B, m}, opts);
      if (dgate.defined()) {
        const auto g = gate.narrow(0, r0, B), dg = dgate.narrow(0, r0, B);
        dH.narrow(1, 0, k).copy_(g * (dg - (g * dg).sum(1, true)));
      }
      if (dload.defined()) {
        auto clean = C.narrow(0, 0, B), nl = N.narrow(0, 0, B);
        block_logits(clean, nl, xb, weight, bias, noise_weight);
        auto Db = at::softplus(nl, 1, 20).add_(eps).mul_(kSqrt2).add_(1e-20);
        auto Ab = A.narrow(0, 0, B);
        load_arguments(Ab, clean, Db, idx_b, val_b, k);
        // G = dL/dclean = dL/dload·φ(a)/D; dL/dthreshold = -G; dL/dstd = -√2·G·a.
        at::mul_out(dclean, Ab, Ab);
        dclean.neg_().exp_().mul_(dload_scaled).div_(Db);
        const auto kept = idx_b.narrow(1, 0, k);
        const auto above = at::gt(val_b.narrow(1, 0, k), val_b.narrow(1, k, 1));
        const auto g_in = (dclean.gather(1, kept) * above).sum(1, true);
        const auto g_all = dclean.sum(1, true);
        dH.narrow(1, k, 1).sub_(g_in);              // the (k+1)-th value: competitor of the above
        dH.narrow(1, k - 1, 1).sub_(g_all - g_in);  // the k-th value: competitor of the rest
        at::mul_out(dnoise, dclean, Ab);
        dnoise.mul_(at::sigmoid(nl)).mul_(-kSqrt2);
      } else {
        dLb.zero_();
      }
      // H = clean + noise·std at the winners.
      dclean.scatter_add_(1, idx_b, dH);
      if (noisy) {
        dnoise.scatter_add_(1, idx_b, dH * top_noise.narrow(0, r0, B) * top_dstd.narrow(0, r0, B));
      }
      if (valid.defined()) {
        dLb.masked_fill_(at::logical_not(valid.narrow(0, r0, B)).unsqueeze(1), 0);
      }
      dwcat.addmm_(dLb.t(), xb);
      if (dbias.defined()) dbias.add_(dclean.sum(0));
      if (need_dx) {
        auto dxb = dx.narrow(0, r0, B);
        at::mm_out(dxb, dLb, wcat);
      }
    }
    auto dweight = noisy ? dwcat.narrow(0, 0, E) : dwcat;
    auto dnoise_weight = noisy ? dwcat.narrow(0, E, E) : at::Tensor();
    return {dx,           dweight,      dbias,        dnoise_weight, at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),  at::Tensor()};
  }
};

}  // namespace

TopKGate fused_noisy_top_k_gating(const torch::Tensor& x, const torch::Tensor& weight,
                                  const torch::Tensor& bias, const torch::Tensor& noise_weight,
                                  int64_t k, double noise_epsilon, const torch::Tensor& valid,
                                  int64_t block_rows, NoiseRows noise_rows) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2 && x.size(1) == weight.size(1),
              "fused_noisy_top_k_gating: expected x [T, d] and weight [E, d], got ", x.sizes(),
              " and ", weight.sizes());
  const int64_t T = x.size(0), E = weight.size(0);
  TORCH_CHECK_VALUE(k >= 1 && k <= E, "fused_noisy_top_k_gating: k must be in [1, ", E, "], got ",
                    k);
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
                   "fused_noisy_top_k_gating: expected float32 or float64, got ", x.scalar_type());
  TORCH_CHECK(x.device().is_cpu(), "fused_noisy_top_k_gating: CPU tensors only, got ", x.device());
  for (const auto* t : {&weight, &bias, &noise_weight}) {
    TORCH_CHECK(!t->defined() || (t->scalar_type() == x.scalar_type() && t->device().is_cpu()),
                "fused_noisy_top_k_gating: weights must be CPU ", x.scalar_type());
  }
  TORCH_CHECK(!bias.defined() || bias.sizes() == at::IntArrayRef{E},
              "fused_noisy_top_k_gating: bias must be [", E, "], got ", bias.sizes());
  TORCH_CHECK(!noise_weight.defined() || noise_weight.sizes() == weight.sizes(),
              "fused_noisy_top_k_gating: noise_weight must be ", weight.sizes(), ", got ",
              noise_weight.sizes());
  TORCH_CHECK(!valid.defined() ||
                  (valid.dim() == 1 && valid.size(0) == T && valid.scalar_type() == at::kBool),
              "fused_noisy_top_k_gating: valid must be a bool [T] mask with T=", T);
  const int64_t total = noise_rows.total_rows < 0 ? T : noise_rows.total_rows;
  TORCH_CHECK_VALUE(noise_rows.row_offset >= 0 && noise_rows.row_offset + T <= total,
                    "fused_noisy_top_k_gating: rows [", noise_rows.row_offset, ", ",
                    noise_rows.row_offset + T, ") are not inside a global batch of ", total,
                    " rows");
  const auto or_empty = [&](const at::Tensor& t, c10::ScalarType type) {
    return t.defined() ? t.contiguous() : at::empty({0}, x.options().dtype(type));
  };
  auto out = FusedNoisyGateFunction::apply(
      x.contiguous(), weight.contiguous(), or_empty(bias, x.scalar_type()),
      or_empty(noise_weight, x.scalar_type()), k, noise_epsilon, or_empty(valid, at::kBool),
      block_rows, noise_rows.row_offset, total);
  TopKGate g;
  g.gate = out[0];
  g.load = out[1];
  g.expert_index = out[2];
  return g;
}

}  // namespace moe
