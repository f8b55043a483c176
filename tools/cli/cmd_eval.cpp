// `moe eval RUN_DIR [--split valid|test] [--top-k K] [--set key=value]...`: the whole split on the
// run's checkpoint (docs/cli.md, "Evaluation: moe eval").
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "train/run_training.h"

namespace moe::cli {
namespace {

struct EvalOptions {
  std::string run, split = "valid";
  int64_t top_k = 0;  // 0: the k the layers trained with
  std::vector<std::string> sets;
};

int run_eval(const EvalOptions& o) {
  const auto m = moe::train::run_evaluation(
      o.run, o.split, o.top_k > 0 ? c10::optional<int64_t>(o.top_k) : c10::nullopt, o.sets);
  std::printf("%s, %s split", o.run.c_str(), o.split.c_str());
  if (o.top_k > 0) std::printf(", k = %lld", static_cast<long long>(o.top_k));
  std::printf(":");
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
  eval->add_option("--top-k", o->top_k,
                   "evaluate the hyper, smoe_dropout or smoe layers at this k (default: the k "
                   "they trained with)")
      ->check(CLI::PositiveNumber);
  eval->add_option("--set", o->sets,
                   "override a key of the run's configuration for this evaluation, e.g. "
                   "moe.fallback=\"zero\" (the model must still match the checkpoint)");
  commands.add(eval, [o](const GlobalOptions&) { return run_eval(*o); });
}

}  // namespace moe::cli
