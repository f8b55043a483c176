// A rank's tokens as a shard of the batch of all ranks (include/moe/distributed.h,
// include/moe/batch_shards.h).
#include <ATen/ATen.h>

#include "moe/distributed.h"

namespace moe::dist {
namespace {

class GroupShards final : public BatchShards {
 public:
  GroupShards(std::shared_ptr<ProcessGroup> group, int64_t row_offset, int64_t total_rows)
      : BatchShards(row_offset, total_rows), group_(std::move(group)) {}

  int shards() const override { return group_->size(); }

  at::Tensor sum(const at::Tensor& t) const override {
    if (t.requires_grad()) return all_reduce_sum(group_, t);
    auto out = t.detach().contiguous().clone();
    group_->all_reduce_sum(out);
    return out;
  }

  at::Tensor sum_before(const at::Tensor& t) const override {
    return all_rows(t.unsqueeze(0)).narrow(0, 0, group_->rank()).sum(0).to(t.scalar_type());
  }

  at::Tensor all_rows(const at::Tensor& t) const override {
    const int W = group_->size();
    const int64_t n = t.size(0);
    const auto from = group_->exchange_counts(std::vector<int64_t>(W, n));
    const auto own = t.detach().contiguous();
    return group_->all_to_all(at::cat(std::vector<at::Tensor>(W, own)), std::vector<int64_t>(W, n),
                              from);
  }

 private:
  std::shared_ptr<ProcessGroup> group_;
};

}  // namespace

std::unique_ptr<BatchShards> batch_shards(const std::shared_ptr<ProcessGroup>& group,
                                          int64_t rows) {
  TORCH_CHECK_VALUE(group != nullptr, "batch_shards: no process group");
  TORCH_CHECK_VALUE(rows >= 0, "batch_shards: rows must be >= 0, got ", rows);
  const int W = group->size();
  const auto all = group->exchange_counts(std::vector<int64_t>(W, rows));
  int64_t offset = 0, total = 0;
  for (int j = 0; j < W; ++j) {
    if (j < group->rank()) offset += all[j];
    total += all[j];
  }
  return std::make_unique<GroupShards>(group, offset, total);
}

}  // namespace moe::dist
