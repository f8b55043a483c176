// The `moe` command (issue 7, in progress): one program for the library's users. This stage has
// `moe data` (prepare the data sets) and `moe bench` (the benchmark harness); train, eval and
// report come next.
//
//   moe data kjv --out data/kjv                  the King James Bible as a character corpus
//   moe data fashion-mnist [--dir DIR]           check the Fashion-MNIST files of the Debian
//   package moe data synthetic --out FILE --correlation P [--samples N] [--dim D] [--seed S]
//                                                MMoE's two-task synthetic data as safetensors
//   moe bench [harness options]                  the CPU benchmark (docs/benchmarks.md), e.g.
//   --quick
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <string>
#include <vector>

#include "moe/data/char_corpus.h"
#include "moe/data/fashion_mnist.h"
#include "moe/data/mmoe_synthetic.h"
#include "moe/io/safetensors.h"
#include "moe/runtime.h"

#ifdef MOE_CLI_HAS_BENCH
#include "bench_main.h"
#endif

namespace {

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

int run_synthetic(const std::string& out, double p, int64_t n, int64_t dim, uint64_t seed) {
  const moe::data::MMoESynthetic gen(
      moe::data::MMoESyntheticOptions().dim(dim).correlation(p).seed(seed));
  const auto b = gen.sample(n, seed + 1);
  moe::io::save_safetensors(out, {{"x", b.x}, {"y", b.y}},
                            {{"generator", "mmoe_synthetic"},
                             {"correlation", std::to_string(p)},
                             {"dim", std::to_string(dim)},
                             {"seed", std::to_string(seed)}});
  spdlog::info("synthetic: {} samples of dim {} with cos(w1, w2) = {:.4f} -> {}", n, dim,
               gen.weight_cosine(), out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  moe::runtime::ensure_passive_omp_wait(argv);
  CLI::App app{
      "moe: Mixture-of-Experts layers on LibTorch. Subcommands prepare data; see `moe "
      "<subcommand> --help`."};
  app.require_subcommand(1);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (default: all cores, or $MOE_NUM_THREADS)")
      ->check(CLI::NonNegativeNumber);

  auto* data = app.add_subcommand("data", "prepare a data set");
  data->require_subcommand(1);

  std::string kjv_out, bible = "bible";
  auto* kjv = data->add_subcommand(
      "kjv", "export the King James Bible (Debian bible-kjv) as a character corpus");
  kjv->add_option("--out", kjv_out, "output folder for train.txt, valid.txt, test.txt")->required();
  kjv->add_option("--bible", bible, "the bible program")->capture_default_str();

  std::string fashion_dir = moe::data::kFashionMnistDir;
  auto* fashion = data->add_subcommand("fashion-mnist", "check the Fashion-MNIST files");
  fashion->add_option("--dir", fashion_dir, "folder with the four *-ubyte.gz files")
      ->capture_default_str();

  std::string syn_out;
  double correlation = 0.5;
  int64_t samples = 10000, dim = 100;
  uint64_t seed = 0;
  auto* syn = data->add_subcommand("synthetic", "MMoE's two-task synthetic regression data");
  syn->add_option("--out", syn_out, "output .safetensors file")->required();
  syn->add_option("--correlation", correlation, "task correlation p = cos(w1, w2)")
      ->check(CLI::Range(-1.0, 1.0))
      ->capture_default_str();
  syn->add_option("--samples", samples, "number of samples")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  syn->add_option("--dim", dim, "input dimension")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 20))
      ->capture_default_str();
  syn->add_option("--seed", seed, "seed of the task and the samples")->capture_default_str();

#ifdef MOE_CLI_HAS_BENCH
  auto* bench = app.add_subcommand(
      "bench",
      "the CPU benchmark harness (this library vs the eager baselines); options after "
      "`bench` go to it, see `moe bench --help`");
  bench->prefix_command();  // everything after `bench` is the harness's
  bench->set_help_flag();   // so that `moe bench --help` reaches the harness
#endif

  CLI11_PARSE(app, argc, argv);
#ifdef MOE_CLI_HAS_BENCH
  if (bench->parsed()) {
    std::vector<std::string> args{"moe bench"};
    for (const auto& a : bench->remaining()) args.push_back(a);
    if (threads > 0) {
      args.push_back("--threads");
      args.push_back(std::to_string(threads));
    }
    std::vector<char*> av;
    for (auto& a : args) av.push_back(a.data());
    av.push_back(nullptr);
    return moe::bench::bench_main(static_cast<int>(args.size()), av.data());
  }
#endif
  try {
    moe::runtime::configure_threads(threads);
    if (kjv->parsed()) return run_kjv(kjv_out, bible);
    if (fashion->parsed()) return run_fashion(fashion_dir);
    if (syn->parsed()) return run_synthetic(syn_out, correlation, samples, dim, seed);
  } catch (const c10::Error& e) {
    spdlog::error("{}", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
