// Process-level settings for programs (include/moe/runtime.h).
#include "moe/runtime.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>

#include "moe/cpu.h"

namespace moe::runtime {
namespace {

// OpenBLAS's own report of its threading: 0 sequential, 1 pthreads, 2 OpenMP; -1 when the BLAS in
// the process is not OpenBLAS.
int openblas_parallel() {
  static const auto f = reinterpret_cast<int (*)()>(dlsym(RTLD_DEFAULT, "openblas_get_parallel"));
  return f ? f() : -1;
}

// Debian installs each OpenBLAS build in its own directory, side by side:
// <libdir>/openblas-pthread/libblas.so.3 and <libdir>/openblas-openmp/libblas.so.3. Returns the
// OpenMP build's directory next to the loaded pthread build, or "" if it is not installed.
std::string openmp_build_dir() {
  Dl_info info{};
  void* sym = dlsym(RTLD_DEFAULT, "openblas_get_parallel");
  if (sym == nullptr || dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return "";
  // The loader names the library by the path it opened (libblas.so.3, a chain of symlinks
  // through /etc/alternatives); the build's directory is that of the file itself.
  char* real = realpath(info.dli_fname, nullptr);
  if (real == nullptr) return "";
  std::string dir = real;
  std::free(real);
  dir = dir.substr(0, dir.rfind('/'));
  const std::string loaded = "/openblas-pthread";
  if (dir.size() < loaded.size() ||
      dir.compare(dir.size() - loaded.size(), loaded.size(), loaded) != 0)
    return "";
  const std::string openmp = dir.substr(0, dir.size() - loaded.size()) + "/openblas-openmp";
  return access((openmp + "/libblas.so.3").c_str(), R_OK) == 0 ? openmp : "";
}

bool env_equals(const char* name, const char* value) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, value) == 0;
}

// Re-executes the program with the environment changed so far; returns only if that failed.
void reexecute(char** argv, const char* why) {
  execv("/proc/self/exe", argv);
  std::fprintf(stderr, "moe: could not re-execute the program %s (%s); continuing\n", why,
               std::strerror(errno));
}

}  // namespace

int max_threads() {
  return 4 * static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

int configure_threads(int threads, const char* option) {
  const int cap = max_threads();
  const char* source = option;
  if (threads < 0) {
    throw std::invalid_argument(std::string(source) + " must be >= 1 (0: automatic), got " +
                                std::to_string(threads));
  }
  if (threads == 0) {
    if (const char* env = std::getenv("MOE_NUM_THREADS"); env != nullptr && *env != '\0') {
      source = "MOE_NUM_THREADS";
      char* end = nullptr;
      errno = 0;
      const long v = std::strtol(env, &end, 10);
      if (errno != 0 || end == env || *end != '\0' || v < 1 || v > cap) {
        throw std::invalid_argument("MOE_NUM_THREADS must be an integer in [1, " +
                                    std::to_string(cap) + "], got '" + env + "'");
      }
      threads = static_cast<int>(v);
    }
  }
  // Thousands of OpenMP threads on a few cores do not fail: they thrash for minutes (100000 hung
  // the process creating them). The one check of the option's range, the `moe` command's included.
  if (threads > cap) {
    throw std::invalid_argument(std::string(source) + " " + std::to_string(threads) +
                                ": expected an integer in [1, " + std::to_string(cap) +
                                "] (4 per hardware thread), or 0 for every core");
  }
  if (threads == 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  at::set_num_threads(threads);
  return at::get_num_threads();
}

std::string openblas_threading() {
  switch (openblas_parallel()) {
    case 0:
      return "sequential";
    case 1:
      return "pthread";
    case 2:
      return "openmp";
    default:
      return "";
  }
}

void apply_isa_caps() {
  if (cpu::onednn_isa_cap_excludes_bf16()) at::globalContext().setUserEnabledMkldnn(false);
}

void configure_threading(char** argv) {
  try {  // a malformed MOE_BF16_GEMM fails here, before the program does anything
    cpu::bf16_gemm();
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "%s\n", e.what_without_backtrace());
    std::exit(2);
  }
  apply_isa_caps();
  // MOE_THREADING_REEXEC marks a process that was re-executed to load the OpenMP build: if the
  // pthread build is loaded all the same (LD_LIBRARY_PATH overridden by an rpath, say), it is not
  // tried again.
  const bool tried_openmp = std::getenv("MOE_THREADING_REEXEC") != nullptr;
  if (openblas_parallel() == 1 && !tried_openmp && !env_equals("MOE_OPENBLAS", "keep")) {
    const std::string dir = openmp_build_dir();
    if (!dir.empty()) {
      const char* old = std::getenv("LD_LIBRARY_PATH");
      const std::string path = old != nullptr && *old != '\0' ? dir + ":" + old : dir;
      setenv("LD_LIBRARY_PATH", path.c_str(), 1);
      setenv("MOE_THREADING_REEXEC", "1", 1);
      reexecute(argv, "with OpenBLAS's OpenMP build");
      return;
    }
  }
  if (openblas_parallel() == 1 && std::getenv("OMP_WAIT_POLICY") == nullptr) {
    setenv("OMP_WAIT_POLICY", "PASSIVE", 1);
    reexecute(argv, "with OMP_WAIT_POLICY=PASSIVE");
  }
}

}  // namespace moe::runtime
