// parse_train_config (tools/train/train_config.h).
#include "train/train_config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <set>
#include <sstream>
#include <stdexcept>

#include "cli/run_config.h"

namespace moe::train {
namespace {

using moe::cli::RunConfig;

std::string number(double v) {
  std::ostringstream s;
  s << v;  // 6 significant digits: 1e-15 stays 1e-15, 0.002 stays 0.002
  return s.str();
}

[[noreturn]] void bad(const std::string& key, const std::string& value,
                      const std::string& expected) {
  throw std::invalid_argument("config: " + key + " = " + value + ": expected " + expected);
}

int64_t int_at_least(const RunConfig& c, const std::string& key, int64_t fallback, int64_t min) {
  const int64_t v = c.get_int(key, fallback);
  if (v < min) bad(key, std::to_string(v), "an integer >= " + std::to_string(min));
  return v;
}

double number_in(const RunConfig& c, const std::string& key, double fallback, double lo,
                 double hi) {
  const double v = c.get_double(key, fallback);
  if (!std::isfinite(v) || v < lo || v > hi) {
    std::ostringstream s;
    s << "a number in [" << lo << ", " << hi << "]";
    bad(key, number(v), s.str());
  }
  return v;
}

std::string one_of(const RunConfig& c, const std::string& key, const std::string& fallback,
                   const std::vector<std::string>& allowed) {
  const std::string v = c.get_string(key, fallback);
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    bad(key, "'" + v + "'", "one of " + list);
  }
  return v;
}

std::vector<int64_t> widths(const RunConfig& c, const std::string& key,
                            const std::vector<int64_t>& fallback) {
  const auto v = c.get_int_list(key, fallback);
  for (const int64_t w : v)
    if (w < 1) bad(key, std::to_string(w), "widths >= 1");
  return v;
}

// An optional coefficient: absent = -1 (the router's default).
double coef(const RunConfig& c, const std::string& key) {
  if (!c.has(key)) return -1;
  return number_in(c, key, 0, 0, 1e6);
}

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

// The keys of DynMoE's top-any layers (docs/cli.md).
void parse_top_any(const RunConfig& c, MoESection& m) {
  m.initial_experts =
      int_at_least(c, "moe.initial_experts", std::max<int64_t>(1, m.num_experts / 2), 1);
  if (m.initial_experts > m.num_experts)
    bad("moe.initial_experts", std::to_string(m.initial_experts),
        "at most moe.num_experts = " + std::to_string(m.num_experts) + " (the pool size E_max)");
  m.storage = one_of(c, "moe.storage", m.storage, {"pool", "resize"});
  m.schedule = one_of(c, "moe.schedule", m.schedule, {"window", "every_step", "manual"});
  if (m.schedule == "window") {
    m.record = int_at_least(c, "moe.record", m.record, 1);
    m.period = int_at_least(c, "moe.period", m.period, 2);
    if (m.record >= m.period)
      bad("moe.record", std::to_string(m.record),
          "less than moe.period = " + std::to_string(m.period));
  }
  m.temperature = one_of(c, "moe.temperature", m.temperature, {"frozen", "trainable", "none"});
  m.top_any_aux_coef = number_in(c, "moe.aux_coef", m.top_any_aux_coef, 0, 1e6);
  m.top_k = 0;  // top-any: every token chooses its own k
}

// The keys of the two-level gate (docs/cli.md).
void parse_hierarchical(const RunConfig& c, MoESection& m, int64_t default_k) {
  m.groups = int_at_least(c, "moe.groups", 0, 0);
  if (m.groups == 0) {  // the largest divisor of E not above sqrt(E)
    int64_t g = static_cast<int64_t>(std::sqrt(static_cast<double>(m.num_experts)));
    while (m.num_experts % g != 0) --g;
    m.groups = g;
  }
  if (m.num_experts % m.groups != 0)
    bad("moe.groups", std::to_string(m.groups),
        "a divisor of moe.num_experts = " + std::to_string(m.num_experts));
  m.top_k = int_at_least(c, "moe.top_k", std::min(default_k, m.groups), 1);
  if (m.top_k > m.groups)
    bad("moe.top_k", std::to_string(m.top_k),
        "at most moe.groups = " + std::to_string(m.groups) + " (the primary gate's k)");
  m.secondary_top_k =
      int_at_least(c, "moe.secondary_top_k", std::min<int64_t>(2, m.num_experts / m.groups), 1);
  if (m.secondary_top_k > m.num_experts / m.groups)
    bad("moe.secondary_top_k", std::to_string(m.secondary_top_k),
        "at most the experts per group, " + std::to_string(m.num_experts / m.groups));
  m.importance_coef = coef(c, "moe.importance_coef");
  m.load_coef = coef(c, "moe.load_coef");
  m.noisy_gating = c.get_bool("moe.noisy_gating", m.noisy_gating);
  m.noise_epsilon = number_in(c, "moe.noise_epsilon", m.noise_epsilon, 0, 1e3);
}

MoESection parse_moe(const RunConfig& c) {
  MoESection m;
  m.router = one_of(c, "moe.router", m.router,
                    {"softmax_topk", "noisy_topk", "switch", "top_any", "hyper", "smoe_dropout",
                     "hierarchical", "expert_choice"});
  m.num_experts = int_at_least(c, "moe.num_experts", m.num_experts, 1);
  m.hidden = int_at_least(c, "moe.hidden", m.hidden, 1);
  m.activation =
      one_of(c, "moe.activation", m.activation, {"relu", "gelu", "silu", "swiglu", "geglu"});
  if (m.router == "top_any") {
    parse_top_any(c, m);
    return m;
  }
  if (m.router == "expert_choice") {  // each expert takes T·cf/E tokens; on average cf per token
    m.capacity_factor = number_in(c, "moe.capacity_factor", 2.0, 0, 1e6);
    if (!(m.capacity_factor > 0))
      bad("moe.capacity_factor", std::to_string(m.capacity_factor),
          "> 0 for expert_choice (the tokens each expert takes: T * capacity_factor / E)");
    m.z_loss_coef = coef(c, "moe.z_loss_coef");
    m.top_k = 0;  // no k: an expert takes tokens, a token gets 0 to E experts
    return m;
  }
  const int64_t default_k = m.router == "switch" ? 1 : 2;
  if (m.router == "hierarchical") {
    parse_hierarchical(c, m, default_k);
    return m;
  }
  m.top_k = int_at_least(c, "moe.top_k", std::min(default_k, m.num_experts), 1);
  if (m.top_k > m.num_experts)
    bad("moe.top_k", std::to_string(m.top_k),
        "at most moe.num_experts = " + std::to_string(m.num_experts));
  if (m.router == "hyper" || m.router == "smoe_dropout") {
    m.k_schedule =
        one_of(c, "moe.k_schedule", m.k_schedule,
               {"constant", "linear_increase", "linear_decrease", "cosine_increase",
                "cosine_decrease", "exp_increase", "multistep_increase", "multistep_decrease"});
    if (m.k_schedule != "constant") {
      m.k_min = int_at_least(c, "moe.k_min", m.top_k, 1);
      m.k_max = int_at_least(c, "moe.k_max", m.num_experts, 1);
      if (m.k_min > m.k_max || m.k_max > m.num_experts)
        bad("moe.k_min/k_max", std::to_string(m.k_min) + "/" + std::to_string(m.k_max),
            "1 <= k_min <= k_max <= moe.num_experts = " + std::to_string(m.num_experts));
    }
    if (m.router == "hyper")
      m.hyper_hidden = int_at_least(c, "moe.hyper_hidden", m.hyper_hidden, 1);
    m.balance_coef = coef(c, "moe.balance_coef");
    m.z_loss_coef = coef(c, "moe.z_loss_coef");
    return m;
  }
  m.capacity_factor = number_in(c, "moe.capacity_factor", m.capacity_factor, 0, 1e6);
  m.importance_coef = coef(c, "moe.importance_coef");
  m.load_coef = coef(c, "moe.load_coef");
  m.balance_coef = coef(c, "moe.balance_coef");
  m.z_loss_coef = coef(c, "moe.z_loss_coef");
  if (m.router == "noisy_topk") {
    m.noisy_gating = c.get_bool("moe.noisy_gating", m.noisy_gating);
    m.noise_epsilon = number_in(c, "moe.noise_epsilon", m.noise_epsilon, 0, 1e3);
  }
  return m;
}

}  // namespace

