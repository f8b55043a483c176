// The models of `moe train` (tools/train/models.h).
#include "train/models.h"

#include <torch/torch.h>

#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include "moe/moe.h"
#include "train/cli_routers.h"

namespace moe::train {
namespace {

// A dense feed-forward layer with the experts' activation: w2·act(w1·x) or, gated,
// w2·(act(w1·x) * w3·x). Width k·h has the active compute of an MoE layer of k experts of width h.
class DenseFFNImpl : public torch::nn::Module {
 public:
  DenseFFNImpl(int64_t d, int64_t hidden, Activation act) : act_(act) {
    w1 = register_module("w1", torch::nn::Linear(d, hidden));
    w2 = register_module("w2", torch::nn::Linear(hidden, d));
    if (is_gated(act)) w3 = register_module("w3", torch::nn::Linear(d, hidden));
  }

  torch::Tensor forward(const torch::Tensor& x) {
    auto h = w1(x);
    switch (act_) {
      case Activation::kReLU:
        h = torch::relu(h);
        break;
      case Activation::kGELU:
        h = torch::gelu(h);
        break;
      case Activation::kSiLU:
        h = torch::silu(h);
        break;
      case Activation::kSwiGLU:
        h = torch::silu(h) * w3(x);
        break;
      case Activation::kGEGLU:
        h = torch::gelu(h) * w3(x);
        break;
    }
    return w2(h);
  }

  torch::nn::Linear w1{nullptr}, w2{nullptr}, w3{nullptr};

 private:
  Activation act_;
};
TORCH_MODULE(DenseFFN);

// The feed-forward slot of a block: a dense MLP or one MoE layer of the configured router. The
// submodule is registered as "dense" or "moe", so parameter names read block.N.ffn.moe.experts.w1.
class FeedForwardImpl : public torch::nn::Module {
 public:
  FeedForwardImpl(const MoESection& m, int64_t d, bool sparse, int64_t dense_hidden,
                  int64_t total_steps)
      : sparse_(sparse) {
    const Activation act = activation_of(m.activation);
    if (!sparse) {
      dense = register_module("dense", DenseFFN(d, dense_hidden, act));
      return;
    }
    moe = register_module("moe", cli_router(m.router).build(m, d, total_steps));
  }

  // x: [..., d]. Adds the aux loss to *aux and appends the layer's statistics to *probes.
  torch::Tensor forward(const torch::Tensor& x, const std::string& name, torch::Tensor* aux,
                        std::vector<LayerProbe>* probes) {
    if (!sparse_) return dense->forward(x);
    MoEOutput r = moe->forward(x);
    *aux = *aux + r.aux_loss;
    probes->push_back({name, std::move(r.stats), {}});
    return r.output;
  }

  bool sparse() const { return sparse_; }

  DenseFFN dense{nullptr};
  nn::RoutedMoE moe{nullptr};  ///< any router, built by its named constructor

