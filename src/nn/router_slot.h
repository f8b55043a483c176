// The router of SparseMoE and HyperRouterMoE: a TopKRouter or a HyperRouter, exactly one of them
// set, registered on the layer as "router" (so parameter names do not depend on the kind). Both
// layers register, query and move it through these functions.
#pragma once

#include <c10/util/Optional.h>
#include <torch/nn/module.h>

#include "moe/experts.h"
#include "moe/router.h"
#include "moe/routers/hyper_router.h"

namespace moe::detail {

/// Registers a HyperRouter (use_hyper) or a TopKRouter as `layer`'s "router" and clears the other.
void register_router(torch::nn::Module& layer, bool use_hyper, const HyperRouterOptions& hyper,
                     const RouterOptions& topk, HyperRouter* hyper_router, TopKRouter* topk_router);

RouterOutput route(HyperRouter& hyper, TopKRouter& topk, const torch::Tensor& xf);
int64_t router_top_k(const HyperRouter& hyper, const TopKRouter& topk);
void set_router_top_k(HyperRouter& hyper, TopKRouter& topk, int64_t k);
void reset_router_parameters(HyperRouter& hyper, TopKRouter& topk);

/// Module::to for a routed layer: the experts take `dtype`, the router stays float32 (float64 for
/// float64 experts; routing in bf16 flips expert choices, RELIABILITY.md §2).
void move_routed_layer(HyperRouter& hyper, TopKRouter& topk, ExpertBank& experts,
                       c10::optional<torch::Device> device, torch::Dtype dtype, bool non_blocking);

}  // namespace moe::detail
