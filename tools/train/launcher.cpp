// `moe train ... --nproc N` (tools/train/launcher.h).
#include "train/launcher.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <thread>

#include "moe/distributed.h"

namespace moe::train {
namespace {

volatile sig_atomic_t g_forward_signal = 0;
extern "C" void remember_signal(int sig) { g_forward_signal = sig; }

int exit_status(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace

int launch_ranks(int nproc, const std::vector<std::string>& args, double grace_seconds) {
  if (nproc < 1) throw std::invalid_argument("moe train: --nproc must be >= 1");
  const std::string port = std::to_string(dist::free_loopback_port());
  const bool threads_set = std::getenv("MOE_NUM_THREADS") != nullptr ||
                           std::find(args.begin(), args.end(), "--threads") != args.end();
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const std::string threads = std::to_string(std::max(1u, cores / static_cast<unsigned>(nproc)));

  struct sigaction sa {};
  sa.sa_handler = remember_signal;
  sigemptyset(&sa.sa_mask);
  struct sigaction old_int {
  }, old_term{};
  g_forward_signal = 0;
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  std::vector<pid_t> pids;
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("moe train --nproc: fork failed");
    if (pid == 0) {
      sigaction(SIGINT, &old_int, nullptr);
      sigaction(SIGTERM, &old_term, nullptr);
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", port.c_str(), 1);
      if (!threads_set) ::setenv("MOE_NUM_THREADS", threads.c_str(), 1);
      std::vector<char*> argv{const_cast<char*>("moe")};
      for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
      argv.push_back(nullptr);
      ::execv("/proc/self/exe", argv.data());
      std::perror("moe train --nproc: exec");
      ::_exit(127);
    }
    pids.push_back(pid);
  }

  using clock = std::chrono::steady_clock;
  std::vector<int> status(nproc, -1);
  int running = nproc, first_failure = -1;
  clock::time_point failed_at;
  bool killed = false;
  while (running > 0) {
    if (g_forward_signal != 0) {
      for (int r = 0; r < nproc; ++r)
        if (status[r] < 0) ::kill(pids[r], g_forward_signal);
      g_forward_signal = 0;
    }
    int st = 0;
    const pid_t pid = ::waitpid(-1, &st, WNOHANG);
    if (pid > 0) {
      const auto it = std::find(pids.begin(), pids.end(), pid);
      if (it == pids.end()) continue;
      const int r = static_cast<int>(it - pids.begin());
      status[r] = exit_status(st);
      --running;
      if (status[r] != 0 && status[r] != 130 && first_failure < 0) {
        first_failure = r;
        failed_at = clock::now();
        std::fprintf(stderr, "moe train: rank %d of %d exited with status %d\n", r, nproc,
                     status[r]);
      }
      continue;
    }
    if (first_failure >= 0 && !killed &&
        std::chrono::duration<double>(clock::now() - failed_at).count() > grace_seconds) {
      for (int r = 0; r < nproc; ++r)
        if (status[r] < 0) {
          std::fprintf(stderr, "moe train: rank %d still running after rank %d failed; killed\n", r,
                       first_failure);
          ::kill(pids[r], SIGKILL);
        }
      killed = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (first_failure >= 0) return status[first_failure];
  for (const int s : status)
    if (s != 0) return s;
  return 0;
}

}  // namespace moe::train
