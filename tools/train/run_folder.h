// The run folder of `moe train` (tools/train/run_training.h): its files, the checks of a new or a
// resumed run, a resumed run's checkpoint restored, and the records a session starts with.
#pragma once

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <filesystem>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <vector>

#include "train/models.h"
#include "train/train_config.h"

namespace moe::io {
struct TensorFile;
}

namespace moe::train {

/// The files of a run folder besides metrics.jsonl (metrics::kFileName).
inline constexpr const char* kConfigFile = "config.toml";
inline constexpr const char* kCheckpointFile = "checkpoint.safetensors";

/// A new run needs a folder without a checkpoint, a resumed one its checkpoint; errors say which
/// command to run instead.
void check_run_folder(const std::filesystem::path& checkpoint, const std::string& run_dir,
                      bool resume);

/// Removes the temporary files of writes that a killed session never finished.
void remove_unfinished_writes(const std::filesystem::path& dir);

/// A resumed run's state from the checkpoint `saved` (read and checked before the model was
/// built): the open DynMoE recording windows are checked, `saved` is released, then
/// io::load_checkpoint reads `path` again and loads module and optimizer.
void restore_checkpoint(torch::nn::Module& module, torch::optim::Optimizer& opt,
                        io::TensorFile saved, const std::string& path);

/// The start record of a session of metrics.jsonl (tools/train/metrics_schema.h); `step` is a
/// resumed run's checkpoint step.
nlohmann::json start_record(const TrainConfig& c, Model& model, const ParameterCount& parameters,
                            bool resume, int64_t step);

/// Which evaluations of a checkpoint's step the records a resumed run kept hold: the checkpoint
/// is written before the evaluations of its step, so a session killed during them runs them again.
struct EvalsDone {
  bool eval = false;        ///< an eval record at the step
  bool final_eval = false;  ///< the final evaluation (full_split)
};
EvalsDone evals_done(const std::vector<nlohmann::json>& kept, int64_t step);

}  // namespace moe::train
