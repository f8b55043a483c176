// Shared pieces of the Python extension moe._C: options from keyword arguments, enum names, and
// the binding functions of each file (python/src/*.cpp). Only the extension includes this header.
#pragma once

#include <torch/python.h>

#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moe::python {

namespace py = pybind11;

/// Sets one option from a Python value.
template <typename Options>
using Setter = std::function<void(Options&, const py::handle&)>;
template <typename Options>
using SetterTable = std::map<std::string, Setter<Options>>;

/// Applies keyword arguments to `options` through `table`. An unknown name is a TypeError listing
/// the known ones; a value of the wrong type is a TypeError naming the option, the value and the
/// expected type (as Python reports a bad keyword argument).
template <typename Options>
void apply_options(Options& options, const py::dict& kwargs, const SetterTable<Options>& table,
                   const std::string& who) {
  for (const auto& [key, value] : kwargs) {
    const auto name = py::cast<std::string>(key);
    const auto it = table.find(name);
    if (it == table.end()) {
      std::string known;
      for (const auto& [k, _] : table) known += (known.empty() ? "" : ", ") + k;
      throw py::type_error(who + ": unexpected option '" + name + "'; the options are " + known);
    }
    try {
      it->second(options, value);
    } catch (const py::cast_error&) {
      throw py::type_error(who + ": option '" + name + "' got " +
                           py::str(py::repr(value)).cast<std::string>() + " of type " +
                           py::str(py::type::of(value).attr("__name__")).cast<std::string>() +
                           ", which does not convert to what it expects");
    }
  }
}

/// The enum value whose name is `name`, among `names`; a ValueError listing them otherwise.
template <typename Enum>
Enum enum_from_name(const std::string& name, const std::vector<std::pair<std::string, Enum>>& names,
                    const std::string& who, const std::string& option) {
  std::string known;
  for (const auto& [n, v] : names) {
    if (n == name) return v;
    known += (known.empty() ? "" : ", ") + n;
  }
  throw py::value_error(who + ": option '" + option + "' must be one of " + known + "; got '" +
                        name + "'");
}

/// A Python number or None as an optional double.
c10::optional<double> optional_double(const py::handle& v);

/// "float32", "bfloat16", ... as a dtype (the names torch.dtype prints after "torch.").
c10::ScalarType dtype_from_name(const std::string& name);

void bind_module_base(py::module_& m);
void bind_routed_layers(py::module_& m);
void bind_dynmoe(py::module_& m);
void bind_multitask(py::module_& m);
void bind_io(py::module_& m);

}  // namespace moe::python
