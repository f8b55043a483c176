#include "memory.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>

#include <algorithm>
#include <atomic>

namespace moe::bench {
namespace {

class CountingAllocator final : public c10::Allocator {
 public:
  explicit CountingAllocator(c10::Allocator* base) : base_(base) {}

  // LibTorch 1.13 declares allocate() const, 2.x non-const: define both, each overrides its own.
  c10::DataPtr allocate(size_t n) const { return counted(n); }
  c10::DataPtr allocate(size_t n) { return counted(n); }
  c10::DeleterFnPtr raw_deleter() const override { return nullptr; }
  // Pure virtual in LibTorch 2.x, absent in 1.13.
  void copy_data(void* dest, const void* src, std::size_t count) const {
    std::copy_n(static_cast<const char*>(src), count, static_cast<char*>(dest));
  }

  int64_t live() const { return live_.load(); }
  void reset_peak() { peak_.store(live_.load()); }
  int64_t peak() const { return peak_.load(); }

 private:
  struct Block {
    c10::DataPtr inner;
    size_t bytes;
    const CountingAllocator* owner;
  };

  c10::DataPtr counted(size_t n) const {
    auto* b = new Block{base_->allocate(n), n, this};
    const int64_t now = live_.fetch_add(static_cast<int64_t>(n)) + static_cast<int64_t>(n);
    int64_t p = peak_.load();
    while (now > p && !peak_.compare_exchange_weak(p, now)) {
    }
    return {b->inner.get(), b, &release, b->inner.device()};
  }

  static void release(void* ctx) {
    auto* b = static_cast<Block*>(ctx);
    b->owner->live_.fetch_sub(static_cast<int64_t>(b->bytes));
    delete b;
  }

  c10::Allocator* base_;
  mutable std::atomic<int64_t> live_{0};
  mutable std::atomic<int64_t> peak_{0};
};

CountingAllocator* g_counter = nullptr;

}  // namespace

void install_counting_allocator() {
  if (g_counter) return;
  static CountingAllocator counter(c10::GetCPUAllocator());
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
