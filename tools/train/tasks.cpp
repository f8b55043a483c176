// The tasks of `moe train` (tools/train/tasks.h).
#include "train/tasks.h"

#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <sstream>
#include <stdexcept>

#include "moe/data/char_corpus.h"
#include "moe/data/fashion_mnist.h"
#include "moe/data/mmoe_synthetic.h"
#include "moe/io/safetensors.h"
#include "moe/multitask_loss.h"
#include "train/metrics_schema.h"

namespace moe::train {
namespace {

namespace key = metrics::key;  // the names of the metrics in metrics.jsonl

const double kLn2 = std::log(2.0);

// A NaN or an infinity in the data reached the loss and stopped the run as a "non-finite loss"
// with advice to lower the learning rate: name the file, the tensor, the row and the column.
// Checked in float32, the training dtype (1e300 in a float64 file becomes inf there).
void check_finite(const torch::Tensor& t, const std::string& file, const char* name) {
  const auto bad = torch::logical_not(torch::isfinite(t.to(torch::kFloat))).nonzero();
  if (bad.size(0) == 0) return;
  const int64_t row = bad[0][0].item<int64_t>(), col = bad[0][1].item<int64_t>();
  std::ostringstream s;
  s << "data.file = " << file << ": " << name << " row " << row << ", column " << col
    << " (0-based) is " << t[row][col].item<double>() << ", not a finite float32 number ("
    << bad.size(0) << " such value(s) in " << name << "); expected finite numbers";
  throw std::invalid_argument(s.str());
}

// How the evaluated tokens were routed, per MoE layer: experts per token, and for routers that may
// leave a token without an expert (top_any, expert_choice) the fraction they left so. For top_any
// that is before the inference fallback, which gives such a token its arg-max expert: the tokens
// training would have sent nowhere.
class EvalRouting {
 public:
  void add(const ModelOutput& out) {
    for (const auto& p : out.probes) {
      if (p.gate_mass.defined() || !p.stats.experts_per_token.defined()) continue;  // dense gates
      auto& s = layers_[p.name];
      s.tokens += static_cast<double>(p.stats.experts_per_token.numel());
      s.experts += p.stats.experts_per_token.sum().item<double>();
      if (p.stats.unrouted.defined()) {
        s.counts_unrouted = true;
        s.unrouted += static_cast<double>(p.stats.tokens_without_expert());
      }
    }
  }
  void write(Metrics* m) const {
    for (const auto& [name, s] : layers_) {
      if (s.tokens == 0) continue;
      (*m)[metrics::eval_layer_key(metrics::layer_key::kMeanK, name)] = s.experts / s.tokens;
      if (s.counts_unrouted)
        (*m)[metrics::eval_layer_key(metrics::layer_key::kUnrouted, name)] = s.unrouted / s.tokens;
    }
  }

 private:
  struct Sums {
    double tokens = 0, experts = 0, unrouted = 0;
    bool counts_unrouted = false;
  };
  std::map<std::string, Sums> layers_;
};

// ---- lm ----------------------------------------------------------------------------------------

class CharLM : public TaskData {
 public:
  CharLM(const TrainConfig& c)
      : context_(c.data.context), corpus_(data::load_char_corpus(c.data.dir)) {
    for (const auto* s : {&corpus_.train, &corpus_.valid, &corpus_.test})
      TORCH_CHECK_VALUE(s->numel() > context_, "data: ", c.data.dir, " has a split of ", s->numel(),
                        " characters, too short for data.context = ", context_,
                        "; lower data.context or use a larger corpus");
  }

  Batch train_batch(int64_t batch_size) override {
    // random windows [s, s + L] of the training text: input s..s+L-1, target s+1..s+L
    const int64_t n = corpus_.train.numel();
    const auto starts = torch::randint(n - context_, {batch_size, 1}, torch::kLong);
    const auto idx = starts + torch::arange(context_ + 1, torch::kLong);
    const auto w = corpus_.train.index({idx});
    return {w.slice(1, 0, context_), w.slice(1, 1), batch_size * context_};
  }

  torch::Tensor loss(const ModelOutput& out, const Batch& b, Metrics* m) override {
    auto l = torch::nn::functional::cross_entropy(out.logits.reshape({-1, out.logits.size(-1)}),
                                                  b.target.reshape({-1}));
    (*m)[key::kBpc] = l.item<double>() / kLn2;
    return l;
  }

