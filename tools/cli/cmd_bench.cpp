// `moe bench [harness options]`: the CPU benchmark harness (docs/benchmarks.md), e.g. --quick.
// Everything after `bench` goes to the harness (bench/bench_main.h); the program's --threads is
// passed on to it.
#include <string>
#include <vector>

#include "cli/commands.h"

#ifdef MOE_CLI_HAS_BENCH
#include "bench_main.h"
#endif

namespace moe::cli {

void add_bench_command([[maybe_unused]] CLI::App& app, [[maybe_unused]] Commands& commands) {
#ifdef MOE_CLI_HAS_BENCH
  auto* bench = app.add_subcommand(
      "bench",
      "the CPU benchmark harness (this library vs the eager baselines); options after "
      "`bench` go to it, see `moe bench --help`");
  bench->prefix_command();  // everything after `bench` is the harness's
  bench->set_help_flag();   // so that `moe bench --help` reaches the harness
  commands.add(bench, [bench](const GlobalOptions& global) {
    std::vector<std::string> args{"moe bench"};
    for (const auto& a : bench->remaining()) args.push_back(a);
    if (global.threads > 0) {
      args.push_back("--threads");
      args.push_back(std::to_string(global.threads));
    }
    std::vector<char*> av;
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    return moe::bench::bench_main(static_cast<int>(args.size()), av.data());
  });
#endif
}

}  // namespace moe::cli
