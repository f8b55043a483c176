// The training loop of `moe train` (tools/train/trainer.h).
#include "train/trainer.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/run_config.h"
#include "moe/cpu.h"
#include "moe/io/atomic_file.h"
#include "moe/io/safetensors.h"
#include "moe/io/training_state.h"
#include "moe/nn/top_any_moe.h"
#include "moe/runtime.h"
#include "train/interval_stats.h"
#include "train/metrics_log.h"
#include "train/progress.h"
#include "train/resume.h"
#include "train/tensorboard.h"

namespace moe::train {
namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr const char* kConfigFile = "config.toml";
constexpr const char* kMetricsFile = "metrics.jsonl";
constexpr const char* kCheckpointFile = "checkpoint.safetensors";

std::string iso_time_now() {
  const auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&t));
  return buf;
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const RunSection& r, torch::nn::Module& m) {
  auto params = m.parameters();
  if (r.optimizer == "sgd")
    return std::make_unique<torch::optim::SGD>(
        params, torch::optim::SGDOptions(r.lr).momentum(r.momentum).weight_decay(r.weight_decay));
  if (r.optimizer == "adam")
    return std::make_unique<torch::optim::Adam>(
        params, torch::optim::AdamOptions(r.lr).weight_decay(r.weight_decay));
  return std::make_unique<torch::optim::AdamW>(
      params, torch::optim::AdamWOptions(r.lr).weight_decay(r.weight_decay));
}

// Linear warm-up to lr, then a cosine from lr down to lr·min_lr_fraction at the last step.
double learning_rate(const RunSection& r, int64_t step) {
  if (step <= r.warmup_steps) return r.lr * step / std::max<int64_t>(r.warmup_steps, 1);
  const double span = std::max<int64_t>(r.steps - r.warmup_steps, 1);
  const double progress = std::min(1.0, (step - r.warmup_steps) / span);
  const double floor = r.lr * r.min_lr_fraction;
  return floor + (r.lr - floor) * 0.5 * (1 + std::cos(M_PI * progress));
}

void set_learning_rate(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) g.options().set_lr(lr);
}

// SIGINT / SIGTERM: finish the current step, write a checkpoint, stop.
volatile std::sig_atomic_t g_stop_signal = 0;
extern "C" void on_stop_signal(int sig) { g_stop_signal = sig; }

struct StopSignals {
  StopSignals() {
    g_stop_signal = 0;
    prev_int_ = std::signal(SIGINT, on_stop_signal);
    prev_term_ = std::signal(SIGTERM, on_stop_signal);
  }
  ~StopSignals() {
    std::signal(SIGINT, prev_int_);
    std::signal(SIGTERM, prev_term_);
  }
  void (*prev_int_)(int);
  void (*prev_term_)(int);
};

std::string fixed(double v, int digits) {
  std::ostringstream s;
  s.setf(std::ios::fixed);
  s.precision(digits);
  s << v;
  return s.str();
}

double unix_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// A new run needs a folder without a checkpoint, a resumed one its checkpoint.
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

// A resumed run's state from the checkpoint `saved` (read and checked before the model was built),
// released before load_checkpoint reads the file again.
void restore_checkpoint(torch::nn::Module& module, torch::optim::Optimizer& opt,
                        io::TensorFile saved, const std::string& path) {
  auto open = read_open_records(module, saved, path);
  saved = {};
  io::load_checkpoint(module, opt, path);  // checks everything, then loads
  for (auto& [layer, r] : open) layer->resume_recording(std::move(r));
}

// Temporary files of writes that a killed session never finished.
void remove_unfinished_writes(const fs::path& dir) {
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    for (const char* f : {kCheckpointFile, kMetricsFile, kConfigFile})
      if (name.rfind(std::string(f) + ".tmp.", 0) == 0) fs::remove(e.path());
  }
}

