// Process-level settings for programs (include/moe/runtime.h).
#include "moe/runtime.h"

#include <ATen/Parallel.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

namespace moe::runtime {

int configure_threads(int threads) {
  if (threads <= 0) {
    if (const char* env = std::getenv("MOE_NUM_THREADS")) threads = std::atoi(env);
  }
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  return at::get_num_threads();
}

void ensure_passive_omp_wait(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;
  setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
  execv("/proc/self/exe", argv);
  // Only reached if exec failed: carry on with spinning workers (correct, just slower).
  std::fprintf(stderr, "moe: could not re-execute with OMP_WAIT_POLICY=PASSIVE (%s); continuing\n",
               std::strerror(errno));
}

}  // namespace moe::runtime
