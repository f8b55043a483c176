// The subcommands of the `moe` program (docs/cli.md), one per file:
//
//   tools/cli/cmd_train.cpp    moe train CONFIG.toml --out RUN | moe train --resume RUN
//   tools/cli/cmd_eval.cpp     moe eval RUN [--split valid|test]
//   tools/cli/cmd_report.cpp   moe report RUN [--compare OTHER_RUN]... [--out FILE]
//   tools/cli/cmd_data.cpp     moe data kjv | fashion-mnist | synthetic
//   tools/cli/cmd_bench.cpp    moe bench [harness options] (when the benchmark is built)
//
// Each add_*_command declares its CLI11 subcommand with its options and registers the handler that
// runs it. tools/cli/moe.cpp parses the command line, sets the thread count, runs the handler of
// the parsed subcommand and maps exceptions to exit codes.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <utility>
#include <vector>

namespace moe::cli {

/// The options of `moe` itself, before the subcommand.
struct GlobalOptions {
  int threads = 0;  ///< --threads; 0: every core or $MOE_NUM_THREADS
};

/// Runs a parsed subcommand and returns the exit code. Usage and configuration errors are thrown as
/// std::invalid_argument (exit code 2), other failures as other exceptions (exit code 1).
using Handler = std::function<int(const GlobalOptions&)>;

/// The handlers of the subcommands, each with the CLI11 subcommand that selects it.
class Commands {
 public:
  void add(const CLI::App* command, Handler handler) {
    handlers_.emplace_back(command, std::move(handler));
  }

  /// Runs the handler of the subcommand the command line named; 0 when it named none.
  int run(const GlobalOptions& global) const {
    for (const auto& [command, handler] : handlers_)
      if (command->parsed()) return handler(global);
    return 0;
  }

 private:
  std::vector<std::pair<const CLI::App*, Handler>> handlers_;
};

void add_train_command(CLI::App& app, Commands& commands);
void add_eval_command(CLI::App& app, Commands& commands);
void add_report_command(CLI::App& app, Commands& commands);
void add_data_command(CLI::App& app, Commands& commands);
/// Adds nothing when the program is built without the benchmark (MOE_CLI_HAS_BENCH unset).
void add_bench_command(CLI::App& app, Commands& commands);

}  // namespace moe::cli
