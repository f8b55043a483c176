// Data parallelism of a model whose MoE layers spread their experts over the ranks
// (docs/distributed.md, "Training on several processes").
//
// Every rank holds a replica of the model except the experts of the layers it distributed
// (RoutedMoEImpl::distribute_experts), runs forward and backward on its shard of the global batch,
// then calls synchronize_gradients before the optimizer step. With each rank's loss equal to W
// times its share of the global task loss (the mean over its tokens when the shards are equal) plus
// the layers' auxiliary losses as returned (they are already those of the global batch), every
// gradient becomes the gradient of the single-process loss on the global batch, so that training
// equals single-process training.
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <memory>

#include "moe/distributed.h"

namespace moe::nn {

/// Averages the gradients over `group` (W ranks):
///  - parameters every rank holds: summed over the ranks with bucketed all-reduces
///    (dist::all_reduce_gradients, buckets of at most `bucket_bytes`) and divided by W;
///  - the experts of layers distributed over `group`: each holds one copy (its expert-data-parallel
///    group is the rank alone) and its gradient already sums the tokens of every rank (the
///    all-to-all's backward), so it is only divided by W.
/// Every rank must call it with the same model. A layer distributed over another group is an error
/// (experts replicated over several ranks are not supported yet). Returns the all-reduces made.
int64_t synchronize_gradients(const std::shared_ptr<dist::ProcessGroup>& group,
                              torch::nn::Module& model, int64_t bucket_bytes = int64_t(25) << 20);

/// After synchronize_gradients: the L2 norm of every gradient of the model on all ranks together
/// (the replicated parameters once, each rank's experts once), scaled, when `max_norm` > 0, so that
/// it is at most max_norm (torch::nn::utils::clip_grad_norm_'s rule: by max_norm / (norm + 1e-6)
/// when that is below 1). Every rank gets the same norm. Returns the norm before clipping.
double clip_gradient_norm(const std::shared_ptr<dist::ProcessGroup>& group,
                          torch::nn::Module& model, double max_norm);

}  // namespace moe::nn
