// Multi-task models: Shared-Bottom, MMoE / OMoE, CGC, PLE (include/moe/nn/multitask.h, §4).
#include "moe/nn/multitask.h"

#include <ATen/ATen.h>
#include <torch/nn/modules/activation.h>
#include <torch/nn/modules/linear.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "moe/functional.h"
#include "moe/gating.h"
#include "moe/losses.h"
#include "moe/matmul.h"

namespace moe::nn {
namespace {

void check_sizes(const std::vector<int64_t>& v, const char* who, const char* what) {
  for (auto s : v)
    TORCH_CHECK_VALUE(s >= 1, who, ": every entry of ", what, " must be >= 1, got ", s);
}

// torch::nn::Linear (same parameters, names and initialisation) whose product accumulates in
// float32 for bf16 on every CPU (moe/matmul.h).
class Bf16SafeLinearImpl : public torch::nn::Cloneable<Bf16SafeLinearImpl> {
 public:
  Bf16SafeLinearImpl(int64_t in, int64_t out) : options(in, out) { reset(); }
  void reset() override {
    const torch::nn::Linear init(options);  // torch's initialisation, draw for draw
    weight = register_parameter("weight", init->weight.detach());
    bias = register_parameter("bias", init->bias.detach());
  }
  torch::Tensor forward(const torch::Tensor& x) { return ops::linear(x, weight, bias); }
  void pretty_print(std::ostream& os) const override {
    os << "Linear(in_features=" << options.in_features()
       << ", out_features=" << options.out_features() << ")";
  }
  torch::nn::LinearOptions options;
  torch::Tensor weight, bias;
};
TORCH_MODULE(Bf16SafeLinear);

// Linear + ReLU per hidden entry, then (if out > 0) a final Linear without activation.
torch::nn::Sequential make_mlp(int64_t in, const std::vector<int64_t>& hidden, int64_t out) {
  torch::nn::Sequential s;
  for (auto h : hidden) {
    s->push_back(Bf16SafeLinear(in, h));
    s->push_back(torch::nn::ReLU());
    in = h;
  }
  if (out > 0) s->push_back(Bf16SafeLinear(in, out));
  return s;
}

// One tower per task: per_task[k] when given, else `hidden` for every task.
torch::nn::ModuleList make_towers(int64_t tasks, int64_t in, const std::vector<int64_t>& hidden,
                                  const std::vector<std::vector<int64_t>>& per_task, int64_t out) {
  torch::nn::ModuleList towers;
  for (int64_t k = 0; k < tasks; ++k)
    towers->push_back(
        make_mlp(in, per_task.empty() ? hidden : per_task[static_cast<size_t>(k)], out));
  return towers;
}

void check_input(const torch::Tensor& x, int64_t d_in, const char* who) {
  TORCH_CHECK(x.defined() && x.dim() == 2 && x.size(1) == d_in, who,
              ": input must be [T, d_in=", d_in, "], got ",
              x.defined() ? x.sizes() : at::IntArrayRef{});
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), who, ": input must be floating, got ",
                   x.scalar_type());
}

// `body` is expert_hidden (MMoE, PLE) or bottom_hidden (Shared-Bottom), named by `body_name`.
void check_common(int64_t d_in, int64_t tasks, const std::vector<int64_t>& body,
                  const std::vector<int64_t>& tower_hidden,
                  const std::vector<std::vector<int64_t>>& towers, int64_t out_dim, const char* who,
                  const char* body_name = "expert_hidden") {
  TORCH_CHECK_VALUE(towers.empty() || static_cast<int64_t>(towers.size()) == tasks, who, ": ",
                    towers.size(), " towers given for num_tasks=", tasks,
                    " (give one tower per task, or none to use tower_hidden for all)");
  for (const auto& t : towers) check_sizes(t, who, "towers");
  TORCH_CHECK_VALUE(d_in >= 1, who, ": d_in must be >= 1, got ", d_in);
  TORCH_CHECK_VALUE(tasks >= 1, who, ": num_tasks must be >= 1, got ", tasks);
  TORCH_CHECK_VALUE(!body.empty(), who, ": ", body_name, " needs at least one layer");
  check_sizes(body, who, body_name);
  check_sizes(tower_hidden, who, "tower_hidden");
  TORCH_CHECK_VALUE(out_dim >= 1, who, ": task_output_dim must be >= 1, got ", out_dim);
}

