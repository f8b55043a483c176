// The checkpoint metadata of `moe train` beside the library's own moe.* keys: step, elapsed_s,
// config, task and the open DynMoE recording windows (top_any_records.<layer>). Written with each
// checkpoint, and checked by `moe train --resume` before anything in the run folder, the model or
// the optimizer changes; errors name the file, the key and the value (docs/cli.md, checkpoints).
#pragma once

#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "train/train_config.h"

namespace moe::cli {
class RunConfig;
}
namespace moe::io {
struct TensorFile;
}
namespace moe::nn {
class TopAnyMoEImpl;
struct RoutingRecords;
}  // namespace moe::nn

namespace moe::train {

/// Where a resumed run continues.
struct ResumePoint {
  int64_t step = 0;
  double elapsed_s = 0;  ///< training time of the earlier sessions
};

/// The trainer's own checkpoint metadata `meta` of the checkpoint `path`, checked before anything
/// changes: step in [1, run.steps], elapsed_s finite and >= 0 (absent in old checkpoints), task =
/// run.task, and no key that neither the trainer nor the library writes (the library checks its
/// moe.* keys itself).
ResumePoint read_resume_point(const std::map<std::string, std::string>& meta,
                              const std::string& path, const TrainConfig& c);

/// A resumed run trains the model it started: any difference between `now` and the checkpoint's
/// configuration `saved_text` in a key other than logging, evaluation, checkpoints, the data's
/// location and run.steps is an error naming each such key with both values.
void check_resume_config(const cli::RunConfig& now, const std::string& saved_text,
                         const std::string& checkpoint);

/// The open DynMoE recording windows of `m`, put into checkpoint metadata `meta`: they are not
/// module state, and a resumed run must continue them.
void save_open_records(torch::nn::Module& m, std::map<std::string, std::string>* meta);

/// Open recording windows read back, with the layer each belongs to.
using OpenRecords = std::vector<std::pair<nn::TopAnyMoEImpl*, nn::RoutingRecords>>;

/// The open recording windows of checkpoint `file` (read from `path`), checked against the model
/// before anything is loaded: each names a TopAnyMoE layer of `m` and has its shape (the expert
/// count in the checkpoint, d_model) and valid values.
OpenRecords read_open_records(torch::nn::Module& m, const io::TensorFile& file,
                              const std::string& path);

}  // namespace moe::train
