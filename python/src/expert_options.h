// The keyword options every routed layer shares: the experts' settings (MOE_EXPERT_SHORT_NAMES of
// include/moe/nested_options.h) and the non-finite policy.
#pragma once

#include "bindings.h"
#include "moe/types.h"

namespace moe::python {

template <typename Options>
void add_expert_options(SetterTable<Options>& t, const std::string& who) {
  using O = Options;
  t["hidden_size"] = [](O& o, const py::handle& v) { o.hidden_size(py::cast<int64_t>(v)); };
  t["activation"] = [who](O& o, const py::handle& v) {
    std::vector<std::pair<std::string, Activation>> names;
    for (const auto a : {Activation::kReLU, Activation::kGELU, Activation::kSiLU,
                         Activation::kSwiGLU, Activation::kGEGLU})
      names.emplace_back(to_string(a), a);
    o.activation(enum_from_name(py::cast<std::string>(v), names, who, "activation"));
  };
  t["expert_bias"] = [](O& o, const py::handle& v) { o.expert_bias(py::cast<bool>(v)); };
  t["expert_init"] = [who](O& o, const py::handle& v) {
    std::vector<std::pair<std::string, ExpertInit>> names;
    for (const auto i :
         {ExpertInit::kGlorotUniform, ExpertInit::kLinearDefault, ExpertInit::kNormal})
      names.emplace_back(to_string(i), i);
    o.expert_init(enum_from_name(py::cast<std::string>(v), names, who, "expert_init"));
  };
  t["expert_init_std"] = [](O& o, const py::handle& v) { o.expert_init_std(py::cast<double>(v)); };
  t["recompute_hidden"] = [](O& o, const py::handle& v) { o.recompute_hidden(py::cast<bool>(v)); };
}

inline NonFinitePolicy non_finite_policy(const py::handle& v, const std::string& who) {
  return enum_from_name(py::cast<std::string>(v),
                        std::vector<std::pair<std::string, NonFinitePolicy>>{
                            {"error", NonFinitePolicy::kError}, {"skip", NonFinitePolicy::kSkip}},
                        who, "non_finite");
}

}  // namespace moe::python
