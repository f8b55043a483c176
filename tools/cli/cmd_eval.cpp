// `moe eval RUN_DIR [--split valid|test]`: the whole split on the run's checkpoint (docs/cli.md,
// "Evaluation: moe eval").
#include <cstdio>
#include <memory>
#include <string>

#include "cli/commands.h"
#include "train/run_training.h"

namespace moe::cli {
namespace {

struct EvalOptions {
  std::string run, split = "valid";
};

int run_eval(const EvalOptions& o) {
  const auto m = moe::train::run_evaluation(o.run, o.split);
  std::printf("%s, %s split:", o.run.c_str(), o.split.c_str());
  for (const auto& [k, v] : m) std::printf("  %s %.4f", k.c_str(), v);
  std::printf("\n");
  return 0;
}

}  // namespace

void add_eval_command(CLI::App& app, Commands& commands) {
  auto o = std::make_shared<EvalOptions>();
  auto* eval = app.add_subcommand("eval", "evaluate the checkpoint of a run on a data split");
  eval->add_option("run", o->run, "run folder")->required();
  eval->add_option("--split", o->split, "valid or test")
      ->check(CLI::IsMember({"valid", "test"}))
      ->capture_default_str();
  commands.add(eval, [o](const GlobalOptions&) { return run_eval(*o); });
}

}  // namespace moe::cli
