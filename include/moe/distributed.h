// Processes working together: a LibTorch c10d process group (Gloo on the CPU) and the collectives
// the library's expert and data parallelism are built on (docs/distributed.md).
//
// The c10d headers stay out of this header (they pull in Gloo's); ProcessGroup wraps one.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "moe/batch_shards.h"
#include "moe/functional.h"
#include "moe/types.h"

namespace moe::dist {

/// True when this build of the library has the c10d Gloo backend (CMake found Gloo's headers;
/// Debian: libgloo-dev). Without it every function here throws.
bool available();

/// A TCP port of 127.0.0.1 that nothing listens on now, for rank 0's store of processes started
/// on this machine (a moment later, something else may take it: the rendezvous then fails clearly).
int free_loopback_port();

/// One c10d process group of `size` ranks. Every collective must be called by every rank in the
/// same order; a rank that fails or dies makes the others fail within the group's timeout.
class ProcessGroup {
 public:
  /// Rendezvous through a file that every rank opens (c10d::FileStore): processes of one machine.
  static std::shared_ptr<ProcessGroup> gloo_file(const std::string& path, int rank, int size,
                                                 std::chrono::milliseconds timeout);
  /// Rendezvous through rank 0's TCP store at MASTER_ADDR:MASTER_PORT, with RANK and WORLD_SIZE
  /// from the environment (the variables torchrun and most cluster launchers set).
  static std::shared_ptr<ProcessGroup> gloo_from_env(std::chrono::milliseconds timeout);

  ~ProcessGroup();
  int rank() const;
  int size() const;

  /// Sums `t` over the ranks, in place (every rank gets the sum).
  void all_reduce_sum(at::Tensor& t);
  /// Sends rows [Σ send_rows[<j], +send_rows[j]) of `input` [n, ...] to rank j and returns the
  /// rows received, those from rank 0 first; recv_rows[j] rows come from rank j. Empty splits
  /// allowed; every rank joins even with nothing to send. Contiguous CPU tensors.
  at::Tensor all_to_all(const at::Tensor& input, const std::vector<int64_t>& send_rows,
                        const std::vector<int64_t>& recv_rows);
  /// counts[j] goes to rank j; returns what each rank sent to this one (an all-to-all of one
  /// integer per pair: how the ranks agree on the sizes of an uneven all-to-all).
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& counts);
  void barrier();

  /// A number that names this group in the process (autograd nodes keep it, not the group).
  int64_t id() const { return id_; }
  /// The live group with this id, or null once it is destroyed.
  static std::shared_ptr<ProcessGroup> find(int64_t id);

  struct Impl;

 private:
  explicit ProcessGroup(std::unique_ptr<Impl> impl);
  static std::shared_ptr<ProcessGroup> registered(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  int64_t id_ = 0;
};

/// all_to_all with gradients: backward sends the gradient rows back the way they came. The group
/// must outlive the backward.
at::Tensor all_to_all_rows(const std::shared_ptr<ProcessGroup>& group, const at::Tensor& input,
                           const std::vector<int64_t>& send_rows,
                           const std::vector<int64_t>& recv_rows);

/// The sum of `x` over the ranks, with gradients: the backward of a sum that every rank uses is
/// the sum of the ranks' gradients (so that averaging gradients over ranks, as data parallelism
/// does, gives the gradient of the loss on the global batch).
at::Tensor all_reduce_sum(const std::shared_ptr<ProcessGroup>& group, const at::Tensor& x);

/// The rows of `x` [n, ...] of every rank, concatenated in rank order (every rank gets all), with
/// gradients: the backward gives each rank the sum over the ranks of the gradients of its rows (a
/// reduce-scatter), so that a loss every rank computes alike on the gathered rows, with gradients
/// averaged over the ranks, trains as that loss in one process.
at::Tensor all_gather_rows(const std::shared_ptr<ProcessGroup>& group, const at::Tensor& x);
/// Every rank's string, in rank order (to compare configurations before working together).
std::vector<std::string> all_gather_strings(const std::shared_ptr<ProcessGroup>& group,
                                            const std::string& s);
/// Data parallelism's gradient step: every defined gradient of `params` summed over the ranks and
/// multiplied by `scale`, in place, through buckets of at most `bucket_bytes` per all-reduce (one
/// flat buffer per dtype and bucket, so a model of many small tensors makes few collectives).
/// Every rank must pass the same parameters in the same order, with the same gradients defined
/// (parameters without a gradient are skipped), so that the ranks' buckets match. With each rank's
/// loss a sum over its tokens divided by the global token count and scale = 1, the result is the
/// gradient of the mean loss on the global batch. Returns the number of all-reduces made.
int64_t all_reduce_gradients(const std::shared_ptr<ProcessGroup>& group,
                             const std::vector<at::Tensor>& params, double scale = 1.0,
                             int64_t bucket_bytes = int64_t(25) << 20);

/// This rank's `rows` tokens as a shard of the batch of all ranks (shards in rank order), for a
/// router's statistics over the global batch (moe/batch_shards.h): sums are all-reduces, rows are
/// gathered with an all-to-all. Makes one exchange of the row counts; every rank must call it.
std::unique_ptr<BatchShards> batch_shards(const std::shared_ptr<ProcessGroup>& group, int64_t rows);

/// functional::expert_mlp with its experts spread over the ranks of `group` (expert parallelism,
/// Shazeer et al. §3.1): of E = num_experts global experts, rank r holds [r·E/W, (r+1)·E/W), whose
/// weights are `local` ([E/W, ...] each). Every rank routes its own tokens x [T, d] over all E
/// experts (expert_index [T, K] global ids or -1, gate [T, K]); each pair's row travels to the rank
/// of its expert with one uneven all-to-all (the per-expert counts go first), the rank's experts
/// run on what arrived, the outputs travel back with the reverse all-to-all, and each rank combines
/// its own tokens: y [T, out]. Dropless, no padding. Gradients flow to x, gate and the local
/// weights; a local expert's weight gradient sums the pairs of every rank, as the single-process
/// layer on the concatenated batch. Every rank must call it, with zero tokens too.
/// Where one forward of expert_parallel_mlp spent its time on this rank (wall seconds, CPU), and
/// the pair rows it exchanged with other ranks (not counting its own): for benchmarks and
/// profiling. The backward repeats both exchanges with gradient rows of the same sizes.
struct ExpertParallelProfile {
  double counts_s = 0;        ///< the all-to-all of the per-expert counts
  double dispatch_s = 0;      ///< the pair rows to the experts' ranks
  double experts_s = 0;       ///< this rank's experts on the rows that arrived
  double return_s = 0;        ///< the outputs back to the tokens' ranks
  double combine_s = 0;       ///< the plan, gathering the rows and the weighted sum
  int64_t rows_sent = 0;      ///< pair rows sent to other ranks
  int64_t rows_received = 0;  ///< pair rows received from other ranks
};
at::Tensor expert_parallel_mlp(const std::shared_ptr<ProcessGroup>& group, const at::Tensor& x,
                               const at::Tensor& expert_index, const at::Tensor& gate,
                               int64_t num_experts, const functional::ExpertWeights& local,
                               Activation activation, ExpertParallelProfile* profile = nullptr);

}  // namespace moe::dist
