// The memory estimate of a `moe train` configuration and the memory available
// (tools/train/memory_estimate.h).
//
// The estimate follows the models of tools/train/models.cpp: keep them in step.
#include "train/memory_estimate.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "train/cli_routers.h"

namespace moe::train {
namespace {

using LD = long double;
constexpr LD kFloat = 4;  // float32 parameters and activations

template <typename T>
std::string kv(const std::string& key, T value) {
  std::ostringstream s;
  s << key << " = " << value;
  return s.str();
}

// Bytes per trainable parameter: the value, its gradient, the optimizer's state (Adam: 2 moments;
// SGD: the momentum buffer) and two spare copies (the engine's stacked weight-gradient buffers,
// the optimizer's temporaries, the checkpoint writer). A parameter-heavy run of
// tests/cli/test_cli_robustness.cpp measured about 20 bytes per parameter with Adam; 24 here.
LD bytes_per_parameter(const RunSection& r) {
  const LD states = r.optimizer == "sgd" ? (r.momentum > 0 ? 1 : 0) : 2;
  return kFloat * (4 + states);
}

int64_t gated_mats(const std::string& activation) {
  return activation == "swiglu" || activation == "geglu" ? 3 : 2;
}

// Experts each token may use: the activations of the expert hidden layers grow with it.
LD most_experts_per_token(const MoESection& m) {
  return static_cast<LD>(cli_router(m.router).most_experts_per_token(m));
}

struct Counts {
  LD experts = 0, routers = 0, hyper = 0, dense = 0, attention = 0, embeddings = 0;
  int64_t sparse_blocks = 0, dense_blocks = 0;
};

// Parameters of the LM and the classifier, by part (models.cpp: TransformerLM, Classifier).
Counts count_single_task(const TrainConfig& c, LD vocab) {
  const ModelSection& m = c.model;
  const MoESection& e = c.moe;
  const LD d = static_cast<LD>(m.d_model), E = static_cast<LD>(e.num_experts);
  const LD h = static_cast<LD>(e.hidden), mats = static_cast<LD>(gated_mats(e.activation));
  Counts n;
  // block_is_sparse() of models.cpp: blocks moe_every - 1, 2·moe_every - 1, ...
  n.sparse_blocks = m.moe_every > 0 ? m.layers / m.moe_every : 0;
  n.dense_blocks = m.layers - n.sparse_blocks;
  const LD S = static_cast<LD>(n.sparse_blocks), D = static_cast<LD>(n.dense_blocks);
  const LD Hd = static_cast<LD>(m.dense_hidden);
  n.dense = D * (mats * d * Hd + (mats - 1) * Hd + d);
  n.experts = S * E * mats * d * h;
  const CliRouter& router = cli_router(e.router);
  n.routers = S * static_cast<LD>(router.router_parameters(e, static_cast<double>(d)));
  // A frozen hyper-network is an estimate line of its own.
  if (router.frozen_parameters != nullptr)
    n.hyper = S * static_cast<LD>(router.frozen_parameters(e, static_cast<double>(d)));
  const LD L = static_cast<LD>(m.layers);
  if (c.run.task == Task::kLanguageModel) {
    n.attention = L * (4 * d * d + 4 * d + 4 * d);  // qkv, proj, two LayerNorms
    n.embeddings = (vocab + static_cast<LD>(c.data.context)) * d + d * vocab + vocab + 2 * d;
  } else {
    n.embeddings = 784 * d + d + 10 * d + 10;
  }
  return n;
}

// Parameters of a stack of `experts` MLPs (multitask StackedMLP) from width `in`.
LD stacked_mlp(LD experts, LD in, const std::vector<int64_t>& hidden) {
  LD n = 0;
  for (const int64_t w : hidden) {
    n += experts * (in * static_cast<LD>(w) + static_cast<LD>(w));
    in = static_cast<LD>(w);
  }
  return n;
}

LD multitask_parameters(const ModelSection& m, LD in) {
  const LD tasks = 2;
  const auto width = [](const std::vector<int64_t>& v) { return static_cast<LD>(v.back()); };
  LD n = 0, top = 0;
  if (m.kind == "shared_bottom") {
    n = stacked_mlp(1, in, m.bottom_hidden);
    top = width(m.bottom_hidden);
  } else if (m.kind == "mmoe" || m.kind == "omoe") {
    const LD E = static_cast<LD>(m.num_experts), gates = m.kind == "omoe" ? 1 : tasks;
    n = stacked_mlp(E, in, m.expert_hidden) + gates * E * in;
    top = width(m.expert_hidden);
  } else {
    const LD mk = static_cast<LD>(m.specific_experts), ms = static_cast<LD>(m.shared_experts);
    for (int64_t l = 0; l < m.levels; ++l) {
      n += stacked_mlp(tasks * mk + ms, in, m.expert_hidden) + tasks * (mk + ms) * in;
      if (l + 1 < m.levels) n += (tasks * mk + ms) * in;  // the shared gate
      in = width(m.expert_hidden);
    }
    top = in;
  }
  std::vector<int64_t> tower = m.tower_hidden;
  tower.push_back(1);
  return n + tasks * stacked_mlp(1, top, tower);
}

// Widths a multitask forward pass writes per sample (expert layers, gates, towers).
LD multitask_widths(const ModelSection& m) {
  LD experts = 1, levels = 1;
  if (m.kind == "mmoe" || m.kind == "omoe") experts = static_cast<LD>(m.num_experts);
  if (m.kind == "cgc" || m.kind == "ple") {
    experts = 2 * static_cast<LD>(m.specific_experts) + static_cast<LD>(m.shared_experts);
    levels = static_cast<LD>(m.levels);
  }
  LD w = 0;
  for (const int64_t h : m.kind == "shared_bottom" ? m.bottom_hidden : m.expert_hidden)
    w += static_cast<LD>(h);
  LD towers = 0;
  for (const int64_t h : m.tower_hidden) towers += static_cast<LD>(h);
  return levels * (experts * w + 3 * experts) + 2 * towers + 8;
}

LD file_bytes(const std::filesystem::path& p) {
  std::error_code ec;
  const auto n = std::filesystem::file_size(p, ec);
  return ec ? 0 : static_cast<LD>(n);
}

void add(MemoryEstimate* e, std::string what, LD bytes, std::vector<std::string> keys) {
  if (bytes <= 0) return;
  e->bytes += bytes;
  e->terms.push_back({std::move(what), bytes, std::move(keys)});
}

// The LM and the classifier: parameters by part, then one training step's activations.
void estimate_single_task(const TrainConfig& c, LD vocab, MemoryEstimate* e) {
  const ModelSection& m = c.model;
  const MoESection& x = c.moe;
  const bool lm = c.run.task == Task::kLanguageModel;
  const Counts n = count_single_task(c, vocab);
  e->parameters = n.experts + n.routers + n.hyper + n.dense + n.attention + n.embeddings;
  const LD per = bytes_per_parameter(c.run);
  const std::string layers = kv("model.layers", m.layers), d = kv("model.d_model", m.d_model);
  const std::string E = kv("moe.num_experts", x.num_experts);
  add(e, "expert weights", per * n.experts, {kv("moe.hidden", x.hidden), E, d, layers});
  add(e, "routers", per * n.routers, {E, d, layers});
  add(e, "hyper-networks (frozen)", 2 * kFloat * n.hyper,
      {kv("moe.hyper_hidden", x.hyper_hidden), E, d, layers});
  // model.dense_hidden defaults to moe.top_k · moe.hidden: name the key the user set
  std::string dense_key = kv("model.dense_hidden", m.dense_hidden);
  const int64_t k = experts_per_token(x);
  if (m.dense_hidden == (x.hidden > INT64_MAX / k ? INT64_MAX : k * x.hidden))
    dense_key += " (moe.top_k x moe.hidden, moe.hidden = " + std::to_string(x.hidden) + ")";
  add(e, "dense feed-forward layers", per * n.dense, {dense_key, d, layers});
  add(e, "attention layers", per * n.attention, {d, layers});
  add(e, "embeddings and output layer", per * n.embeddings,
      lm ? std::vector<std::string>{d, kv("data.context", c.data.context)}
         : std::vector<std::string>{d});
  // Activations kept for the backward pass of one step (with their gradients), per token.
  const LD T = static_cast<LD>(c.run.batch_size) * (lm ? static_cast<LD>(c.data.context) : 1);
  const std::string B = kv("run.batch_size", c.run.batch_size);
  std::vector<std::string> tokens{B};
  if (lm) tokens.push_back(kv("data.context", c.data.context));
  const auto with = [&](std::vector<std::string> k) {
    k.insert(k.begin(), tokens.begin(), tokens.end());
    return k;
  };
  const LD L = static_cast<LD>(m.layers), S = static_cast<LD>(n.sparse_blocks);
  const LD D = static_cast<LD>(n.dense_blocks);
  const LD mats = static_cast<LD>(gated_mats(x.activation));
  add(e, "activations: residual stream", kFloat * T * (lm ? 16 : 6) * L * m.d_model,
      with({d, layers}));
  if (lm)
    add(e, "activations: attention scores",
        kFloat * static_cast<LD>(c.run.batch_size) * m.heads * (m.dropout > 0 ? 6 : 4) * L *
            static_cast<LD>(c.data.context) * static_cast<LD>(c.data.context),
        {B, kv("data.context", c.data.context), kv("model.heads", m.heads), layers});
  add(e, "activations: expert hidden layers",
      kFloat * T * S * most_experts_per_token(x) * 2 * (mats - 1) * x.hidden,
      with({kv("moe.hidden", x.hidden), kv("moe.top_k", x.top_k), layers}));
  add(e, "activations: routers", kFloat * T * S * 6 * x.num_experts, with({E, layers}));
  add(e, "activations: dense feed-forward layers", kFloat * T * D * 2 * (mats - 1) * m.dense_hidden,
      with({dense_key, layers}));
  add(e, "activations: output", kFloat * T * 4 * (lm ? vocab : 10) + kFloat * T * (lm ? 0 : 784),
      tokens);
  if (lm) {
    LD text = 0;
    for (const char* f : {"train.txt", "valid.txt", "test.txt"})
      text += file_bytes(std::filesystem::path(c.data.dir) / f);
    add(e, "the corpus (text and int64 ids)", 9 * text, {kv("data.dir", c.data.dir)});
  } else {
    add(e, "Fashion-MNIST images", 70000.0L * 784 * 6, {kv("data.dir", c.data.dir)});
  }
}

void estimate_multitask(const TrainConfig& c, LD input_dim, MemoryEstimate* e) {
  const ModelSection& m = c.model;
  e->parameters = multitask_parameters(m, input_dim);
  const std::string kind = kv("model.kind", m.kind);
  add(e, "parameters, gradients and optimizer state", bytes_per_parameter(c.run) * e->parameters,
      {kind, kv("data.dim", c.data.dim), kv("model.num_experts", m.num_experts)});
  const LD widths = multitask_widths(m);
  add(e, "activations of one step",
      kFloat * 2 * static_cast<LD>(c.run.batch_size) * (widths + input_dim),
      {kv("run.batch_size", c.run.batch_size), kind});
  // The final evaluation runs the whole validation split (a tenth of the data) in one batch.
  const bool file = !c.data.file.empty();
  const LD samples = file ? 0 : static_cast<LD>(c.data.samples);
  const std::string n = file ? kv("data.file", c.data.file) : kv("data.samples", c.data.samples);
  if (file) {
    add(e, "the data file", 2 * file_bytes(c.data.file), {n});
  } else {
    add(e, "generated data", synthetic_data_bytes(c.data.samples, c.data.dim),
        {n, kv("data.dim", c.data.dim)});
    add(e, "evaluation of the validation split in one batch", kFloat * samples / 10 * widths,
        {n, kind});
  }
}

// A number from a file holding one ("max" and unreadable files: none).
LD read_limit(const std::string& path) {
  std::ifstream f(path);
  std::string s;
  if (!(f >> s) || s == "max") return -1;
  try {
    const LD v = std::stold(s);
    return v >= 1e18L ? -1 : v;  // cgroup v1 writes ~2^63 for "no limit"
  } catch (const std::exception&) {
    return -1;
  }
}

// This process's cgroup v2 folder from /proc/self/cgroup ("0::/path").
std::string cgroup_v2_dir() {
  std::ifstream f("/proc/self/cgroup");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("0::", 0) == 0) return "/sys/fs/cgroup" + line.substr(3);
  return "/sys/fs/cgroup";
}

}  // namespace

