// `moe train` on several real processes (docs/distributed.md): the losses of every step equal the
// one-process run's, checkpoints load at any world size, and the failure cases (a rank killed, a
// stop signal on one rank, ranks given different runs, a rank that never comes) end every rank
// with a clear error or a checkpoint, never a hang.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cli/cli_test_util.h"
#include "cli/train_test_util.h"
#include "moe/distributed.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using moe::testing::lm_config;
using moe::testing::moe_cli;
using moe::testing::read_metrics;
using moe::testing::read_metrics_safely;
using moe::testing::records;
using moe::testing::TempDir;

// Every step logged; noise, dropout and evaluations in play.
const std::string kSets =
    " --set run.steps=16 --set run.log_every=1 --set run.eval_every=8 --set run.checkpoint_every=8"
    " --set model.dropout=0.1";

std::map<int64_t, double> task_losses(const fs::path& run) {
  std::map<int64_t, double> out;
  for (const auto& t : records(read_metrics(run), "train"))
    out[t.at("step").get<int64_t>()] = t.at("task_loss").get<double>();
  return out;
}

// The largest difference of the per-step losses; both runs must have logged the same steps.
double max_loss_difference(const fs::path& a, const fs::path& b) {
  const auto la = task_losses(a), lb = task_losses(b);
  EXPECT_EQ(la.size(), lb.size());
  double worst = 0;
  for (const auto& [step, loss] : la) {
    EXPECT_TRUE(lb.count(step)) << "step " << step << " missing in " << b;
    if (lb.count(step)) worst = std::max(worst, std::abs(loss - lb.at(step)));
  }
  return worst;
}

double final_bpc(const fs::path& run) {
  return records(read_metrics(run), "eval").back().at("bpc").get<double>();
}

struct Corpus {
  TempDir dir;
  std::string config;
  Corpus() {
    moe::testing::write_corpus(dir.path / "corpus");
    config = (dir.path / "lm.toml").string();
    std::ofstream(config) << lm_config(dir.path / "corpus");
  }
  fs::path run(const std::string& name) const { return dir.path / name; }
};

