#include "memory.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <unordered_map>

namespace moe::bench {
namespace {

class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}

  // LibTorch 1.13 declares allocate() const, 2.x non-const: define both, each overrides its own.
  c10::DataPtr allocate(size_t n) const { return counted(n); }
  c10::DataPtr allocate(size_t n) { return counted(n); }
  // The context is the data pointer itself, as raw_allocate() (used by oneDNN's bf16 matmul)
  // requires; the base allocation is looked up by it on release.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }
  // Pure virtual in LibTorch 2.x, absent in 1.13.
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::copy_n(static_cast<const char*>(src), count, static_cast<char*>(dest));
  }

  int64_t live() const { return live_.load(); }
  void reset_peak() { peak_.store(live_.load()); }
  int64_t peak() const { return peak_.load(); }

  static CountingAllocator* instance;

 private:
  struct Block {
    c10::DataPtr inner;
    size_t bytes;
  };

  c10::DataPtr counted(size_t n) const {
    c10::DataPtr inner = base_->allocate(n);
    void* p = inner.get();
    if (p == nullptr) return inner;  // zero-size allocations carry nothing to count
    const auto device = inner.device();
    {
      std::lock_guard<std::mutex> lock(mutex_);
      blocks_[p] = Block{std::move(inner), n};
    }
    const int64_t now = live_.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
    int64_t pk = peak_.load();
    while (now > pk && !peak_.compare_exchange_weak(pk, now)) {
    }
    return {p, p, &release, device};
  }

  static void release(void* p) {
    CountingAllocator* self = instance;
    Block b;
    {
      std::lock_guard<std::mutex> lock(self->mutex_);
      auto it = self->blocks_.find(p);
      if (it == self->blocks_.end()) return;
      b = std::move(it->second);
      self->blocks_.erase(it);
    }
    self->live_.fetch_sub(static_cast<int64_t>(b.bytes));
  }  // b.inner frees the memory here

  c10::Allocator* base_;
  mutable std::mutex mutex_;
  mutable std::unordered_map<void*, Block> blocks_;
  mutable std::atomic<int64_t> live_{0};
  mutable std::atomic<int64_t> peak_{0};
};

CountingAllocator* CountingAllocator::instance = nullptr;
CountingAllocator* g_counter = nullptr;

}  // namespace

void install_counting_allocator() {
  if (g_counter) return;
  static CountingAllocator counter(c10::GetCPUAllocator());
  CountingAllocator::instance = &counter;
  c10::SetCPUAllocator(&counter, /*priority=*/100);
  g_counter = &counter;
}

int64_t peak_tensor_bytes(const std::function<void()>& f) {
  if (!g_counter) return -1;
  const int64_t before = g_counter->live();
  g_counter->reset_peak();
  f();
  return g_counter->peak() - before;
}

}  // namespace moe::bench