int64_t experts_per_token(const MoESection& m) {
  if (m.router == "top_any") return 1;
  if (m.router == "expert_choice")
    return std::max<int64_t>(1, static_cast<int64_t>(std::llround(m.capacity_factor)));
  if (m.router == "hierarchical") return m.top_k * m.secondary_top_k;
  return std::max(m.top_k, m.k_max);
}

namespace {

// Every key of docs/cli.md, for any task and router.
bool is_known_key(const std::string& key) {
  static const std::set<std::string> known = {"run.task",
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
                                              "moe.capacity_factor",
                                              "moe.noisy_gating",
                                              "moe.noise_epsilon",
                                              "moe.importance_coef",
                                              "moe.load_coef",
                                              "moe.balance_coef",
                                              "moe.z_loss_coef",
                                              "moe.groups",
                                              "moe.secondary_top_k",
                                              "moe.initial_experts",
                                              "moe.storage",
                                              "moe.schedule",
                                              "moe.record",
                                              "moe.period",
                                              "moe.temperature",
                                              "moe.aux_coef",
                                              "moe.k_schedule",
                                              "moe.k_min",
                                              "moe.k_max",
                                              "moe.hyper_hidden"};
  return known.count(key) > 0;
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
  return t;
}

}  // namespace moe::train
