// The `moe` command: one program for the library's users (docs/cli.md).
//
//   moe train CONFIG.toml --out RUN [--set key=value]...   train a model, checkpoints in RUN
//   moe train --resume RUN [--set run.steps=N]              continue a run bit-exactly
//   moe eval RUN [--split valid|test]                       evaluate a run's checkpoint
//   moe report RUN [--compare OTHER_RUN]... [--out FILE]    the run's HTML report
//   moe data kjv | fashion-mnist | synthetic                prepare or check a data set
//   moe bench [harness options]                             the CPU benchmark (docs/benchmarks.md)
//
// Each subcommand lives in its own file (tools/cli/commands.h lists them); this file parses the
// command line, sets the thread count, runs the subcommand and maps exceptions to exit codes:
// 0 success (and --help, --version), 1 runtime errors, 2 usage and configuration errors.
#include <c10/util/Exception.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <stdexcept>
#include <string>

#include "cli/commands.h"
#include "moe/runtime.h"

namespace {

// CLI11 reports a word that is no subcommand (`moe frobnicate`) as "A subcommand is required";
// this names the word and the subcommands of `app` (called `path`) instead. Empty when `app` left
// no such word.
std::string unknown_subcommand(const CLI::App& app, const std::string& path) {
  for (const auto& a : app.remaining()) {
    if (a.empty() || a[0] == '-') continue;
    std::string names;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; }))
      names += (names.empty() ? "" : ", ") + sub->get_name();
    return path + ": unknown subcommand '" + a + "'; expected one of: " + names + " (see `" + path +
           " --help`)";
  }
  return "";
}

// The first unknown subcommand of `app` or of its subcommands that have subcommands (`moe data`).
std::string unknown_subcommand_anywhere(const CLI::App& app, const std::string& path) {
  const auto subs = app.get_subcommands([](const CLI::App*) { return true; });
  if (subs.empty()) return "";
  std::string unknown = unknown_subcommand(app, path);
  for (const auto* sub : subs)
    if (unknown.empty()) unknown = unknown_subcommand_anywhere(*sub, path + " " + sub->get_name());
  return unknown;
}

// Reports a command line CLI11 rejected and returns the exit code: 0 for --help and --version, 2
// (usage error) otherwise; 1 is for runtime errors.
int parse_error_exit(const CLI::App& app, const CLI::ParseError& e) {
  const std::string unknown = unknown_subcommand_anywhere(app, "moe");
  if (!unknown.empty()) {
    spdlog::error("{}", unknown);
    return 2;
  }
  return app.exit(e) == 0 ? 0 : 2;  // app.exit prints the help, the version or the error
}

}  // namespace

int main(int argc, char** argv) {
  moe::runtime::configure_threading(argv);
  // Large blocks are reused across training steps instead of being mapped and zero-filled anew.
  try {
    moe::runtime::enable_cpu_block_cache();
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "moe: %s\n", e.what_without_backtrace());
    return 2;
  }
  // Log lines (and errors) on stderr; results, tables and plain progress lines on stdout.
  spdlog::set_default_logger(spdlog::stderr_color_mt("moe"));
  CLI::App app{
      "moe: Mixture-of-Experts layers on LibTorch. Train, evaluate and report on MoE models; "
      "see `moe <subcommand> --help` and docs/cli.md."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("moe ") + MOE_VERSION);
  moe::cli::GlobalOptions global;
  app.add_option("--threads", global.threads,
                 "intra-op threads (default: all cores, or $MOE_NUM_THREADS)")
      ->check(CLI::NonNegativeNumber);
  moe::cli::Commands commands;
  for (auto* add :
       {moe::cli::add_train_command, moe::cli::add_eval_command, moe::cli::add_report_command,
        moe::cli::add_data_command, moe::cli::add_bench_command})
    add(app, commands);
  try {
    app.parse(argc, argv);
    // Before any subcommand runs (the benchmark included): 100000 threads hung the process
    // creating OpenMP threads. configure_threads checks the range of --threads and
    // $MOE_NUM_THREADS (src/runtime/runtime.cpp).
    moe::runtime::configure_threads(global.threads);
  } catch (const CLI::ParseError& e) {
    return parse_error_exit(app, e);
  } catch (const std::invalid_argument& e) {
    spdlog::error("{}", e.what());
    return 2;
  }
  try {
    return commands.run(global);
  } catch (const std::invalid_argument& e) {  // usage and configuration errors
    spdlog::error("{}", e.what());
    return 2;
  } catch (const c10::Error& e) {
    spdlog::error("{}", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
}
