// moe._C: TopAnyMoE (DynMoE) with its recording windows and expert updates. The optimizer of a
// Python training loop is a torch.optim one, which C++ cannot see: the package moves its state
// (python/moe/dynmoe.py), so the updates here are called without an optimizer.
#include "bindings.h"
#include "expert_options.h"
#include "moe/nn/top_any_moe.h"

namespace moe::python {
namespace {

using namespace moe::nn;

nn::ExpertSchedule expert_schedule(const py::handle& v) {
  // "manual", "every_step", ("window", record, period), ("epoch_fraction", n, begin, end).
  const auto who = std::string("TopAnyMoE");
  if (py::isinstance<py::str>(v)) {
    const auto name = py::cast<std::string>(v);
    if (name == "manual") return nn::ExpertSchedule::manual();
    if (name == "every_step") return nn::ExpertSchedule::every_step();
    if (name == "window") return nn::ExpertSchedule::window();
    throw py::value_error(who +
                          ": option 'schedule' must be 'manual', 'every_step', 'window', "
                          "('window', record, period) or ('epoch_fraction', "
                          "forwards_per_epoch, begin, end); got '" +
                          name + "'");
  }
  const auto t = py::cast<py::tuple>(v);
  const auto kind = t.size() > 0 ? py::cast<std::string>(t[0]) : std::string();
  if (kind == "window" && t.size() == 3)
    return nn::ExpertSchedule::window(py::cast<int64_t>(t[1]), py::cast<int64_t>(t[2]));
  if (kind == "epoch_fraction" && (t.size() == 2 || t.size() == 4))
    return t.size() == 2
               ? nn::ExpertSchedule::epoch_fraction(py::cast<int64_t>(t[1]))
               : nn::ExpertSchedule::epoch_fraction(py::cast<int64_t>(t[1]), py::cast<double>(t[2]),
                                                    py::cast<double>(t[3]));
  throw py::value_error(who +
                        ": option 'schedule' must be ('window', record, period) or "
                        "('epoch_fraction', forwards_per_epoch[, begin, end]); got " +
                        py::str(py::repr(v)).cast<std::string>());
}

SetterTable<TopAnyMoEOptions> top_any_options() {
  using O = TopAnyMoEOptions;
  const std::string who = "TopAnyMoE";
  SetterTable<O> t{
      {"initial_experts",
       [](O& o, const py::handle& v) { o.initial_experts(py::cast<int64_t>(v)); }},
      {"storage",
       [who](O& o, const py::handle& v) {
         o.storage(enum_from_name(
             py::cast<std::string>(v),
             std::vector<std::pair<std::string, ExpertStorage>>{{"pool", ExpertStorage::kPoolMask},
                                                                {"resize", ExpertStorage::kResize}},
             who, "storage"));
       }},
      {"schedule", [](O& o, const py::handle& v) { o.schedule(expert_schedule(v)); }},
      {"copy_initial_expert",
       [](O& o, const py::handle& v) { o.copy_initial_expert(py::cast<bool>(v)); }},
      {"new_expert_init",
       [who](O& o, const py::handle& v) {
         o.new_expert_init(
             enum_from_name(py::cast<std::string>(v),
                            std::vector<std::pair<std::string, NewExpertInit>>{
                                {"keep", NewExpertInit::kKeep}, {"reinit", NewExpertInit::kReinit}},
                            who, "new_expert_init"));
       }},
      {"temperature",
       [who](O& o, const py::handle& v) {
         o.temperature(enum_from_name(py::cast<std::string>(v),
                                      std::vector<std::pair<std::string, TopAnyTemperature>>{
                                          {"frozen", TopAnyTemperature::kFrozen},
                                          {"trainable", TopAnyTemperature::kTrainable},
                                          {"none", TopAnyTemperature::kNone}},
                                      who, "temperature"));
       }},
      {"init_temperature",
       [](O& o, const py::handle& v) { o.init_temperature(optional_double(v)); }},
      {"fallback",
       [who](O& o, const py::handle& v) {
         o.fallback(enum_from_name(py::cast<std::string>(v),
                                   std::vector<std::pair<std::string, TopAnyFallback>>{
                                       {"argmax", TopAnyFallback::kArgmax},
                                       {"argmax_score", TopAnyFallback::kArgmaxScore},
                                       {"zero", TopAnyFallback::kZero}},
                                   who, "fallback"));
       }},
      {"aux_loss_coef", [](O& o, const py::handle& v) { o.aux_loss_coef(py::cast<double>(v)); }},
      {"diversity_loss", [](O& o, const py::handle& v) { o.diversity_loss(py::cast<bool>(v)); }},
      {"simplicity_loss", [](O& o, const py::handle& v) { o.simplicity_loss(py::cast<bool>(v)); }},
      {"balance_loss", [](O& o, const py::handle& v) { o.balance_loss(py::cast<bool>(v)); }},
      {"efficiency_loss", [](O& o, const py::handle& v) { o.efficiency_loss(py::cast<bool>(v)); }},
      {"aux_loss_in_eval",
       [](O& o, const py::handle& v) { o.aux_loss_in_eval(py::cast<bool>(v)); }},
      {"non_finite", [who](O& o, const py::handle& v) { o.non_finite(non_finite_policy(v, who)); }},
  };
  add_expert_options(t, who);
  return t;
}

}  // namespace

void bind_dynmoe(py::module_& m) {
  py::class_<RoutingRecords>(m, "RoutingRecords", py::module_local())
      .def(py::init<>())
      .def_readwrite("expert_counts", &RoutingRecords::expert_counts)
      .def_readwrite("unrouted_sum", &RoutingRecords::unrouted_sum)
      .def_readwrite("tokens", &RoutingRecords::tokens)
      .def_readwrite("unrouted_count", &RoutingRecords::unrouted_count)
      .def("unrouted_tokens", &RoutingRecords::unrouted_tokens);
  py::class_<ExpertUpdate>(m, "ExpertUpdate", py::module_local())
      .def_readonly("removed", &ExpertUpdate::removed)
      .def_readonly("added", &ExpertUpdate::added)
      .def_readonly("active_before", &ExpertUpdate::active_before)
      .def_readonly("active_after", &ExpertUpdate::active_after)
      .def("changed", &ExpertUpdate::changed)
      .def("__repr__", [](const ExpertUpdate& u) {
        std::string removed;
        for (const auto e : u.removed) removed += (removed.empty() ? "" : ", ") + std::to_string(e);
        return "ExpertUpdate(removed=[" + removed + "], added=" + std::to_string(u.added) +
               ", active " + std::to_string(u.active_before) + " -> " +
               std::to_string(u.active_after) + ")";
      });

  py::class_<TopAnyMoEImpl, RoutedMoEImpl, std::shared_ptr<TopAnyMoEImpl>>(m, "TopAnyMoE",
                                                                           py::module_local())
      .def(py::init([](int64_t d, int64_t max_experts, const py::dict& kw) {
        TopAnyMoEOptions o(d, max_experts);
        apply_options(o, kw, top_any_options(), "TopAnyMoE");
        return std::make_shared<TopAnyMoEImpl>(o);
      }))
      .def("begin_recording", &TopAnyMoEImpl::begin_recording)
      .def("resume_recording", &TopAnyMoEImpl::resume_recording)
      .def("finish_recording", &TopAnyMoEImpl::finish_recording)
      .def("recording", &TopAnyMoEImpl::recording)
      .def("records", &TopAnyMoEImpl::records)
      .def("update_experts",
           [](TopAnyMoEImpl& l, const RoutingRecords& r) { return l.update_experts(r); })
      .def("update_pending", &TopAnyMoEImpl::update_pending)
      .def("pending_records", &TopAnyMoEImpl::pending_records)
      .def("apply_pending_update", [](TopAnyMoEImpl& l) { return l.apply_pending_update(); })
      .def("resize_experts", &TopAnyMoEImpl::resize_experts)
      .def("num_experts", &TopAnyMoEImpl::num_experts)
      .def("num_active_experts", &TopAnyMoEImpl::num_active_experts)
      .def("forward_count", &TopAnyMoEImpl::forward_count)
      .def("resize_mode", [](const TopAnyMoEImpl& l) {
        return l.layer_options().storage() == ExpertStorage::kResize;
      });
}

}  // namespace moe::python