// The start record of a session of metrics.jsonl.
json start_record(const TrainConfig& c, Model& model, const ParameterCount& parameters, bool resume,
                  int64_t step) {
  json start = {
      {"event", "start"},
      {"task", to_string(c.run.task)},
      {"model", model.description()},
      {"router", c.run.task == Task::kMultiTask || c.model.moe_every == 0 ? "none" : c.moe.router},
      {"steps", c.run.steps},
      {"parameters", parameters.total},
      {"active_parameters", parameters.active},
      {"threads", at::get_num_threads()},
      {"openblas", moe::runtime::openblas_threading()},
      {"cpu", moe::cpu::describe()},
      {"bf16_gemm", moe::cpu::to_string(moe::cpu::bf16_gemm())},
      {"resumed_from", resume ? json(step) : json(nullptr)},
      {"time", iso_time_now()}};
  if (c.run.task != Task::kMultiTask && c.model.moe_every > 0) {
    start["num_experts"] = c.moe.num_experts;
    if (c.moe.router != "top_any") start["top_k"] = c.moe.top_k;
  }
  return start;
}

// Evaluation must not change training: DynMoE layers record in any mode while a window is open,
// so their records are put back as they were.
Metrics evaluate_during_training(Model& model, TaskData& data, const std::string& split,
                                 int64_t batch_size, int64_t max_batches) {
  torch::nn::Module& module = model.module();
  OpenRecords open;
  for (const auto& [name, layer] : top_any_layers(module))
    if (layer->recording()) {
      auto r = layer->records();
      r.expert_counts = r.expert_counts.clone();
      r.unrouted_sum = r.unrouted_sum.clone();
      open.emplace_back(layer, std::move(r));
    }
  torch::NoGradGuard no_grad;
  module.eval();
  auto m = data.evaluate(model, split, batch_size, max_batches);
  module.train();
  for (auto& [layer, r] : open) layer->resume_recording(std::move(r));
  return m;
}

// Which evaluations of the checkpoint's step the records a resumed run kept hold.
struct EvalsDone {
  bool eval = false;        // an eval record at the step
  bool final_eval = false;  // the final evaluation (full_split)
};
EvalsDone evals_done(const std::vector<json>& kept, int64_t step) {
  EvalsDone done;
  for (const auto& r : kept)
    if (r.value("event", "") == "eval" && r.value("step", int64_t{-1}) == step) {
      done.eval = true;
      done.final_eval = done.final_eval || r.value("full_split", false);
    }
  return done;
}

}  // namespace

