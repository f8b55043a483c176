// The CPU engine schedule: how the CPU backend runs its experts, serial (one expert at a time,
// multi-threaded BLAS) or parallel (one expert per intra-op thread, single-threaded BLAS), in
// chunks of consecutive experts whose rows are then summed into the token rows. Also the BLAS
// thread control that the parallel schedule needs. Used by cpu_backend.cpp. (Not to be confused
// with DynMoE's ExpertSchedule, the recording window of include/moe/nn/expert_schedule.h.)
#pragma once

#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <ATen/core/Tensor.h>

#include <algorithm>
#include <atomic>
#include <optional>
#include <vector>

#include "kernels/cpu/kernels.h"

namespace moe::engine::cpu::schedule {

/// OpenBLAS's pthread build runs its own thread pool; while experts run in parallel on OpenMP
/// threads it must run single-threaded in each caller, so that only one threading system is active
/// at a time. Its OpenMP build (openblas_get_parallel() == 2) and other BLAS libraries (MKL) run
/// single-threaded inside an OpenMP region by themselves; there openblas_set_num_threads would set
/// the OpenMP thread count of the whole process, so it is not called.
class BlasSingleThreaded {
 public:
  BlasSingleThreaded();
  ~BlasSingleThreaded();
  BlasSingleThreaded(const BlasSingleThreaded&) = delete;
  BlasSingleThreaded& operator=(const BlasSingleThreaded&) = delete;

 private:
  void (*set_)(int) = nullptr;
  int prev_ = 1;
};

/// The largest segment of the plan (rows of the biggest expert).
int64_t largest_segment(const int64_t* offsets, int64_t E);

/// Serial or parallel, from the plan alone (never from the thread count: a single-threaded and a
/// multi-threaded GEMM may round differently, and results must not change with
/// at::set_num_threads). MOE_ENGINE_SCHEDULE=serial|parallel overrides the choice (benchmarks;
/// the older name MOE_EXPERT_SCHEDULE is still read when MOE_ENGINE_SCHEDULE is unset).
bool experts_in_parallel(const int64_t* offsets, int64_t E);

/// Rows of the chunk buffer: the largest expert; on the parallel schedule kChunkRows (or the
/// largest expert), never more than all P pairs.
int64_t chunk_rows(bool parallel, int64_t largest, int64_t P);

/// Consecutive runs of experts [first, last) computed into the chunk buffer together.
struct Chunk {
  int64_t first, last;
};
std::vector<Chunk> make_chunks(const int64_t* offsets, int64_t E, bool parallel, int64_t budget);

/// Runs body(e, worker) for every non-empty expert in [first, last). In parallel mode the experts
/// are claimed dynamically, largest first, so skewed loads still keep every thread busy; `worker`
/// indexes the per-thread scratch. Each expert writes only its own rows and its own weight
/// gradients, so the result does not depend on the schedule.
template <typename Body>
void for_each_expert(const int64_t* offsets, int64_t first, int64_t last, bool parallel,
                     Body&& body) {
  if (!parallel) {
    for (int64_t e = first; e < last; ++e)
      if (offsets[e + 1] > offsets[e]) body(e, 0);
    return;
  }
  std::vector<int64_t> order;
  for (int64_t e = first; e < last; ++e)
    if (offsets[e + 1] > offsets[e]) order.push_back(e);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) {
    return offsets[a + 1] - offsets[a] > offsets[b + 1] - offsets[b];
  });
  std::atomic<size_t> next{0};
  const int64_t threads = at::get_num_threads();
  // OpenMP workers do not inherit the caller's thread-local state (grad mode is off inside an
  // autograd function's forward and backward; ATen ops on weights that require grad would record).
  const at::ThreadLocalState state;
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    at::ThreadLocalStateGuard guard(state);
    for (int64_t worker = begin; worker < end; ++worker) {
      for (size_t i = next++; i < order.size(); i = next++) body(order[i], worker);
    }
  });
}

/// For each chunk, body(e, worker, rows) computes expert e's [n, d] result into `rows` (its slice
/// of the chunk buffer), then the chunk's rows are added into the token rows of acc ([T, d], zero
/// on entry, float32 for bf16), scaled by the pair weights when given. Every token row thus sums
/// its pairs in expert order on either schedule and at any thread count. A null acc sums nothing
/// (a backward without dL/dx: the buffer then has no columns).
template <typename T, typename A, typename Body>
void run_chunked(const int64_t* offsets, int64_t E, bool parallel, const int64_t* tok,
                 const T* weights, at::Tensor& chunk_buf, A* acc, Body&& body) {
  const int64_t d = chunk_buf.size(1);
  // While experts run in parallel, OpenBLAS must stay single-threaded in each worker.
  std::optional<BlasSingleThreaded> single;
  if (parallel) single.emplace();
  for (const Chunk& c : make_chunks(offsets, E, parallel, chunk_buf.size(0))) {
    const int64_t base = offsets[c.first];
    for_each_expert(offsets, c.first, c.last, parallel, [&](int64_t e, int64_t worker) {
      auto rows = chunk_buf.narrow(0, offsets[e] - base, offsets[e + 1] - offsets[e]);
      body(e, worker, rows);
    });
    if (acc == nullptr) continue;
    kernels::cpu::scatter_add_rows<T, A>(chunk_buf.data_ptr<T>(), tok + base,
                                         weights ? weights + base : nullptr, offsets[c.last] - base,
                                         d, acc);
  }
}

}  // namespace moe::engine::cpu::schedule
