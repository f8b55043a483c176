// The portable backend's grouped path: every row of a padded plan through at::_grouped_mm
// (grouped_mm.h), with the experts' offsets on the device, so that neither direction reads
// anything back. Rows past the pairs (padding) go through the GEMMs' unwritten rows and are
// masked out of every result.
//
// It applies where the op exists (PyTorch 2.8+), on a device other than the CPU, to bf16 (the
// dtype the op has a fused kernel for: CUTLASS on sm90/sm100; other dtypes fall back to a loop
// that reads the offsets on the host, as the per-expert path does), with contiguous weights whose
// widths are multiples of 8 (the op's 16-byte stride rule), biases included, and MOE_GROUPED_MM=1
// in the environment: off by default until a GPU has run it (docs/gpu.md). For sm90/sm100 GPUs
// only: before sm90, PyTorch 2.8 refuses the op and 2.9+ runs the host-reading loop.
#pragma once

#include "engine/backend.h"

namespace moe::engine::portable {

/// MOE_GROUPED_MM=1 and this LibTorch has aten::_grouped_mm.
bool grouped_requested();
/// grouped_requested() and p is a problem the path takes.
bool grouped_applies(const ExpertProblem& p);
ForwardResult grouped_forward(const ExpertProblem& p, bool keep_hidden);
ExpertGradients grouped_backward(const ExpertProblem& p, const SavedHidden& saved,
                                 const at::Tensor& dy, const WantedGradients& want);

}  // namespace moe::engine::portable