// The pids of the ranks a `moe train --nproc` launcher started.
std::vector<pid_t> ranks_of(pid_t launcher) {
  std::vector<pid_t> out;
  for (int i = 0; i < 200 && out.size() < 2; ++i) {
    out.clear();
    std::ifstream f("/proc/" + std::to_string(launcher) + "/task/" + std::to_string(launcher) +
                    "/children");
    for (pid_t p; f >> p;) out.push_back(p);
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return out;
}

// Waits for `pid` at most `seconds`; returns its wait status, or -1 (then it is killed).
int wait_for(pid_t pid, double seconds) {
  const auto t0 = std::chrono::steady_clock::now();
  int status = 0;
  while (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() < seconds) {
    if (::waitpid(pid, &status, WNOHANG) == pid) return status;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ::kill(pid, SIGKILL);
  ::waitpid(pid, &status, 0);
  return -1;
}

// Waits until the run folder has logged step `step` (at most 60 s).
bool reached(const fs::path& run, int step) {
  for (int i = 0; i < 3000; ++i) {
    for (const auto& j : read_metrics_safely(run))
      if (j.at("event") == "train" && j.at("step").get<int>() >= step) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return false;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

bool gloo() { return moe::dist::available(); }

TEST(TrainDistributed, RanksTrainAsOneProcessAndCheckpointsLoadAtAnyWorldSize) {
  if (!gloo()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  Corpus c;
  const auto one = c.run("one");
  auto r = moe_cli("--threads 1 train " + c.config + " --out " + one.string() + kSets);
  ASSERT_EQ(r.status, 0) << r.output;
  for (const int W : {2, 4}) {
    SCOPED_TRACE("--nproc " + std::to_string(W));
    const auto run = c.run("w" + std::to_string(W));
    r = moe_cli("train " + c.config + " --out " + run.string() + kSets + " --nproc " +
                std::to_string(W));
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_LT(max_loss_difference(one, run), 1e-5);
    EXPECT_NEAR(final_bpc(run), final_bpc(one), 1e-5);
    // Rank 0 alone wrote the folder.
    EXPECT_EQ(records(read_metrics(run), "start").size(), 1u);
    EXPECT_EQ(records(read_metrics(run), "end").size(), 1u);
    int event_files = 0;
    for (const auto& f : fs::directory_iterator(run))
      event_files += f.path().filename().string().rfind("events.out.tfevents.", 0) == 0;
    EXPECT_EQ(event_files, 1);
    EXPECT_EQ(r.output.find("rank 1"), std::string::npos) << r.output;
  }

  // The checkpoint of 2 processes holds every expert under its global name: one process
  // evaluates it.
  r = moe_cli("--threads 1 eval " + c.run("w2").string() + " --split valid");
  ASSERT_EQ(r.status, 0) << r.output;
  char expected[64];
  std::snprintf(expected, sizeof expected, "bpc %.4f", final_bpc(c.run("w2")));
  EXPECT_NE(r.output.find(expected), std::string::npos) << r.output << "\nexpected " << expected;

  // A run stopped on 2 processes continues on 1 and on 4, one stopped on 1 continues on 2.
  const std::vector<std::pair<std::string, std::string>> legs = {
      {" --nproc 2", " --threads 1"}, {" --nproc 2", " --nproc 4"}, {" --threads 1", " --nproc 2"}};
  int i = 0;
  for (const auto& [first, second] : legs) {
    const auto run = c.run("leg" + std::to_string(i++));
    SCOPED_TRACE(run.string() + ":" + first + " then" + second);
    const std::string threads_first = first == " --threads 1" ? "--threads 1 " : "";
    r = moe_cli(threads_first + "train " + c.config + " --out " + run.string() + kSets +
                " --stop-at 8" + (threads_first.empty() ? first : ""));
    ASSERT_EQ(r.status, 0) << r.output;
    const std::string threads_second = second == " --threads 1" ? "--threads 1 " : "";
    r = moe_cli(threads_second + "train --resume " + run.string() +
                (threads_second.empty() ? second : ""));
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_LT(max_loss_difference(one, run), 1e-5);
    EXPECT_NEAR(final_bpc(run), final_bpc(one), 1e-5);
  }
}

TEST(TrainDistributed, EveryRouterKindTrainsAsOneProcess) {
  if (!gloo()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  Corpus c;
  const std::string sets = " --set run.steps=6 --set run.log_every=1 --set run.eval_every=6";
  for (const std::string router :
       {"switch", "expert_choice", "top_any", "hyper", "smoe_dropout", "hierarchical"}) {
    SCOPED_TRACE(router);
    std::string more = " --set moe.router=\\\"" + router + "\\\"";
    if (router == "switch") more += " --set moe.capacity_factor=1.0";
    if (router == "hierarchical") more += " --set moe.groups=2";
    const auto one = c.run(router + "1"), two = c.run(router + "2");
    auto r = moe_cli("--threads 1 train " + c.config + " --out " + one.string() + sets + more);
    ASSERT_EQ(r.status, 0) << r.output;
    r = moe_cli("train " + c.config + " --out " + two.string() + sets + more + " --nproc 2");
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_LT(max_loss_difference(one, two), 1e-5);
  }
}

TEST(TrainDistributed, AKilledRankEndsTheOthersAndTheRunResumesExactly) {
  if (!gloo()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  Corpus c;
  const std::string sets =
      " --set run.steps=40 --set run.log_every=1 --set run.checkpoint_every=10"
      " --set run.eval_every=20";
  const auto whole = c.run("whole"), killed = c.run("killed");
  auto r = moe_cli("train " + c.config + " --out " + whole.string() + sets + " --nproc 2");
  ASSERT_EQ(r.status, 0) << r.output;

  const auto log = c.run("killed.log").string();
  std::vector<std::string> args = {"train", c.config, "--out", killed.string(), "--nproc", "2"};
  std::istringstream words(sets);
  for (std::string w; words >> w;) args.push_back(w);
  const pid_t launcher = moe::testing::spawn_moe(args, log);
  ASSERT_GT(launcher, 0);
  const auto ranks = ranks_of(launcher);
  ASSERT_EQ(ranks.size(), 2u);
  ASSERT_TRUE(reached(killed, 15));
  ::kill(ranks[1], SIGKILL);
  const auto t0 = std::chrono::steady_clock::now();
  const int status = wait_for(launcher, 60);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_NE(status, -1) << "the launcher hung after a rank was killed";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  EXPECT_LT(took, 30);  // the survivor fails when its next collective finds the rank gone
  const auto out = read_file(log);
  EXPECT_NE(out.find("rank 1 of 2 exited with status 137"), std::string::npos) << out;
  EXPECT_NE(out.find("rank 0 of 2 stopped after step"), std::string::npos) << out;
  EXPECT_NE(out.find("--resume"), std::string::npos) << out;

  r = moe_cli("train --resume " + killed.string() + " --nproc 2");
  ASSERT_EQ(r.status, 0) << r.output;
  // Same world size: bit for bit.
  const auto a = task_losses(whole), b = task_losses(killed);
  ASSERT_EQ(a.size(), 40u);
  EXPECT_EQ(a, b);
  EXPECT_EQ(final_bpc(whole), final_bpc(killed));
}

TEST(TrainDistributed, SigintOnOneRankStopsAllWithACheckpoint) {
  if (!gloo()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  Corpus c;
  const std::string sets =
      " --set run.steps=300 --set run.log_every=1 --set run.eval_every=300"
      " --set run.checkpoint_every=1000";
  const auto run = c.run("run");
  std::vector<std::string> args = {"train", c.config, "--out", run.string(), "--nproc", "2"};
  std::istringstream words(sets);
  for (std::string w; words >> w;) args.push_back(w);
  const pid_t launcher = moe::testing::spawn_moe(args, c.run("run.log").string());
  const auto ranks = ranks_of(launcher);
  ASSERT_EQ(ranks.size(), 2u);
  ASSERT_TRUE(reached(run, 5));
  ::kill(ranks[1], SIGINT);
  const int status = wait_for(launcher, 60);
  ASSERT_NE(status, -1) << "the ranks did not stop after SIGINT on rank 1";
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 130) << read_file(c.run("run.log"));
  // Both stopped after the same step, with a checkpoint of that step.
  const auto train = records(read_metrics(run), "train");
  ASSERT_FALSE(train.empty());
  const int64_t last = train.back().at("step").get<int64_t>();
  EXPECT_LT(last, 300);
  ASSERT_TRUE(fs::exists(run / "checkpoint.safetensors"));
  auto r = moe_cli("train --resume " + run.string() +
                   " --nproc 2 --set run.steps=" + std::to_string(last + 2));
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("steps " + std::to_string(last) + ".." + std::to_string(last + 2)),
            std::string::npos)
      << r.output;
}

// Starts `moe ARGS` as rank `rank` of `world` with the launcher environment.
pid_t start_rank(int rank, int world, int port, std::vector<std::string> args,
                 const std::string& log) {
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("RANK", std::to_string(rank).c_str(), 1);
    ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
    ::setenv("MASTER_ADDR", "127.0.0.1", 1);
    ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
    ::setenv("MOE_NUM_THREADS", "1", 1);
    args.insert(args.begin(), MOE_CLI_PATH);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    std::freopen(log.c_str(), "w", stdout);
    std::freopen(log.c_str(), "a", stderr);
    ::execv(MOE_CLI_PATH, argv.data());
    std::_Exit(127);
  }
  return pid;
}

TEST(TrainDistributed, RanksGivenDifferentRunsFailNamingTheDifference) {
  if (!gloo()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  Corpus c;
  const int port = moe::dist::free_loopback_port();
  const auto run = c.run("run");
  std::vector<pid_t> pids;
  for (int rank = 0; rank < 2; ++rank)
    pids.push_back(
        start_rank(rank, 2, port,
                   {"train", c.config, "--out", run.string(), "--set",
                    "moe.num_experts=" + std::to_string(rank == 0 ? 4 : 8), "--dist-timeout", "20"},
                   c.run("rank" + std::to_string(rank) + ".log").string()));
  for (int rank = 0; rank < 2; ++rank) {
    const int status = wait_for(pids[rank], 60);
    ASSERT_NE(status, -1) << "rank " << rank << " hung";
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 2);
    const auto out = read_file(c.run("rank" + std::to_string(rank) + ".log"));
    EXPECT_NE(out.find("rank 0 has `num_experts = 4` where rank 1 has `num_experts = 8`"),
              std::string::npos)
        << out;
  }
  // Nothing was written.
  EXPECT_FALSE(fs::exists(run / "metrics.jsonl"));
}

TEST(TrainDistributed, ARankThatNeverComesFailsWithinTheTimeout) {
  if (!gloo()) GTEST_SKIP() << "built without Gloo (Debian: libgloo-dev)";
  Corpus c;
  const auto log = c.run("rank0.log").string();
  const auto t0 = std::chrono::steady_clock::now();
  const pid_t pid =
      start_rank(0, 2, moe::dist::free_loopback_port(),
                 {"train", c.config, "--out", c.run("run").string(), "--dist-timeout", "2"}, log);
  const int status = wait_for(pid, 60);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_NE(status, -1) << "rank 0 hung waiting for rank 1";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  EXPECT_LT(took, 30);
  const auto out = read_file(log);
  EXPECT_NE(out.find("rank 0 of 2 could not meet the other ranks"), std::string::npos) << out;

  // Usage errors, before any process starts.
  auto r = moe_cli("train " + c.config + " --out " + c.run("odd").string() +
                   " --set moe.num_experts=3 --nproc 2");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("has 3 experts, which 2 processes cannot share"), std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(c.run("odd") / "metrics.jsonl"));
  r = moe::testing::run_command("WORLD_SIZE=2 '" + std::string(MOE_CLI_PATH) + "' train " +
                                c.config + " --out " + c.run("x").string() + " --nproc 2");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("leave it out"), std::string::npos) << r.output;
}

}  // namespace
