// The `moe` command: one program for the library's users (docs/cli.md).
//
//   moe train CONFIG.toml --out RUN [--set key=value]...   train a model, checkpoints in RUN
//   moe train --resume RUN [--set run.steps=N]              continue a run bit-exactly
//   moe eval RUN [--split valid|test]                       evaluate a run's checkpoint
//   moe report RUN [--compare OTHER_RUN]... [--out FILE]    the run's HTML report
//   moe data kjv --out data/kjv                  the King James Bible as a character corpus
//   moe data fashion-mnist [--dir DIR]           check the Fashion-MNIST files of the Debian
//   package moe data synthetic --out FILE --correlation P [--samples N] [--dim D] [--seed S]
//                                                MMoE's two-task synthetic data as safetensors
//   moe bench [harness options]                  the CPU benchmark (docs/benchmarks.md), e.g.
//   --quick
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "cli/run_config.h"
#include "moe/data/char_corpus.h"
#include "moe/data/fashion_mnist.h"
#include "moe/data/mmoe_synthetic.h"
#include "moe/io/safetensors.h"
#include "moe/runtime.h"
#include "report/report.h"
#include "train/memory_estimate.h"
#include "train/trainer.h"

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
  // Before anything is allocated: an absurd --samples was killed by the OOM killer or ended in
  // LibTorch's "Storage size calculation overflowed", naming no option.
  const auto limit = moe::train::available_memory();
  const long double need = moe::train::synthetic_data_bytes(n, dim) + 256.0L * (1 << 20);
  if (need > limit.bytes)
    throw std::invalid_argument("moe data synthetic: --samples " + std::to_string(n) +
                                " with --dim " + std::to_string(dim) + " needs about " +
                                moe::train::format_bytes(need) + " of memory, more than the " +
                                moe::train::format_bytes(limit.bytes) + " available (" +
                                limit.description + "); lower --samples or --dim");
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

std::string percent_list(const std::vector<double>& share) {
  std::string s;
  char buf[16];
  for (const double v : share) {
    std::snprintf(buf, sizeof buf, "%s%.1f", s.empty() ? "" : " ", 100 * v);
    s += buf;
  }
  return s;
}

int run_train(const std::string& config_path, const std::string& out, const std::string& resume,
              const std::vector<std::string>& sets, int64_t stop_at, bool dry_run,
              bool memory_check) {
  if (!resume.empty() && !out.empty())
    throw std::invalid_argument("moe train: --resume RUN_DIR continues that run; --out " + out +
                                " cannot be used with it");
  if (config_path.empty() == resume.empty())
    throw std::invalid_argument(
        "moe train: give either a configuration file and --out RUN_DIR (a new run) or --resume "
        "RUN_DIR (continue a run)");
  if (!config_path.empty() && out.empty())
    throw std::invalid_argument("moe train: --out RUN_DIR is required with a configuration file");
  const std::string run_dir = resume.empty() ? out : resume;
  if (!resume.empty() && !std::filesystem::exists(run_dir + "/config.toml"))
    throw std::invalid_argument("moe train --resume: " + run_dir +
                                "/config.toml does not exist: not a run folder of `moe train`");
  auto config =
      moe::cli::RunConfig::from_file(resume.empty() ? config_path : run_dir + "/config.toml");
  for (const auto& s : sets) config.set(s);
  // Before anything is built: a configuration the machine cannot hold is rejected in a moment,
  // naming its keys, instead of being killed by the OOM killer minutes later (a dry run too).
  if (memory_check) moe::train::check_memory(moe::train::parse_train_config(config));
  if (dry_run) {  // validate every key, print the effective configuration, train nothing
    moe::train::parse_train_config(config);
    std::printf("%s", config.to_toml().c_str());
    return 0;
  }
  const auto r = moe::train::run_training(config, run_dir, !resume.empty(), stop_at);
  if (r.interrupted) return 130;
  std::printf("\n%s: steps %lld..%lld in %.1f s, %lld parameters (%lld active per token)\n",
              run_dir.c_str(), static_cast<long long>(r.first_step),
              static_cast<long long>(r.last_step), r.seconds,
              static_cast<long long>(r.parameters.total),
              static_cast<long long>(r.parameters.active));
  if (!r.valid.empty()) {
    std::printf("validation (whole split):");
    for (const auto& [k, v] : r.valid)
      if (k != "tokens") std::printf("  %s %.4f", k.c_str(), v);
    std::printf("\n");
  }
  if (!r.load.empty()) std::printf("expert load over the run (%% of assignments per expert):\n");
  for (const auto& l : r.load)
    std::printf("  %-16s %s  (CV %.3f)\n", l.name.c_str(), percent_list(l.share).c_str(), l.cv);
  std::fflush(stdout);
  return 0;
}

int run_eval(const std::string& run_dir, const std::string& split) {
  const auto m = moe::train::run_evaluation(run_dir, split);
  std::printf("%s, %s split:", run_dir.c_str(), split.c_str());
  for (const auto& [k, v] : m) std::printf("  %s %.4f", k.c_str(), v);
  std::printf("\n");
  return 0;
}

// CLI11 reports a word that is no subcommand (`moe frobnicate`) as "A subcommand is required";
// this names the word and the subcommands of `app` (called `path`) instead. Empty when `app` left
// no such word.
std::string unknown_subcommand(const CLI::App& app, const std::string& path) {
  for (const auto& a : app.remaining()) {
    if (a.empty() || a[0] == '-') continue;
    std::string names;
    for (const auto* sub : app.get_subcommands([](const CLI::App*) { return true; }))
      names += (names.empty() ? "" : ", ") + sub->get_name();
    return path + ": unknown subcommand '" + a + "'; expected one of: " + names + " (see `" + path +
           " --help`)";
  }
  return "";
}

