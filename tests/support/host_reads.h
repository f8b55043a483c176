// Counts the operations that read a tensor's values on the host, in the scope of one object.
//
// On a GPU these are the host synchronisations: .item() (aten::_local_scalar_dense), a tensor in
// a boolean context (aten::is_nonzero), and the operations whose output size depends on the data
// (nonzero, masked_select and boolean indexing, bincount, unique, repeat_interleave with tensor
// repeats). The counter observes every operation LibTorch dispatches (a RecordFunction callback),
// so it sees them on the CPU too, where the same code runs: a test on the CPU proves that a path
// has none. Not counted: copies to the host (a no-op on the CPU) and raw pointer reads, which are
// no operations at all; and the reads inside aten::_assert_async, a device-side assertion that
// reads nothing on a GPU (its CPU implementation calls .item()).
#pragma once

#include <ATen/record_function.h>

#include <atomic>
#include <mutex>
#include <set>
#include <string>
#include <vector>

namespace moe::testing {

class HostReadCounter {
 public:
  HostReadCounter() {
    state().count = 0;
    state().names.clear();
    handle_ = at::addGlobalCallback(
        at::RecordFunctionCallback(&on_start, &on_end).scopes({at::RecordScope::FUNCTION}));
  }
  ~HostReadCounter() { at::removeCallback(handle_); }
  HostReadCounter(const HostReadCounter&) = delete;
  HostReadCounter& operator=(const HostReadCounter&) = delete;

  int64_t count() const { return state().count; }
  /// The operations counted, in order, for failure messages.
  std::string names() const {
    std::lock_guard<std::mutex> lock(state().mutex);
    std::string s;
    for (const auto& n : state().names) s += (s.empty() ? "" : ", ") + n;
    return s;
  }

 private:
  struct State {
    std::atomic<int64_t> count{0};
    std::mutex mutex;
    std::vector<std::string> names;
  };
  static State& state() {
    static State s;
    return s;
  }
  static std::unique_ptr<at::ObserverContext> on_start(const at::RecordFunction& fn) {
    static const std::set<std::string> reads{"aten::_local_scalar_dense",
                                             "aten::is_nonzero",
                                             "aten::nonzero",
                                             "aten::masked_select",
                                             "aten::bincount",
                                             "aten::repeat_interleave",
                                             "aten::_unique",
                                             "aten::_unique2",
                                             "aten::unique_dim",
                                             "aten::unique_consecutive",
                                             "aten::nonzero_numpy",
                                             "aten::argwhere"};
    const std::string name = fn.name();
    if (name == kAssert) ++assert_depth();
    if (reads.count(name) > 0 && assert_depth() == 0) {
      ++state().count;
      std::lock_guard<std::mutex> lock(state().mutex);
      state().names.push_back(name);
    }
    return nullptr;
  }
  static void on_end(const at::RecordFunction& fn, at::ObserverContext*) {
    if (fn.name() == std::string(kAssert)) --assert_depth();
  }
  static int& assert_depth() {
    thread_local int depth = 0;
    return depth;
  }
  static constexpr const char* kAssert = "aten::_assert_async";
  at::CallbackHandle handle_;
};

}  // namespace moe::testing
