// `moe train` on the Trainer (tools/train/run_training.h): the hooks that make a run folder of the
// training loop — the task's batches and loss, metrics.jsonl and TensorBoard records, the progress
// display, evaluations, checkpoints and the SIGINT/SIGTERM stop.
#include "train/run_training.h"

#include <spdlog/spdlog.h>
#include <torch/torch.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/run_config.h"
#include "moe/io/atomic_file.h"
#include "moe/io/safetensors.h"
#include "moe/io/training_state.h"
#include "moe/nn/top_any_moe.h"
#include "train/interval_stats.h"
#include "train/metrics_log.h"
#include "train/metrics_schema.h"
#include "train/progress.h"
#include "train/resume.h"
#include "train/run_folder.h"
#include "train/sharded_model.h"
#include "train/tensorboard.h"
#include "train/trainer.h"

namespace moe::train {
namespace fs = std::filesystem;
using json = nlohmann::json;
namespace key = metrics::key;

namespace {

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

// Evaluation must not change training: DynMoE layers record in any mode while a window is open,
// so their records are put back as they were.
Metrics evaluate_during_training(Model& model, TaskData& data, int64_t batch_size,
                                 int64_t max_batches) {
  torch::nn::Module& module = model.module();
  OpenRecords open;
  for (const auto& [name, layer] : top_any_layers(module))
    if (layer->recording()) {
      auto r = layer->records();
      r.expert_counts = r.expert_counts.clone();
      r.unrouted_sum = r.unrouted_sum.clone();
      r.unrouted_count = r.unrouted_count.clone();  // updated in place, like the two above
      open.emplace_back(layer, std::move(r));
    }
  torch::NoGradGuard no_grad;
  module.eval();
  auto m = data.evaluate(model, metrics::kDefaultSplit, batch_size, max_batches);
  module.train();
  for (auto& [layer, r] : open) layer->resume_recording(std::move(r));
  return m;
}

// The ranks of a run on several processes compare what they were asked to do before anything
// else: a difference is an error on every rank, naming the first differing line.
void check_ranks_agree(const std::shared_ptr<dist::ProcessGroup>& group,
                       const cli::RunConfig& config, const std::string& run_dir, bool resume,
                       int64_t stop_at) {
  const std::string mine = config.to_toml() + "\n[moe train]\nrun_dir = " + run_dir +
                           "\nresume = " + (resume ? "true" : "false") +
                           "\nstop_at = " + std::to_string(stop_at) + "\n";
  const auto all = dist::all_gather_strings(group, mine);
  for (size_t j = 1; j < all.size(); ++j) {
    if (all[j] == all[0]) continue;
    std::istringstream a(all[0]), b(all[j]);
    std::string la, lb;
    while (true) {
      const bool more_a = static_cast<bool>(std::getline(a, la));
      const bool more_b = static_cast<bool>(std::getline(b, lb));
      if (!more_a) la = "(nothing)";
      if (!more_b) lb = "(nothing)";
      if (la != lb || (!more_a && !more_b)) break;
    }
    throw std::invalid_argument("moe train: the ranks were not given the same run: rank 0 has `" +
                                la + "` where rank " + std::to_string(j) + " has `" + lb + "`");
  }
}

// The hooks of `moe train`. The constructor opens the run folder (a new run, or a resumed one
// whose checkpoint is checked before anything is built or changed); train() runs the Trainer.
class TrainingRun final : public TrainerHooks {
 public:
  TrainingRun(const cli::RunConfig& config, const std::string& run_dir, bool resume,
              std::shared_ptr<dist::ProcessGroup> group);
  TrainSummary train(int64_t stop_at);

  StepLoss forward(int64_t step) override;
  void on_step_end(const StepReport& report) override;
  void on_log(int64_t step) override;
  void on_checkpoint(int64_t step) override;
  void on_eval(int64_t step, bool final) override;
  bool stop_requested() override;
  void on_non_finite(const StepReport& report, NonFinite what) override;

