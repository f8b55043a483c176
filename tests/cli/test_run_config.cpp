// Run configuration (tools/cli/run_config.h): TOML parsing errors, --set overrides, typed reads,
// the effective configuration written and read back.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <stdexcept>

#include "cli/run_config.h"

namespace {

using moe::cli::RunConfig;

// Expects std::invalid_argument whose message contains every part.
void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const std::invalid_argument& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << " lacks " << p;
  }
}

const char* kRun = R"(
[model]
kind = "moe_lm"
num_experts = 8
router = "noisy_topk"
hidden = [64, 32]

[train]
lr = 3e-4
steps = 1000
)";

TEST(RunConfig, ReadsTypedValuesWithDefaults) {
  const auto c = RunConfig::from_string(kRun, "run.toml");
  EXPECT_EQ(c.get_int("model.num_experts", 0), 8);
  EXPECT_EQ(c.get_string("model.router", ""), "noisy_topk");
  EXPECT_EQ(c.get_int_list("model.hidden", {}), (std::vector<int64_t>{64, 32}));
  EXPECT_DOUBLE_EQ(c.get_double("train.lr", 0), 3e-4);
  EXPECT_DOUBLE_EQ(c.get_double("train.steps", 0), 1000.0);  // an integer where a float is asked
  EXPECT_EQ(c.get_int("train.batch", 64), 64);               // absent: the default
  EXPECT_FALSE(c.has("train.batch"));
  expect_error([&] { c.get_int("model.router", 0); },
               {"model.router", "an integer", "string 'noisy_topk'"});
  expect_error([&] { c.get_bool("train.lr", false); }, {"train.lr", "true or false", "float"});
}

TEST(RunConfig, SyntaxErrorsNameTheFileLineAndColumn) {
  expect_error([] { RunConfig::from_string("[model]\nnum_experts = = 3\n", "bad.toml"); },
               {"bad.toml:2:"});
  expect_error([] { RunConfig::from_file("/nonexistent/run.toml"); },
               {"cannot read", "/nonexistent/run.toml"});
}

TEST(RunConfig, OverridesAreTypedAndCreateTables) {
  auto c = RunConfig::from_string(kRun);
  c.set("model.num_experts=16");
  c.set("train.lr=0.001");
  c.set("train.resume=true");
  c.set("data.dir=/tmp/kjv data");  // not TOML: a plain string
  c.set("model.hidden=[128]");
  EXPECT_EQ(c.get_int("model.num_experts", 0), 16);
  EXPECT_DOUBLE_EQ(c.get_double("train.lr", 0), 1e-3);
  EXPECT_TRUE(c.get_bool("train.resume", false));
  EXPECT_EQ(c.get_string("data.dir", ""), "/tmp/kjv data");
  EXPECT_EQ(c.get_int_list("model.hidden", {}), (std::vector<int64_t>{128}));
  c.set("model.num_experts=1O");  // a typo becomes a string, caught when read
  expect_error([&] { c.get_int("model.num_experts", 0); }, {"model.num_experts", "string '1O'"});
  expect_error([&] { c.set("model.num_experts"); }, {"key=value"});
  expect_error([&] { c.set("=3"); }, {"key=value"});
  expect_error([&] { c.set("model..kind=x"); }, {"empty part"});
  expect_error([&] { c.set("model.router.name=x"); },
               {"model.router.name", "router", "not a table"});
}

TEST(RunConfig, TheEffectiveConfigIsWrittenAndReadBack) {
  auto c = RunConfig::from_string(kRun);
  c.set("model.num_experts=4");
  const auto path =
      (std::filesystem::temp_directory_path() / ("moe_cfg_" + std::to_string(::getpid()) + ".toml"))
          .string();
  c.write(path);
  const auto back = RunConfig::from_file(path);
  EXPECT_EQ(back.get_int("model.num_experts", 0), 4);
  EXPECT_EQ(back.get_int_list("model.hidden", {}), (std::vector<int64_t>{64, 32}));
  EXPECT_EQ(back.to_toml(), c.to_toml());
  std::filesystem::remove(path);
}

}  // namespace
