// What `moe train` and `moe eval` report of routing beyond the loss (docs/cli.md): per MoE layer
// the experts per evaluated token and the tokens top-any leaves without an expert, the CV of the
// importance in train records, `moe eval --top-k` (HyperRouter's evaluation at any k) and
// `moe eval --set`.
#include <gtest/gtest.h>

#include <cmath>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/cli_test_util.h"
#include "cli/run_config.h"
#include "cli/train_test_util.h"
#include "support/test_util.h"
#include "train/run_training.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using moe::cli::RunConfig;
using moe::testing::lm_config;
using moe::testing::moe_cli;
using moe::testing::read_metrics;
using moe::testing::records;
using moe::testing::TempDir;
using moe::testing::write_corpus;

const char* kLayers[] = {"blocks.0.ffn", "blocks.1.ffn"};

fs::path train(const TempDir& dir, const std::string& name, const std::vector<std::string>& sets) {
  auto config = RunConfig::from_string(lm_config(dir.path / "corpus"));
  config.set("run.steps=20");
  for (const auto& s : sets) config.set(s);
  const auto run = dir.path / name;
  moe::train::run_training(config, run.string(), false);
  return run;
}

double at(const moe::train::Metrics& m, const std::string& key) {
  const auto it = m.find(key);
  EXPECT_NE(it, m.end()) << key;
  return it == m.end() ? NAN : it->second;
}

// Noisy top-2 without capacity limit: every token uses exactly 2 experts at evaluation, and no
// token is unrouted (the key is absent: the router always routes). Train records carry the CV of
// the importance next to the CV of the load.
TEST(EvalRouting, TopKLayersUseKExpertsPerTokenAtEvaluation) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto run = train(dir, "topk", {});
  const auto evals = records(read_metrics(run), "eval");
  ASSERT_FALSE(evals.empty());
  const auto& last = evals.back();
  ASSERT_TRUE(last.value("full_split", false));
  for (const char* layer : kLayers) {
    EXPECT_EQ(last.at(std::string("mean_k.") + layer).get<double>(), 2.0) << last.dump();
    EXPECT_FALSE(last.contains(std::string("unrouted.") + layer)) << last.dump();
  }
  for (const auto& t : records(read_metrics(run), "train"))
    for (const auto& l : t.at("moe")) {
      const double cv = l.at("cv_importance").get<double>();
      EXPECT_TRUE(std::isfinite(cv) && cv >= 0) << l.dump();
    }
}

// Top-any at evaluation: a token that fires no expert is counted as unrouted whatever the
// fallback; the arg-max fallback then gives it exactly one expert, the zero fallback none. In the
// first MoE layer (whose input the fallback of no earlier layer changed) the unrouted fraction of
// both evaluations is the same and their experts per token differ by exactly that fraction.
// moe eval --set chooses the fallback without retraining.
TEST(EvalRouting, TopAnyUnroutedTokensAndTheFallback) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto run =
      train(dir, "top_any",
            {"moe.router=\"top_any\"", "moe.initial_experts=1", "moe.schedule=\"manual\""});
  const auto argmax = moe::train::run_evaluation(run.string(), "valid");
  const auto zero =
      moe::train::run_evaluation(run.string(), "valid", c10::nullopt, {"moe.fallback=\"zero\""});
  const std::string first = kLayers[0];
  const double u = at(argmax, "unrouted." + first);
  ASSERT_GT(u, 0.0) << "no unrouted token: the test would not tell the fallbacks apart";
  EXPECT_EQ(u, at(zero, "unrouted." + first));
  EXPECT_NEAR(at(argmax, "mean_k." + first), at(zero, "mean_k." + first) + u, 1e-12);
  for (const char* layer : kLayers)
    for (const auto* m : {&argmax, &zero}) {
      const double f = at(*m, std::string("unrouted.") + layer);
      EXPECT_TRUE(f >= 0 && f <= 1) << layer << " " << f;
    }
  EXPECT_NE(at(argmax, "bpc"), at(zero, "bpc"));
  // a key that changes the model's tensors cannot load the checkpoint
  EXPECT_ANY_THROW(
      moe::train::run_evaluation(run.string(), "valid", c10::nullopt, {"moe.hidden=16"}));
}

// moe eval --top-k K evaluates SMoE-Dropout (and HyperRouter, SMoE) layers at k = K: K experts per
// token, whatever k the schedule reached in training. Out of range, or on another router: an error
// naming the option.
TEST(EvalRouting, TopKOverrideOfHyperRouterLayers) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto run =
      train(dir, "smoe_dropout", {"moe.router=\"smoe_dropout\"", "moe.k_min=1", "moe.k_max=2"});
  for (int k : {1, 3, 4}) {
    const auto r = moe_cli("eval " + run.string() + " --top-k " + std::to_string(k));
    ASSERT_EQ(r.status, 0) << r.output;
    EXPECT_NE(r.output.find("k = " + std::to_string(k)), std::string::npos) << r.output;
    for (const char* layer : kLayers)
      EXPECT_NE(r.output.find(std::string("mean_k.") + layer + " " + std::to_string(k) + ".0000"),
                std::string::npos)
          << r.output;
  }
  auto r = moe_cli("eval " + run.string() + " --top-k 5");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--top-k 5: expected 1 <= k <= moe.num_experts = 4"), std::string::npos)
      << r.output;
  r = moe_cli("eval " + run.string() + " --top-k 0");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("--top-k"), std::string::npos) << r.output;

  const auto topk = train(dir, "topk", {"run.steps=2"});
  r = moe_cli("eval " + topk.string() + " --top-k 1");
  EXPECT_EQ(r.status, 2) << r.output;
  EXPECT_NE(r.output.find("this run has moe.router = noisy_topk"), std::string::npos) << r.output;
}

}  // namespace
