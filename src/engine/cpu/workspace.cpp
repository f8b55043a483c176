// The CPU backend's working memory (workspace.h).
#include "engine/cpu/workspace.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace moe::engine::cpu {
namespace {

// Expert e's block of a stacked weight in the compute dtype: a view of the weight itself, or its
// conversion into the worker's scratch `conv` (defined only when converting). An absent weight
// gives an undefined tensor.
at::Tensor block(const at::Tensor& w, int64_t e, at::Tensor& conv) {
  if (!w.defined()) return at::Tensor();
  if (!conv.defined()) return w[e];
  conv.copy_(w[e]);
  return conv;
}

}  // namespace

std::vector<Work> make_workspace(bool parallel, const WorkShape& s, const at::TensorOptions& opts) {
  std::vector<Work> work(parallel ? at::get_num_threads() : 1);
  auto buf = [&](int64_t cols) { return Scratch{at::empty({s.rows, cols}, opts)}; };
  // The kept hidden layer serves as h only when it is stored in the compute dtype.
  const bool h_in_place = s.keep_h && !s.convert;
  for (auto& w : work) {
    w.xg = buf(s.d);
    if (!h_in_place) w.hs = buf(s.h);
    if (!h_in_place && s.gated) w.gs = buf(s.h);
    if (s.backward) {
      w.dy = buf(s.out);
      if (!s.relu) w.as = buf(s.h);
      w.das = buf(s.h);
      if (s.gated) w.fhs = buf(s.h);
    } else if (s.keep_h && !s.relu) {
      w.as = buf(s.h);
    }
    if (s.convert) {
      w.w1 = at::empty({s.d, s.h}, opts);
      if (s.has_w2) w.w2 = at::empty({s.h, s.out}, opts);
      if (s.gated) w.w3 = at::empty({s.d, s.h}, opts);
    }
  }
  return work;
}

ExpertBlocks expert_blocks(const StackedWeights& w, int64_t e, Work& wk) {
  return {block(w.w1, e, wk.w1), block(w.w2, e, wk.w2), block(w.w3, e, wk.w3),
          w.b1.defined() ? w.b1[e] : w.b1, w.b2.defined() ? w.b2[e] : w.b2};
}

}  // namespace moe::engine::cpu