// The slot table of every (token, expert) pair: slot e of every token is expert e, [T, E] int64.
torch::Tensor all_pairs(int64_t T, int64_t E) {
  return at::arange(E, at::kLong).unsqueeze(0).expand({T, E});
}

}  // namespace

// --- StackedMLP
// ------------------------------------------------------------------------------------

StackedMLPImpl::StackedMLPImpl(int64_t num_experts, int64_t in, std::vector<int64_t> hidden)
    : num_experts_(num_experts), in_(in), hidden_(std::move(hidden)) {
  TORCH_CHECK_VALUE(num_experts >= 1, "StackedMLP: num_experts must be >= 1, got ", num_experts);
  TORCH_CHECK_VALUE(!hidden_.empty(), "StackedMLP: needs at least one layer");
  check_sizes(hidden_, "StackedMLP", "hidden");
  reset();
}

void StackedMLPImpl::reset() {
  weights.clear();
  biases.clear();
  int64_t in = in_;
  for (size_t l = 0; l < hidden_.size(); ++l) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    weights.push_back(
        register_parameter("w" + std::to_string(l),
                           torch::empty({num_experts_, in, hidden_[l]}).uniform_(-bound, bound)));
    biases.push_back(register_parameter(
        "b" + std::to_string(l), torch::empty({num_experts_, hidden_[l]}).uniform_(-bound, bound)));
    in = hidden_[l];
  }
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

// --- TaskGate
// --------------------------------------------------------------------------------------

TaskGateImpl::TaskGateImpl(int64_t in_, int64_t num_experts_, TaskGateOptions options_)
    : options(std::move(options_)), num_experts(num_experts_), in(in_) {
  TORCH_CHECK_VALUE(num_experts >= 1, "TaskGate: needs >= 1 expert, got ", num_experts);
  check_sizes(options.hidden(), "TaskGate", "gate hidden");
  TORCH_CHECK_VALUE(options.top_k() >= 0 && options.top_k() <= num_experts,
                    "TaskGate: top_k must be in [0 (dense), ", num_experts, "], got ",
                    options.top_k());
  TORCH_CHECK_VALUE(std::isfinite(options.balance_coef()) && options.balance_coef() >= 0,
                    "TaskGate: balance_coef must be finite and >= 0, got ", options.balance_coef());
  reset();
}

void TaskGateImpl::reset() {
  const int64_t gate_in = options.hidden().empty() ? in : options.hidden().back();
  hidden = register_module("hidden", make_mlp(in, options.hidden(), 0));
  const double bound = 1.0 / std::sqrt(static_cast<double>(gate_in));
  weight =
      register_parameter("weight", torch::empty({num_experts, gate_in}).uniform_(-bound, bound));
  if (options.bias() || options.bias_init()) {
    bias = register_parameter("bias", options.bias_init()
                                          ? torch::full({num_experts}, *options.bias_init())
                                          : torch::empty({num_experts}).uniform_(-bound, bound));
  } else {
    bias = torch::Tensor();
  }
}

torch::Tensor TaskGateImpl::logits(const torch::Tensor& x) {
  const auto h = options.hidden().empty() ? x : hidden->forward(x);
  return ops::linear(h, weight, bias);
}

torch::Tensor TaskGateImpl::forward(const torch::Tensor& x, torch::Tensor* aux) {
  const auto logits_x = logits(x);
  if (options.top_k() == 0) return at::softmax(logits_x, 1);
  // Top-k gating runs in float32 for bf16 models (as the routers do); the gate returns in the
  // model's dtype.
  const auto z = logits_x.scalar_type() == at::kBFloat16 ? logits_x.to(at::kFloat) : logits_x;
  const TopKGate g = softmax_top_k_gating(z, options.top_k(), /*normalize=*/true);
  if (aux != nullptr && options.balance_coef() > 0 && is_training()) {
    *aux = *aux + options.balance_coef() * balance_loss(at::softmax(z, 1), g.expert_index);
  }
  return at::zeros_like(z).scatter(1, g.expert_index, g.gate).to(logits_x.scalar_type());
}

