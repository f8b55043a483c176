// parse_train_config (tools/train/train_config.h).
#include "train/train_config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

#include "cli/run_config.h"
#include "train/cli_routers.h"
#include "train/config_readers.h"

namespace moe::train {
namespace {

using moe::cli::RunConfig;
using namespace config;

RunSection parse_run(const RunConfig& c, Task task) {
  RunSection r;
  r.task = task;
  r.seed = static_cast<uint64_t>(int_at_least(c, "run.seed", 0, 0));
  r.steps = int_at_least(c, "run.steps", r.steps, 1);
  r.batch_size = int_at_least(c, "run.batch_size", r.batch_size, 1);
  r.optimizer = one_of(c, "run.optimizer", r.optimizer, {"adam", "adamw", "sgd"});
  r.lr = number_in(c, "run.lr", r.lr, 1e-12, 10);
  r.min_lr_fraction = number_in(c, "run.min_lr_fraction", r.min_lr_fraction, 0, 1);
  r.warmup_steps = int_at_least(c, "run.warmup_steps", r.warmup_steps, 0);
  r.weight_decay = number_in(c, "run.weight_decay", r.weight_decay, 0, 10);
  if (r.optimizer == "sgd") r.momentum = number_in(c, "run.momentum", r.momentum, 0, 1);
  r.grad_clip = number_in(c, "run.grad_clip", r.grad_clip, 0, 1e9);
  r.log_every = int_at_least(c, "run.log_every", r.log_every, 1);
  r.eval_every = int_at_least(c, "run.eval_every", r.eval_every, 1);
  r.eval_batches = int_at_least(c, "run.eval_batches", r.eval_batches, 0);
  r.checkpoint_every = int_at_least(c, "run.checkpoint_every", r.checkpoint_every, 1);
  return r;
}

MoESection parse_moe(const RunConfig& c) {
  MoESection m;
  std::vector<std::string> names;
  for (const auto& r : cli_routers()) names.push_back(r.name);
  m.router = one_of(c, "moe.router", m.router, names);
  m.num_experts = int_at_least(c, "moe.num_experts", m.num_experts, 1);
  m.hidden = int_at_least(c, "moe.hidden", m.hidden, 1);
  m.activation =
      one_of(c, "moe.activation", m.activation, {"relu", "gelu", "silu", "swiglu", "geglu"});
  cli_router(m.router).parse(c, m);
  return m;
}

}  // namespace

int64_t experts_per_token(const MoESection& m) { return cli_router(m.router).experts_per_token(m); }

namespace {

// Every key of docs/cli.md, for any task and router.
bool is_known_key(const std::string& key) {
  static const std::set<std::string> known = {
      "run.task",
      "run.seed",
      "run.steps",
      "run.batch_size",
      "run.optimizer",
      "run.lr",
      "run.min_lr_fraction",
      "run.warmup_steps",
      "run.weight_decay",
      "run.momentum",
      "run.grad_clip",
      "run.log_every",
      "run.eval_every",
      "run.eval_batches",
      "run.checkpoint_every",
      "data.dir",
      "data.context",
      "data.file",
      "data.correlation",
      "data.samples",
      "data.dim",
      "data.seed",
      "model.d_model",
      "model.layers",
      "model.heads",
      "model.moe_every",
      "model.dense_hidden",
      "model.dropout",
      "model.kind",
      "model.num_experts",
      "model.expert_hidden",
      "model.tower_hidden",
      "model.bottom_hidden",
      "model.levels",
      "model.specific_experts",
      "model.shared_experts",
      "model.gate_top_k",
      "moe.router",
      "moe.num_experts",
      "moe.top_k",
      "moe.hidden",
      "moe.activation",
  };
  if (known.count(key) > 0) return true;
  for (const auto& r : cli_routers())
    if (std::find(r.keys.begin(), r.keys.end(), key) != r.keys.end()) return true;
  return false;
}

}  // namespace

const char* to_string(Task t) {
  switch (t) {
    case Task::kLanguageModel:
      return "lm";
    case Task::kClassify:
      return "classify";
    case Task::kMultiTask:
      return "multitask";
  }
  return "?";
}

// DynMoE's window schedule updates the expert set first after training step 2·record (one forward
// per step; docs/dynmoe.md). A run that ends by then trains with the initial experts throughout,
// which a user who chose top_any for its self-tuning expert count should be told.
std::vector<std::string> schedule_warnings(const TrainConfig& t) {
  std::vector<std::string> out;
  const bool moe_model = t.run.task == Task::kMultiTask ? false : t.model.moe_every > 0;
  if (!moe_model || t.moe.router != "top_any" || t.moe.schedule != "window") return out;
  const int64_t first_update = 2 * t.moe.record;
  if (first_update < t.run.steps) return out;
  const int64_t record = std::max<int64_t>(1, t.run.steps / 10);
  out.push_back("moe.schedule = \"window\" with moe.record = " + std::to_string(t.moe.record) +
                ", moe.period = " + std::to_string(t.moe.period) +
                ": DynMoE's first expert update comes after step " + std::to_string(first_update) +
                " but run.steps = " + std::to_string(t.run.steps) +
                ", so the expert set will not change while training; scale the window to the run "
                "(e.g. --set moe.record=" +
                std::to_string(record) + " --set moe.period=" + std::to_string(3 * record) +
                ") or set moe.schedule = \"every_step\" (docs/dynmoe.md)");
  return out;
}

TrainConfig parse_train_config(const RunConfig& c) {
  if (!c.has("run.task"))
    throw std::invalid_argument(
        "config: run.task is missing: set it to lm (character language model), classify "
        "(Fashion-MNIST) or multitask (MMoE synthetic data)");
  const std::string task = one_of(c, "run.task", "lm", {"lm", "classify", "multitask"});
  TrainConfig t;
  const Task kind = task == "lm"         ? Task::kLanguageModel
                    : task == "classify" ? Task::kClassify
                                         : Task::kMultiTask;
  t.run = parse_run(c, kind);
  ModelSection& m = t.model;
  DataSection& d = t.data;
  if (kind == Task::kMultiTask) {
    d.file = c.get_string("data.file", "");
    if (d.file.empty()) {
      d.correlation = number_in(c, "data.correlation", d.correlation, -1, 1);
      d.samples = int_at_least(c, "data.samples", d.samples, 10);
      d.dim = int_at_least(c, "data.dim", d.dim, 2);
      d.data_seed = static_cast<uint64_t>(int_at_least(c, "data.seed", 0, 0));
    }
    m.kind = one_of(c, "model.kind", m.kind, {"shared_bottom", "omoe", "mmoe", "cgc", "ple"});
    m.tower_hidden = widths(c, "model.tower_hidden", m.tower_hidden);
    if (m.kind == "shared_bottom") {
      m.bottom_hidden = widths(c, "model.bottom_hidden", m.bottom_hidden);
    } else {
      m.expert_hidden = widths(c, "model.expert_hidden", m.expert_hidden);
      m.gate_top_k = int_at_least(c, "model.gate_top_k", 0, 0);
      if (m.kind == "mmoe" || m.kind == "omoe") {
        m.num_experts = int_at_least(c, "model.num_experts", m.num_experts, 1);
      } else {
        m.levels = m.kind == "cgc" ? 1 : int_at_least(c, "model.levels", m.levels, 1);
        m.specific_experts = int_at_least(c, "model.specific_experts", m.specific_experts, 1);
        m.shared_experts = int_at_least(c, "model.shared_experts", m.shared_experts, 1);
      }
    }
  } else {
    d.dir = c.get_string("data.dir", kind == Task::kLanguageModel
                                         ? "data/kjv"
                                         : "/usr/share/datasets/fashion-mnist");
    if (kind == Task::kLanguageModel) {
      d.context = int_at_least(c, "data.context", d.context, 2);
      m.heads = int_at_least(c, "model.heads", m.heads, 1);
    }
    m.d_model = int_at_least(c, "model.d_model", m.d_model, 1);
    m.layers = int_at_least(c, "model.layers", kind == Task::kLanguageModel ? 4 : 1, 1);
    if (kind == Task::kLanguageModel && m.d_model % m.heads != 0)
      bad("model.heads", std::to_string(m.heads),
          "a divisor of model.d_model = " + std::to_string(m.d_model));
    m.moe_every = int_at_least(c, "model.moe_every", m.moe_every, 0);
    if (kind == Task::kLanguageModel) m.dropout = number_in(c, "model.dropout", m.dropout, 0, 0.99);
    if (m.moe_every > m.layers)
      bad("model.moe_every", std::to_string(m.moe_every),
          "0 (dense) or at most model.layers = " + std::to_string(m.layers));
    // The [moe] section is read even for a dense model: its top_k · hidden sets the dense width
    // of equal active compute.
    t.moe = parse_moe(c);
    const int64_t k = experts_per_token(t.moe);
    // Saturated, not wrapped: an absurd moe.hidden must reach the memory check as absurd, not
    // as a negative width blamed on model.dense_hidden.
    const int64_t equal_compute = t.moe.hidden > std::numeric_limits<int64_t>::max() / k
                                      ? std::numeric_limits<int64_t>::max()
                                      : k * t.moe.hidden;
    m.dense_hidden = int_at_least(c, "model.dense_hidden", equal_compute, 1);
  }
  // A key no task or router knows is a typo: an error. A key of another router or task (e.g.
  // moe.top_k after --set moe.router="top_any") is listed in `ignored_keys` for a warning.
  std::string unknown;
  for (const auto& k : c.unread_keys()) {
    if (is_known_key(k))
      t.ignored_keys.push_back(k);
    else
      unknown += (unknown.empty() ? "" : ", ") + k;
  }
  if (!unknown.empty())
    throw std::invalid_argument("config: unknown key(s): " + unknown +
                                " (docs/cli.md lists the keys)");
  t.warnings = schedule_warnings(t);
  return t;
}

}  // namespace moe::train
