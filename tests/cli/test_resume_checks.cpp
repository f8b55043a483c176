// `moe train --resume` on a crafted or damaged checkpoint: every metadata value the trainer and the
// library keep is checked before anything changes, the error names the key and the value, and the
// run folder keeps every byte (docs/cli.md, checkpoints).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/cli_test_util.h"
#include "cli/run_config.h"
#include "moe/io/safetensors.h"
#include "support/test_util.h"
#include "train/run_training.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using Meta = std::map<std::string, std::string>;
using moe::cli::RunConfig;
using moe::testing::TempDir;
using moe::testing::write_corpus;

// 10 steps, checkpoints at 5 and 10, records at 5 and 10 and the final evaluation.
RunConfig config(const fs::path& corpus, const std::vector<std::string>& sets = {}) {
  auto c = RunConfig::from_string(
      "[run]\ntask = \"lm\"\nsteps = 10\nbatch_size = 4\nlog_every = 5\neval_every = 20\n"
      "eval_batches = 1\ncheckpoint_every = 5\n[data]\ndir = \"" +
      corpus.string() +
      "\"\ncontext = 16\n[model]\nd_model = 16\nlayers = 2\nheads = 2\n"
      "[moe]\nnum_experts = 4\nhidden = 16\n");
  for (const auto& s : sets) c.set(s);
  return c;
}

// Every file of a folder with its bytes.
std::map<std::string, std::string> folder_bytes(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    std::ifstream f(e.path(), std::ios::binary);
    out[e.path().filename().string()] = std::string(std::istreambuf_iterator<char>(f), {});
  }
  return out;
}

::testing::AssertionResult same_files(const std::map<std::string, std::string>& before,
                                      const std::map<std::string, std::string>& after) {
  for (const auto& [name, bytes] : before)
    if (!after.count(name) || after.at(name) != bytes)
      return ::testing::AssertionFailure() << name << " changed or went away";
  for (const auto& [name, bytes] : after)
    if (!before.count(name)) return ::testing::AssertionFailure() << name << " appeared";
  return ::testing::AssertionSuccess();
}

// The checkpoint of `run` with its metadata edited.
void edit_checkpoint(const fs::path& run, const std::function<void(Meta&)>& edit) {
  const auto path = (run / "checkpoint.safetensors").string();
  auto f = moe::io::load_safetensors(path);
  edit(f.metadata);
  moe::io::save_safetensors(path, f.tensors, f.metadata);
}

// Resuming `run` fails with a message holding every part, and changes no file of the run.
void expect_resume_fails(const fs::path& run, const std::vector<std::string>& parts) {
  const auto before = folder_bytes(run);
  const auto c = RunConfig::from_file((run / "config.toml").string());
  try {
    moe::train::run_training(c, run.string(), /*resume=*/true);
    ADD_FAILURE() << "the run resumed";
  } catch (const std::exception& e) {
    for (const auto& p : parts)
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << e.what() << "\nmissing: " << p;
  }
  EXPECT_TRUE(same_files(before, folder_bytes(run)));
}

struct Edit {
  std::function<void(Meta&)> edit;
  std::vector<std::string> expect;
};

// Each edit on a fresh copy of the finished run's checkpoint.
void expect_each_fails(const fs::path& run, const std::vector<Edit>& edits) {
  const auto checkpoint = run / "checkpoint.safetensors", saved = run.parent_path() / "saved";
  fs::copy_file(checkpoint, saved, fs::copy_options::overwrite_existing);
  for (size_t i = 0; i < edits.size(); ++i) {
    SCOPED_TRACE("edit " + std::to_string(i));
    fs::copy_file(saved, checkpoint, fs::copy_options::overwrite_existing);
    edit_checkpoint(run, edits[i].edit);
    expect_resume_fails(run, edits[i].expect);
  }
  fs::copy_file(saved, checkpoint, fs::copy_options::overwrite_existing);
}

// The crafted step of the test campaign: the program said "resuming from step -3", cut
// metrics.jsonl to two records and died with std::string's length error.
TEST(ResumeChecks, ANegativeStepIsRejectedByTheProgramAndLosesNothing) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto run = dir.path / "run";
  moe::train::run_training(config(dir.path / "corpus"), run.string(), false);
  edit_checkpoint(run, [](Meta& m) { m["step"] = "-3"; });
  const auto before = folder_bytes(run);
  const auto r = moe::testing::run_command(std::string("'") + MOE_CLI_PATH + "' train --resume " +
                                           run.string());
  EXPECT_EQ(r.status, 1) << r.output;
  for (const char* part : {"checkpoint.safetensors", "metadata step = '-3'", "expected an integer"})
    EXPECT_NE(r.output.find(part), std::string::npos) << r.output << "\nmissing: " << part;
  EXPECT_EQ(r.output.find("resuming"), std::string::npos) << r.output;
  EXPECT_TRUE(same_files(before, folder_bytes(run)));
}