// --- mixing
// ----------------------------------------------------------------------------------------

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

// --- Shared-Bottom
// -----------------------------------------------------------------------------------

SharedBottomImpl::SharedBottomImpl(SharedBottomOptions o) : options(std::move(o)) {
  check_common(options.d_in(), options.num_tasks(), options.bottom_hidden(), options.tower_hidden(),
               options.towers(), options.task_output_dim(), "SharedBottom", "bottom_hidden");
  reset();
}

void SharedBottomImpl::reset() {
  bottom = register_module("bottom", make_mlp(options.d_in(), options.bottom_hidden(), 0));
  towers = register_module(
      "towers", make_towers(options.num_tasks(), options.bottom_hidden().back(),
                            options.tower_hidden(), options.towers(), options.task_output_dim()));
}

MultiTaskOutput SharedBottomImpl::forward(const torch::Tensor& x) {
  check_input(x, options.d_in(), "SharedBottom");
  const auto h = bottom->forward(x);
  MultiTaskOutput out;
  for (const auto& t : *towers) out.outputs.push_back(t->as<torch::nn::Sequential>()->forward(h));
  out.aux_loss = at::zeros({}, x.options());
  return out;
}

// --- MMoE
// ------------------------------------------------------------------------------------------

MMoEImpl::MMoEImpl(MMoEOptions o) : options(std::move(o)) {
  check_common(options.d_in(), options.num_tasks(), options.expert_hidden(), options.tower_hidden(),
               options.towers(), options.task_output_dim(), "MMoE");
  TORCH_CHECK_VALUE(options.num_experts() >= 1, "MMoE: num_experts must be >= 1, got ",
                    options.num_experts());
  reset();
}

void MMoEImpl::reset() {
  experts = register_module(
      "experts", StackedMLP(options.num_experts(), options.d_in(), options.expert_hidden()));
  gates = register_module("gates", torch::nn::ModuleList());
  const int64_t n_gates = options.one_gate() ? 1 : options.num_tasks();
  for (int64_t k = 0; k < n_gates; ++k)
    gates->push_back(TaskGate(options.d_in(), options.num_experts(), options.gate()));
  towers = register_module(
      "towers", make_towers(options.num_tasks(), experts->out_dim(), options.tower_hidden(),
                            options.towers(), options.task_output_dim()));
}

MultiTaskOutput MMoEImpl::forward(const torch::Tensor& x) {
  check_input(x, options.d_in(), "MMoE");
  MultiTaskOutput out;
  out.aux_loss = at::zeros({}, x.options());
  std::vector<torch::Tensor> g;
  std::vector<torch::Tensor> mass;
  for (const auto& m : *gates) {
    g.push_back(m->as<TaskGate>()->forward(x, &out.aux_loss));
    mass.push_back(g.back().detach().mean(0));
  }
  out.gate_mass.push_back(mass);
  const auto mixed = mix_experts(experts, x, g, options.gate().top_k() > 0);
  for (int64_t k = 0; k < options.num_tasks(); ++k) {
    const auto& f = mixed[options.one_gate() ? 0 : static_cast<size_t>(k)];
    out.outputs.push_back((*towers)[k]->as<torch::nn::Sequential>()->forward(f));
  }
  return out;
}

// --- PLE / CGC
// -------------------------------------------------------------------------------------

ExtractionLevelImpl::ExtractionLevelImpl(int64_t in_, const PLEOptions& o, bool last_)
    : options(o), in(in_), last(last_) {
  reset();
}

void ExtractionLevelImpl::reset() {
  const int64_t K = options.num_tasks(), mk = options.specific_experts(),
                ms = options.shared_experts();
  task_experts = register_module("task_experts", torch::nn::ModuleList());
  task_gates = register_module("task_gates", torch::nn::ModuleList());
  for (int64_t k = 0; k < K; ++k) {
    task_experts->push_back(StackedMLP(mk, in, options.expert_hidden()));
    task_gates->push_back(TaskGate(in, mk + ms, options.gate()));
  }
  shared_experts = register_module("shared_experts", StackedMLP(ms, in, options.expert_hidden()));
  if (!last)
    shared_gate = register_module("shared_gate", TaskGate(in, K * mk + ms, options.gate()));
}

