// The `moe report` page: one self-contained HTML file (inline SVG, CSS and a tiny script; no
// network, no external URL) drawn from a run folder's metrics.jsonl, written by the trainer.
//
//   moe::report::ReportInput in;
//   in.run_dir = "runs/kjv_moe";
//   in.compare_dirs = {"runs/kjv_dense"};       // their eval curves are overlaid
//   const std::string path = moe::report::write_report(in);   // runs/kjv_moe/report.html
//
// Input: the records of metrics.jsonl as tools/train/metrics_schema.h defines them (start, train,
// eval, end; unknown events and keys are ignored, null is "missing"). A record whose event, step
// and split repeat an earlier one (a resumed run) replaces it.
//
// Files: run.h reads the run; axis.h, svg.h, line_chart.h and load_charts.h draw the charts;
// sections.h, page_style.h and report.cpp assemble the page. The page needs nlohmann json only;
// writing it goes through the library's moe::io::write_file_atomically
// (include/moe/io/atomic_file.h), so this library links libmoe.
#pragma once

#include <string>
#include <vector>

namespace moe::report {

/// Heat maps show at most this many columns; more logged train records are averaged in
/// consecutive groups: column j of C covers records [floor(j*n/C), floor((j+1)*n/C)).
inline constexpr int kMaxHeatmapColumns = 200;

/// What to report on.
struct ReportInput {
  std::string run_dir;  ///< holds metrics.jsonl (required), config.toml (optional)
  std::vector<std::string> compare_dirs;  ///< runs whose eval curves are overlaid, by folder name
  std::string out_path;                   ///< where to write; empty: run_dir/report.html
};

/// Reads RUN_DIR/metrics.jsonl and RUN_DIR/config.toml (shown verbatim) and each compare dir's
/// metrics.jsonl, and writes the page atomically (moe::io::write_file_atomically: a temporary file
/// in the same folder, fsync, rename). Returns the path written.
///
/// Throws std::runtime_error naming the file, the line and the problem: a missing metrics file,
/// invalid JSON, a record without "event" (or a train/eval/end record without "step"), no train
/// records in the run; or an output file that cannot be written.
std::string write_report(const ReportInput& in);

/// The page as a string (what write_report writes). Same errors, less the writing.
std::string render_report(const ReportInput& in);

}  // namespace moe::report
