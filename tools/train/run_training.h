// `moe train` and `moe eval`: the Trainer (tools/train/trainer.h) on a run folder.
//
// A run folder (tools/train/run_folder.h) holds
//   config.toml             the effective configuration (file + --set overrides)
//   metrics.jsonl           one JSON object per line: start, train (every run.log_every steps),
//                           eval (every run.eval_every steps and at the end), end — docs/cli.md,
//                           tools/train/metrics_schema.h
//   checkpoint.safetensors  the latest checkpoint (every run.checkpoint_every steps and at the
//                           end): model, optimizer state, RNG state, step and config; written
//                           atomically, so a killed run keeps its last good checkpoint
// A resumed run continues from the checkpoint and reproduces the losses of an uninterrupted run
// bit for bit (same build, same thread count).
#pragma once

#include <c10/util/Optional.h>

#include <memory>
#include <string>
#include <vector>

#include "moe/distributed.h"
#include "train/tasks.h"

namespace moe::cli {
class RunConfig;
}

namespace moe::train {

struct LayerLoad {
  std::string name;
  std::vector<double> share;  ///< fraction of the layer's assignments per expert, over the run
  double cv = 0;              ///< coefficient of variation of `share` (population std / mean)
};

struct TrainSummary {
  int64_t first_step = 0;  ///< 0 for a new run, the checkpoint's step for a resumed one
  int64_t last_step = 0;
  bool interrupted = false;  ///< stopped by SIGINT/SIGTERM (after a checkpoint)
  double seconds = 0;
  ParameterCount parameters;
  Metrics valid;  ///< the final evaluation on the whole validation split
  std::vector<LayerLoad> load;
};

/// Trains the model of `config` in `run_dir`. A new run needs a folder without a checkpoint (it is
/// created if missing); `resume` continues the run in `run_dir` from its checkpoint. `stop_at` > 0
/// ends this session after that step with a checkpoint (the run continues with `resume`; the
/// learning-rate schedule still spans run.steps). Errors (std::invalid_argument,
/// std::runtime_error, c10::Error) leave the last checkpoint intact. SIGINT and SIGTERM end the
/// current step, write a checkpoint and return (`interrupted`). A resumed run may change only the
/// keys that do not change the model or its training (logging, evaluation, checkpoints, data
/// location, run.steps); other differences from the checkpoint's configuration are errors.
///
/// `group` (docs/distributed.md): this process is one rank of a run on several processes. The
/// ranks first check that they run the same configuration; every rank draws the same batches and
/// computes its share of each (tools/train/sharded_model.h) with the experts spread over the ranks;
/// rank 0 alone writes the run folder (the other ranks read a resumed run's checkpoint from it). A
/// stop signal on any rank stops all of them after the same step, with a checkpoint. Checkpoints
/// hold every expert under its global name: a run resumes, or is evaluated, at any world size whose
/// processes can share its experts, one process included.
TrainSummary run_training(const moe::cli::RunConfig& config, const std::string& run_dir,
                          bool resume, int64_t stop_at = 0,
                          std::shared_ptr<dist::ProcessGroup> group = nullptr);

/// Evaluates the checkpoint of `run_dir` on `split` ("valid" or "test"), whole split; with
/// `inference_top_k`, every hyper / smoe_dropout / smoe layer at that k (std::invalid_argument for
/// a run without such layers or a k outside [1, num_experts]). `sets` override keys of the run's
/// configuration ("key=value", as `moe train --set`); the model they build must match the
/// checkpoint.
Metrics run_evaluation(const std::string& run_dir, const std::string& split,
                       c10::optional<int64_t> inference_top_k = c10::nullopt,
                       const std::vector<std::string>& sets = {});

}  // namespace moe::train
