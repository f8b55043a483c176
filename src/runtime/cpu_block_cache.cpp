// enable_cpu_block_cache (include/moe/runtime.h): a CPU allocator that keeps freed large blocks for
// the next allocation of the same size class.
//
// Why: glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mapping
// and unmaps it on free, so a training step that allocates the same 268 MB weight gradient every
// step pays a page fault and a kernel zero-fill per 4 KiB page each time (20-60% of the CPU time of
// a step with thousands of experts, docs/benchmarks.md "Many experts"). The blocks a step frees are
// the blocks the next step asks for, so an exact-size-class cache turns those faults into hits.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "moe/runtime.h"

namespace moe::runtime {
namespace {

constexpr size_t kMinBlock = size_t{1} << 20;  // smaller blocks go to the default allocator
constexpr size_t kAlignment = 64;

// The size class of a large block: n rounded up to a multiple of 1/8 of its power of two (at most
// 12.5% more), so that sizes that vary a little between steps (per-expert scratch) share a class.
size_t size_class(size_t n) {
  size_t p = 1;
  while (p * 2 <= n) p *= 2;
  const size_t step = p / 8;
  return (n + step - 1) / step * step;
}

class BlockCache final : public c10::Allocator {
 public:
  BlockCache(c10::Allocator* small, size_t max_cached) : small_(small), max_cached_(max_cached) {}

  // LibTorch 1.13 declares allocate() const, 2.x non-const: define both, each overrides its own.
  c10::DataPtr allocate(size_t n) const { return take(n); }
  c10::DataPtr allocate(size_t n) { return take(n); }
  // The context is the data pointer itself, as raw_allocate() (used by oneDNN) requires.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  // Pure virtual in LibTorch 2.x, absent in 1.13.
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::copy_n(static_cast<const char*>(src), count, static_cast<char*>(dest));
  }

  size_t cached() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return cached_;
  }

  static BlockCache* instance;

 private:
  // Small blocks are the default allocator's own DataPtrs (with its deleter): only large blocks
  // pass through the cache's bookkeeping.
  c10::DataPtr take(size_t n) const {
    if (n < kMinBlock) return small_->allocate(n);
    const size_t bytes = size_class(n);
    void* p = nullptr;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = free_.find(bytes);
      if (it != free_.end() && !it->second.empty()) {
        p = it->second.back();
        it->second.pop_back();
        cached_ -= bytes;
      }
    }
    if (p == nullptr && posix_memalign(&p, kAlignment, bytes) != 0) p = nullptr;
    TORCH_CHECK(p != nullptr, "DefaultCPUAllocator: not enough memory: you tried to allocate ", n,
                " bytes.");
    std::lock_guard<std::mutex> lock(mutex_);
    live_[p] = bytes;
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // The deleter of large blocks, and raw_deallocate's of every block (a small block raw_allocate
  // handed out goes back to the default allocator).
  static void release(void* p) {
    BlockCache* self = instance;
    size_t bytes = 0;
    bool keep = false;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      auto it = self->live_.find(p);
      if (it != self->live_.end()) {
        bytes = it->second;
        self->live_.erase(it);
        keep = self->cached_ + bytes <= self->max_cached_;
        if (keep) {
          self->free_[bytes].push_back(p);
          self->cached_ += bytes;
        }
      }
    }
    if (bytes == 0) {
      const auto small_deleter = self->small_->raw_deleter();
      TORCH_INTERNAL_ASSERT(small_deleter != nullptr, "CPU block cache: no deleter for ", p);
      small_deleter(p);
    } else if (!keep) {
      std::free(p);
    }
  }

  c10::Allocator* small_;
  const size_t max_cached_;
  mutable std::mutex mutex_;
  mutable std::unordered_map<void*, size_t> live_;  ///< large blocks in use: their size class
  mutable std::map<size_t, std::vector<void*>> free_;
  mutable size_t cached_ = 0;
};

BlockCache* BlockCache::instance = nullptr;

int64_t default_cache_bytes() {
  const char* env = std::getenv("MOE_CPU_BLOCK_CACHE_MB");
  if (env == nullptr) return int64_t{4096} << 20;
  char* end = nullptr;
  const long long mb = std::strtoll(env, &end, 10);
  TORCH_CHECK_VALUE(end != env && *end == '\0' && mb >= 0,
                    "MOE_CPU_BLOCK_CACHE_MB must be an integer >= 0 (MiB; 0 = off), got '", env,
                    "'");
  return static_cast<int64_t>(mb) << 20;
}

}  // namespace

bool enable_cpu_block_cache(int64_t max_cached_bytes) {
  if (BlockCache::instance != nullptr) return true;
  const int64_t bytes = max_cached_bytes < 0 ? default_cache_bytes() : max_cached_bytes;
  if (bytes == 0) return false;
  static BlockCache cache(c10::GetCPUAllocator(), static_cast<size_t>(bytes));
  BlockCache::instance = &cache;
  c10::SetCPUAllocator(&cache, /*priority=*/50);
  return true;
}

int64_t cpu_block_cache_bytes() {
  return BlockCache::instance == nullptr ? 0 : static_cast<int64_t>(BlockCache::instance->cached());
}

}  // namespace moe::runtime