// Reports a command line CLI11 rejected and returns the exit code: 0 for --help and --version, 2
// (usage error) otherwise; 1 is for runtime errors.
int parse_error_exit(const CLI::App& app, const CLI::App& data, const CLI::ParseError& e) {
  for (const auto& [a, path] : {std::pair<const CLI::App*, const char*>{&app, "moe"},
                                std::pair<const CLI::App*, const char*>{&data, "moe data"}}) {
    const std::string unknown = unknown_subcommand(*a, path);
    if (!unknown.empty()) {
      spdlog::error("{}", unknown);
      return 2;
    }
  }
  return app.exit(e) == 0 ? 0 : 2;  // app.exit prints the help, the version or the error
}

}  // namespace

int main(int argc, char** argv) {
  moe::runtime::configure_threading(argv);
  // Log lines (and errors) on stderr; results, tables and plain progress lines on stdout.
  spdlog::set_default_logger(spdlog::stderr_color_mt("moe"));
  CLI::App app{
      "moe: Mixture-of-Experts layers on LibTorch. Train, evaluate and report on MoE models; "
      "see `moe <subcommand> --help` and docs/cli.md."};
  app.require_subcommand(1);
  app.set_version_flag("--version", std::string("moe ") + MOE_VERSION);
  int threads = 0;
  app.add_option("--threads", threads, "intra-op threads (default: all cores, or $MOE_NUM_THREADS)")
      ->check(CLI::NonNegativeNumber);

  std::string train_config, train_out, train_resume;
  std::vector<std::string> train_sets;
  int64_t train_stop_at = 0;
  bool train_dry_run = false, train_no_memory_check = false;
  auto* train = app.add_subcommand(
      "train",
      "train a model: `moe train CONFIG.toml --out RUN_DIR` (a new run) or `moe train --resume "
      "RUN_DIR` (continue one); see docs/cli.md for the configuration keys");
  train->add_option("config", train_config, "run configuration (TOML), e.g. configs/kjv_moe.toml");
  train->add_option("--out", train_out, "run folder for config.toml, metrics.jsonl, checkpoints");
  train->add_option("--resume", train_resume,
                    "continue the run in this folder from its checkpoint");
  train->add_option("--set", train_sets,
                    "override a configuration key, e.g. --set model.layers=2 --set "
                    "moe.router=\"top_any\" (repeatable)");

  std::string eval_run, eval_split = "valid";
  train
      ->add_option("--stop-at", train_stop_at,
                   "end this session after step N with a checkpoint (continue with --resume)")
      ->check(CLI::PositiveNumber);
  train->add_flag("--dry-run", train_dry_run,
                  "check the configuration and print it with the overrides applied; train nothing");
  train->add_flag("--no-memory-check", train_no_memory_check,
                  "skip the check of the estimated memory against the memory available");

  auto* eval = app.add_subcommand("eval", "evaluate the checkpoint of a run on a data split");
  eval->add_option("run", eval_run, "run folder")->required();
  eval->add_option("--split", eval_split, "valid or test")
      ->check(CLI::IsMember({"valid", "test"}))
      ->capture_default_str();

  std::string report_run, report_out;
  std::vector<std::string> report_compare;
  auto* report = app.add_subcommand(
      "report", "write a run's self-contained HTML report (learning curves, expert load)");
  report->add_option("run", report_run, "run folder (with metrics.jsonl)")->required();
  report->add_option("--compare", report_compare,
                     "other run folders whose evaluation curves are overlaid (repeatable)");
  report->add_option("--out", report_out, "output file (default: RUN/report.html)");

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

  try {
    app.parse(argc, argv);
    // Before any subcommand runs (the benchmark included): 100000 threads hung the process
    // creating OpenMP threads. configure_threads checks $MOE_NUM_THREADS the same way.
    if (threads > moe::runtime::max_threads())
      throw std::invalid_argument("--threads " + std::to_string(threads) +
                                  ": expected an integer in [1, " +
                                  std::to_string(moe::runtime::max_threads()) +
                                  "] (4 per hardware thread), or 0 for every core");
    moe::runtime::configure_threads(threads);
  } catch (const CLI::ParseError& e) {
    return parse_error_exit(app, *data, e);
  } catch (const std::invalid_argument& e) {
    spdlog::error("{}", e.what());
    return 2;
  }
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
    if (train->parsed())
      return run_train(train_config, train_out, train_resume, train_sets, train_stop_at,
                       train_dry_run, !train_no_memory_check);
    if (eval->parsed()) return run_eval(eval_run, eval_split);
    if (report->parsed()) {
      const auto path = moe::report::write_report({report_run, report_compare, report_out});
      std::printf("report: %s\n", path.c_str());
      return 0;
    }
    if (kjv->parsed()) return run_kjv(kjv_out, bible);
    if (fashion->parsed()) return run_fashion(fashion_dir);
    if (syn->parsed()) return run_synthetic(syn_out, correlation, samples, dim, seed);
  } catch (const std::invalid_argument& e) {  // usage and configuration errors
    spdlog::error("{}", e.what());
    return 2;
  } catch (const c10::Error& e) {
    spdlog::error("{}", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
