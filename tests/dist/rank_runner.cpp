// The rank runner of the multi-process tests (rank_runner.h).
#include "dist/rank_runner.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <thread>

namespace moe::testing::dist {
namespace {

namespace fs = std::filesystem;
constexpr const char* kRankEnv = "MOE_TEST_DIST_RANK";
constexpr const char* kSizeEnv = "MOE_TEST_DIST_SIZE";
constexpr const char* kStoreEnv = "MOE_TEST_DIST_STORE";

}  // namespace

std::vector<int> run_ranks(int size, const std::string& child, std::chrono::seconds timeout) {
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  const std::string store =
      (fs::temp_directory_path() / ("moe_dist_" + std::to_string(::getpid()) + "_" + child))
          .string();
  fs::remove(store);
  std::vector<pid_t> pids;
  for (int r = 0; r < size; ++r) {
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::setenv(kRankEnv, std::to_string(r).c_str(), 1);
      ::setenv(kSizeEnv, std::to_string(size).c_str(), 1);
      ::setenv(kStoreEnv, store.c_str(), 1);
      const std::string filter = "--gtest_filter=" + child;
      ::execl(self.c_str(), self.c_str(), filter.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  std::vector<int> status(size, -1);
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  int left = size;
  while (left > 0 && std::chrono::steady_clock::now() < deadline) {
    for (int r = 0; r < size; ++r) {
      int st = 0;
      if (pids[r] > 0 && ::waitpid(pids[r], &st, WNOHANG) == pids[r]) {
        status[r] = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
        pids[r] = 0;
        --left;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int r = 0; r < size; ++r) {
    if (pids[r] > 0) {
      ::kill(pids[r], SIGKILL);
      ::waitpid(pids[r], nullptr, 0);
    }
  }
  fs::remove(store);
  return status;
}

::testing::AssertionResult ranks_pass(int size, const std::string& child) {
  const auto status = run_ranks(size, child, std::chrono::seconds(120));
  auto result = ::testing::AssertionSuccess();
  bool ok = true;
  std::string failed;
  for (int r = 0; r < size; ++r) {
    if (status[r] == 0) continue;
    ok = false;
    failed += " rank " + std::to_string(r) + " (status " + std::to_string(status[r]) + ")";
  }
  if (ok) return result;
  return ::testing::AssertionFailure() << child << " with " << size << " ranks failed on" << failed;
}

int my_rank() {
  const char* r = std::getenv(kRankEnv);
  return r ? std::atoi(r) : -1;
}

std::shared_ptr<moe::dist::ProcessGroup> join() {
  return moe::dist::ProcessGroup::gloo_file(std::getenv(kStoreEnv), my_rank(),
                                            std::atoi(std::getenv(kSizeEnv)),
                                            std::chrono::seconds(30));
}

}  // namespace moe::testing::dist
