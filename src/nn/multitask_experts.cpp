// The experts of the multi-task models on the expert engine: StackedMLP and mix_experts
// (include/moe/nn/multitask.h).
#include <ATen/ATen.h>

#include <cmath>
#include <string>

#include "moe/functional.h"
#include "moe/nn/multitask.h"
#include "nn/multitask_checks.h"
#include "plan/sum_by_token.h"

namespace moe::nn {
namespace {

// The slot table of every (token, expert) pair: slot e of every token is expert e, [T, E] int64 on
// `like`'s device.
torch::Tensor all_pairs(int64_t T, int64_t E, const torch::Tensor& like) {
  return at::arange(E, like.options().dtype(at::kLong)).unsqueeze(0).expand({T, E});
}

// The layers' plans are built on the tensors' device (docs/gpu.md).
RoutingPlan plan_of(const torch::Tensor& slots, int64_t E) {
  return build_routing_plan(slots, E, PlanLayout::kForDevice);
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

// The engine (functional::expert_mlp) computes Σ_p w_p·o_p over a plan's pairs, o = act(x·w1 + b1)
// (·w2 + b2 when a second layer is given), of any output width. Here every engine row is one
// (token, expert) pair (`rows`: one expert per row, weight 1), so the engine returns each pair's
// output, and one call runs two Linear + ReLU layers of the stack: w1, b1 = layer l with ReLU, w2,
// b2 = layer l + 1, whose ReLU the caller applies. A last layer without a partner is a one-layer
// engine call (no w2): its ReLU is the engine's.
torch::Tensor StackedMLPImpl::layers_on_engine(size_t l, const torch::Tensor& h,
                                               const RoutingPlan& rows) const {
  const bool pair = l + 1 < weights.size();
  const functional::ExpertWeights w{weights[l],
                                    pair ? weights[l + 1] : torch::Tensor(),
                                    {},
                                    biases[l],
                                    pair ? biases[l + 1] : torch::Tensor()};
  return functional::expert_mlp(h, rows, at::ones({rows.num_rows()}, h.options()), w,
                                Activation::kReLU);
}

torch::Tensor StackedMLPImpl::forward(const torch::Tensor& x) {
  const int64_t T = x.size(0);
  const auto plan = plan_of(all_pairs(T, num_experts_, x), num_experts_);
  return forward_pairs(x, plan).view({num_experts_, T, out_dim()});  // expert-major: [E, T, out]
}

torch::Tensor StackedMLPImpl::forward_pairs(const torch::Tensor& x, const RoutingPlan& plan) {
  // Row r of the pair rows is pair r of the plan (expert-major), and goes to that pair's expert; a
  // padding row goes nowhere (and the engine leaves its output 0).
  const auto experts = at::where(plan.pair_expert < num_experts_, plan.pair_expert,
                                 at::full({}, -1, plan.pair_expert.options()));
  const auto rows = plan_of(experts.unsqueeze(1), num_experts_);
  auto h = x.index_select(0, plan.token_index);  // [P, in]
  for (size_t l = 0; l < weights.size(); l += 2) {
    h = layers_on_engine(l, h, rows);
    if (l + 1 < weights.size()) h = at::relu(h);  // layer l + 1's ReLU
  }
  return h;
}

// --- mixing --------------------------------------------------------------------------------------

namespace {

// The slot table of the pairs a gate (or any of `gates`) uses: slot e of token t is expert e where
// the weight is non-zero, else -1 (sparse gates; dense gates use every pair).
torch::Tensor used_slots(const std::vector<torch::Tensor>& gates, int64_t T, int64_t E) {
  auto used = at::zeros({T, E}, gates[0].options().dtype(at::kBool));
  for (const auto& g : gates) used = used | (g.detach() != 0);
  const auto all = all_pairs(T, E, used);
  return at::where(used, all, at::full({}, -1, all.options()));
}

// One-layer experts: the gate's weights are the engine's pair weights, so the engine combines them
// and nothing of size [P, out] is built. One engine pass per gate (a pass costs about what weighing
// the [P, out] pair outputs outside cost), over the pairs the gate uses.
std::vector<torch::Tensor> mix_one_layer(StackedMLP& experts, const torch::Tensor& x,
                                         const std::vector<torch::Tensor>& gates, bool sparse) {
  const int64_t T = x.size(0), E = experts->num_experts();
  const functional::ExpertWeights w{experts->weights[0], {}, {}, experts->biases[0], {}};
  const auto dense = sparse ? RoutingPlan() : plan_of(all_pairs(T, E, x), E);
  std::vector<torch::Tensor> out;
  for (const auto& g : gates) {
    const auto plan = sparse ? plan_of(used_slots({g}, T, E), E) : dense;
    out.push_back(functional::expert_mlp(x, plan, pair_weights(plan, g), w, Activation::kReLU));
  }
  return out;
}

}  // namespace

// Each gate weighs the same experts' outputs with its own weights. Experts of one layer are the
// engine's one-layer experts with the gate's weights as pair weights (mix_one_layer). Deeper
// experts cannot combine inside the engine: the gate mixes the last layer's outputs, whose inputs
// differ per expert, while the engine reads every pair's input at its token's row. So they run once
// on the engine over the pairs that any gate uses (forward_pairs, weight 1) and each gate sums its
// pairs as the engine sums (src/plan/sum_by_token.h).
std::vector<torch::Tensor> mix_experts(StackedMLP& experts, const torch::Tensor& x,
                                       const std::vector<torch::Tensor>& gates, bool sparse) {
  if (experts->weights.size() == 1) return mix_one_layer(experts, x, gates, sparse);
  const int64_t T = x.size(0), E = experts->num_experts();
  // Slot e of token t is expert e where a gate uses it: every slot for dense gates.
  const auto plan = plan_of(sparse ? used_slots(gates, T, E) : all_pairs(T, E, x), E);
  const auto y = experts->forward_pairs(x, plan);  // [rows, out]
  // As the engine sums: bf16 in float32, rounded once; a padded plan's in slot order.
  const auto slots = plan.padded ? plan.pair_slot : torch::Tensor();
  std::vector<torch::Tensor> out;
  for (const auto& g : gates) {
    const auto w = pair_weights(plan, g);  // g[t, e] of every pair (slot e is expert e)
    out.push_back(moe::plan::sum_by_token(y * w.unsqueeze(1), plan.token_index, slots, E, T)
                      .to(y.scalar_type()));
  }
  return out;
}

}  // namespace moe::nn
