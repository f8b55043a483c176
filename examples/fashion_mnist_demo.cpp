// Fashion-MNIST demo: an MLP classifier whose middle block is a sparse MoE layer (Shazeer noisy
// top-k gating, importance + load losses), trained on the CPU next to a dense MLP of equal active
// compute. Prints progress, test accuracy and each expert's share of the tokens.
//
//   make demo                       # builds and runs this with the defaults below
//   build/examples/fashion_mnist_demo [--epochs N] [--experts E] [--top-k K] [--threads N] [--data
//   DIR]
//
// Data: the Debian package dataset-fashion-mnist (gzipped IDX files in
// /usr/share/datasets/fashion-mnist).
#include <ATen/Parallel.h>
#include <torch/torch.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "moe/data/fashion_mnist.h"
#include "moe/moe.h"
#include "moe/runtime.h"
#include "train/trainer.h"

namespace {

struct Config {
  std::string data_dir = moe::data::kFashionMnistDir;
  int64_t epochs = 8;
  int64_t batch = 128;
  int64_t width = 128;   // d_model of the MoE block
  int64_t experts = 8;   // E
  int64_t top_k = 2;     // k
  int64_t hidden = 128;  // expert hidden width h (the dense baseline gets k·h)
  double lr = 1e-3;
  int threads = 0;  // 0 = all cores
  uint64_t seed = 0;
};

using Split = moe::data::LabeledImages;

// ---- models -----------------------------------------------------------------------------------

// input → Linear → ReLU → [block] + residual → Linear → 10 classes.
struct ClassifierImpl : torch::nn::Module {
  ClassifierImpl(const Config& c, bool sparse) {
    in = register_module("in", torch::nn::Linear(784, c.width));
    out = register_module("out", torch::nn::Linear(c.width, 10));
    if (sparse) {
      moe = register_module("moe", moe::nn::SparseMoE(moe::nn::SparseMoEOptions(c.width, c.experts)
                                                          .hidden_size(c.hidden)
                                                          .top_k(c.top_k)
                                                          .router(moe::RouterKind::kNoisyTopK)
                                                          .activation(moe::Activation::kReLU)));
    } else {
      dense = register_module(
          "dense",
          torch::nn::Sequential(torch::nn::Linear(c.width, c.top_k * c.hidden), torch::nn::ReLU(),
                                torch::nn::Linear(c.top_k * c.hidden, c.width)));
    }
  }
  // Returns logits; adds the MoE's aux loss and token counts when present.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor* aux, torch::Tensor* tokens) {
    auto h = torch::relu(in(x));
    if (moe) {
      auto r = moe->forward(h);
      if (aux) *aux = r.aux_loss;
      if (tokens) *tokens = r.stats.tokens_per_expert;
      h = h + r.output;
    } else {
      h = h + dense->forward(h);
    }
    return out(h);
  }
  torch::nn::Linear in{nullptr}, out{nullptr};
  moe::nn::SparseMoE moe{nullptr};
  torch::nn::Sequential dense{nullptr};
};
TORCH_MODULE(Classifier);

// ---- progress ---------------------------------------------------------------------------------

// One line redrawn in place on a terminal; plain lines at each epoch end otherwise.
void progress(const char* name, int64_t epoch, int64_t epochs, int64_t step, int64_t steps,
              double loss, double elapsed) {
  if (!isatty(STDOUT_FILENO)) return;
  const int width = 30;
  const int fill = static_cast<int>(width * (step + 1) / steps);
  std::printf("\r  %-6s epoch %lld/%lld [%.*s%*s] %5.1f%%  loss %.4f  %.0f steps/s ", name,
              static_cast<long long>(epoch + 1), static_cast<long long>(epochs), fill,
              "##############################", width - fill, "", 100.0 * (step + 1) / steps, loss,
              (epoch * steps + step + 1) / std::max(elapsed, 1e-9));
  std::fflush(stdout);
}

struct Result {
  double accuracy = 0;
  double seconds = 0;
  int64_t params = 0;
  torch::Tensor tokens;  // [E] test-set tokens per expert (MoE only)
};