TrainSummary run_training(const cli::RunConfig& config, const std::string& run_dir, bool resume,
                          int64_t stop_at) {
  const TrainConfig c = parse_train_config(config);
  for (const auto& k : c.ignored_keys)
    spdlog::warn("config: {} is not used by task {} with this model; ignored", k,
                 to_string(c.run.task));
  const fs::path dir(run_dir), checkpoint = dir / kCheckpointFile;
  check_run_folder(checkpoint, run_dir, resume);
  fs::create_directories(dir);
  // A resumed run's checkpoint is checked before anything is built (a changed model would fail
  // later with a shape error) and before anything in the run folder changes.
  io::TensorFile saved;
  ResumePoint point;
  if (resume) {
    saved = io::load_safetensors(checkpoint.string());
    const auto& meta = saved.metadata;
    if (meta.count("config")) check_resume_config(config, meta.at("config"), checkpoint.string());
    point = read_resume_point(meta, checkpoint.string(), c);
  }

  torch::manual_seed(c.run.seed);
  auto data = load_task_data(c);
  spdlog::info("data: {}", data->describe());
  auto model = build_model(c, data->vocab_size(), data->input_dim());
  torch::nn::Module& module = model->module();
  auto opt = make_optimizer(c.run, module);

  TrainSummary summary;
  MetricsLog log(dir / kMetricsFile);
  int64_t step = 0;
  double earlier_seconds = 0;  // training time of the earlier sessions of a resumed run
  std::vector<json> kept;      // a resumed run's records up to its checkpoint
  if (resume) {
    restore_checkpoint(module, *opt, std::move(saved), checkpoint.string());
    step = point.step;
    earlier_seconds = point.elapsed_s;
    kept = log.truncate_after(step);
    remove_unfinished_writes(dir);
    spdlog::info("resuming {} from step {}", run_dir, step);
    if (step == c.run.steps)
      spdlog::warn(
          "the checkpoint is at step {} and run.steps = {}: nothing to train (raise it "
          "with --set run.steps=N)",
          step, c.run.steps);
  } else {
    std::ofstream(dir / kMetricsFile, std::ios::trunc);
  }
  io::write_file_atomically((dir / kConfigFile).string(), config.to_toml(), "moe train");
  summary.first_step = step;
  summary.parameters = count_parameters(c, *model);  // after a resize-mode checkpoint is loaded

  log.append(start_record(c, *model, summary.parameters, resume, step));
  EventWriter events(dir.string());  // TensorBoard: the scalars of every train and eval record
  if (resume) events.session_start(step, unix_time());
  auto record = [&](const json& rec) {
    log.append(rec);
    events.scalars(rec.at("step").get<int64_t>(), unix_time(), tensorboard_scalars(rec));
  };
  spdlog::info("model: {} ({} parameters, {} active per token), {} steps of batch {}",
               model->description(), summary.parameters.total, summary.parameters.active,
               c.run.steps, c.run.batch_size);

  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double last_flush = 0;
  IntervalStats interval;
  const int64_t end = stop_at > 0 ? std::min(stop_at, c.run.steps) : c.run.steps;
  Progress progress(end, step);
  auto evaluate = [&](const std::string& split, int64_t max_batches) {
    return evaluate_during_training(*model, *data, split, c.run.batch_size, max_batches);
  };
  auto save = [&] {
    std::map<std::string, std::string> meta{{"step", std::to_string(step)},
                                            {"elapsed_s", fixed(earlier_seconds + seconds(), 3)},
                                            {"config", config.to_toml()},
                                            {"task", to_string(c.run.task)}};
    save_open_records(module, &meta);
    log.sync();
    io::save_checkpoint(module, *opt, checkpoint.string(), meta);
  };
  auto log_eval = [&] {
    json e = metrics_json(evaluate("valid", c.run.eval_batches));
    e["event"] = "eval";
    e["step"] = step;
    e["split"] = "valid";
    record(e);
    progress.note(
        "step " + std::to_string(step) + ": valid loss " + fixed(e.value("loss", 0.0), 4) +
        (e.contains("bpc") ? ", bpc " + fixed(e.value("bpc", 0.0), 4) : "") +
        (e.contains("accuracy") ? ", accuracy " + fixed(e.value("accuracy", 0.0), 4) : ""));
  };
  auto log_final_eval = [&] {
    summary.valid = evaluate("valid", 0);
    json e = metrics_json(summary.valid);
    e["event"] = "eval";
    e["step"] = step;
    e["split"] = "valid";
    e["full_split"] = true;
    record(e);
  };
  // The checkpoint is written before the evaluations of its step: a session killed during them
  // resumes by running them (evaluation changes nothing, so this is exact).
  if (resume) {
    const EvalsDone done = evals_done(kept, step);
    if (step < c.run.steps && step % c.run.eval_every == 0 && !done.eval) log_eval();
    if (step == c.run.steps && !done.final_eval) log_final_eval();
  }
  StopSignals signals;
  const auto dynmoe = top_any_layers(module);  // DynMoE layers, whose expert updates follow steps

  module.train();
  while (step < end) {
    ++step;
    const double lr = learning_rate(c.run, step);
    set_learning_rate(*opt, lr);
    const Batch batch = data->train_batch(c.run.batch_size);
    ModelOutput out = model->forward(batch.input);
    Metrics batch_metrics;
    const auto task_loss = data->loss(out, batch, &batch_metrics);
    const auto loss = task_loss + out.aux_loss;
    const double task_value = task_loss.item<double>(), aux_value = out.aux_loss.item<double>();
    if (!std::isfinite(task_value) || !std::isfinite(aux_value))
      throw std::runtime_error("moe train: the loss is not finite at step " + std::to_string(step) +
                               " (task " + std::to_string(task_value) + ", aux " +
                               std::to_string(aux_value) +
                               "); the last checkpoint is kept; lower run.lr or set run.grad_clip");
    opt->zero_grad();
    loss.backward();
    // The global gradient norm, clipped when run.grad_clip > 0; a non-finite one stops the run
    // before the optimizer writes it into the parameters.
    const double grad_norm = torch::nn::utils::clip_grad_norm_(
        module.parameters(), c.run.grad_clip > 0 ? c.run.grad_clip : INFINITY);
    if (!std::isfinite(grad_norm))
      throw std::runtime_error("moe train: the gradient norm is not finite at step " +
                               std::to_string(step) +
                               "; the parameters were not updated and the last checkpoint is "
                               "kept; lower run.lr or set run.grad_clip");
    batch_metrics["grad_norm"] = grad_norm;
    opt->step();
    for (const auto& [name, layer] : dynmoe) {  // what nn::apply_expert_updates does, by name
      if (!layer->update_pending()) continue;
      const auto u = layer->apply_pending_update(opt.get());
      if (u.changed())
        progress.note("step " + std::to_string(step) + ": " + name + ": experts " +
                      std::to_string(u.active_before) + " -> " + std::to_string(u.active_after) +
                      " (removed " + std::to_string(u.removed.size()) + ", added " +
                      std::to_string(u.added >= 0 ? 1 : 0) + ")");
    }
    interval.add(out, batch_metrics, task_value, aux_value, batch.tokens);

    const bool last = step == c.run.steps;
    const bool stopping = step == end || g_stop_signal != 0;
    const bool checkpoint_due = step % c.run.checkpoint_every == 0 || stopping;
    auto flush = [&] {
      const double now = seconds();
      const json rec = interval.flush(step, earlier_seconds + now, now - last_flush, lr);
      record(rec);
      progress.update(step, rec.value("loss", 0.0), rec.value("tokens_per_s", 0.0), now);
    };
    // A train record at every checkpoint too, so that a resumed run's intervals match.
    if (step % c.run.log_every == 0 || checkpoint_due) flush();
    if (checkpoint_due) save();  // before the final evaluation: a kill during it loses nothing
    if (step % c.run.eval_every == 0 && !last) log_eval();
    if (last) log_final_eval();
    // tokens/s of the next interval: training time only
    if (step % c.run.log_every == 0 || checkpoint_due) last_flush = seconds();
    if (g_stop_signal != 0) {  // possibly raised during this step's evaluation
      if (!checkpoint_due) {
        if (!interval.empty()) flush();
        save();
      }
      summary.interrupted = true;
      break;
    }
  }
  progress.finish();
  summary.last_step = step;
  summary.seconds = seconds();
  summary.load = interval.run_load();
  if (step == c.run.steps && step > summary.first_step)
    log.append(
        {{"event", "end"}, {"step", step}, {"elapsed_s", earlier_seconds + summary.seconds}});
  else if (step < c.run.steps)
    spdlog::info("{} at step {} of {} with a checkpoint; continue with: moe train --resume {}",
                 summary.interrupted ? "interrupted" : "stopped", step, c.run.steps, run_dir);
  return summary;
}

Metrics run_evaluation(const std::string& run_dir, const std::string& split) {
  if (split != "valid" && split != "test")
    throw std::invalid_argument("moe eval: --split " + split + ": expected valid or test");
  const fs::path dir(run_dir), checkpoint = dir / kCheckpointFile;
  if (!fs::exists(checkpoint))
    throw std::invalid_argument("moe eval: " + checkpoint.string() +
                                " does not exist (train first: moe train CONFIG --out " + run_dir +
                                ")");
  const auto config = cli::RunConfig::from_file((dir / kConfigFile).string());
  const TrainConfig c = parse_train_config(config);
  auto data = load_task_data(c);
  auto model = build_model(c, data->vocab_size(), data->input_dim());
  auto opt = make_optimizer(c.run, model->module());
  io::load_checkpoint(model->module(), *opt, checkpoint.string());
  torch::NoGradGuard no_grad;
  model->module().eval();
  return data->evaluate(*model, split, c.run.batch_size, 0);
}

}  // namespace moe::train
