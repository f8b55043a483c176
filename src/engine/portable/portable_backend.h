// The portable backend of the expert engine: ATen operations only (gather, one GEMM per expert,
// ATen's activations and their derivatives, each token's rows summed in slot order), so that it
// runs on every device LibTorch supports. src/engine/backend.cpp gives it every device type without
// a backend of its own (the CPU has the fast one), and MOE_ENGINE_BACKEND=portable gives it the CPU
// too, so that `make test` checks it against the CPU backend on every run (docs/gpu.md).
//
// The one host read: the experts' segment bounds (the plan's [E+1] offsets), once per call, to
// size the per-expert GEMMs; none on the grouped path (grouped_rows.h, MOE_GROUPED_MM=1).
#pragma once

#include <memory>

#include "engine/backend.h"

namespace moe::engine::portable {

std::shared_ptr<const ExpertBackend> make_portable_backend();

}  // namespace moe::engine::portable
