// `moe report RUN_DIR [--compare OTHER_RUN]... [--out FILE]`: the run's self-contained HTML report
// (docs/cli.md, "Reports: moe report"; tools/report/report.h).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "cli/commands.h"
#include "report/report.h"

namespace moe::cli {

void add_report_command(CLI::App& app, Commands& commands) {
  auto in = std::make_shared<moe::report::ReportInput>();
  auto* report = app.add_subcommand(
      "report", "write a run's self-contained HTML report (learning curves, expert load)");
  report->add_option("run", in->run_dir, "run folder (with metrics.jsonl)")->required();
  report->add_option("--compare", in->compare_dirs,
                     "other run folders whose evaluation curves are overlaid (repeatable)");
  report->add_option("--out", in->out_path, "output file (default: RUN/report.html)");
  commands.add(report, [in](const GlobalOptions&) {
    const auto path = moe::report::write_report(*in);
    std::printf("report: %s\n", path.c_str());
    return 0;
  });
}

}  // namespace moe::cli
