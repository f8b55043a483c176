// at::_grouped_mm (PyTorch 2.8+): one call for the GEMMs of all experts, with the experts' row
// offsets on the device, so nothing is read back. Looked up through the dispatcher at run time,
// so the library builds against every LibTorch and uses it where the LibTorch has it.
#pragma once

#include <ATen/core/Tensor.h>

namespace moe::engine::portable {

/// Whether this LibTorch has aten::_grouped_mm.
bool have_grouped_mm();

/// out = a · b per group. a [R, K] with b [G, K, N]: rows [offs[g-1], offs[g]) of a times b[g]
/// give those rows of out [R, N]; rows past offs[G-1] are left unwritten. a [M, R] with
/// b [R, N]: the groups split R, out [G, M, N]. offs: [G] int32, the groups' end rows. Each
/// operand is row- or column-major in its last two dimensions (a contiguous tensor or a transposed
/// view of one), its non-unit stride a multiple of 16 bytes, its data 16-byte aligned.
at::Tensor grouped_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offs);

}  // namespace moe::engine::portable
