// Input validation of the layers (docs/reliability.md §3.3).
#include <ATen/ATen.h>

#include "nn/common.h"

namespace moe::detail {

torch::Tensor tokens_2d(const torch::Tensor& x, int64_t d_model, const torch::Tensor& expert_param,
                        const char* who) {
  TORCH_CHECK(x.defined(), who, ": input x is undefined");
  TORCH_CHECK(x.dim() >= 1, who, ": input x must have shape [..., d_model=", d_model,
              "], got a 0-dim tensor");
  TORCH_CHECK(x.size(-1) == d_model, who, ": expected the last dim of x == d_model=", d_model,
              ", got x of shape ", x.sizes());
  TORCH_CHECK_TYPE(at::isFloatingType(x.scalar_type()), who,
                   ": input x must be a floating-point tensor, got ", x.scalar_type());
  TORCH_CHECK_TYPE(x.scalar_type() == expert_param.scalar_type(), who, ": input x has dtype ",
                   x.scalar_type(), " but the experts are ", expert_param.scalar_type(),
                   " (convert the module with .to(dtype) or the input)");
  TORCH_CHECK(x.device() == expert_param.device(), who, ": input x on ", x.device(),
              " but the experts on ", expert_param.device());
  // Contiguous: the router's GEMM then sees one layout whatever the input's strides, so a strided
  // input gives bitwise its contiguous copy's result on any BLAS.
  return x.reshape({-1, d_model}).contiguous();
}

}  // namespace moe::detail
