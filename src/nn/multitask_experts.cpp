// The experts of the multi-task models on the expert engine: StackedMLP and mix_experts
// (include/moe/nn/multitask.h).
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "moe/functional.h"
#include "moe/nn/multitask.h"
#include "nn/multitask_checks.h"

namespace moe::nn {
namespace {

// The slot table of every (token, expert) pair: slot e of every token is expert e, [T, E] int64.
torch::Tensor all_pairs(int64_t T, int64_t E) {
  return at::arange(E, at::kLong).unsqueeze(0).expand({T, E});
}

}  // namespace

// --- StackedMLP ----------------------------------------------------------------------------------

StackedMLPImpl::StackedMLPImpl(int64_t num_experts, int64_t in, std::vector<int64_t> hidden)
    : num_experts_(num_experts), in_(in), hidden_(std::move(hidden)) {
  TORCH_CHECK_VALUE(num_experts >= 1, "StackedMLP: num_experts must be >= 1, got ", num_experts);
  TORCH_CHECK_VALUE(!hidden_.empty(), "StackedMLP: needs at least one layer");
  detail::check_sizes(hidden_, "StackedMLP", "hidden");
  reset();
}

void StackedMLPImpl::reset() {
  weights.clear();
  biases.clear();
  int64_t in = in_;
  for (size_t l = 0; l < hidden_.size(); ++l) {  // layer l + 1: w{l+1}, b{l+1}
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    const auto n = std::to_string(l + 1);
    weights.push_back(register_parameter(
        "w" + n, torch::empty({num_experts_, in, hidden_[l]}).uniform_(-bound, bound)));
    biases.push_back(register_parameter(
        "b" + n, torch::empty({num_experts_, hidden_[l]}).uniform_(-bound, bound)));
    in = hidden_[l];
  }
}

std::map<std::string, std::string> StackedMLPImpl::legacy_names() const {
  std::map<std::string, std::string> names;
  for (size_t l = 1; l <= hidden_.size(); ++l) {
    names["w" + std::to_string(l - 1)] = "w" + std::to_string(l);
    names["b" + std::to_string(l - 1)] = "b" + std::to_string(l);
  }
  return names;
}

// The engine (functional::expert_mlp) computes Σ_p w_p·(act(x·w1 + b1)·w2 + b2) over a plan's
// pairs: two linear layers with an activation between, and an output as wide as the input. Here
// every engine row is one (token, expert) pair (`rows`: one expert per row, weight 1), so the
// engine returns each pair's output, and one call runs two Linear + ReLU layers of the stack: w1,
// b1 = layer l with ReLU, w2, b2 = layer l + 1, whose ReLU the caller applies. A last layer without
// a partner gets w2 = the identity (no gradient; it costs one more GEMM per expert forward and two
// backward). Input and output widths differ in general: both are zero-padded to D = max(in, out)
// (zero input columns meet zero rows of w1; the output's padding columns are dropped).
torch::Tensor StackedMLPImpl::two_layers_on_engine(size_t l, const torch::Tensor& h,
                                                   const RoutingPlan& rows) const {
  const bool pair = l + 1 < weights.size();
  const auto& w = weights[l];
  const int64_t in = w.size(1), out = pair ? weights[l + 1].size(2) : w.size(2);
  const int64_t D = std::max(in, out);
  auto pad_last = [](const torch::Tensor& t, int64_t n) {
    return n > 0 ? at::constant_pad_nd(t, {0, n}) : t;
  };
  torch::Tensor w2, b2;
  if (pair) {
    w2 = pad_last(weights[l + 1], D - out);
    b2 = pad_last(biases[l + 1], D - out);
  } else {  // (at::eye has no bf16 kernel: built in float32, exact in every dtype)
    w2 = at::eye(out, D, w.options().dtype(at::kFloat))
             .to(w.scalar_type())
             .expand({num_experts_, out, D})
             .contiguous();
  }
  const auto w1 = in < D ? at::constant_pad_nd(w, {0, 0, 0, D - in}) : w;
  const auto y =
      functional::expert_mlp(pad_last(h, D - in), rows, at::ones({rows.num_pairs()}, h.options()),
                             {w1, w2, {}, biases[l], b2}, Activation::kReLU);
  return out < D ? y.narrow(1, 0, out) : y;
}

torch::Tensor StackedMLPImpl::forward(const torch::Tensor& x) {
  const int64_t T = x.size(0);
  const auto plan = build_routing_plan(all_pairs(T, num_experts_), num_experts_);
  return forward_pairs(x, plan).view({num_experts_, T, out_dim()});  // expert-major: [E, T, out]
}

torch::Tensor StackedMLPImpl::forward_pairs(const torch::Tensor& x, const RoutingPlan& plan) {
  // Row r of the pair rows is pair r of the plan (expert-major), and goes to that pair's expert.
  const auto experts = at::repeat_interleave(plan.tokens_per_expert()).unsqueeze(1);
  const auto rows = build_routing_plan(experts, num_experts_);
  auto h = x.index_select(0, plan.token_index);  // [P, in]
  for (size_t l = 0; l < weights.size(); l += 2) {
    h = two_layers_on_engine(l, h, rows);
    if (l + 1 < weights.size()) h = at::relu(h);  // layer l + 1's ReLU
  }
  return h;
}

// --- mixing --------------------------------------------------------------------------------------

// Each gate weighs the same experts' outputs with its own weights. The engine's combine sums a
// token's pairs with one weight per pair, so combining inside the engine would take one engine
// pass per gate (the experts recomputed for every gate); and for experts of several layers it is
// not possible at all: the gate mixes the last layer's outputs, whose inputs differ per expert,
// while the engine reads every pair's input at its token's row. So the experts run once on the
// engine over the pairs that any gate uses (forward_pairs, weight 1) and each gate sums its pairs,
// in plan order (expert by expert, as the engine sums).
std::vector<torch::Tensor> mix_experts(StackedMLP& experts, const torch::Tensor& x,
                                       const std::vector<torch::Tensor>& gates, bool sparse) {
  const int64_t T = x.size(0), E = experts->num_experts();
  // Slot e of token t is expert e where a gate uses it: every slot for dense gates.
  auto slots = all_pairs(T, E);
  if (sparse) {
    auto used = at::zeros({T, E}, x.options().dtype(at::kBool));
    for (const auto& g : gates) used = used | (g.detach() != 0);
    slots = at::where(used.to(at::kCPU), slots, at::full({}, -1, at::kLong));
  }
  const auto plan = build_routing_plan(slots, E);
  const auto y = experts->forward_pairs(x, plan);  // [P, out]
  // bf16 sums each token's pairs in float32 and rounds once, as the engine does.
  const auto acc = y.scalar_type() == at::kBFloat16 ? at::kFloat : y.scalar_type();
  std::vector<torch::Tensor> out;
  for (const auto& g : gates) {
    const auto w = pair_weights(plan, g);  // g[t, e] of every pair (slot e is expert e)
    out.push_back(at::zeros({T, experts->out_dim()}, y.options().dtype(acc))
                      .index_add(0, plan.token_index, (y * w.unsqueeze(1)).to(acc))
                      .to(y.scalar_type()));
  }
  return out;
}

}  // namespace moe::nn