 private:
  void open_run_folder(io::TensorFile saved, const ResumePoint& point);
  void begin_session();
  void resume_evaluations();
  void log_eval(int64_t step);
  void log_final_eval(int64_t step);
  void record(const json& rec);
  void finish(int64_t step);
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  }

  const cli::RunConfig& config_;
  const TrainConfig c_;
  const std::string run_dir_;
  const fs::path dir_, checkpoint_;
  const bool resume_;
  // A run on several processes: the group, and whether this rank writes the run folder (rank 0).
  const std::shared_ptr<dist::ProcessGroup> group_;
  const bool writer_;
  std::unique_ptr<TaskData> data_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<torch::optim::Optimizer> opt_;
  MetricsLog log_;
  std::unique_ptr<EventWriter> events_;  // TensorBoard: the scalars of every train and eval record
  std::unique_ptr<Progress> progress_;
  IntervalStats interval_;
  TrainSummary summary_;
  double earlier_seconds_ = 0;  // training time of the earlier sessions of a resumed run
  std::vector<json> kept_;      // a resumed run's records up to its checkpoint
  std::chrono::steady_clock::time_point t0_;
  // tokens/s of an interval: training time only, from the end of the previous log's stages
  double last_flush_ = 0;
  bool restart_interval_clock_ = false;
  // the step in flight, from forward to on_step_end
  ModelOutput out_;
  Metrics batch_metrics_;
  int64_t tokens_ = 0;
  double lr_ = 0;
  int64_t last_step_ = 0;  // the last step trained, for error messages
};

TrainingRun::TrainingRun(const cli::RunConfig& config, const std::string& run_dir, bool resume,
                         std::shared_ptr<dist::ProcessGroup> group)
    : config_(config),
      c_(parse_train_config(config)),
      run_dir_(run_dir),
      dir_(run_dir),
      checkpoint_(dir_ / kCheckpointFile),
      resume_(resume),
      group_(std::move(group)),
      writer_(group_ == nullptr || group_->rank() == 0),
      log_(dir_ / metrics::kFileName) {
  for (const auto& k : c_.ignored_keys)
    spdlog::warn("config: {} is not used by task {} with this model; ignored", k,
                 to_string(c_.run.task));
  for (const auto& w : c_.warnings) spdlog::warn("config: {}", w);
  check_run_folder(checkpoint_, run_dir_, resume_);
  if (group_ != nullptr && c_.run.task == Task::kMultiTask && c_.model.gate_top_k > 0)
    throw std::invalid_argument(
        "moe train: model.gate_top_k = " + std::to_string(c_.model.gate_top_k) +
        ": the sparse task gates' balance loss is not computed over the global batch on "
        "several processes yet; train them in one process or use dense gates (gate_top_k = 0)");
  // Every rank has looked at the folder before rank 0 changes it.
  if (group_ != nullptr) group_->barrier();
  if (writer_) fs::create_directories(dir_);
  // A resumed run's checkpoint is checked before anything is built (a changed model would fail
  // later with a shape error) and before anything in the run folder changes.
  io::TensorFile saved;
  ResumePoint point;
  if (resume_) {
    saved = io::load_safetensors(checkpoint_.string());
    const auto& meta = saved.metadata;
    if (meta.count("config")) check_resume_config(config_, meta.at("config"), checkpoint_.string());
    point = read_resume_point(meta, checkpoint_.string(), c_);
  }
  torch::manual_seed(c_.run.seed);
  data_ = load_task_data(c_);
  spdlog::info("data: {}", data_->describe());
  model_ = build_model(c_, data_->vocab_size(), data_->input_dim());
  if (group_ != nullptr) check_experts_divide(model_->module(), group_->size());
  opt_ = make_optimizer(c_.run, model_->module());
  open_run_folder(std::move(saved), point);
  begin_session();
  if (group_ != nullptr) {
    // Every rank built the whole model from the same seed (and loaded the same checkpoint); each
    // keeps its experts, with their optimizer state.
    distribute_experts(model_->module(), group_, opt_.get());
    model_ = std::make_unique<ShardedModel>(std::move(model_), group_);
    spdlog::info("{} processes: rank 0 of {} writes {}", group_->size(), group_->size(), run_dir_);
  }
}

// A resumed run's state and records up to its checkpoint, or a new run's empty metrics.jsonl;
// then the effective configuration.
void TrainingRun::open_run_folder(io::TensorFile saved, const ResumePoint& point) {
  if (resume_) {
    restore_checkpoint(model_->module(), *opt_, std::move(saved), checkpoint_.string());
    summary_.first_step = point.step;
    earlier_seconds_ = point.elapsed_s;
    kept_ = writer_ ? log_.truncate_after(point.step) : log_.records_up_to(point.step);
    if (writer_) remove_unfinished_writes(dir_);
    spdlog::info("resuming {} from step {}", run_dir_, point.step);
    if (point.step == c_.run.steps)
      spdlog::warn(
          "the checkpoint is at step {} and run.steps = {}: nothing to train (raise it "
          "with --set run.steps=N)",
          point.step, c_.run.steps);
  } else if (writer_) {
    std::ofstream(dir_ / metrics::kFileName, std::ios::trunc);
  }
  if (writer_)
    io::write_file_atomically((dir_ / kConfigFile).string(), config_.to_toml(), "moe train");
}

// The start record of the session and the TensorBoard file.
void TrainingRun::begin_session() {
  const int64_t step = summary_.first_step;
  summary_.parameters = count_parameters(c_, *model_);  // after a resize-mode checkpoint is loaded
  if (writer_) {
    log_.append(start_record(c_, *model_, summary_.parameters, resume_, step));
    events_ = std::make_unique<EventWriter>(dir_.string());
    if (resume_) events_->session_start(step, unix_time());
  }
  spdlog::info("model: {} ({} parameters, {} active per token), {} steps of batch {}",
               model_->description(), summary_.parameters.total, summary_.parameters.active,
               c_.run.steps, c_.run.batch_size);
}

TrainSummary TrainingRun::train(int64_t stop_at) {
  t0_ = std::chrono::steady_clock::now();
  const int64_t end = stop_at > 0 ? std::min(stop_at, c_.run.steps) : c_.run.steps;
  // Only rank 0 shows progress; the others write theirs nowhere.
  static std::FILE* const nowhere = std::fopen("/dev/null", "w");
  progress_ = writer_
                  ? std::make_unique<Progress>(end, summary_.first_step)
                  : std::make_unique<Progress>(end, summary_.first_step, nowhere, 0, 5.0, nowhere);
  if (resume_) resume_evaluations();
  StopSignals signals;
  TrainerOptions o;
  o.steps = c_.run.steps;
  o.log_every = c_.run.log_every;
  o.eval_every = c_.run.eval_every;
  o.checkpoint_every = c_.run.checkpoint_every;
  o.grad_clip = c_.run.grad_clip;
  o.measure_grad_norm = true;
  o.check_finite = true;
  o.learning_rate = [this](int64_t step) { return learning_rate(c_.run, step); };
  o.group = group_;
  last_step_ = summary_.first_step;
  Trainer trainer(model_->module(), *opt_, std::move(o));
  int64_t step = 0;
  try {
    step = trainer.run(*this, summary_.first_step, end);
  } catch (const std::exception& e) {
    if (group_ == nullptr) throw;
    // On several processes a failure of any rank ends the others at their next collective (c10d
    // reports the lost connection): say which rank this is, where, and how to go on.
    const auto* c10 = dynamic_cast<const c10::Error*>(&e);
    throw std::runtime_error(
        "moe train: rank " + std::to_string(group_->rank()) + " of " +
        std::to_string(group_->size()) + " stopped after step " + std::to_string(last_step_) +
        ": " + (c10 != nullptr ? c10->what_without_backtrace() : e.what()) +
        " (when a rank fails or is killed, the others stop too; the last checkpoint is kept: "
        "continue with `moe train --resume " +
        run_dir_ + " --nproc N`)");
  }
  summary_.interrupted = trainer.stopped();
  finish(step);
  return summary_;
}

// The checkpoint is written before the evaluations of its step: a session killed during them
// resumes by running them (evaluation changes nothing, so this is exact).
void TrainingRun::resume_evaluations() {
  const int64_t step = summary_.first_step;
  const EvalsDone done = evals_done(kept_, step);
  if (step < c_.run.steps && step % c_.run.eval_every == 0 && !done.eval) log_eval(step);
  if (step == c_.run.steps && !done.final_eval) log_final_eval(step);
}

StepLoss TrainingRun::forward(int64_t /*step*/) {
  if (restart_interval_clock_) {  // the stages of the previous step's log are over
    last_flush_ = seconds();
    restart_interval_clock_ = false;
  }
  const Batch batch = data_->train_batch(c_.run.batch_size);
  out_ = model_->forward(batch.input);
  batch_metrics_.clear();
  tokens_ = batch.tokens;
  return {data_->loss(out_, batch, &batch_metrics_), out_.aux_loss};
}

void TrainingRun::on_non_finite(const StepReport& r, NonFinite what) {
  const std::string step = std::to_string(r.step);
  if (what == NonFinite::kLoss)
    throw std::runtime_error("moe train: the loss is not finite at step " + step + " (task " +
                             std::to_string(r.task_loss) + ", aux " + std::to_string(r.aux_loss) +
                             "); the last checkpoint is kept; lower run.lr or set run.grad_clip");
  throw std::runtime_error("moe train: the gradient norm is not finite at step " + step +
                           "; the parameters were not updated and the last checkpoint is "
                           "kept; lower run.lr or set run.grad_clip");
}

void TrainingRun::on_step_end(const StepReport& r) {
  lr_ = r.lr;
  last_step_ = r.step;
  for (const auto& [name, u] : r.expert_updates)
    if (u.changed())
      progress_->note("step " + std::to_string(r.step) + ": " + name + ": experts " +
                      std::to_string(u.active_before) + " -> " + std::to_string(u.active_after) +
                      " (removed " + std::to_string(u.removed.size()) + ", added " +
                      std::to_string(u.added >= 0 ? 1 : 0) + ")");
  for (const auto& name : r.discarded_updates)
    progress_->note("step " + std::to_string(r.step) + ": " + name +
                    ": the expert update due after the run's last step is not applied (nothing "
                    "would train an added expert)");
  batch_metrics_[key::kGradNorm] = r.grad_norm;
  interval_.add(out_, batch_metrics_, r.task_loss, r.aux_loss, tokens_);
  out_ = {};
}

void TrainingRun::on_log(int64_t step) {
  if (interval_.empty()) return;  // a stop request right after this step's log
  const double now = seconds();
  const json rec = interval_.flush(step, earlier_seconds_ + now, now - last_flush_, lr_);
  record(rec);
  progress_->update(step, rec.value(key::kLoss, 0.0), rec.value(key::kTokensPerS, 0.0), now);
  restart_interval_clock_ = true;
}

bool TrainingRun::stop_requested() {
  if (group_ == nullptr) return g_stop_signal != 0;
  // A signal on any rank stops every rank after the same step.
  auto any = torch::full({1}, g_stop_signal != 0 ? 1 : 0, torch::kLong);
  group_->all_reduce_sum(any);
  return any.item<int64_t>() > 0;
}

void TrainingRun::on_checkpoint(int64_t step) {
  // On several processes every rank gathers all experts (with their optimizer state), rank 0 saves
  // the checkpoint of the whole model under the global names, and each rank keeps its experts
  // again: any world size can load it.
  if (group_ != nullptr) gather_experts(model_->module(), opt_.get());
  if (writer_) {
    std::map<std::string, std::string> meta{{"step", std::to_string(step)},
                                            {"elapsed_s", fixed(earlier_seconds_ + seconds(), 3)},
                                            {"config", config_.to_toml()},
                                            {"task", to_string(c_.run.task)}};
    save_open_records(model_->module(), &meta);
    log_.sync();
    io::save_checkpoint(model_->module(), *opt_, checkpoint_.string(), meta);
  }
  if (group_ != nullptr) distribute_experts(model_->module(), group_, opt_.get());
}

void TrainingRun::on_eval(int64_t step, bool final) {
  if (final)
    log_final_eval(step);
  else
    log_eval(step);
}

void TrainingRun::log_eval(int64_t step) {
  const metrics::EvalRecord e{step, metrics::kDefaultSplit, false,
                              metrics::eval_metrics(evaluate_during_training(
                                  *model_, *data_, c_.run.batch_size, c_.run.eval_batches))};
  record(json(e));
  const auto& v = e.metrics.values;
  auto value = [&](const char* k) { return v.count(k) ? v.at(k) : 0.0; };
  progress_->note("step " + std::to_string(step) + ": valid loss " + fixed(value(key::kLoss), 4) +
                  (v.count(key::kBpc) ? ", bpc " + fixed(value(key::kBpc), 4) : "") +
                  (v.count(key::kAccuracy) ? ", accuracy " + fixed(value(key::kAccuracy), 4) : ""));
}

void TrainingRun::log_final_eval(int64_t step) {
  summary_.valid = evaluate_during_training(*model_, *data_, c_.run.batch_size, 0);
  record(json(metrics::EvalRecord{step, metrics::kDefaultSplit, true,
                                  metrics::eval_metrics(summary_.valid)}));
}

void TrainingRun::record(const json& rec) {
  if (!writer_) return;
  log_.append(rec);
  events_->scalars(rec.at(key::kStep).get<int64_t>(), unix_time(), tensorboard_scalars(rec));
}

void TrainingRun::finish(int64_t step) {
  progress_->finish();
  summary_.last_step = step;
  summary_.seconds = seconds();
  summary_.load = interval_.run_load();
  if (step == c_.run.steps && step > summary_.first_step && writer_)
    log_.append(metrics::EndRecord{step, earlier_seconds_ + summary_.seconds});
  else if (step < c_.run.steps)
    spdlog::info("{} at step {} of {} with a checkpoint; continue with: moe train --resume {}",
                 summary_.interrupted ? "interrupted" : "stopped", step, c_.run.steps, run_dir_);
}

}  // namespace

