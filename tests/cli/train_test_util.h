// Helpers of the tests that run the `moe` program on training runs (tests/cli/test_train*.cpp).
// MOE_CLI_PATH is the program, defined by the test target.
#pragma once

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/test_util.h"

namespace moe::testing {

namespace fs = std::filesystem;
using json = nlohmann::json;

// A small character LM (two MoE blocks of 4 noisy top-k experts) on the corpus of write_corpus.
inline std::string lm_config(const fs::path& corpus) {
  return "[run]\ntask = \"lm\"\nsteps = 40\nbatch_size = 8\nlr = 3e-3\nwarmup_steps = 5\n"
         "log_every = 5\neval_every = 20\neval_batches = 2\ncheckpoint_every = 10\n"
         "[data]\ndir = \"" +
         corpus.string() +
         "\"\ncontext = 32\n"
         "[model]\nd_model = 32\nlayers = 2\nheads = 2\nmoe_every = 1\n"
         "[moe]\nrouter = \"noisy_topk\"\nnum_experts = 4\nhidden = 32\n";
}

// The same while a process may be writing the file: a line cut short is skipped.
inline std::vector<json> read_metrics_safely(const fs::path& run) {
  std::vector<json> out;
  std::ifstream in(run / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!j.is_discarded()) out.push_back(j);
  }
  return out;
}

// The records of one event ("train", "eval", ...).
inline std::vector<json> records(const std::vector<json>& all, const std::string& event) {
  std::vector<json> out;
  for (const auto& j : all)
    if (j.at("event") == event) out.push_back(j);
  return out;
}

// Runs `moe ARGS` and returns its status and output.
inline CommandResult moe_cli(const std::string& args) {
  return run_command(std::string("'") + MOE_CLI_PATH + "' " + args);
}

// Starts `moe ARGS...` as a child process (output to `log`) and returns its pid.
inline pid_t spawn_moe(std::vector<std::string> args, const std::string& log) {
  args.insert(args.begin(), MOE_CLI_PATH);
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    ::execv(MOE_CLI_PATH, argv.data());
    std::_Exit(127);
  }
  return pid;
}

// Sends `sig` to the training process `pid` once its run folder has logged step `step` (or gives up
// after 30 s); waits for it to end. Returns whether the signal was sent, and its wait status.
inline bool signal_at_step(pid_t pid, const fs::path& run, int step, int sig, int* status) {
  bool sent = false;
  for (int i = 0; i < 6000 && !sent; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    for (const auto& j : read_metrics_safely(run))
      if (!sent && j.at("event") == "train" && j.at("step").get<int>() >= step)
        sent = ::kill(pid, sig) == 0;
  }
  if (!sent) ::kill(pid, SIGKILL);
  ::waitpid(pid, status, 0);
  return sent;
}

}  // namespace moe::testing
