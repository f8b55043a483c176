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

// --set takes exactly one TOML value: a newline brought extra keys and tables that were dropped
// silently, and a comment or a second word after the value was ignored.
TEST(RunConfig, SetTakesExactlyOneValue) {
  auto c = RunConfig::from_string(kRun);
  expect_error([&] { c.set("train.steps=2\n[evil]\nx=1"); },
               {"--set train.steps=2\\n[evil]\\nx=1", "one TOML value on one line"});
  expect_error([&] { c.set("train.steps=2\r"); }, {"--set train.steps=2\\r"});
  expect_error([&] { c.set("train.steps=2 # two"); }, {"--set train.steps=2 # two", "# two"});
  EXPECT_FALSE(c.has("evil.x"));
  EXPECT_EQ(c.get_int("train.steps", 0), 1000);  // unchanged by the rejected values
  c.set("train.steps=2 \t");                     // trailing blanks are fine
  EXPECT_EQ(c.get_int("train.steps", 0), 2);
  c.set("model.router=\"top_any\"  ");
  EXPECT_EQ(c.get_string("model.router", ""), "top_any");
  c.set("model.name=\"é # not a comment\"");
  EXPECT_EQ(c.get_string("model.name", ""), "é # not a comment");
  c.set("model.opts={a = 1, b = \"x\"}");
  EXPECT_TRUE(c.has("model.opts.b"));
  c.set("data.dir=runs/a b # c");  // not TOML at all: a plain string, as before
  EXPECT_EQ(c.get_string("data.dir", ""), "runs/a b # c");
}

// A rejected --set leaves the configuration as it was: it created the missing tables of its key
// (`--set new.table.x=1 # one` left an empty [new.table] behind) before the value was rejected.
TEST(RunConfig, ARejectedSetChangesNothing) {
  auto c = RunConfig::from_string(kRun);
  const std::string before = c.to_toml();
  const auto keys = c.leaves();
  expect_error([&] { c.set("new.table.x=1 # one"); }, {"' # one' follows the value 1"});
  expect_error([&] { c.set("new.table.x=1\n[evil]"); }, {"one TOML value on one line"});
  expect_error([&] { c.set("train.deep.x=[1]  # c"); }, {"'  # c' follows the value [1]"});
  expect_error([&] { c.set("model.router.name.x=1"); }, {"model.router.name.x", "not a table"});
  EXPECT_EQ(c.to_toml(), before);
  EXPECT_EQ(c.leaves(), keys);
  EXPECT_FALSE(c.has("new"));
  EXPECT_FALSE(c.has("train.deep"));
  c.set("new.table.x=1");  // accepted: the tables are created
  EXPECT_EQ(c.get_int("new.table.x", 0), 1);
}

// A key read through a value that is not a table (`--set run=5`, then run.task) was "absent": the
// error said run.task is missing.
TEST(RunConfig, AKeyThroughAValueThatIsNoTableIsNamed) {
  auto c = RunConfig::from_string("[run]\ntask = \"lm\"\n");
  c.set("run=5");
  expect_error([&] { c.has("run.task"); }, {"run is integer 5, expected a table", "run.task"});
  expect_error([&] { c.get_int("run.steps", 1); }, {"run is integer 5", "run.steps"});
  EXPECT_EQ(c.get_int("run", 0), 5);
  EXPECT_FALSE(c.has("model.layers"));  // a missing table is still just absent
}

TEST(RunConfig, AConfigPathThatIsAFolderIsNamed) {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("moe_cfg_dir_" + std::to_string(::getpid()) + ".toml");
  std::filesystem::create_directories(dir);
  expect_error([&] { RunConfig::from_file(dir.string()); },
               {dir.string() + " is a folder, expected a TOML file"});
  std::filesystem::remove(dir);
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
