// moe._C: the multi-task models (MMoE / OMoE, PLE / CGC, Shared-Bottom) and what they return.
#include "bindings.h"
#include "moe/nn/multitask.h"

namespace moe::python {
namespace {

using namespace moe::nn;
using Widths = std::vector<int64_t>;

TaskGateOptions gate_options(const py::handle& v, const std::string& who) {
  // A dict of TaskGateOptions' settings: bias, hidden, bias_init, top_k, balance_coef.
  using O = TaskGateOptions;
  const SetterTable<O> table{
      {"bias", [](O& o, const py::handle& x) { o.bias(py::cast<bool>(x)); }},
      {"hidden", [](O& o, const py::handle& x) { o.hidden(py::cast<Widths>(x)); }},
      {"bias_init", [](O& o, const py::handle& x) { o.bias_init(optional_double(x)); }},
      {"top_k", [](O& o, const py::handle& x) { o.top_k(py::cast<int64_t>(x)); }},
      {"balance_coef", [](O& o, const py::handle& x) { o.balance_coef(py::cast<double>(x)); }},
  };
  TaskGateOptions o;
  apply_options(o, py::cast<py::dict>(v), table, who + " gate");
  return o;
}

template <typename O>
void add_tower_options(SetterTable<O>& t) {
  t["tower_hidden"] = [](O& o, const py::handle& v) { o.tower_hidden(py::cast<Widths>(v)); };
  t["towers"] = [](O& o, const py::handle& v) { o.towers(py::cast<std::vector<Widths>>(v)); };
  t["task_output_dim"] = [](O& o, const py::handle& v) { o.task_output_dim(py::cast<int64_t>(v)); };
}

SetterTable<MMoEOptions> mmoe_options() {
  using O = MMoEOptions;
  SetterTable<O> t{
      {"expert_hidden", [](O& o, const py::handle& v) { o.expert_hidden(py::cast<Widths>(v)); }},
      {"one_gate", [](O& o, const py::handle& v) { o.one_gate(py::cast<bool>(v)); }},
      {"gate", [](O& o, const py::handle& v) { o.gate(gate_options(v, "MMoE")); }},
  };
  add_tower_options(t);
  return t;
}

SetterTable<PLEOptions> ple_options() {
  using O = PLEOptions;
  SetterTable<O> t{
      {"levels", [](O& o, const py::handle& v) { o.levels(py::cast<int64_t>(v)); }},
      {"specific_experts",
       [](O& o, const py::handle& v) { o.specific_experts(py::cast<int64_t>(v)); }},
      {"shared_experts", [](O& o, const py::handle& v) { o.shared_experts(py::cast<int64_t>(v)); }},
      {"expert_hidden", [](O& o, const py::handle& v) { o.expert_hidden(py::cast<Widths>(v)); }},
      {"gate", [](O& o, const py::handle& v) { o.gate(gate_options(v, "PLE")); }},
  };
  add_tower_options(t);
  return t;
}

SetterTable<SharedBottomOptions> shared_bottom_options() {
  using O = SharedBottomOptions;
  SetterTable<O> t{
      {"bottom_hidden", [](O& o, const py::handle& v) { o.bottom_hidden(py::cast<Widths>(v)); }},
  };
  add_tower_options(t);
  return t;
}

}  // namespace

void bind_multitask(py::module_& m) {
  py::class_<MultiTaskOutput>(m, "MultiTaskOutput", py::module_local())
      .def_readonly("outputs", &MultiTaskOutput::outputs)
      .def_readonly("aux_loss", &MultiTaskOutput::aux_loss)
      .def_readonly("gate_mass", &MultiTaskOutput::gate_mass);
  using torch::nn::Module;
  // The models derive from torch::nn::Cloneable, whose base Module is virtual: its subobject is not
  // at the object's address, which pybind11 assumes for single inheritance unless told otherwise.
  const auto release = py::call_guard<py::gil_scoped_release>();
  py::class_<MMoEImpl, Module, std::shared_ptr<MMoEImpl>>(m, "MMoE", py::module_local(),
                                                          py::multiple_inheritance())
      .def(py::init([](int64_t d_in, int64_t E, int64_t tasks, const py::dict& kw) {
        MMoEOptions o(d_in, E, tasks);
        apply_options(o, kw, mmoe_options(), "MMoE");
        return std::make_shared<MMoEImpl>(o);
      }))
      .def(
          "forward", [](MMoEImpl& l, const torch::Tensor& x) { return l.forward(x); }, release);
  py::class_<PLEImpl, Module, std::shared_ptr<PLEImpl>>(m, "PLE", py::module_local(),
                                                        py::multiple_inheritance())
      .def(py::init([](int64_t d_in, int64_t tasks, const py::dict& kw) {
        PLEOptions o(d_in, tasks);
        apply_options(o, kw, ple_options(), "PLE");
        return std::make_shared<PLEImpl>(o);
      }))
      .def(
          "forward", [](PLEImpl& l, const torch::Tensor& x) { return l.forward(x); }, release);
  py::class_<SharedBottomImpl, Module, std::shared_ptr<SharedBottomImpl>>(
      m, "SharedBottom", py::module_local(), py::multiple_inheritance())
      .def(py::init([](int64_t d_in, int64_t tasks, const py::dict& kw) {
        SharedBottomOptions o(d_in, tasks);
        apply_options(o, kw, shared_bottom_options(), "SharedBottom");
        return std::make_shared<SharedBottomImpl>(o);
      }))
      .def(
          "forward", [](SharedBottomImpl& l, const torch::Tensor& x) { return l.forward(x); },
          release);
}

}  // namespace moe::python
