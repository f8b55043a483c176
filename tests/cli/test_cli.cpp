// The `moe` command (tools/cli/moe.cpp): parsing, errors and `moe data`, run as a real process.
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <string>

#include "moe/io/safetensors.h"
#include "support/test_util.h"

namespace {

namespace fs = std::filesystem;

using moe::testing::TempDir;

moe::testing::CommandResult moe(const std::string& args) {
  return moe::testing::run_command(std::string("'") + MOE_CLI_PATH + "' " + args);
}

TEST(Cli, HelpListsTheSubcommands) {
  const auto r = moe("--help");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("data"), std::string::npos) << r.output;
  const auto d = moe("data --help");
  EXPECT_EQ(d.status, 0);
  for (const char* s : {"kjv", "fashion-mnist", "synthetic"})
    EXPECT_NE(d.output.find(s), std::string::npos) << s << "\n" << d.output;
}

TEST(Cli, BadArgumentsFailWithAMessage) {
  auto r = moe("");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("subcommand is required"), std::string::npos) << r.output;
  r = moe("train-everything");
  EXPECT_NE(r.status, 0);
  r = moe("data synthetic --out x.safetensors --correlation 1.5");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--correlation"), std::string::npos) << r.output;
  r = moe("data synthetic --correlation 0.5");
  EXPECT_NE(r.status, 0);
  EXPECT_NE(r.output.find("--out"), std::string::npos) << r.output;
  r = moe("--threads -2 data fashion-mnist");
  EXPECT_NE(r.status, 0);
}

TEST(Cli, DataSyntheticWritesAValidFile) {
  TempDir dir;
  const auto out = (dir.path / "syn.safetensors").string();
  const auto r =
      moe("data synthetic --out " + out + " --correlation -0.25 --samples 64 --dim 8 --seed 3");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("-0.2500"), std::string::npos) << r.output;
  const auto f = moe::io::load_safetensors(out);
  EXPECT_EQ(f.find("x").sizes(), (std::vector<int64_t>{64, 8}));
  EXPECT_EQ(f.find("y").sizes(), (std::vector<int64_t>{64, 2}));
  EXPECT_EQ(f.metadata.at("seed"), "3");
}

TEST(Cli, DataKjvReportsAMissingProgramAndExportsTheText) {
  TempDir dir;
  auto r = moe("data kjv --out " + (dir.path / "a").string() + " --bible /nonexistent/bible");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("bible-kjv"), std::string::npos) << r.output;
  if (::access("/usr/bin/bible", X_OK) != 0) GTEST_SKIP() << "bible-kjv is not installed";
  r = moe("data kjv --out " + (dir.path / "kjv").string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("31102 verses"), std::string::npos) << r.output;
  EXPECT_TRUE(fs::exists(dir.path / "kjv" / "valid.txt"));
}

TEST(Cli, DataFashionMnistChecksTheFiles) {
  TempDir dir;
  const auto r = moe("data fashion-mnist --dir " + dir.path.string());
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("dataset-fashion-mnist"), std::string::npos) << r.output;
}

TEST(Cli, BenchRunsTheHarness) {
  auto r = moe("bench --help");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("--shapes"), std::string::npos) << r.output;
  r = moe("bench --shapes C9");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("C9"), std::string::npos) << r.output;
}

}  // namespace