TrainSummary run_training(const cli::RunConfig& config, const std::string& run_dir, bool resume,
                          int64_t stop_at, std::shared_ptr<dist::ProcessGroup> group) {
  if (group != nullptr) check_ranks_agree(group, config, run_dir, resume, stop_at);
  TrainingRun run(config, run_dir, resume, std::move(group));
  return run.train(stop_at);
}

Metrics run_evaluation(const std::string& run_dir, const std::string& split,
                       c10::optional<int64_t> inference_top_k,
                       const std::vector<std::string>& sets) {
  if (split != "valid" && split != "test")
    throw std::invalid_argument("moe eval: --split " + split + ": expected valid or test");
  const fs::path dir(run_dir), checkpoint = dir / kCheckpointFile;
  if (!fs::exists(checkpoint))
    throw std::invalid_argument("moe eval: " + checkpoint.string() +
                                " does not exist (train first: moe train CONFIG --out " + run_dir +
                                ")");
  auto config = cli::RunConfig::from_file((dir / kConfigFile).string());
  for (const auto& s : sets) config.set(s);
  const TrainConfig c = parse_train_config(config);
  auto data = load_task_data(c);
  auto model = build_model(c, data->vocab_size(), data->input_dim());
  auto opt = make_optimizer(c.run, model->module());
  io::load_checkpoint(model->module(), *opt, checkpoint.string());
  if (inference_top_k) set_inference_top_k(model->module(), c, *inference_top_k);
  torch::NoGradGuard no_grad;
  model->module().eval();
  return data->evaluate(*model, split, c.run.batch_size, 0);
}

}  // namespace moe::train
