// The CPU engine schedule and BLAS thread control (engine_schedule.h).
#include "engine/cpu/engine_schedule.h"

#include <dlfcn.h>

#include <cstdlib>
#include <cstring>

namespace moe::engine::cpu::schedule {
namespace {

// Mean rows per expert below which experts run in parallel (one per thread) rather than one after
// the other with a multi-threaded BLAS. Measured with moe_bench on the 2-core build machine.
constexpr int64_t kParallelExpertRows = 512;

// Rows of expert outputs (forward) or input gradients (backward) held at once before they are
// summed into the token rows on the parallel schedule: consecutive experts up to this many rows
// (or the largest expert), so the buffer stays small while each parallel region still has many
// experts to balance.
constexpr int64_t kChunkRows = 4096;

// MOE_ENGINE_SCHEDULE, or where it is unset its former name MOE_EXPERT_SCHEDULE; null if neither.
const char* schedule_override() {
  const char* env = std::getenv("MOE_ENGINE_SCHEDULE");
  return env ? env : std::getenv("MOE_EXPERT_SCHEDULE");
}

}  // namespace

BlasSingleThreaded::BlasSingleThreaded() {
  static const auto set =
      reinterpret_cast<void (*)(int)>(dlsym(RTLD_DEFAULT, "openblas_set_num_threads"));
  static const auto get =
      reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_num_threads"));
  static const auto parallel_kind =
      reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  if (set && get && !(parallel_kind && parallel_kind() == 2)) {
    set_ = set;
    prev_ = get();
    set_(1);
  }
}

BlasSingleThreaded::~BlasSingleThreaded() {
  if (set_) set_(prev_);
}

int64_t largest_segment(const int64_t* offsets, int64_t E) {
  int64_t m = 0;
  for (int64_t e = 0; e < E; ++e) m = std::max(m, offsets[e + 1] - offsets[e]);
  return m;
}

bool experts_in_parallel(const int64_t* offsets, int64_t E) {
  static const char* env = schedule_override();
  if (env && std::strcmp(env, "serial") == 0) return false;
  if (env && std::strcmp(env, "parallel") == 0) return true;
  int64_t busy = 0;
  for (int64_t e = 0; e < E; ++e) busy += offsets[e + 1] > offsets[e];
  if (busy < 4) return false;
  return offsets[E] / busy < kParallelExpertRows;
}

int64_t chunk_rows(bool parallel, int64_t largest, int64_t P) {
  return parallel ? std::min(P, std::max(largest, kChunkRows)) : largest;
}

std::vector<Chunk> make_chunks(const int64_t* offsets, int64_t E, bool parallel, int64_t budget) {
  std::vector<Chunk> chunks;
  for (int64_t e = 0; e < E;) {
    if (offsets[e + 1] == offsets[e]) {
      ++e;
      continue;
    }
    int64_t last = e + 1;
    while (parallel && last < E && offsets[last + 1] - offsets[e] <= budget) ++last;
    chunks.push_back({e, last});
    e = last;
  }
  return chunks;
}

}  // namespace moe::engine::cpu::schedule