  Metrics evaluate(Model& model, const std::string& split, int64_t batch_size,
                   int64_t max_batches) override {
    // Consecutive windows of L + 1 characters overlapping by one: every character after the
    // first is predicted exactly once (the first of each window with no context, as in training).
    const auto& text = split == "test" ? corpus_.test : corpus_.valid;
    const int64_t windows = (text.numel() - 1) / context_;
    double nats = 0;
    int64_t chars = 0;
    EvalRouting routing;
    for (int64_t w0 = 0, batch = 0; w0 < windows && (max_batches == 0 || batch < max_batches);
         w0 += batch_size, ++batch) {
      const int64_t nw = std::min(batch_size, windows - w0);
      const auto idx = (torch::arange(w0, w0 + nw, torch::kLong) * context_).unsqueeze(1) +
                       torch::arange(context_ + 1, torch::kLong);
      const auto w = text.index({idx});
      const auto out = model.forward(w.slice(1, 0, context_));
      routing.add(out);
      nats += torch::nn::functional::cross_entropy(
                  out.logits.reshape({-1, out.logits.size(-1)}), w.slice(1, 1).reshape({-1}),
                  torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                  .item<double>();
      chars += nw * context_;
    }
    Metrics m{{key::kLoss, nats / chars},
              {key::kBpc, nats / chars / kLn2},
              {key::kTokens, double(chars)}};
    routing.write(&m);
    return m;
  }

  int64_t vocab_size() const override { return static_cast<int64_t>(corpus_.vocab.size()); }
  std::string describe() const override {
    std::ostringstream s;
    s << "character corpus: " << corpus_.train.numel() << " / " << corpus_.valid.numel() << " / "
      << corpus_.test.numel() << " train / valid / test characters, " << corpus_.vocab.size()
      << " symbols, context " << context_;
    return s.str();
  }

 private:
  int64_t context_;
  data::CharCorpus corpus_;
};

// ---- classify ----------------------------------------------------------------------------------

class FashionMnist : public TaskData {
 public:
  static constexpr int64_t kValid = 5000;

  explicit FashionMnist(const TrainConfig& c) {
    auto train = data::load_fashion_mnist(c.data.dir, true);
    const int64_t n = train.x.size(0) - kValid;
    train_ = {train.x.slice(0, 0, n), train.y.slice(0, 0, n)};
    valid_ = {train.x.slice(0, n), train.y.slice(0, n)};
    test_ = data::load_fashion_mnist(c.data.dir, false);
  }

  Batch train_batch(int64_t batch_size) override {
    const auto idx = torch::randint(train_.x.size(0), {batch_size}, torch::kLong);
    return {train_.x.index_select(0, idx), train_.y.index_select(0, idx), batch_size};
  }

  torch::Tensor loss(const ModelOutput& out, const Batch& b, Metrics* m) override {
    (*m)[key::kAccuracy] =
        out.logits.argmax(1).eq(b.target).to(torch::kDouble).mean().item<double>();
    return torch::nn::functional::cross_entropy(out.logits, b.target);
  }