TEST(ResumeChecks, EveryMetadataValueIsCheckedBeforeAnythingChanges) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto run = dir.path / "run";
  moe::train::run_training(config(dir.path / "corpus"), run.string(), false);
  auto set = [](const char* k, const char* v) { return [=](Meta& m) { m[k] = v; }; };
  expect_each_fails(run,
                    {
                        {set("step", "-3"), {"step", "'-3'", "integer >= 1"}},
                        {set("step", "abc"), {"step", "'abc'"}},
                        {set("step", "5.5"), {"step", "'5.5'"}},
                        {set("step", ""), {"step = ''"}},
                        {set("step", "99999999999999999999"), {"step", "'99999999999999999999'"}},
                        {[](Meta& m) { m.erase("step"); }, {"no metadata step"}},
                        {set("step", "11"), {"at step 11", "run.steps = 10", "--set run.steps"}},
                        {set("elapsed_s", "nan"), {"elapsed_s", "'nan'", "finite"}},
                        {set("elapsed_s", "-1"), {"elapsed_s", "'-1'", ">= 0"}},
                        {set("elapsed_s", "1e999"), {"elapsed_s", "'1e999'"}},
                        {set("elapsed_s", "12s"), {"elapsed_s", "'12s'"}},
                        {set("task", "classify"), {"task", "'classify'", "lm"}},
                        {set("moe.lr.0", "abc"), {"moe.lr.0", "'abc'"}},
                        {set("moe.lr.0", "-1e-3"), {"moe.lr.0", "'-1e-3'"}},
                        {set("moe.lr.4", "0.1"), {"moe.lr.4", "'0.1'", "parameter group"}},
                        {set("moe.optimizer", "sgd"), {"sgd", "adamw"}},
                        {set("seed", "3"), {"seed", "'3'", "not a key"}},
                        {set("top_any_records.blocks.0.ffn", "{}"),
                         {"top_any_records.blocks.0.ffn", "'{}'", "no TopAnyMoE layer"}},
                    });
  // the untouched checkpoint still resumes (the run is finished: nothing to train)
  const auto c = RunConfig::from_file((run / "config.toml").string());
  EXPECT_EQ(moe::train::run_training(c, run.string(), true).first_step, 10);
}

// The open recording windows of DynMoE layers (top_any_records.<layer>, JSON) must have the
// layer's shape: the expert count in the checkpoint and d_model.
TEST(ResumeChecks, DynMoERecordsAreCheckedBeforeAnythingChanges) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto run = dir.path / "run";
  // windows of 3 forwards every 5: the checkpoints at steps 5 and 10 fall inside one
  moe::train::run_training(
      config(dir.path / "corpus", {"moe.router=\"top_any\"", "moe.storage=\"resize\"",
                                   "moe.record=3", "moe.period=5", "moe.initial_experts=1"}),
      run.string(), false);
  const std::string key = "top_any_records.blocks.1.ffn.moe";
  const auto meta = moe::io::load_safetensors((run / "checkpoint.safetensors").string()).metadata;
  ASSERT_TRUE(meta.count(key)) << "no open window at the last checkpoint";
  const json good = json::parse(meta.at(key));
  auto with = [&](const std::function<void(json&)>& f) {
    json j = good;
    f(j);
    return [=](Meta& m) { m[key] = j.dump(); };
  };
  auto text = [&](const char* v) { return [=](Meta& m) { m[key] = v; }; };
  const std::string n = std::to_string(good.at("expert_counts").size());
  expect_each_fails(
      run,
      {
          {text("not json{"), {key, "'not json{'", "not JSON"}},
          {text("[1,2]"), {key, "'[1,2]'", "expected a JSON object with expert_counts"}},
          {with([](json& j) { j.erase("tokens"); }), {key, "expected a JSON object"}},
          {with([](json& j) { j["extra"] = 1; }), {key, "\"extra\":1", "expected a JSON object"}},
          {with([](json& j) { j["expert_counts"].push_back(0); }),
           {key, "expert_counts is [", "array of " + n + " integers"}},
          {with([](json& j) { j["expert_counts"][0] = -1; }),
           {key, "expert_counts[0] = -1", "integer >= 0"}},
          {with([](json& j) { j["expert_counts"][1] = 0.5; }), {key, "expert_counts[1] = 0.5"}},
          {with([](json& j) { j["unrouted_sum"].erase(0); }),
           {key, "unrouted_sum is [", "array of 16 finite numbers"}},
          {with([](json& j) { j["unrouted_sum"][2] = "x"; }), {key, "unrouted_sum[2] = \"x\""}},
          {with([](json& j) { j["tokens"] = -5; }), {key, "tokens = -5"}},
          {with([](json& j) { j["unrouted_tokens"] = j["tokens"].get<int64_t>() + 1; }),
           {key, "unrouted_tokens = ", "[0, tokens = "}},
          {[&](Meta& m) { m["top_any_records.blocks.7.ffn.moe"] = meta.at(key); },
           {"top_any_records.blocks.7.ffn.moe", "no TopAnyMoE layer"}},
      });
  const auto c = RunConfig::from_file((run / "config.toml").string());
  EXPECT_EQ(moe::train::run_training(c, run.string(), true).first_step, 10);
}

}  // namespace
