// Data parallelism's bucketed gradient all-reduce (include/moe/distributed.h). The C++ frontend has
// no DistributedDataParallel; this is the part of it the library needs: the gradients flattened
// into a few large buffers, each summed over the ranks with one collective, and copied back.
#include <ATen/ATen.h>

#include "moe/distributed.h"

namespace moe::dist {

int64_t all_reduce_gradients(const std::shared_ptr<ProcessGroup>& group,
                             const std::vector<at::Tensor>& params, double scale,
                             int64_t bucket_bytes) {
  TORCH_CHECK_VALUE(group != nullptr, "all_reduce_gradients: no process group");
  TORCH_CHECK_VALUE(bucket_bytes >= 1, "all_reduce_gradients: bucket_bytes must be >= 1, got ",
                    bucket_bytes);
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  int64_t collectives = 0;
  // Buckets of consecutive gradients of one dtype, in the order given (the same on every rank).
  size_t i = 0;
  while (i < grads.size()) {
    const auto dtype = grads[i].scalar_type();
    const int64_t item = static_cast<int64_t>(grads[i].element_size());
    size_t j = i;
    int64_t bytes = 0;
    while (j < grads.size() && grads[j].scalar_type() == dtype &&
           (j == i || bytes + grads[j].numel() * item <= bucket_bytes)) {
      bytes += grads[j].numel() * item;
      ++j;
    }
    std::vector<at::Tensor> flat;
    for (size_t g = i; g < j; ++g) flat.push_back(grads[g].reshape({-1}));
    auto bucket = at::cat(flat);
    group->all_reduce_sum(bucket);
    ++collectives;
    if (scale != 1.0) bucket.mul_(scale);
    int64_t offset = 0;
    for (size_t g = i; g < j; ++g) {
      const int64_t n = grads[g].numel();
      grads[g].copy_(bucket.narrow(0, offset, n).view_as(grads[g]));
      offset += n;
    }
    i = j;
  }
  return collectives;
}

}  // namespace moe::dist
