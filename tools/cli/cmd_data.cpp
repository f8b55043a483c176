// `moe data kjv | fashion-mnist | synthetic`: prepare or check a data set (docs/cli.md, "Data").
//
//   moe data kjv --out data/kjv             the King James Bible as a character corpus
//   moe data fashion-mnist [--dir DIR]      check the Fashion-MNIST files of the Debian package
//   moe data synthetic --out FILE --correlation P [--samples N] [--dim D] [--seed S]
//                                           MMoE's two-task synthetic data as safetensors
#include <spdlog/spdlog.h>

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "cli/commands.h"
#include "moe/data/char_corpus.h"
#include "moe/data/fashion_mnist.h"
#include "moe/data/mmoe_synthetic.h"
#include "moe/io/safetensors.h"
#include "train/memory_estimate.h"

namespace moe::cli {
namespace {

struct SyntheticOptions {
  std::string out;
  double correlation = 0.5;
  int64_t samples = 10000, dim = 100;
  uint64_t seed = 0;
};

int run_kjv(const std::string& out, const std::string& bible) {
  const int64_t verses = moe::data::prepare_kjv(out, bible);
  const auto c = moe::data::load_char_corpus(out);
  spdlog::info("KJV: {} verses -> {}/{{train,valid,test}}.txt: {} / {} / {} characters, {} symbols",
               verses, out, c.train.numel(), c.valid.numel(), c.test.numel(), c.vocab.size());
  return 0;
}

int run_fashion(const std::string& dir) {
  const auto train = moe::data::load_fashion_mnist(dir, true);
  const auto test = moe::data::load_fashion_mnist(dir, false);
  spdlog::info("Fashion-MNIST in {}: {} training and {} test images of 28x28, 10 classes", dir,
               train.x.size(0), test.x.size(0));
  return 0;
}

int run_synthetic(const SyntheticOptions& o) {
  const int64_t n = o.samples, dim = o.dim;
  // Before anything is allocated: an absurd --samples was killed by the OOM killer or ended in
  // LibTorch's "Storage size calculation overflowed", naming no option.
  const auto limit = moe::train::available_memory();
  const long double need = moe::train::synthetic_data_bytes(n, dim) + moe::train::kProcessBaseBytes;
  if (need > limit.bytes)
    throw std::invalid_argument("moe data synthetic: --samples " + std::to_string(n) +
                                " with --dim " + std::to_string(dim) + " needs about " +
                                moe::train::format_bytes(need) + " of memory, more than the " +
                                moe::train::format_bytes(limit.bytes) + " available (" +
                                limit.description + "); lower --samples or --dim");
  const moe::data::MMoESynthetic gen(
      moe::data::MMoESyntheticOptions().dim(dim).correlation(o.correlation).seed(o.seed));
  const auto b = gen.sample(n, o.seed + 1);
  moe::io::save_safetensors(o.out, {{"x", b.x}, {"y", b.y}},
                            {{"generator", "mmoe_synthetic"},
                             {"correlation", std::to_string(o.correlation)},
                             {"dim", std::to_string(dim)},
                             {"seed", std::to_string(o.seed)}});
  spdlog::info("synthetic: {} samples of dim {} with cos(w1, w2) = {:.4f} -> {}", n, dim,
               gen.weight_cosine(), o.out);
  return 0;
}

void add_kjv(CLI::App& data, Commands& commands) {
  auto out = std::make_shared<std::string>();
  auto bible = std::make_shared<std::string>("bible");
  auto* kjv = data.add_subcommand(
      "kjv", "export the King James Bible (Debian bible-kjv) as a character corpus");
  kjv->add_option("--out", *out, "output folder for train.txt, valid.txt, test.txt")->required();
  kjv->add_option("--bible", *bible, "the bible program")->capture_default_str();
  commands.add(kjv, [out, bible](const GlobalOptions&) { return run_kjv(*out, *bible); });
}

void add_fashion_mnist(CLI::App& data, Commands& commands) {
  auto dir = std::make_shared<std::string>(moe::data::kFashionMnistDir);
  auto* fashion = data.add_subcommand("fashion-mnist", "check the Fashion-MNIST files");
  fashion->add_option("--dir", *dir, "folder with the four *-ubyte.gz files")
      ->capture_default_str();
  commands.add(fashion, [dir](const GlobalOptions&) { return run_fashion(*dir); });
}

void add_synthetic(CLI::App& data, Commands& commands) {
  auto o = std::make_shared<SyntheticOptions>();
  auto* syn = data.add_subcommand("synthetic", "MMoE's two-task synthetic regression data");
  syn->add_option("--out", o->out, "output .safetensors file")->required();
  syn->add_option("--correlation", o->correlation, "task correlation p = cos(w1, w2)")
      ->check(CLI::Range(-1.0, 1.0))
      ->capture_default_str();
  syn->add_option("--samples", o->samples, "number of samples")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  syn->add_option("--dim", o->dim, "input dimension")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  syn->add_option("--seed", o->seed, "seed of the task and the samples")->capture_default_str();
  commands.add(syn, [o](const GlobalOptions&) { return run_synthetic(*o); });
}

}  // namespace

void add_data_command(CLI::App& app, Commands& commands) {
  auto* data = app.add_subcommand("data", "prepare a data set");
  data->require_subcommand(1);
  add_kjv(*data, commands);
  add_fashion_mnist(*data, commands);
  add_synthetic(*data, commands);
}

}  // namespace moe::cli
