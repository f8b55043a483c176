// The defaults of RouterInterface and RoutingResult (include/moe/router.h).
#include <ATen/ATen.h>

#include "moe/router.h"

namespace moe {

torch::Tensor RoutingResult::loss_term(const std::string& name) const {
  return find_loss_term(loss_terms, name);
}

RoutingResult RouterInterface::route(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() >= 1, "the ", kind(), " router expects tokens [T, d], got ", x.sizes());
  return route(x, BatchShards(x.size(0)));
}

at::Tensor BatchShards::sum_before(const at::Tensor& t) const { return at::zeros_like(t); }

void RouterInterface::set_top_k(int64_t k) {
  TORCH_CHECK_VALUE(false, "the ", kind(), " router has no top_k to set (asked for k=", k,
                    "); its number of experts per token is not fixed");
}

std::vector<std::pair<std::string, std::shared_ptr<torch::nn::Module>>>
RouterInterface::layer_modules() {
  auto* module = dynamic_cast<torch::nn::Module*>(this);
  TORCH_CHECK(module != nullptr, "the ", kind(), " router is not a torch::nn::Module");
  return {{"router", module->shared_from_this()}};
}

}  // namespace moe