long double synthetic_data_bytes(int64_t samples, int64_t dim) {
  return static_cast<LD>(samples) * (12 * static_cast<LD>(dim) + 24 * 10 + 64);
}

MemoryEstimate estimate_memory(const TrainConfig& c, int64_t vocab_size, int64_t input_dim) {
  MemoryEstimate e;
  add(&e, "LibTorch and thread pools", kProcessBaseBytes, {});
  if (c.run.task == Task::kMultiTask)
    estimate_multitask(c, input_dim > 0 ? input_dim : c.data.dim, &e);
  else
    estimate_single_task(c, vocab_size > 0 ? vocab_size : 256, &e);
  std::sort(e.terms.begin(), e.terms.end(),
            [](const MemoryTerm& a, const MemoryTerm& b) { return a.bytes > b.bytes; });
  return e;
}

std::string format_bytes(long double b) {
  const char* units[] = {"bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  int u = 0;
  while (b >= 1024 && u < 6) {
    b /= 1024;
    ++u;
  }
  char buf[48];
  if (b >= 1e6L)
    std::snprintf(buf, sizeof buf, "%.3Lg %s", b, units[u]);
  else
    std::snprintf(buf, sizeof buf, u == 0 ? "%.0Lf %s" : "%.1Lf %s", b, units[u]);
  return buf;
}

MemoryLimit available_memory() {
  MemoryLimit m;
  std::ifstream f("/proc/meminfo");
  LD available = -1;
  for (std::string key; f >> key;) {
    LD kib = 0;
    f >> kib;
    if (key == "MemAvailable:") available = kib * 1024;
    f.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
  LD cgroup = -1;
  for (const std::string& p :
       {cgroup_v2_dir() + "/memory.max", std::string("/sys/fs/cgroup/memory.max"),
        std::string("/sys/fs/cgroup/memory/memory.limit_in_bytes")}) {
    cgroup = read_limit(p);
    if (cgroup > 0) break;
  }
  if (available > 0) {
    m.bytes = available;
    m.description = "MemAvailable " + format_bytes(available);
  }
  if (cgroup > 0) {
    m.bytes = std::min(m.bytes, cgroup);
    m.description +=
        (m.description.empty() ? "" : ", ") + std::string("cgroup limit ") + format_bytes(cgroup);
  }
  if (m.description.empty()) m.description = "no limit found in /proc/meminfo or the cgroup";
  return m;
}

void check_memory(const TrainConfig& c, const MemoryLimit& limit, int64_t vocab_size,
                  int64_t input_dim) {
  const MemoryEstimate e = estimate_memory(c, vocab_size, input_dim);
  if (e.bytes <= limit.bytes) return;
  std::string parts;
  for (const auto& t : e.terms) {
    if (t.keys.empty() || (!parts.empty() && t.bytes < e.bytes / 10)) continue;
    std::string keys;
    for (const auto& k : t.keys) keys += (keys.empty() ? "" : ", ") + k;
    parts += (parts.empty() ? "" : "; ") + t.what + " " + format_bytes(t.bytes) + " (" + keys + ")";
  }
  throw std::invalid_argument("config: this run needs about " + format_bytes(e.bytes) +
                              " of memory, more than the " + format_bytes(limit.bytes) +
                              " available (" + limit.description + "). Largest parts: " + parts +
                              ". Lower these values (docs/cli.md, \"Memory check\")");
}

}  // namespace moe::train
