// The typed configuration of `moe train`: every key of a run's TOML file, its default and its
// check. RunConfig (tools/cli/run_config.h) reads strings; this turns them into the structs the
// trainer and the models take, and rejects unknown keys, so a typo never trains a different model
// silently; keys of another task or router are ignored with a warning, so that switching the
// router with --set keeps working. docs/cli.md lists the keys.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::cli {
class RunConfig;
}

namespace moe::train {

enum class Task { kLanguageModel, kClassify, kMultiTask };

struct RunSection {
  Task task = Task::kLanguageModel;
  uint64_t seed = 0;
  int64_t steps = 1000;
  int64_t batch_size = 32;
  std::string optimizer = "adamw";  ///< adam | adamw | sgd
  double lr = 1e-3;
  double min_lr_fraction = 0.1;  ///< cosine decay from lr to lr·min_lr_fraction after warm-up
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double momentum = 0.9;   ///< sgd only
  double grad_clip = 1.0;  ///< global gradient-norm clip; 0 = off
  int64_t log_every = 10;
  int64_t eval_every = 100;
  int64_t eval_batches = 8;  ///< evaluations during training; 0 = the whole split
  int64_t checkpoint_every = 500;
};

struct DataSection {
  std::string dir;        ///< lm: the corpus folder (moe data kjv); classify: Fashion-MNIST files
  int64_t context = 128;  ///< lm: characters per sequence
  // multitask: a file from `moe data synthetic`, or generated here from these
  std::string file;
  double correlation = 0.5;
  int64_t samples = 20000;
  int64_t dim = 100;
  uint64_t data_seed = 0;
};

/// The MoE layers of the LM and the classifier.
struct MoESection {
  /// softmax_topk noisy_topk switch top_any hyper smoe_dropout smoe hierarchical expert_choice
  std::string router = "noisy_topk";
  int64_t num_experts = 8;
  int64_t top_k = 2;
  int64_t hidden = 128;  ///< expert hidden width
  std::string activation = "relu";
  double capacity_factor = 0.0;
  bool noisy_gating = true;  ///< noisy_topk, hierarchical: the Gaussian gating noise in training
  double noise_epsilon = 1e-2;
  // < 0 = the router's own default (docs/algorithms.md); >= 0 = this coefficient
  double importance_coef = -1, load_coef = -1, balance_coef = -1, z_loss_coef = -1;
  // hierarchical: num_experts = groups · experts_per_group
  int64_t groups = 0;  ///< 0 = floor(sqrt(num_experts)) rounded to a divisor
  int64_t secondary_top_k = 2;
  // top_any (DynMoE)
  int64_t initial_experts = 0;      ///< 0 = num_experts / 2
  std::string storage = "pool";     ///< pool | resize
  std::string schedule = "window";  ///< window | every_step | manual
  int64_t record = 300, period = 900;
  std::string temperature = "frozen";  ///< frozen | trainable | none
  std::string fallback = "argmax";     ///< argmax | argmax_score | zero: an unrouted token at eval
  double top_any_aux_coef = 0.01;
  // hyper / smoe_dropout / smoe
  std::string k_schedule = "linear_increase";  ///< a TopKSchedule mode, or constant
  int64_t k_min = 0, k_max = 0;                ///< 0 = top_k / num_experts
  int64_t hyper_hidden = 256;
};

struct ModelSection {
  // lm and classify
  int64_t d_model = 128;
  int64_t layers = 4;
  int64_t heads = 4;  ///< lm
  int64_t moe_every =
      1;  ///< 1: every block's FFN is MoE, 2: every other (the 2nd, 4th, ...), 0: dense
  int64_t dense_hidden = 0;  ///< dense FFN width; 0 = top_k · moe.hidden (equal active compute)
  double dropout = 0.0;
  // multitask
  std::string kind = "mmoe";  ///< shared_bottom omoe mmoe cgc ple
  int64_t num_experts = 8;
  std::vector<int64_t> expert_hidden = {16};
  std::vector<int64_t> tower_hidden = {8};
  std::vector<int64_t> bottom_hidden = {113};
  int64_t levels = 2;
  int64_t specific_experts = 1, shared_experts = 1;
  int64_t gate_top_k = 0;
};

struct TrainConfig {
  RunSection run;
  DataSection data;
  ModelSection model;
  MoESection moe;
  /// Keys of the file that this task and router do not use (keys of another router or task, e.g.
  /// moe.top_k in a top_any run): ignored, and reported as a warning.
  std::vector<std::string> ignored_keys;
  /// Settings that are valid but will not do what they are there for in this run (e.g. a DynMoE
  /// schedule whose first expert update comes after the last step), reported as warnings.
  std::vector<std::string> warnings;
};

/// The experts one token uses in `m` (top_any: counted as 1, expert_choice: capacity_factor
/// rounded), for the dense width of equal active compute and the active-parameter count.
int64_t experts_per_token(const MoESection& m);

/// Reads and checks every key; an out-of-range value or a key no task or router knows (a typo)
/// raises std::invalid_argument naming the key, the value and what is expected.
TrainConfig parse_train_config(const moe::cli::RunConfig& config);

/// The warnings parse_train_config() puts in TrainConfig::warnings.
std::vector<std::string> schedule_warnings(const TrainConfig& t);

const char* to_string(Task t);

}  // namespace moe::train
