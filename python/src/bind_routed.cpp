// moe._C: the routed layers (SparseMoE, HierarchicalMoE, HyperRouterMoE, GShardMoE), what their
// forward returns, and the options each takes as keyword arguments (the names of the C++ setters).
#include "bindings.h"
#include "expert_options.h"
#include "moe/nn/gshard_moe.h"
#include "moe/nn/hierarchical_moe.h"
#include "moe/nn/hyper_router_moe.h"
#include "moe/nn/sparse_moe.h"

namespace moe::python {
namespace {

using namespace moe::nn;

#define MOE_SET(name, T)                                              \
  {                                                                   \
#name, [](O & o, const py::handle& v) { o.name(py::cast<T>(v)); } \
  }
#define MOE_SET_OPTIONAL_DOUBLE(name)                                     \
  {                                                                       \
#name, [](O & o, const py::handle& v) { o.name(optional_double(v)); } \
  }

RouterKind router_kind(const py::handle& v, const std::string& who) {
  std::vector<std::pair<std::string, RouterKind>> names;
  for (const auto k : {RouterKind::kSoftmaxTopK, RouterKind::kNoisyTopK, RouterKind::kSwitch,
                       RouterKind::kFrozenRandom, RouterKind::kHyper})
    names.emplace_back(to_string(k), k);
  return enum_from_name(py::cast<std::string>(v), names, who, "router");
}

SetterTable<SparseMoEOptions> sparse_options() {
  using O = SparseMoEOptions;
  SetterTable<O> t{
      {"router", [](O& o, const py::handle& v) { o.router(router_kind(v, "SparseMoE")); }},
      MOE_SET(top_k, int64_t),
      MOE_SET(capacity_factor, double),
      MOE_SET(min_capacity, int64_t),
      MOE_SET(normalize_top_k, bool),
      MOE_SET(router_bias, bool),
      MOE_SET(noisy_gating, bool),
      MOE_SET(noise_epsilon, double),
      MOE_SET(jitter, double),
      MOE_SET_OPTIONAL_DOUBLE(importance_coef),
      MOE_SET_OPTIONAL_DOUBLE(load_coef),
      MOE_SET_OPTIONAL_DOUBLE(balance_coef),
      MOE_SET_OPTIONAL_DOUBLE(z_loss_coef),
      MOE_SET(aux_loss_in_eval, bool),
      {"non_finite",
       [](O& o, const py::handle& v) { o.non_finite(non_finite_policy(v, "SparseMoE")); }},
      {"router_zero_init",
       [](O& o, const py::handle& v) {
         o.router_zero_init(v.is_none() ? c10::nullopt : c10::optional<bool>(py::cast<bool>(v)));
       }},
      MOE_SET(router_init_std, double),
      MOE_SET(freeze_router, bool),
      MOE_SET(hyper_hidden, int64_t),
      {"embedding_dim",
       [](O& o, const py::handle& v) {
         o.embedding_dim(v.is_none() ? c10::nullopt : c10::optional<int64_t>(py::cast<int64_t>(v)));
       }},
  };
  add_expert_options(t, "SparseMoE");
  return t;
}

SetterTable<HierarchicalMoEOptions> hierarchical_options() {
  using O = HierarchicalMoEOptions;
  SetterTable<O> t{
      MOE_SET(top_k, int64_t),
      MOE_SET(primary_top_k, int64_t),
      MOE_SET(secondary_top_k, int64_t),
      MOE_SET(noisy_gating, bool),
      MOE_SET(noise_epsilon, double),
      MOE_SET(importance_coef, double),
      MOE_SET(load_coef, double),
      MOE_SET(aux_loss_in_eval, bool),
      {"non_finite",
       [](O& o, const py::handle& v) { o.non_finite(non_finite_policy(v, "HierarchicalMoE")); }},
  };
  add_expert_options(t, "HierarchicalMoE");
  return t;
}

TopKSchedule k_schedule(const py::handle& v) {
  // (mode, k_min, k_max, total_steps), the mode by its name ("linear_increase", ...).
  const auto t = py::cast<py::tuple>(v);
  if (t.size() != 4)
    throw py::value_error(
        "HyperRouterMoE: option 'k_schedule' must be (mode, k_min, k_max, total_steps), got " +
        py::str(py::repr(v)).cast<std::string>());
  using M = TopKSchedule::Mode;
  std::vector<std::pair<std::string, M>> names;
  for (const auto mode :
       {M::kConstant, M::kLinearIncrease, M::kLinearDecrease, M::kCosineIncrease,
        M::kCosineDecrease, M::kExpIncrease, M::kMultiStepIncrease, M::kMultiStepDecrease})
    names.emplace_back(to_string(mode), mode);
  const auto mode =
      enum_from_name(py::cast<std::string>(t[0]), names, "HyperRouterMoE", "k_schedule mode");
  return TopKSchedule(mode, py::cast<int64_t>(t[1]), py::cast<int64_t>(t[2]),
                      py::cast<int64_t>(t[3]));
}

SetterTable<HyperRouterMoEOptions> hyper_options() {
  using O = HyperRouterMoEOptions;
  SetterTable<O> t{
      {"router",
       [](O& o, const py::handle& v) {
         o.router(enum_from_name(py::cast<std::string>(v),
                                 std::vector<std::pair<std::string, HyperRouterKind>>{
                                     {"hyper", HyperRouterKind::kHyper},
                                     {"smoe_dropout", HyperRouterKind::kFrozenRandom},
                                     {"smoe", HyperRouterKind::kTrainable}},
                                 "HyperRouterMoE", "router"));
       }},
      MOE_SET(top_k, int64_t),
      {"k_schedule",
       [](O& o, const py::handle& v) {
         o.k_schedule(v.is_none() ? c10::nullopt : c10::optional<TopKSchedule>(k_schedule(v)));
       }},
      MOE_SET(hyper_hidden, int64_t),
      {"embedding_dim",
       [](O& o, const py::handle& v) {
         o.embedding_dim(v.is_none() ? c10::nullopt : c10::optional<int64_t>(py::cast<int64_t>(v)));
       }},
      MOE_SET(router_init_std, double),
      MOE_SET(balance_coef, double),
      MOE_SET(z_loss_coef, double),
      MOE_SET(aux_loss_in_eval, bool),
      {"non_finite",
       [](O& o, const py::handle& v) { o.non_finite(non_finite_policy(v, "HyperRouterMoE")); }},
  };
  add_expert_options(t, "HyperRouterMoE");
  return t;
}

SetterTable<GShardMoEOptions> gshard_options() {
  using O = GShardMoEOptions;
  auto policy = [](const py::handle& v, const char* option) {
    std::vector<std::pair<std::string, SecondPolicy>> names;
    for (const auto p :
         {SecondPolicy::kAll, SecondPolicy::kNone, SecondPolicy::kThreshold, SecondPolicy::kRandom})
      names.emplace_back(to_string(p), p);
    return enum_from_name(py::cast<std::string>(v), names, "GShardMoE", option);
  };
  SetterTable<O> t{
      MOE_SET(group_size, int64_t),
      {"second_policy_train",
       [policy](O& o, const py::handle& v) {
         o.second_policy_train(policy(v, "second_policy_train"));
       }},
      {"second_policy_eval",
       [policy](O& o, const py::handle& v) {
         o.second_policy_eval(policy(v, "second_policy_eval"));
       }},
      MOE_SET(second_threshold_train, double),
      MOE_SET(second_threshold_eval, double),
      MOE_SET(capacity_factor_train, double),
      MOE_SET(capacity_factor_eval, double),
      MOE_SET(min_capacity, int64_t),
      MOE_SET(loss_coef, double),
      MOE_SET(router_init_std, double),
      {"non_finite",
       [](O& o, const py::handle& v) { o.non_finite(non_finite_policy(v, "GShardMoE")); }},
  };
  add_expert_options(t, "GShardMoE");
  return t;
}

py::dict loss_terms(const LossTerms& terms) {
  py::dict d;
  for (const auto& [name, value] : terms) d[py::str(name)] = value;
  return d;
}

}  // namespace

void bind_routed_layers(py::module_& m) {
  py::class_<RoutingStats>(m, "RoutingStats", py::module_local())
      .def_readonly("tokens_per_expert", &RoutingStats::tokens_per_expert)
      .def_readonly("importance", &RoutingStats::importance)
      .def_readonly("load", &RoutingStats::load)
      .def_readonly("experts_per_token", &RoutingStats::experts_per_token)
      .def_readonly("assigned", &RoutingStats::assigned)
      .def_readonly("dropped", &RoutingStats::dropped)
      .def_readonly("skipped", &RoutingStats::skipped)
      .def_readonly("unrouted", &RoutingStats::unrouted)
      .def_readonly("num_active_experts", &RoutingStats::num_active_experts)
      .def_property_readonly("loss_terms",
                             [](const RoutingStats& s) { return loss_terms(s.loss_terms); })
      .def("dropped_fraction", &RoutingStats::dropped_fraction)
      .def("skipped_tokens", &RoutingStats::skipped_tokens)
      .def("experts_per_token_mean", &RoutingStats::experts_per_token_mean)
      .def("experts_per_token_min", &RoutingStats::experts_per_token_min)
      .def("experts_per_token_max", &RoutingStats::experts_per_token_max)
      .def("cv_importance", &RoutingStats::cv_importance)
      .def("cv_load", &RoutingStats::cv_load)
      .def("active_experts", &RoutingStats::active_experts)
      .def("tokens_without_expert", &RoutingStats::tokens_without_expert)
      .def("loss_term", &RoutingStats::loss_term);
  py::class_<Routing>(m, "Routing", py::module_local())
      .def_readonly("expert_index", &Routing::expert_index)
      .def_readonly("gate", &Routing::gate);
  py::class_<MoEOutput>(m, "MoEOutput", py::module_local())
      .def_readonly("output", &MoEOutput::output)
      .def_readonly("aux_loss", &MoEOutput::aux_loss)
      .def_readonly("stats", &MoEOutput::stats)
      .def_readonly("routing", &MoEOutput::routing);

  py::class_<RoutedMoEImpl, torch::nn::Module, std::shared_ptr<RoutedMoEImpl>>(m, "RoutedMoE",
                                                                               py::module_local())
      .def(
          "forward", [](RoutedMoEImpl& layer, const torch::Tensor& x) { return layer.forward(x); },
          py::call_guard<py::gil_scoped_release>())
      .def("top_k", &RoutedMoEImpl::top_k)
      .def("set_top_k", &RoutedMoEImpl::set_top_k)
      .def("global_experts", &RoutedMoEImpl::global_experts)
      .def("reset_parameters", &RoutedMoEImpl::reset_parameters);

  py::class_<SparseMoEImpl, RoutedMoEImpl, std::shared_ptr<SparseMoEImpl>>(m, "SparseMoE",
                                                                           py::module_local())
      .def(py::init([](int64_t d, int64_t E, const py::dict& kw) {
        SparseMoEOptions o(d, E);
        apply_options(o, kw, sparse_options(), "SparseMoE");
        return std::make_shared<SparseMoEImpl>(o);
      }));
  py::class_<HierarchicalMoEImpl, RoutedMoEImpl, std::shared_ptr<HierarchicalMoEImpl>>(
      m, "HierarchicalMoE", py::module_local())
      .def(py::init([](int64_t d, int64_t groups, int64_t per_group, const py::dict& kw) {
        HierarchicalMoEOptions o(d, groups, per_group);
        apply_options(o, kw, hierarchical_options(), "HierarchicalMoE");
        return std::make_shared<HierarchicalMoEImpl>(o);
      }));
  py::class_<HyperRouterMoEImpl, RoutedMoEImpl, std::shared_ptr<HyperRouterMoEImpl>>(
      m, "HyperRouterMoE", py::module_local())
      .def(py::init([](int64_t d, int64_t E, const py::dict& kw) {
        HyperRouterMoEOptions o(d, E);
        apply_options(o, kw, hyper_options(), "HyperRouterMoE");
        return std::make_shared<HyperRouterMoEImpl>(o);
      }))
      .def("set_inference_top_k",
           [](HyperRouterMoEImpl& l, const py::object& k) {
             l.set_inference_top_k(k.is_none() ? c10::nullopt
                                               : c10::optional<int64_t>(py::cast<int64_t>(k)));
           })
      .def("step", &HyperRouterMoEImpl::step)
      .def("set_step", &HyperRouterMoEImpl::set_step);
  py::class_<GShardMoEImpl, RoutedMoEImpl, std::shared_ptr<GShardMoEImpl>>(m, "GShardMoE",
                                                                           py::module_local())
      .def(py::init([](int64_t d, std::vector<int64_t> experts, const py::dict& kw) {
        GShardMoEOptions o(d, std::move(experts));
        apply_options(o, kw, gshard_options(), "GShardMoE");
        return std::make_shared<GShardMoEImpl>(o);
      }))
      .def(
          "forward", [](GShardMoEImpl& layer, const torch::Tensor& x) { return layer.forward(x); },
          py::call_guard<py::gil_scoped_release>())
      .def("route",
           [](GShardMoEImpl& layer, const torch::Tensor& x) {
             const auto r = layer.route(x);
             return py::make_tuple(r.expert_index, r.gate, r.aux_loss);
           })
      .def("capacity", [](GShardMoEImpl& layer, int64_t group_tokens, int64_t experts) {
        return layer.router->capacity(group_tokens, experts);
      });
}

}  // namespace moe::python
