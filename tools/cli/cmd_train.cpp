// `moe train CONFIG.toml --out RUN_DIR [--set key=value]...` (a new run) and
// `moe train --resume RUN_DIR` (continue one): docs/cli.md, "Training: moe train".
#include <spdlog/spdlog.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "cli/run_config.h"
#include "moe/distributed.h"
#include "train/launcher.h"
#include "train/memory_estimate.h"
#include "train/metrics_schema.h"
#include "train/run_training.h"

namespace moe::cli {
namespace {

struct TrainOptions {
  std::string config, out, resume;
  std::vector<std::string> sets;
  int64_t stop_at = 0;
  bool dry_run = false, no_memory_check = false;
  int nproc = 1;
  double dist_timeout_s = 300;
};

// The command line of one rank of `--nproc N`: this one without --nproc.
std::vector<std::string> rank_arguments(const TrainOptions& o, const GlobalOptions& global) {
  std::vector<std::string> a;
  if (global.threads > 0) a.insert(a.end(), {"--threads", std::to_string(global.threads)});
  a.push_back("train");
  if (!o.config.empty()) a.push_back(o.config);
  if (!o.out.empty()) a.insert(a.end(), {"--out", o.out});
  if (!o.resume.empty()) a.insert(a.end(), {"--resume", o.resume});
  for (const auto& s : o.sets) a.insert(a.end(), {"--set", s});
  if (o.stop_at > 0) a.insert(a.end(), {"--stop-at", std::to_string(o.stop_at)});
  // The launcher checked the memory of all ranks together.
  a.push_back("--no-memory-check");
  a.insert(a.end(), {"--dist-timeout", std::to_string(o.dist_timeout_s)});
  return a;
}

// This process's rank in a run on several processes, from the launcher environment (WORLD_SIZE,
// RANK, MASTER_ADDR, MASTER_PORT: `--nproc`, torchrun, srun...), or null for one process.
std::shared_ptr<moe::dist::ProcessGroup> join_ranks(const TrainOptions& o) {
  const char* world = std::getenv("WORLD_SIZE");
  if (world == nullptr || std::string(world) == "1") return nullptr;
  if (!moe::dist::available())
    throw std::invalid_argument(
        "moe train: WORLD_SIZE=" + std::string(world) +
        " asks for several processes, but this build has no c10d Gloo backend (Debian: "
        "libgloo-dev, then rebuild)");
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(o.dist_timeout_s * 1000));
  auto group = moe::dist::ProcessGroup::gloo_from_env(timeout);
  if (group->rank() != 0) {  // rank 0 tells the story; the others speak up only for problems
    spdlog::set_level(spdlog::level::warn);
    spdlog::set_pattern("[%Y-%m-%d %H:%M:%S.%e] [moe rank " + std::to_string(group->rank()) +
                        "] [%^%l%$] %v");
  }
  return group;
}

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
    for (const auto& [k, v] : r.valid)  // the per-layer keys ("mean_k.<layer>") come below
      if (k != "tokens" && k.find('.') == std::string::npos) std::printf("  %s %.4f", k.c_str(), v);
    std::printf("\n");
  }
  const std::string mean_k = std::string(metrics::layer_key::kMeanK) + ".";
  for (const auto& [k, v] : r.valid) {
    if (k.rfind(mean_k, 0) != 0) continue;
    const std::string layer = k.substr(mean_k.size());
    std::printf("  %-16s %.2f experts per token at evaluation", layer.c_str(), v);
    const auto u = r.valid.find(metrics::eval_layer_key(metrics::layer_key::kUnrouted, layer));
    if (u != r.valid.end()) std::printf(", %.1f%% of tokens unrouted", 100 * u->second);
    std::printf("\n");
  }
  if (!r.load.empty()) std::printf("expert load over the run (%% of assignments per expert):\n");
  for (const auto& l : r.load)
    std::printf("  %-16s %s  (CV %.3f)\n", l.name.c_str(), percent_list(l.share).c_str(), l.cv);
  std::fflush(stdout);
}

int run_train(const TrainOptions& o, const GlobalOptions& global) {
  const std::string run_dir = run_folder(o);
  if (o.nproc > 1 && std::getenv("WORLD_SIZE") != nullptr)
    throw std::invalid_argument(
        "moe train: --nproc starts the processes itself; under a launcher that sets WORLD_SIZE "
        "(torchrun, srun, moe train --nproc) leave it out");
  if (o.dist_timeout_s <= 0 || !std::isfinite(o.dist_timeout_s))
    throw std::invalid_argument("moe train: --dist-timeout must be a positive number of seconds");
  auto config = RunConfig::from_file(o.resume.empty() ? o.config : run_dir + "/config.toml");
  for (const auto& s : o.sets) config.set(s);
  // Before anything is built: a configuration the machine cannot hold is rejected in a moment,
  // naming its keys, instead of being killed by the OOM killer minutes later (a dry run too).
  // Each of N ranks on one machine builds the whole model before keeping its experts.
  if (!o.no_memory_check) {
    auto limit = moe::train::available_memory();
    const char* local = std::getenv("LOCAL_WORLD_SIZE");
    const int ranks_here = o.nproc > 1 ? o.nproc : local != nullptr ? std::atoi(local) : 1;
    if (ranks_here > 1) {
      limit.bytes /= ranks_here;
      limit.description += ", shared by " + std::to_string(ranks_here) + " processes";
    }
    moe::train::check_memory(moe::train::parse_train_config(config), limit);
  }
  if (o.dry_run) {  // validate every key, print the effective configuration, train nothing
    moe::train::parse_train_config(config);
    std::printf("%s", config.to_toml().c_str());
    return 0;
  }
  if (o.nproc > 1) {
    moe::train::parse_train_config(config);  // a bad key fails once, here, not in every rank
    return moe::train::launch_ranks(o.nproc, rank_arguments(o, global), o.dist_timeout_s + 30);
  }
  const auto group = join_ranks(o);
  const auto r = moe::train::run_training(config, run_dir, !o.resume.empty(), o.stop_at, group);
  if (r.interrupted) return 130;
  if (group == nullptr || group->rank() == 0) print_summary(run_dir, r);
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
  train
      ->add_option("--nproc", o->nproc,
                   "train on N processes of this machine, the experts spread over them "
                   "(docs/distributed.md); launchers that set RANK/WORLD_SIZE need no option")
      ->check(CLI::Range(1, 1024));
  train->add_option("--dist-timeout", o->dist_timeout_s,
                    "seconds a rank waits for the others before it fails (default 300)");
  commands.add(train, [o](const GlobalOptions& global) { return run_train(*o, global); });
}

}  // namespace moe::cli
