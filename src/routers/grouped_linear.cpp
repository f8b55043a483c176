// grouped_linear (src/routers/grouped_linear.h): forward and backward as per-group GEMMs into one
// output, so that autograd sees one node and the weight gradient is written once, not summed from
// one full-size slice gradient per group.
#include "routers/grouped_linear.h"

#include <ATen/ATen.h>
#include <torch/autograd.h>

#include <vector>

namespace moe::detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

std::vector<int64_t> offsets_of(const torch::Tensor& offsets) {
  const auto o = offsets.to(at::kCPU).contiguous();
  return {o.data_ptr<int64_t>(), o.data_ptr<int64_t>() + o.numel()};
}

class GroupedLinear : public torch::autograd::Function<GroupedLinear> {
 public:
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x,
                               const torch::Tensor& weight, const torch::Tensor& offsets) {
    const auto off = offsets_of(offsets);
    TORCH_CHECK(off.front() == 0 && off.back() == x.size(0),
                "grouped_linear: offsets must run from 0 to the ", x.size(0), " rows, got ",
                off.front(), " .. ", off.back());
    const auto xc = x.contiguous(), wc = weight.contiguous();
    auto y = at::empty({x.size(0), weight.size(1)}, x.options());
    for (size_t g = 0; g + 1 < off.size(); ++g) {
      const int64_t rows = off[g + 1] - off[g];
      if (rows == 0) continue;
      auto yg = y.narrow(0, off[g], rows);
      at::mm_out(yg, xc.narrow(0, off[g], rows), wc[g].t());
    }
    ctx->save_for_backward({xc, wc, offsets});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto &x = saved[0], &w = saved[1];
    const auto off = offsets_of(saved[2]);
    const auto dy = grads[0].contiguous();
    torch::Tensor dx, dw;
    if (ctx->needs_input_grad(0)) dx = at::empty_like(x);
    if (ctx->needs_input_grad(1)) dw = at::empty_like(w);
    for (size_t g = 0; g + 1 < off.size(); ++g) {
      const int64_t rows = off[g + 1] - off[g];
      if (dw.defined()) {
        auto dwg = dw[g];
        if (rows == 0) {
          dwg.zero_();
        } else {
          at::mm_out(dwg, dy.narrow(0, off[g], rows).t(), x.narrow(0, off[g], rows));
        }
      }
      if (dx.defined() && rows > 0) {
        auto dxg = dx.narrow(0, off[g], rows);
        at::mm_out(dxg, dy.narrow(0, off[g], rows), w[g]);
      }
    }
    return {dx, dw, torch::Tensor()};
  }
};

}  // namespace

torch::Tensor grouped_linear(const torch::Tensor& x, const torch::Tensor& weight,
                             const torch::Tensor& offsets) {
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 3 && weight.size(2) == x.size(1),
              "grouped_linear: expected x [P, d] and weight [G, n, d], got ", x.sizes(), " and ",
              weight.sizes());
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == weight.size(0) + 1 &&
                  offsets.scalar_type() == at::kLong,
              "grouped_linear: expected int64 offsets [G+1] with G=", weight.size(0), ", got ",
              offsets.sizes(), " ", offsets.scalar_type());
  return GroupedLinear::apply(x, weight, offsets);
}

}  // namespace moe::detail
