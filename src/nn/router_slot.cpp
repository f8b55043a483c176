// The router slot of SparseMoE and HyperRouterMoE (src/nn/router_slot.h).
#include "nn/router_slot.h"

namespace moe::detail {
namespace {

torch::nn::Module& router_module(HyperRouter& hyper, TopKRouter& topk) {
  if (hyper) return *hyper;
  return *topk;
}

}  // namespace

void register_router(torch::nn::Module& layer, bool use_hyper, const HyperRouterOptions& hyper,
                     const RouterOptions& topk, HyperRouter* hyper_router,
                     TopKRouter* topk_router) {
  if (use_hyper) {
    *hyper_router = layer.register_module("router", HyperRouter(hyper));
    *topk_router = nullptr;
  } else {
    *topk_router = layer.register_module("router", TopKRouter(topk));
    *hyper_router = nullptr;
  }
}

RouterOutput route(HyperRouter& hyper, TopKRouter& topk, const torch::Tensor& xf) {
  return hyper ? hyper->route(xf) : topk->route(xf);
}

int64_t router_top_k(const HyperRouter& hyper, const TopKRouter& topk) {
  return hyper ? hyper->top_k() : topk->options.top_k();
}

void set_router_top_k(HyperRouter& hyper, TopKRouter& topk, int64_t k) {
  if (hyper) {
    hyper->set_top_k(k);
  } else {
    topk->options.top_k(k);
  }
}

void reset_router_parameters(HyperRouter& hyper, TopKRouter& topk) {
  if (hyper) hyper->reset_parameters();
  if (topk) topk->reset_parameters();
}

void move_routed_layer(HyperRouter& hyper, TopKRouter& topk, ExpertBank& experts,
                       c10::optional<torch::Device> device, torch::Dtype dtype, bool non_blocking) {
  auto& router = router_module(hyper, topk);
  if (device) {
    experts->to(*device, dtype, non_blocking);
    router.to(*device, router_dtype(dtype), non_blocking);
  } else {
    experts->to(dtype, non_blocking);
    router.to(router_dtype(dtype), non_blocking);
  }
}

}  // namespace moe::detail
