// The extension moe._C: the library's modules as pybind11 classes over their C++ objects. The
// Python package (python/moe) wraps each in a torch.nn.Module whose parameters are these very
// tensors (docs/python.md).
#include <c10/util/Exception.h>

#include <sstream>

#include "bindings.h"
#include "moe/nn/routed_moe.h"

namespace moe::python {

c10::optional<double> optional_double(const py::handle& v) {
  if (v.is_none()) return c10::nullopt;
  return py::cast<double>(v);
}

c10::ScalarType dtype_from_name(const std::string& name) {
  static const std::vector<std::pair<std::string, c10::ScalarType>> names{
      {"float32", at::kFloat},
      {"float64", at::kDouble},
      {"bfloat16", at::kBFloat16},
      {"float16", at::kHalf}};
  return enum_from_name(name, names, "moe", "dtype");
}

void bind_module_base(py::module_& m) {
  using torch::nn::Module;
  // module_local: torch._C registers torch::nn::Module itself (for torch.nn.cpp).
  py::class_<Module, std::shared_ptr<Module>>(m, "Module", py::module_local())
      .def("local_parameters",
           [](const Module& mod) {
             std::vector<std::pair<std::string, torch::Tensor>> out;
             for (const auto& p : mod.named_parameters(/*recurse=*/false))
               out.emplace_back(p.key(), p.value());
             return out;
           })
      .def("local_buffers",
           [](const Module& mod) {
             std::vector<std::pair<std::string, torch::Tensor>> out;
             for (const auto& b : mod.named_buffers(/*recurse=*/false))
               out.emplace_back(b.key(), b.value());
             return out;
           })
      .def("children",
           [](const Module& mod) {
             std::vector<std::pair<std::string, std::shared_ptr<Module>>> out;
             for (const auto& c : mod.named_children()) out.emplace_back(c.key(), c.value());
             return out;
           })
      .def("train", [](Module& mod, bool on) { mod.train(on); })
      .def("is_training", &Module::is_training)
      // The dtype of the values (a routed layer's experts; its router may differ, see to()).
      .def("value_dtype",
           [](const Module& mod) {
             if (const auto* routed = dynamic_cast<const nn::RoutedMoEImpl*>(&mod))
               return std::string(c10::toString(routed->experts->w1.scalar_type()));
             const auto params = mod.parameters();
             return params.empty() ? std::string("Float")
                                   : std::string(c10::toString(params[0].scalar_type()));
           })
      .def(
          "to",
          [](Module& mod, const std::string& device, const std::string& dtype) {
            mod.to(c10::Device(device), dtype_from_name(dtype));
          },
          py::arg("device"), py::arg("dtype"))
      .def("is_same", [](const Module& a, const Module& b) { return &a == &b; })
      .def("clone", [](const Module& mod) { return mod.clone(); })
      .def("type_name", &Module::name)
      .def("__repr__", [](const Module& mod) {
        std::ostringstream s;
        mod.pretty_print(s);
        return s.str();
      });
}

}  // namespace moe::python

PYBIND11_MODULE(_C, m) {
  namespace py = pybind11;
  py::module_::import("torch");  // the tensor type the casters need
  m.doc() = "moe: Mixture-of-Experts layers on LibTorch (the compiled part; use the package moe)";
  // The library's errors as the matching Python exceptions, with the message and no C++ frames.
  // Local: the pybind11 registry is shared with torch._C, whose own functions keep their
  // translators.
  py::register_local_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const c10::ValueError& e) {
      PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    } catch (const c10::TypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what_without_backtrace());
    } catch (const c10::IndexError& e) {
      PyErr_SetString(PyExc_IndexError, e.what_without_backtrace());
    } catch (const c10::NotImplementedError& e) {
      PyErr_SetString(PyExc_NotImplementedError, e.what_without_backtrace());
    } catch (const c10::Error& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what_without_backtrace());
    }
  });
  moe::python::bind_module_base(m);
  moe::python::bind_routed_layers(m);
  moe::python::bind_dynmoe(m);
  moe::python::bind_multitask(m);
  moe::python::bind_io(m);
}
