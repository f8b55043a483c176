#include "engine/portable/grouped_mm.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>

namespace moe::engine::portable {
namespace {

const c10::OperatorHandle* grouped_mm_op() {
  static const auto op = c10::Dispatcher::singleton().findSchema({"aten::_grouped_mm", ""});
  return op ? &*op : nullptr;
}

}  // namespace

bool have_grouped_mm() { return grouped_mm_op() != nullptr; }

at::Tensor grouped_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs) {
  const auto* op = grouped_mm_op();
  TORCH_CHECK(op != nullptr, "grouped_mm: this LibTorch has no aten::_grouped_mm (PyTorch 2.8+)");
  torch::jit::Stack stack{a, b, offs, c10::IValue(), c10::IValue()};  // no bias, no out_dtype
  op->callBoxed(&stack);
  return stack[0].toTensor();
}

}  // namespace moe::engine::portable
