// The batch a router sees as a shard of a global batch (docs/distributed.md, "Statistics over the
// global batch").
//
// The papers define the auxiliary losses, the routing statistics, the capacity and expert-choice
// selection over the batch. When a batch is split over processes (expert parallelism), every rank
// routes its own shard; a router computes those quantities through this interface, so that they are
// the ones of the concatenated batch on every rank. One process routes one shard: the whole batch.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace moe {

class BatchShards {
 public:
  /// The whole batch of `rows` tokens, routed by one process.
  explicit BatchShards(int64_t rows) : row_offset_(0), total_rows_(rows) {}
  virtual ~BatchShards() = default;
  BatchShards(const BatchShards&) = delete;
  BatchShards& operator=(const BatchShards&) = delete;

  /// Position of this shard's first token in the global batch (shards in rank order).
  int64_t row_offset() const { return row_offset_; }
  /// Tokens in the global batch.
  int64_t total_rows() const { return total_rows_; }
  /// True for a batch routed by one process.
  bool whole() const { return shards() == 1; }
  virtual int shards() const { return 1; }

  /// Σ of `t` over the shards, every shard getting the sum. Differentiable: the backward sums the
  /// shards' gradients, so that data parallelism's averaged gradients are the gradients of a loss
  /// of the global batch (docs/distributed.md).
  virtual at::Tensor sum(const at::Tensor& t) const { return t; }
  /// Σ of `t` over the shards before this one (zeros for the first); not differentiable.
  virtual at::Tensor sum_before(const at::Tensor& t) const;
  /// The rows of `t` [n, ...] of every shard, concatenated in shard order; not differentiable.
  virtual at::Tensor all_rows(const at::Tensor& t) const { return t; }

 protected:
  BatchShards(int64_t row_offset, int64_t total_rows)
      : row_offset_(row_offset), total_rows_(total_rows) {}

 private:
  int64_t row_offset_, total_rows_;
};

}  // namespace moe