Result train_and_test(const char* name, bool sparse, const Config& c, const Split& train,
                      const Split& test) {
  torch::manual_seed(c.seed);
  Classifier model(c, sparse);
  torch::optim::Adam opt(model->parameters(), torch::optim::AdamOptions(c.lr));
  moe::train::EpochBatches batches(train.x.size(0), c.batch);
  const int64_t steps = batches.steps_per_epoch();
  const auto t0 = std::chrono::steady_clock::now();
  auto seconds = [&] {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  };
  double loss_sum = 0;  // cross-entropy over the epoch so far
  moe::train::HookFunctions hooks;
  hooks.batch_forward = [&](int64_t step) {
    const auto idx = batches.indices(step);
    torch::Tensor aux;
    const auto logits = model->forward(train.x.index_select(0, idx), &aux, nullptr);
    return moe::train::StepLoss{
        torch::nn::functional::cross_entropy(logits, train.y.index_select(0, idx)), aux};
  };
  hooks.step_end = [&](const moe::train::StepReport& r) {
    const int64_t s = batches.step_in_epoch(r.step);
    if (s == 0) loss_sum = 0;
    loss_sum += r.task_loss;
    if (s % 10 == 0 || s + 1 == steps)
      progress(name, batches.epoch(r.step), c.epochs, s, steps, loss_sum / (s + 1), seconds());
  };
  hooks.log = [&](int64_t step) {  // log_every: one epoch
    if (isatty(STDOUT_FILENO)) std::printf("\n");
    std::printf("  %-6s epoch %lld/%lld  train loss %.4f  (%.1f s)\n", name,
                static_cast<long long>(batches.epoch(step) + 1), static_cast<long long>(c.epochs),
                loss_sum / steps, seconds());
    std::fflush(stdout);
  };
  moe::train::TrainerOptions options;
  options.steps = c.epochs * steps;
  options.log_every = steps;
  moe::train::Trainer(*model, opt, options).run(hooks);
  Result r;
  r.seconds = seconds();
  for (const auto& p : model->parameters()) r.params += p.numel();
  torch::NoGradGuard no_grad;
  model->eval();
  int64_t correct = 0;
  for (int64_t s = 0; s < test.x.size(0); s += 1000) {
    torch::Tensor tokens;
    const auto logits = model->forward(test.x.slice(0, s, s + 1000), nullptr, &tokens);
    correct += logits.argmax(1).eq(test.y.slice(0, s, s + 1000)).sum().item<int64_t>();
    if (tokens.defined()) r.tokens = r.tokens.defined() ? r.tokens + tokens : tokens;
  }
  r.accuracy = static_cast<double>(correct) / test.x.size(0);
  return r;
}

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--data")
      c.data_dir = next();
    else if (a == "--epochs")
      c.epochs = std::stoll(next());
    else if (a == "--experts")
      c.experts = std::stoll(next());
    else if (a == "--top-k")
      c.top_k = std::stoll(next());
    else if (a == "--threads")
      c.threads = std::stoi(next());
    else if (a == "--seed")
      c.seed = std::stoull(next());
    else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: fashion_mnist_demo [--epochs N] [--experts E] [--top-k K] [--threads N] [--seed "
          "S] "
          "[--data DIR]\n");
      std::exit(0);
    } else {
      throw std::invalid_argument("unknown argument '" + a + "' (see --help)");
    }
  }
  if (c.epochs < 1 || c.experts < 1 || c.top_k < 1 || c.top_k > c.experts)
    throw std::invalid_argument("need epochs >= 1 and 1 <= top-k <= experts");
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  moe::runtime::configure_threading(argv);  // one thread pool: see include/moe/runtime.h
  try {
    Config c = parse(argc, argv);
    // libtorch 1.13 defaults to half the cores; use them all unless told otherwise
    // ($MOE_NUM_THREADS).
    moe::runtime::configure_threads(c.threads);

    std::printf(
        "moe demo: Fashion-MNIST, MoE MLP vs dense MLP of equal active compute (%d threads)\n",
        at::get_num_threads());
    const auto train = moe::data::load_fashion_mnist(c.data_dir, /*train=*/true);
    const auto test = moe::data::load_fashion_mnist(c.data_dir, /*train=*/false);
    std::printf("data: %lld train / %lld test images from %s\n",
                static_cast<long long>(train.x.size(0)), static_cast<long long>(test.x.size(0)),
                c.data_dir.c_str());
    std::printf(
        "MoE: d=%lld, %lld experts of hidden %lld, noisy top-%lld (Shazeer 2017), importance+load "
        "losses 1e-2\n",
        static_cast<long long>(c.width), static_cast<long long>(c.experts),
        static_cast<long long>(c.hidden), static_cast<long long>(c.top_k));
    std::printf(
        "dense: d=%lld, one FFN of hidden %lld (= k·h: the same active FLOPs per token)\n\n",
        static_cast<long long>(c.width), static_cast<long long>(c.top_k * c.hidden));

    const Result m = train_and_test("moe", true, c, train, test);
    const Result d = train_and_test("dense", false, c, train, test);

    std::printf("\n%-6s  %9s  %10s  %8s\n", "model", "test acc", "parameters", "time");
    std::printf("%-6s  %8.2f%%  %10lld  %7.1fs\n", "moe", 100 * m.accuracy,
                static_cast<long long>(m.params), m.seconds);
    std::printf("%-6s  %8.2f%%  %10lld  %7.1fs\n", "dense", 100 * d.accuracy,
                static_cast<long long>(d.params), d.seconds);

    const auto share = m.tokens.to(torch::kDouble) / m.tokens.sum().item<double>();
    const double mean = 1.0 / c.experts;
    std::printf("\nexpert token share on the test set (mean %.1f%%):\n", 100 * mean);
    for (int64_t e = 0; e < c.experts; ++e) {
      const double s = share[e].item<double>();
      const int bar = static_cast<int>(s * 200);
      std::printf("  expert %2lld  %5.1f%%  %.*s\n", static_cast<long long>(e), 100 * s,
                  std::min(bar, 60),
                  "############################################################");
    }
    const double max_ratio = share.max().item<double>() / mean;
    std::printf("max share / mean share = %.2f (%s)\n", max_ratio,
                max_ratio <= 2.0 ? "balanced: no expert above 2x the mean" : "UNBALANCED");
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "fashion_mnist_demo: %s\n", e.what());
    return 1;
  }
}
