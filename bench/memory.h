// Exact peak-memory accounting for the benchmark: a c10 CPU allocator that counts the bytes of live
// tensors (glibc keeps freed memory resident, so RSS high-water marks miss most of it).
#pragma once

#include <cstdint>
#include <functional>

namespace moe::bench {

/// Installs the counting allocator as the CPU allocator (once; later calls do nothing).
void install_counting_allocator();

/// Peak bytes of tensor memory allocated while `f` ran, above what was live when it started.
/// -1 if the counting allocator is not installed.
int64_t peak_tensor_bytes(const std::function<void()>& f);

}  // namespace moe::bench
