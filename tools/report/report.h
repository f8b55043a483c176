// The `moe report` page: one self-contained HTML file (inline SVG, CSS and a tiny script; no
// network, no external URL) drawn from a run folder's metrics.jsonl, written by the trainer.
//
//   moe::report::ReportInput in;
//   in.run_dir = "runs/kjv_moe";
//   in.compare_dirs = {"runs/kjv_dense"};       // their eval curves are overlaid
//   const std::string path = moe::report::write_report(in);   // runs/kjv_moe/report.html
//
// Input, one JSON object per line (unknown events and keys are ignored, null is "missing"):
//   {"event":"start","task":"lm","model":"moe","router":"top_any","steps":2000,...}   (one per
//       launch: a resumed run appends another)
//   {"event":"train","step":10,"loss":2.1,"task_loss":2.0,"aux_loss":0.1,"lr":1e-3,...,
//    "moe":[{"name":"block1.ffn","share":[...],"cv":0.3,"dropped":0,"active_experts":8,
//            "mean_k":2,"unrouted":0}, ...]}
//   {"event":"eval","step":100,"split":"valid","loss":1.9,"bpc":2.7 | "accuracy":0.85 |
//    "auc":[...],"mse":[...]}
//   {"event":"end","step":2000,"elapsed_s":300}
// A record whose event, step and split repeat an earlier one (a resumed run) replaces it.
//
// Torch-free: this library depends on nlohmann json only, so it builds and tests without LibTorch.
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
/// metrics.jsonl, and writes the page atomically (a temporary file in the same folder, then a
/// rename). Returns the path written.
///
/// Throws std::runtime_error naming the file, the line and the problem: a missing metrics file,
/// invalid JSON, a record without "event" (or a train/eval/end record without "step"), no train
/// records in the run; or an output file that cannot be written.
std::string write_report(const ReportInput& in);

/// The page as a string (what write_report writes). Same errors, less the writing.
std::string render_report(const ReportInput& in);

}  // namespace moe::report
