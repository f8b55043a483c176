// `moe train`'s configuration (tools/train/train_config.h): defaults and typed values, errors that
// name the key and the value, keys of other routers and tasks, and the warnings of valid settings
// that will not do what they are for.
#include <gtest/gtest.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "cli/run_config.h"
#include "train/train_config.h"

namespace {

using moe::cli::RunConfig;

// Throws std::invalid_argument whose message contains every part.
void expect_config_error(const std::string& toml, const std::vector<std::string>& parts) {
  try {
    moe::train::parse_train_config(RunConfig::from_string(toml));
    ADD_FAILURE() << "no error for\n" << toml;
  } catch (const std::invalid_argument& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nmissing: " << p;
  }
}

// ---- parsing and checking ----------------------------------------------------------------------

TEST(TrainConfig, DefaultsAndTypedValues) {
  const auto c = moe::train::parse_train_config(RunConfig::from_string(
      "[run]\ntask = \"lm\"\n[moe]\nrouter = \"switch\"\nhidden = 64\n[model]\nmoe_every = 2\n"));
  EXPECT_EQ(c.run.task, moe::train::Task::kLanguageModel);
  EXPECT_EQ(c.moe.top_k, 1);            // switch routes to one expert
  EXPECT_EQ(c.model.dense_hidden, 64);  // equal active compute: top_k · hidden
  EXPECT_EQ(c.model.moe_every, 2);
  const auto h = moe::train::parse_train_config(RunConfig::from_string(
      "[run]\ntask = \"lm\"\n[moe]\nrouter = \"hierarchical\"\nnum_experts = 12\n"));
  EXPECT_EQ(h.moe.groups, 3);  // the divisor of 12 closest to sqrt(12) from below
  EXPECT_TRUE(h.moe.noisy_gating);
  const auto quiet = moe::train::parse_train_config(RunConfig::from_string(
      "[run]\ntask = \"lm\"\n[moe]\nrouter = \"noisy_topk\"\nnoisy_gating = false\n"));
  EXPECT_FALSE(quiet.moe.noisy_gating);
}

TEST(TrainConfig, BadValuesNameTheKeyAndTheValue) {
  expect_config_error("[model]\nd_model = 8\n", {"run.task is missing", "lm", "classify"});
  expect_config_error("[run]\ntask = \"speech\"\n",
                      {"run.task", "'speech'", "lm, classify, multitask"});
  expect_config_error("[run]\ntask = \"lm\"\n[moe]\nnum_experts = 4\ntop_k = 5\n",
                      {"moe.top_k = 5", "at most moe.num_experts = 4"});
  expect_config_error("[run]\ntask = \"lm\"\n[model]\nd_model = 30\nheads = 4\n",
                      {"model.heads = 4", "divisor of model.d_model = 30"});
  expect_config_error("[run]\ntask = \"lm\"\nsteps = 0\n", {"run.steps = 0", ">= 1"});
  expect_config_error("[run]\ntask = \"lm\"\nlr = \"fast\"\n", {"run.lr", "a number", "'fast'"});
  expect_config_error(
      "[run]\ntask = \"lm\"\n[moe]\nrouter = \"top_any\"\nschedule = \"window\"\nrecord = 9\n"
      "period = 9\n",
      {"moe.record = 9", "less than moe.period = 9"});
  expect_config_error(
      "[run]\ntask = \"lm\"\n[moe]\nrouter = \"top_any\"\nnum_experts = 4\n"
      "initial_experts = 6\n",
      {"moe.initial_experts = 6", "at most moe.num_experts = 4"});
  expect_config_error(
      "[run]\ntask = \"lm\"\n[moe]\nrouter = \"hierarchical\"\nnum_experts = 12\n"
      "groups = 5\n",
      {"moe.groups = 5", "divisor of moe.num_experts = 12"});
  expect_config_error(
      "[run]\ntask = \"lm\"\n[moe]\nrouter = \"expert_choice\"\ncapacity_factor = 0\n",
      {"moe.capacity_factor", "> 0 for expert_choice"});
}

TEST(TrainConfig, UnknownKeysAreErrorsKeysOfOtherRoutersAreIgnored) {
  // typos
  expect_config_error("[run]\ntask = \"lm\"\n[moe]\nnum_expert = 4\n",
                      {"unknown key", "moe.num_expert"});
  expect_config_error("[run]\ntask = \"lm\"\nstep = 4\n", {"unknown key", "run.step"});
  // keys of another router or task: ignored and listed (the trainer warns), so that switching the
  // router of a configuration file with --set works
  auto c = RunConfig::from_string(
      "[run]\ntask = \"lm\"\n[moe]\nrouter = \"top_any\"\ntop_k = 2\ncapacity_factor = 1.0\n");
  auto t = moe::train::parse_train_config(c);
  EXPECT_EQ(t.ignored_keys, (std::vector<std::string>{"moe.capacity_factor", "moe.top_k"}));
  t = moe::train::parse_train_config(
      RunConfig::from_string("[run]\ntask = \"classify\"\n[model]\nheads = 4\n"));
  EXPECT_EQ(t.ignored_keys, (std::vector<std::string>{"model.heads"}));
  t = moe::train::parse_train_config(
      RunConfig::from_string("[run]\ntask = \"multitask\"\n[moe]\nrouter = \"switch\"\n"));
  EXPECT_EQ(t.ignored_keys, (std::vector<std::string>{"moe.router"}));
}

TEST(TrainConfig, ADynMoEScheduleThatCannotFireWithinTheRunIsAWarning) {
  const auto warnings = [](const std::string& run, const std::string& moe) {
    return moe::train::parse_train_config(
               RunConfig::from_string("[run]\ntask = \"lm\"\nsteps = 600\n" + run +
                                      "[moe]\nrouter = \"top_any\"\n" + moe))
        .warnings;
  };
  // The defaults, window(300, 900): the first update after step 600, the run's last.
  const auto w = warnings("", "");
  ASSERT_EQ(w.size(), 1u);
  EXPECT_NE(w[0].find("first expert update comes after step 600 but run.steps = 600"),
            std::string::npos)
      << w[0];
  EXPECT_NE(w[0].find("--set moe.record=60 --set moe.period=180"), std::string::npos) << w[0];
  EXPECT_TRUE(warnings("", "record = 100\nperiod = 300\n").empty());
  EXPECT_TRUE(warnings("", "schedule = \"every_step\"\n").empty());
  EXPECT_TRUE(warnings("[model]\nmoe_every = 0\n", "").empty());  // a dense model
  EXPECT_TRUE(
      moe::train::parse_train_config(RunConfig::from_string("[run]\ntask = \"lm\"\nsteps = 10\n"))
          .warnings.empty());  // another router
}

}  // namespace
