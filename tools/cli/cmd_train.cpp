// `moe train CONFIG.toml --out RUN_DIR [--set key=value]...` (a new run) and
// `moe train --resume RUN_DIR` (continue one): docs/cli.md, "Training: moe train".
#include <cstdio>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/run_config.h"
#include "train/memory_estimate.h"
#include "train/run_training.h"

namespace moe::cli {
namespace {

struct TrainOptions {
  std::string config, out, resume;
  std::vector<std::string> sets;
  int64_t stop_at = 0;
  bool dry_run = false, no_memory_check = false;
};

std::string percent_list(const std::vector<double>& share) {
  std::string s;
  char buf[16];
  for (const double v : share) {
    std::snprintf(buf, sizeof buf, "%s%.1f", s.empty() ? "" : " ", 100 * v);
    s += buf;
  }
  return s;
}

// The run folder of a new or resumed run, after the checks of the option combinations.
std::string run_folder(const TrainOptions& o) {
  if (!o.resume.empty() && !o.out.empty())
    throw std::invalid_argument("moe train: --resume RUN_DIR continues that run; --out " + o.out +
                                " cannot be used with it");
  if (o.config.empty() == o.resume.empty())
    throw std::invalid_argument(
        "moe train: give either a configuration file and --out RUN_DIR (a new run) or --resume "
        "RUN_DIR (continue a run)");
  if (!o.config.empty() && o.out.empty())
    throw std::invalid_argument("moe train: --out RUN_DIR is required with a configuration file");
  const std::string run_dir = o.resume.empty() ? o.out : o.resume;
  if (!o.resume.empty() && !std::filesystem::exists(run_dir + "/config.toml"))
    throw std::invalid_argument("moe train --resume: " + run_dir +
                                "/config.toml does not exist: not a run folder of `moe train`");
  return run_dir;
}

void print_summary(const std::string& run_dir, const moe::train::TrainSummary& r) {
  std::printf("\n%s: steps %lld..%lld in %.1f s, %lld parameters (%lld active per token)\n",
              run_dir.c_str(), static_cast<long long>(r.first_step),
              static_cast<long long>(r.last_step), r.seconds,
              static_cast<long long>(r.parameters.total),
              static_cast<long long>(r.parameters.active));
  if (!r.valid.empty()) {
    std::printf("validation (whole split):");
    for (const auto& [k, v] : r.valid)
      if (k != "tokens") std::printf("  %s %.4f", k.c_str(), v);
    std::printf("\n");
  }
  if (!r.load.empty()) std::printf("expert load over the run (%% of assignments per expert):\n");
  for (const auto& l : r.load)
    std::printf("  %-16s %s  (CV %.3f)\n", l.name.c_str(), percent_list(l.share).c_str(), l.cv);
  std::fflush(stdout);
}

int run_train(const TrainOptions& o) {
  const std::string run_dir = run_folder(o);
  auto config = RunConfig::from_file(o.resume.empty() ? o.config : run_dir + "/config.toml");
  for (const auto& s : o.sets) config.set(s);
  // Before anything is built: a configuration the machine cannot hold is rejected in a moment,
  // naming its keys, instead of being killed by the OOM killer minutes later (a dry run too).
  if (!o.no_memory_check) moe::train::check_memory(moe::train::parse_train_config(config));
  if (o.dry_run) {  // validate every key, print the effective configuration, train nothing
    moe::train::parse_train_config(config);
    std::printf("%s", config.to_toml().c_str());
    return 0;
  }
  const auto r = moe::train::run_training(config, run_dir, !o.resume.empty(), o.stop_at);
  if (r.interrupted) return 130;
  print_summary(run_dir, r);
  return 0;
}

}  // namespace

void add_train_command(CLI::App& app, Commands& commands) {
  auto o = std::make_shared<TrainOptions>();
  auto* train = app.add_subcommand(
      "train",
      "train a model: `moe train CONFIG.toml --out RUN_DIR` (a new run) or `moe train --resume "
      "RUN_DIR` (continue one); see docs/cli.md for the configuration keys");
  train->add_option("config", o->config, "run configuration (TOML), e.g. configs/kjv_moe.toml");
  train->add_option("--out", o->out, "run folder for config.toml, metrics.jsonl, checkpoints");
  train->add_option("--resume", o->resume, "continue the run in this folder from its checkpoint");
  train->add_option("--set", o->sets,
                    "override a configuration key, e.g. --set model.layers=2 --set "
                    "moe.router=\"top_any\" (repeatable)");
  train
      ->add_option("--stop-at", o->stop_at,
                   "end this session after step N with a checkpoint (continue with --resume)")
      ->check(CLI::PositiveNumber);
  train->add_flag("--dry-run", o->dry_run,
                  "check the configuration and print it with the overrides applied; train nothing");
  train->add_flag("--no-memory-check", o->no_memory_check,
                  "skip the check of the estimated memory against the memory available");
  commands.add(train, [o](const GlobalOptions&) { return run_train(*o); });
}

}  // namespace moe::cli