 private:
  bool sparse_;
};
TORCH_MODULE(FeedForward);

bool block_is_sparse(const ModelSection& m, int64_t block) {
  // moe_every = 2: blocks 1, 3, 5, ... (the second of every pair, as in GShard and Switch)
  return m.moe_every > 0 && (block + 1) % m.moe_every == 0;
}

// ---- the language model ------------------------------------------------------------------------

// Where a forward's rows sit in the batch (tools/train/sharded_model.h): rows [offset, offset + n)
// of `total`; total < 0: the rows are the whole batch.
struct BatchShard {
  int64_t offset = 0;
  int64_t total = -1;
};

// torch::dropout with its mask drawn for the whole batch (dim 0) and cut to this shard's rows: in
// one process the same draws and values as torch::dropout (ATen's CPU dropout: a Bernoulli(1 - p)
// mask of the input's shape, divided by 1 - p), and on several processes the same mask for a
// token whatever the world size, with the generators of all ranks in step.
torch::Tensor shard_dropout(const torch::Tensor& x, double p, bool training,
                            const BatchShard& shard) {
  if (p == 0 || !training || x.numel() == 0) return x;
  if (p == 1) return x * torch::zeros({}, x.options());
  auto sizes = x.sizes().vec();
  if (shard.total >= 0) sizes[0] = shard.total;
  auto noise = torch::empty(sizes, x.options()).bernoulli_(1 - p);
  noise.div_(1 - p);
  return x * (shard.total >= 0 ? noise.narrow(0, shard.offset, x.size(0)) : noise);
}

// Pre-norm decoder block: x + attn(ln1(x)), then x + ffn(ln2(x)), causal multi-head attention.
class BlockImpl : public torch::nn::Module {
 public:
  BlockImpl(const TrainConfig& c, int64_t index)
      : heads_(c.model.heads),
        dropout_(c.model.dropout),
        name_("blocks." + std::to_string(index) + ".ffn") {
    const int64_t d = c.model.d_model;
    ln1 = register_module("ln1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    ln2 = register_module("ln2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    qkv = register_module("qkv", torch::nn::Linear(d, 3 * d));
    proj = register_module("proj", torch::nn::Linear(d, d));
    ffn = register_module("ffn", FeedForward(c.moe, d, block_is_sparse(c.model, index),
                                             c.model.dense_hidden, c.run.steps));
  }

  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* aux,
                        std::vector<LayerProbe>* probes) {
    const int64_t B = x.size(0), L = x.size(1), d = x.size(2), dh = d / heads_;
    auto qkv_ = qkv(ln1(x)).view({B, L, 3, heads_, dh}).permute({2, 0, 3, 1, 4});
    const auto q = qkv_[0], k = qkv_[1], v = qkv_[2];  // [B, H, L, dh]
    auto att = torch::matmul(q, k.transpose(-2, -1)) * (1.0 / std::sqrt(static_cast<double>(dh)));
    const auto future = torch::ones({L, L}, torch::TensorOptions().dtype(torch::kBool)).triu(1);
    att = torch::softmax(att.masked_fill(future, -std::numeric_limits<float>::infinity()), -1);
    att = shard_dropout(att, dropout_, is_training(), shard);
    auto y = torch::matmul(att, v).transpose(1, 2).reshape({B, L, d});
    auto h = x + shard_dropout(proj(y), dropout_, is_training(), shard);
    const auto f = ffn->forward(ln2(h).reshape({B * L, d}), name_, aux, probes).view({B, L, d});
    return h + shard_dropout(f, dropout_, is_training(), shard);
  }

  BatchShard shard;

  torch::nn::LayerNorm ln1{nullptr}, ln2{nullptr};
  torch::nn::Linear qkv{nullptr}, proj{nullptr};
  FeedForward ffn{nullptr};

 private:
  int64_t heads_;
  double dropout_;
  std::string name_;
};
TORCH_MODULE(Block);

class TransformerLMImpl : public torch::nn::Module {
 public:
  TransformerLMImpl(const TrainConfig& c, int64_t vocab) {
    const int64_t d = c.model.d_model;
    token = register_module("token_embedding", torch::nn::Embedding(vocab, d));
    position = register_module("position_embedding", torch::nn::Embedding(c.data.context, d));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.model.layers; ++i) blocks->push_back(Block(c, i));
    ln = register_module("ln_f", torch::nn::LayerNorm(torch::nn::LayerNormOptions({d})));
    head = register_module("head", torch::nn::Linear(d, vocab));
    // GPT-2's initialisation: N(0, 0.02) for embeddings and attention/dense weights, residual
    // projections scaled by 1/sqrt(2·layers); the MoE layers keep their own initialisers.
    torch::NoGradGuard no_grad;
    const double std = 0.02, proj_std = 0.02 / std::sqrt(2.0 * c.model.layers);
    token->weight.normal_(0, std);
    position->weight.normal_(0, std);
    for (const auto& b : *blocks) {
      auto& blk = *b->as<BlockImpl>();
      blk.qkv->weight.normal_(0, std);
      blk.qkv->bias.zero_();
      blk.proj->weight.normal_(0, proj_std);
      blk.proj->bias.zero_();
      if (auto& f = blk.ffn->dense) {
        for (auto* l : {&f->w1, &f->w3}) {
          if (!*l) continue;
          (*l)->weight.normal_(0, std);
          (*l)->bias.zero_();
        }
        f->w2->weight.normal_(0, proj_std);
        f->w2->bias.zero_();
      }
    }
    head->weight.normal_(0, std);
    head->bias.zero_();
  }

  void set_batch_shard(int64_t offset, int64_t total) {
    for (const auto& b : *blocks) b->as<BlockImpl>()->shard = {offset, total};
  }

