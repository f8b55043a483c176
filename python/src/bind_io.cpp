// moe._C: safetensors files and module checkpoints, the same files C++ programs and `moe train`
// read and write (include/moe/io/*.h).
#include "bindings.h"
#include "moe/io/checkpoint.h"
#include "moe/io/safetensors.h"

namespace moe::python {

void bind_io(py::module_& m) {
  using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;
  using Metadata = std::map<std::string, std::string>;
  m.def(
      "save_file",
      [](const Tensors& tensors, const std::string& path, const Metadata& metadata) {
        io::save_safetensors(path, tensors, metadata);
      },
      py::arg("tensors"), py::arg("path"), py::arg("metadata") = Metadata{},
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "load_file",
      [](const std::string& path) {
        auto file = io::load_safetensors(path);
        return std::make_pair(std::move(file.tensors), std::move(file.metadata));
      },
      py::arg("path"));
  m.def(
      "save_module",
      [](const torch::nn::Module& module, const std::string& path, const Metadata& metadata) {
        io::save_module(module, path, metadata);
      },
      py::arg("module"), py::arg("path"), py::arg("metadata") = Metadata{},
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "load_module",
      [](torch::nn::Module& module, const std::string& path) {
        return io::load_module(module, path);
      },
      py::arg("module"), py::arg("path"), py::call_guard<py::gil_scoped_release>());
}

}  // namespace moe::python
