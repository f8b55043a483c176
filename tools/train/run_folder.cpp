// The run folder of `moe train` (tools/train/run_folder.h).
#include "train/run_folder.h"

#include <ATen/Parallel.h>

#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "moe/cpu.h"
#include "moe/io/safetensors.h"
#include "moe/io/training_state.h"
#include "moe/nn/top_any_moe.h"
#include "moe/runtime.h"
#include "train/metrics_schema.h"
#include "train/resume.h"

namespace moe::train {
namespace fs = std::filesystem;
using json = nlohmann::json;
namespace key = metrics::key;

namespace {

std::string iso_time_now() {
  const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

}  // namespace

void check_run_folder(const fs::path& checkpoint, const std::string& run_dir, bool resume) {
  if (resume) {
    if (!fs::exists(checkpoint))
      throw std::invalid_argument("moe train --resume: " + checkpoint.string() +
                                  " does not exist; start a new run with --out " + run_dir);
  } else if (fs::exists(checkpoint)) {
    throw std::invalid_argument("moe train: " + run_dir +
                                " already holds a run (checkpoint.safetensors); continue it with "
                                "--resume " +
                                run_dir + " or choose another --out folder");
  }
}

void remove_unfinished_writes(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    for (const char* f : {kCheckpointFile, metrics::kFileName, kConfigFile})
      if (name.rfind(std::string(f) + ".tmp.", 0) == 0) fs::remove(e.path());
  }
}

void restore_checkpoint(torch::nn::Module& module, torch::optim::Optimizer& opt,
                        io::TensorFile saved, const std::string& path) {
  auto open = read_open_records(module, saved, path);
  saved = {};
  io::load_checkpoint(module, opt, path);  // checks everything, then loads
  for (auto& [layer, r] : open) layer->resume_recording(std::move(r));
}

json start_record(const TrainConfig& c, Model& model, const ParameterCount& parameters, bool resume,
                  int64_t step) {
  const bool routed = c.run.task != Task::kMultiTask && c.model.moe_every > 0;
  json start = {{key::kEvent, metrics::event::kStart},
                {key::kTask, to_string(c.run.task)},
                {key::kModel, model.description()},
                {key::kRouter, routed ? c.moe.router : "none"},
                {key::kSteps, c.run.steps},
                {key::kParameters, parameters.total},
                {key::kActiveParameters, parameters.active},
                {key::kThreads, at::get_num_threads()},
                {key::kOpenblas, moe::runtime::openblas_threading()},
                {key::kCpu, moe::cpu::describe()},
                {key::kBf16Gemm, moe::cpu::to_string(moe::cpu::bf16_gemm())},
                {key::kResumedFrom, resume ? json(step) : json(nullptr)},
                {key::kTime, iso_time_now()}};
  if (routed) {
    start[key::kNumExperts] = c.moe.num_experts;
    if (c.moe.top_k > 0) start[key::kTopK] = c.moe.top_k;  // top_any, expert_choice: no k
  }
  return start;
}

EvalsDone evals_done(const std::vector<json>& kept, int64_t step) {
  EvalsDone done;
  for (const auto& r : kept)
    if (r.value(key::kEvent, "") == metrics::event::kEval &&
        r.value(key::kStep, int64_t{-1}) == step) {
      done.eval = true;
      done.final_eval = done.final_eval || r.value(key::kFullSplit, false);
    }
  return done;
}

}  // namespace moe::train