  ModelOutput forward(const torch::Tensor& idx) {
    const int64_t L = idx.size(1);
    ModelOutput out;
    out.aux_loss = torch::zeros({});
    auto x = token(idx) + position(torch::arange(L, idx.options()));
    for (const auto& b : *blocks) x = b->as<BlockImpl>()->forward(x, &out.aux_loss, &out.probes);
    out.logits = head(ln(x));
    return out;
  }

  torch::nn::Embedding token{nullptr}, position{nullptr};
  torch::nn::ModuleList blocks{nullptr};
  torch::nn::LayerNorm ln{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(TransformerLM);

// ---- the classifier ----------------------------------------------------------------------------

// 784 → Linear → ReLU → [h + ffn_i(h)]_i → Linear → 10: the Fashion-MNIST demo's network with
// `layers` residual feed-forward blocks.
class ClassifierImpl : public torch::nn::Module {
 public:
  explicit ClassifierImpl(const TrainConfig& c) {
    const int64_t d = c.model.d_model;
    in = register_module("in", torch::nn::Linear(784, d));
    blocks = register_module("blocks", torch::nn::ModuleList());
    for (int64_t i = 0; i < c.model.layers; ++i)
      blocks->push_back(
          FeedForward(c.moe, d, block_is_sparse(c.model, i), c.model.dense_hidden, c.run.steps));
    out = register_module("out", torch::nn::Linear(d, 10));
  }

  ModelOutput forward(const torch::Tensor& x) {
    ModelOutput r;
    r.aux_loss = torch::zeros({});
    auto h = torch::relu(in(x.view({x.size(0), -1})));
    int64_t i = 0;
    for (const auto& b : *blocks)
      h = h + b->as<FeedForwardImpl>()->forward(h, "blocks." + std::to_string(i++), &r.aux_loss,
                                                &r.probes);
    r.logits = out(h);
    return r;
  }

  torch::nn::Linear in{nullptr}, out{nullptr};
  torch::nn::ModuleList blocks{nullptr};
};
TORCH_MODULE(Classifier);

// ---- the wrappers ------------------------------------------------------------------------------

template <typename Holder>
class SingleTaskModel : public Model {
 public:
  SingleTaskModel(Holder m, std::string description)
      : m_(std::move(m)), description_(std::move(description)) {}
  ModelOutput forward(const torch::Tensor& input) override { return m_->forward(input); }
  void set_batch_shard(int64_t offset, int64_t total) override {
    if constexpr (std::is_same_v<Holder, TransformerLM>) m_->set_batch_shard(offset, total);
  }
  torch::nn::Module& module() override { return *m_; }
  std::string description() const override { return description_; }

 private:
  Holder m_;
  std::string description_;
};

template <typename Holder>
class MultiTaskModel : public Model {
 public:
  MultiTaskModel(Holder m, std::string kind, std::vector<std::vector<std::string>> gate_names)
      : m_(std::move(m)), kind_(std::move(kind)), gate_names_(std::move(gate_names)) {}
  ModelOutput forward(const torch::Tensor& input) override {
    MultiTaskOutput o = m_->forward(input);
    ModelOutput r;
    r.outputs = std::move(o.outputs);
    r.aux_loss = o.aux_loss.defined() ? o.aux_loss : torch::zeros({});
    for (size_t l = 0; l < o.gate_mass.size(); ++l)
      for (size_t g = 0; g < o.gate_mass[l].size(); ++g)
        r.probes.push_back({gate_names_[l][g], {}, o.gate_mass[l][g].detach()});
    return r;
  }
  torch::nn::Module& module() override { return *m_; }
  std::string description() const override { return kind_; }

 private:
  Holder m_;
  std::string kind_;
  std::vector<std::vector<std::string>> gate_names_;
};

std::vector<std::vector<std::string>> gate_names(int64_t levels, int64_t tasks, bool shared_gate,
                                                 bool one_gate) {
  std::vector<std::vector<std::string>> names(levels);
  for (int64_t l = 0; l < levels; ++l) {
    const std::string prefix = levels > 1 ? "level" + std::to_string(l) + "." : "";
    if (one_gate) {
      names[l].push_back(prefix + "gate");
      continue;
    }
    for (int64_t k = 0; k < tasks; ++k)
      names[l].push_back(prefix + "task" + std::to_string(k) + "_gate");
    if (shared_gate && l + 1 < levels) names[l].push_back(prefix + "shared_gate");
  }
  return names;
}

}  // namespace

std::unique_ptr<Model> build_model(const TrainConfig& c, int64_t vocab_size, int64_t input_dim) {
  switch (c.run.task) {
    case Task::kLanguageModel:
      return std::make_unique<SingleTaskModel<TransformerLM>>(
          TransformerLM(c, vocab_size), c.model.moe_every > 0 ? "moe" : "dense");
    case Task::kClassify:
      return std::make_unique<SingleTaskModel<Classifier>>(Classifier(c),
                                                           c.model.moe_every > 0 ? "moe" : "dense");
    case Task::kMultiTask:
      break;
  }
  const ModelSection& m = c.model;
  const int64_t tasks = 2;
  nn::TaskGateOptions gate;
  gate.top_k(m.gate_top_k);
  if (m.kind == "shared_bottom")
    return std::make_unique<MultiTaskModel<nn::SharedBottom>>(
        nn::SharedBottom(nn::SharedBottomOptions(input_dim, tasks)
                             .bottom_hidden(m.bottom_hidden)
                             .tower_hidden(m.tower_hidden)),
        m.kind, std::vector<std::vector<std::string>>{});
  if (m.kind == "mmoe" || m.kind == "omoe")
    return std::make_unique<MultiTaskModel<nn::MMoE>>(
        nn::MMoE(nn::MMoEOptions(input_dim, m.num_experts, tasks)
                     .expert_hidden(m.expert_hidden)
                     .tower_hidden(m.tower_hidden)
                     .one_gate(m.kind == "omoe")
                     .gate(gate)),
        m.kind, gate_names(1, tasks, false, m.kind == "omoe"));
  return std::make_unique<MultiTaskModel<nn::PLE>>(nn::PLE(nn::PLEOptions(input_dim, tasks)
                                                               .levels(m.levels)
                                                               .specific_experts(m.specific_experts)
                                                               .shared_experts(m.shared_experts)
                                                               .expert_hidden(m.expert_hidden)
                                                               .tower_hidden(m.tower_hidden)
                                                               .gate(gate)),
                                                   m.kind,
                                                   gate_names(m.levels, tasks, true, false));
}

ParameterCount count_parameters(const TrainConfig& c, Model& model) {
  ParameterCount n;
  double inactive = 0;
  for (const auto& p : model.module().named_parameters()) {
    n.total += p.value().numel();
    // expert weights of MoE layers: a token uses k of E (experts_per_token)
    const auto& name = p.key();
    if (c.run.task == Task::kMultiTask || name.find(".moe.experts.") == std::string::npos) continue;
    const int64_t E = p.value().size(0);
    const int64_t k = experts_per_token(c.moe);
    inactive +=
        static_cast<double>(p.value().numel()) * (1.0 - static_cast<double>(std::min(k, E)) / E);
  }
  n.active = n.total - static_cast<int64_t>(inactive);
  return n;
}

std::vector<std::pair<std::string, nn::TopAnyMoEImpl*>> top_any_layers(torch::nn::Module& m) {
  std::vector<std::pair<std::string, nn::TopAnyMoEImpl*>> out;
  for (const auto& item : m.named_modules())
    if (auto* t = item.value()->as<nn::TopAnyMoEImpl>()) out.emplace_back(item.key(), t);
  return out;
}

// `moe eval --top-k K`: every HyperRouterMoE layer (hyper, smoe_dropout, smoe) evaluated at k = K,
// the "self-slimmable" evaluation of Do et al. (docs/hyperrouter.md).
void set_inference_top_k(torch::nn::Module& module, const TrainConfig& c, int64_t k) {
  int64_t layers = 0;
  for (const auto& m : module.modules()) {
    auto* layer = dynamic_cast<nn::HyperRouterMoEImpl*>(m.get());
    if (layer == nullptr) continue;
    const int64_t E = layer->layer_options().num_experts();
    if (k < 1 || k > E)
      throw std::invalid_argument("moe eval: --top-k " + std::to_string(k) +
                                  ": expected 1 <= k <= moe.num_experts = " + std::to_string(E));
    layer->set_inference_top_k(k);
    ++layers;
  }
  if (layers == 0)
    throw std::invalid_argument(
        "moe eval: --top-k applies to runs of moe.router = hyper, smoe_dropout or smoe; this run "
        "has " +
        (c.model.moe_every == 0 ? std::string("no MoE layer") : "moe.router = " + c.moe.router));
}

}  // namespace moe::train