std::vector<torch::Tensor> ExtractionLevelImpl::forward(const std::vector<torch::Tensor>& inputs,
                                                        torch::Tensor* aux,
                                                        std::vector<torch::Tensor>* gate_mass) {
  const int64_t K = options.num_tasks(), mk = options.specific_experts(),
                ms = options.shared_experts();
  const bool sparse = options.gate().top_k() > 0;
  std::vector<torch::Tensor> g;
  for (int64_t k = 0; k < K; ++k)
    g.push_back(task_gates[k]->as<TaskGate>()->forward(inputs[k], aux));
  torch::Tensor gs;
  if (!last) gs = shared_gate->forward(inputs[K], aux);
  for (const auto& t : g) gate_mass->push_back(t.detach().mean(0));
  if (!last) gate_mass->push_back(gs.detach().mean(0));

  std::vector<torch::Tensor> out(static_cast<size_t>(K) + (last ? 0 : 1));
  auto add = [](torch::Tensor& acc, const torch::Tensor& v) { acc = acc.defined() ? acc + v : v; };
  // Task k's own experts read task k's input; the task gate and the shared gate weigh them.
  for (int64_t k = 0; k < K; ++k) {
    std::vector<torch::Tensor> w{g[k].narrow(1, 0, mk)};
    if (!last) w.push_back(gs.narrow(1, k * mk, mk));
    StackedMLP experts(task_experts->ptr<StackedMLPImpl>(static_cast<size_t>(k)));
    const auto r = mix_experts(experts, inputs[k], w, sparse);
    add(out[k], r[0]);
    if (!last) add(out[K], r[1]);
  }
  // The shared experts read the shared input; every gate weighs them.
  std::vector<torch::Tensor> w;
  for (int64_t k = 0; k < K; ++k) w.push_back(g[k].narrow(1, mk, ms));
  if (!last) w.push_back(gs.narrow(1, K * mk, ms));
  const auto r = mix_experts(shared_experts, inputs[K], w, sparse);
  for (size_t i = 0; i < r.size(); ++i) add(out[i], r[i]);
  return out;
}

PLEImpl::PLEImpl(PLEOptions o) : options(std::move(o)) {
  check_common(options.d_in(), options.num_tasks(), options.expert_hidden(), options.tower_hidden(),
               options.towers(), options.task_output_dim(), "PLE");
  TORCH_CHECK_VALUE(options.levels() >= 1, "PLE: levels must be >= 1, got ", options.levels());
  TORCH_CHECK_VALUE(options.specific_experts() >= 1 && options.shared_experts() >= 1,
                    "PLE: specific_experts and shared_experts must be >= 1, got ",
                    options.specific_experts(), " and ", options.shared_experts());
  TORCH_CHECK_VALUE(options.gate().top_k() <= options.specific_experts() + options.shared_experts(),
                    "PLE: gate top_k must be <= specific_experts + shared_experts = ",
                    options.specific_experts() + options.shared_experts(), ", got ",
                    options.gate().top_k());
  reset();
}

void PLEImpl::reset() {
  levels = register_module("levels", torch::nn::ModuleList());
  int64_t in = options.d_in();
  for (int64_t j = 0; j < options.levels(); ++j) {
    levels->push_back(ExtractionLevel(in, options, j + 1 == options.levels()));
    in = options.expert_hidden().back();
  }
  towers = register_module("towers", make_towers(options.num_tasks(), in, options.tower_hidden(),
                                                 options.towers(), options.task_output_dim()));
}

MultiTaskOutput PLEImpl::forward(const torch::Tensor& x) {
  check_input(x, options.d_in(), "PLE");
  MultiTaskOutput out;
  out.aux_loss = at::zeros({}, x.options());
  std::vector<torch::Tensor> h(static_cast<size_t>(options.num_tasks()) + 1, x);
  for (const auto& level : *levels) {
    out.gate_mass.emplace_back();
    h = level->as<ExtractionLevel>()->forward(h, &out.aux_loss, &out.gate_mass.back());
  }
  for (int64_t k = 0; k < options.num_tasks(); ++k)
    out.outputs.push_back((*towers)[k]->as<torch::nn::Sequential>()->forward(h[k]));
  return out;
}

}  // namespace moe::nn
