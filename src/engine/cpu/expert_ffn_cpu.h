// One expert's feed-forward network on the CPU, forward and backward (expert_ffn_cpu.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include "engine/cpu/workspace.h"
#include "moe/types.h"

namespace moe::engine::cpu {

/// Forward of one expert on its gathered rows r.xg: h = xg·w1 + b1 (g = xg·w3), a = f(h)
/// (f(h)·g), o = a·w2 + b2 (o = a without w2). `a` is the [n, h] tensor that receives the
/// activation (r.h itself unless the hidden layer must survive); `o` receives the [n, out]
/// outputs.
void expert_forward(Activation act, ExpertRows& r, const ExpertBlocks& w, at::Tensor& a,
                    at::Tensor& o);

/// The hidden layer again in backward: recomputed from r.xg (recompute_hidden; for ReLU the
/// activation a = relu(h), as forward keeps it), or copied from the kept rows when these are
/// stored in another dtype. Nothing to do when r.h already is the kept rows.
void restore_hidden(Activation act, bool kept, ExpertRows& r, const ExpertBlocks& w);

/// Backward of one expert once r.xg, dy and r.h (r.g) hold its rows in the compute dtype; dy
/// holds the upstream rows dL/dy[t] of its pairs and becomes dL/do. pw are its pair weights [n].
/// Writes the gradients `g` and dxg, its rows of dL/dx (none when dxg is undefined). Scratch comes
/// from wk.
template <typename T>
void expert_backward(Activation act, ExpertRows& r, const ExpertBlocks& w, const at::Tensor& pw,
                     at::Tensor& dy, Work& wk, at::Tensor& dxg, ExpertGrads& g);

}  // namespace moe::engine::cpu