  Metrics evaluate(Model& model, const std::string& split, int64_t batch_size,
                   int64_t max_batches) override {
    const auto& s = split == "test" ? test_ : valid_;
    const int64_t n = s.x.size(0);
    double nats = 0, correct = 0;
    int64_t seen = 0;
    EvalRouting routing;
    for (int64_t i = 0, batch = 0; i < n && (max_batches == 0 || batch < max_batches);
         i += batch_size, ++batch) {
      const auto x = s.x.slice(0, i, i + batch_size), y = s.y.slice(0, i, i + batch_size);
      const auto out = model.forward(x);
      routing.add(out);
      nats += torch::nn::functional::cross_entropy(
                  out.logits, y,
                  torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                  .item<double>();
      correct += out.logits.argmax(1).eq(y).sum().item<double>();
      seen += x.size(0);
    }
    Metrics m{
        {key::kLoss, nats / seen}, {key::kAccuracy, correct / seen}, {key::kTokens, double(seen)}};
    routing.write(&m);
    return m;
  }

  std::string describe() const override {
    std::ostringstream s;
    s << "Fashion-MNIST: " << train_.x.size(0) << " / " << valid_.x.size(0) << " / "
      << test_.x.size(0) << " train / valid / test images";
    return s.str();
  }

 private:
  data::LabeledImages train_, valid_, test_;
};

// ---- multitask ---------------------------------------------------------------------------------

class SyntheticMultiTask : public TaskData {
 public:
  explicit SyntheticMultiTask(const TrainConfig& c)
      : loss_({{TaskType::kRegression, TaskType::kRegression}, {}, {}}) {
    torch::Tensor x, y;
    if (!c.data.file.empty()) {
      std::error_code ec;
      if (std::filesystem::is_directory(c.data.file, ec))
        throw std::invalid_argument("data.file = " + c.data.file +
                                    " is a folder, expected a file of `moe data synthetic`");
      const auto f = io::load_safetensors(c.data.file);
      x = f.find("x");
      y = f.find("y");
      TORCH_CHECK_VALUE(x.defined() && y.defined() && x.dim() == 2 && y.dim() == 2 &&
                            y.size(1) == 2 && x.size(0) == y.size(0) && x.size(0) >= 10,
                        "data.file = ", c.data.file,
                        ": expected tensors x [N, d] and y [N, 2] with N >= 10 (the output of "
                        "`moe data synthetic`)");
      source_ = c.data.file;
      check_finite(x, c.data.file, "x");
      check_finite(y, c.data.file, "y");
    } else {
      const data::MMoESynthetic gen(data::MMoESyntheticOptions()
                                        .dim(c.data.dim)
                                        .correlation(c.data.correlation)
                                        .seed(c.data.data_seed));
      const auto b = gen.sample(c.data.samples, c.data.data_seed + 1);
      x = b.x;
      y = b.y;
      std::ostringstream s;
      s << "generated, correlation " << c.data.correlation << ", seed " << c.data.data_seed;
      source_ = s.str();
    }
    x = x.to(torch::kFloat);
    y = y.to(torch::kFloat);
    const int64_t n = x.size(0), n_train = n * 8 / 10, n_valid = n / 10;
    train_ = {x.slice(0, 0, n_train), y.slice(0, 0, n_train)};
    valid_ = {x.slice(0, n_train, n_train + n_valid), y.slice(0, n_train, n_train + n_valid)};
    test_ = {x.slice(0, n_train + n_valid), y.slice(0, n_train + n_valid)};
  }

  Batch train_batch(int64_t batch_size) override {
    const auto idx = torch::randint(train_.first.size(0), {batch_size}, torch::kLong);
    return {train_.first.index_select(0, idx), train_.second.index_select(0, idx), batch_size};
  }

  torch::Tensor loss(const ModelOutput& out, const Batch& b, Metrics* m) override {
    std::vector<torch::Tensor> per_task;
    auto l = loss_(out.outputs, b.target, {}, 0, &per_task);
    for (size_t k = 0; k < per_task.size(); ++k)
      (*m)[metrics::per_task_key(key::kMse, k)] = per_task[k].item<double>();
    return l;
  }

  Metrics evaluate(Model& model, const std::string& split, int64_t batch_size,
                   int64_t max_batches) override {
    const auto& s = split == "test" ? test_ : valid_;
    const int64_t n =
        max_batches == 0 ? s.first.size(0) : std::min(s.first.size(0), batch_size * max_batches);
    const auto out = model.forward(s.first.slice(0, 0, n));
    Metrics m;
    double total = 0;
    for (int k = 0; k < 2; ++k) {
      const double mse = masked_mse(out.outputs[k], s.second.slice(0, 0, n).select(1, k));
      m[metrics::per_task_key(key::kMse, k)] = mse;
      total += mse;
    }
    m[key::kLoss] = total;
    m[key::kTokens] = double(n);
    return m;
  }

  int64_t input_dim() const override { return train_.first.size(1); }
  std::string describe() const override {
    std::ostringstream s;
    s << "MMoE synthetic (" << source_ << "): " << train_.first.size(0) << " / "
      << valid_.first.size(0) << " / " << test_.first.size(0)
      << " train / valid / test samples of dim " << input_dim();
    return s.str();
  }

 private:
  MultiTaskLoss loss_;
  std::string source_;
  std::pair<torch::Tensor, torch::Tensor> train_, valid_, test_;
};

}  // namespace

std::unique_ptr<TaskData> load_task_data(const TrainConfig& c) {
  switch (c.run.task) {
    case Task::kLanguageModel:
      return std::make_unique<CharLM>(c);
    case Task::kClassify:
      return std::make_unique<FashionMnist>(c);
    case Task::kMultiTask:
      return std::make_unique<SyntheticMultiTask>(c);
  }
  return nullptr;
}

}  // namespace moe::train
