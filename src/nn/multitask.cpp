// Multi-task models: Shared-Bottom, MMoE / OMoE, CGC, PLE (include/moe/nn/multitask.h,
// docs/algorithms.md §4). Their experts: src/nn/multitask_experts.cpp; MLPs and gates:
// src/nn/multitask_layers.cpp.
#include "moe/nn/multitask.h"

#include <ATen/ATen.h>

#include <string>

#include "nn/multitask_checks.h"

namespace moe::nn {
namespace {

using detail::check_sizes;

// One tower per task: per_task[k] when given, else `hidden` for every task.
torch::nn::ModuleList make_towers(int64_t tasks, int64_t in, const std::vector<int64_t>& hidden,
                                  const std::vector<std::vector<int64_t>>& per_task, int64_t out) {
  torch::nn::ModuleList towers;
  for (int64_t k = 0; k < tasks; ++k)
    towers->push_back(MLP(in, per_task.empty() ? hidden : per_task[static_cast<size_t>(k)], out));
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

}  // namespace

// --- Shared-Bottom -------------------------------------------------------------------------------

SharedBottomImpl::SharedBottomImpl(SharedBottomOptions o) : options(std::move(o)) {
  check_common(options.d_in(), options.num_tasks(), options.bottom_hidden(), options.tower_hidden(),
               options.towers(), options.task_output_dim(), "SharedBottom", "bottom_hidden");
  reset();
}

void SharedBottomImpl::reset() {
  bottom = register_module("bottom", MLP(options.d_in(), options.bottom_hidden(), 0));
  towers = register_module(
      "towers", make_towers(options.num_tasks(), options.bottom_hidden().back(),
                            options.tower_hidden(), options.towers(), options.task_output_dim()));
}

MultiTaskOutput SharedBottomImpl::forward(const torch::Tensor& x) {
  check_input(x, options.d_in(), "SharedBottom");
  const auto h = bottom->forward(x);
  MultiTaskOutput out;
  for (const auto& t : *towers) out.outputs.push_back(t->as<MLP>()->forward(h));
  out.aux_loss = at::zeros({}, x.options());
  return out;
}

// --- MMoE ----------------------------------------------------------------------------------------

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
    out.outputs.push_back((*towers)[k]->as<MLP>()->forward(f));
  }
  return out;
}

// --- PLE / CGC -----------------------------------------------------------------------------------

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
    out.outputs.push_back((*towers)[k]->as<MLP>()->forward(h[k]));
  return out;
}

}  // namespace moe::nn
