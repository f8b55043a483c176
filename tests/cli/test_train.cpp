// `moe train` / `moe eval` (tools/train): every router kind and model family, an end-to-end run
// through the real program whose loss decreases, and bit-exact resumption after the process is
// killed with SIGKILL (the configuration checks: test_train_config.cpp).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "cli/cli_test_util.h"
#include "cli/run_config.h"
#include "cli/train_test_util.h"
#include "moe/io/safetensors.h"
#include "support/test_util.h"
#include "train/progress.h"
#include "train/run_training.h"
#include "train/tensorboard.h"
#include "train/train_config.h"

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using moe::cli::RunConfig;
using moe::testing::lm_config;
using moe::testing::moe_cli;
using moe::testing::read_metrics;
using moe::testing::read_metrics_safely;
using moe::testing::records;
using moe::testing::signal_at_step;
using moe::testing::spawn_moe;
using moe::testing::TempDir;
using moe::testing::write_corpus;

// ---- a TensorBoard event file reader, written from the format description --------------------

struct TbEvent {
  int64_t step = 0;
  std::string file_version;
  int64_t session_status = 0;  // SessionLog.status (1 = START)
  std::map<std::string, float> values;
};

uint64_t read_varint(const std::string& b, size_t* i) {
  uint64_t v = 0;
  for (int shift = 0; *i < b.size(); shift += 7) {
    const auto c = static_cast<unsigned char>(b[(*i)++]);
    v |= static_cast<uint64_t>(c & 0x7f) << shift;
    if (!(c & 0x80)) return v;
  }
  throw std::runtime_error("truncated varint");
}

// Fields of one message: field number -> payload (the bytes of a length-delimited field, 8 bytes of
// a varint, or the 4/8 bytes of a fixed-width field).
std::vector<std::pair<int, std::string>> read_fields(const std::string& b) {
  std::vector<std::pair<int, std::string>> out;
  for (size_t i = 0; i < b.size();) {
    const uint64_t k = read_varint(b, &i);
    const int field = static_cast<int>(k >> 3), type = static_cast<int>(k & 7);
    std::string payload;
    if (type == 0) {
      const uint64_t v = read_varint(b, &i);
      payload.assign(reinterpret_cast<const char*>(&v), sizeof v);
    } else if (type == 1 || type == 5) {
      const size_t n = type == 1 ? 8 : 4;
      payload = b.substr(i, n);
      i += n;
    } else if (type == 2) {
      const uint64_t n = read_varint(b, &i);
      payload = b.substr(i, n);
      i += n;
    } else {
      throw std::runtime_error("unexpected wire type");
    }
    out.emplace_back(field, payload);
  }
  return out;
}

// Reads every record, checking both CRCs, and decodes the events.
std::vector<TbEvent> read_events(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  const std::string all((std::istreambuf_iterator<char>(in)), {});
  std::vector<TbEvent> events;
  for (size_t i = 0; i < all.size();) {
    if (i + 12 > all.size()) throw std::runtime_error("truncated record header");
    uint64_t n;
    uint32_t len_crc, data_crc;
    std::memcpy(&n, all.data() + i, 8);
    std::memcpy(&len_crc, all.data() + i + 8, 4);
    if (len_crc != moe::train::masked_crc32c(&n, 8)) throw std::runtime_error("length CRC");
    if (i + 12 + n + 4 > all.size()) throw std::runtime_error("truncated record");
    const std::string data = all.substr(i + 12, n);
    std::memcpy(&data_crc, all.data() + i + 12 + n, 4);
    if (data_crc != moe::train::masked_crc32c(data.data(), n)) throw std::runtime_error("data CRC");
    i += 12 + n + 4;
    TbEvent e;
    for (const auto& [field, payload] : read_fields(data)) {
      if (field == 2) std::memcpy(&e.step, payload.data(), 8);
      if (field == 3) e.file_version = payload;
      if (field == 6)
        for (const auto& [f, p] : read_fields(payload))
          if (f == 1) std::memcpy(&e.session_status, p.data(), 8);
      if (field != 5) continue;
      for (const auto& [vf, value] : read_fields(payload)) {
        if (vf != 1) continue;
        std::string tag;
        float v = NAN;
        for (const auto& [f, p] : read_fields(value)) {
          if (f == 1) tag = p;
          if (f == 2) std::memcpy(&v, p.data(), 4);
        }
        e.values[tag] = v;
      }
    }
    events.push_back(std::move(e));
  }
  return events;
}

TEST(TensorBoard, MaskedCrc32cOfTheStandardCheckString) {
  // CRC-32C("123456789") = 0xE3069283 (tests/io/test_crc32c.cpp), masked as TensorFlow does
  EXPECT_EQ(moe::train::masked_crc32c("123456789", 9), 0xC78AB0E5u);
}

// ---- every model trains -------------------------------------------------------------------------

struct Variant {
  const char* name;
  std::vector<std::string> sets;
  size_t probes;  // MoE layers (2 blocks)
};

void PrintTo(const Variant& v, std::ostream* os) { *os << v.name; }

class EveryRouterKind : public ::testing::TestWithParam<Variant> {};

TEST_P(EveryRouterKind, TrainsAndLogsItsLayers) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  auto config = RunConfig::from_string(lm_config(dir.path / "corpus"));
  config.set("run.steps=6");
  config.set("run.log_every=3");
  config.set("run.eval_every=3");
  for (const auto& s : GetParam().sets) config.set(s);
  const auto summary = moe::train::run_training(config, (dir.path / "run").string(), false);
  EXPECT_EQ(summary.last_step, 6);
  EXPECT_TRUE(std::isfinite(summary.valid.at("bpc")));
  EXPECT_EQ(summary.load.size(), GetParam().probes);
  const auto train = records(read_metrics(dir.path / "run"), "train");
  ASSERT_EQ(train.size(), 2u);
  for (const auto& t : train) {
    EXPECT_TRUE(std::isfinite(t.at("loss").get<double>()));
    EXPECT_EQ(t.contains("moe") ? t.at("moe").size() : 0u, GetParam().probes);
    if (!t.contains("moe")) continue;
    for (const auto& l : t.at("moe")) {
      double total = 0;
      for (const auto& s : l.at("share")) total += s.get<double>();
      EXPECT_NEAR(total, 1.0, 1e-9) << l.dump();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Lm, EveryRouterKind,
    ::testing::Values(
        Variant{"dense", {"model.moe_every=0"}, 0},
        Variant{"every_other", {"model.moe_every=2"}, 1},
        Variant{"softmax_topk", {"moe.router=\"softmax_topk\"", "moe.capacity_factor=1.0"}, 2},
        Variant{"noisy_topk", {}, 2}, Variant{"noisy_topk_no_noise", {"moe.noisy_gating=false"}, 2},
        Variant{"switch", {"moe.router=\"switch\""}, 2},
        Variant{
            "hierarchical",
            {"moe.router=\"hierarchical\"", "moe.groups=2", "moe.top_k=1", "moe.secondary_top_k=1"},
            2},
        Variant{"top_any",
                {"moe.router=\"top_any\"", "moe.schedule=\"every_step\"", "moe.storage=\"resize\""},
                2},
        Variant{"hyper", {"moe.router=\"hyper\"", "moe.hyper_hidden=16"}, 2},
        Variant{"smoe_dropout",
                {"moe.router=\"smoe_dropout\"", "moe.k_schedule=\"linear_increase\""},
                2},
        Variant{"smoe", {"moe.router=\"smoe\"", "moe.k_schedule=\"linear_increase\""}, 2},
        Variant{"expert_choice", {"moe.router=\"expert_choice\"", "moe.capacity_factor=1.5"}, 2}),
    [](const auto& info) { return std::string(info.param.name); });

// Validation forwards inside an open DynMoE recording window must not change what training does:
// the same run with and without frequent evaluations trains identically, and a session stopped at
// step 5 (in the window of forwards 3..6, after the evaluations of steps 2 and 4) saves the same
// records of the open window, the count of unrouted tokens included.
TEST(Train, EvaluationDoesNotChangeDynMoETraining) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  std::vector<std::vector<json>> runs;
  std::vector<std::string> open_records;
  for (const char* every : {"run.eval_every=2", "run.eval_every=1000"}) {
    auto config = RunConfig::from_string(lm_config(dir.path / "corpus"));
    for (const char* s : {"run.steps=40", "moe.router=\"top_any\"", "moe.storage=\"pool\"",
                          "moe.record=3", "moe.period=5", "moe.initial_experts=1"})
      config.set(s);
    config.set(every);
    const auto run = dir.path / (std::string("run") + std::to_string(runs.size()));
    moe::train::run_training(config, run.string(), false);
    runs.push_back(records(read_metrics(run), "train"));
    const auto stopped = run.string() + "-stopped";
    moe::train::run_training(config, stopped, false, /*stop_at=*/5);
    const auto checkpoint = moe::io::load_safetensors(stopped + "/checkpoint.safetensors");
    open_records.push_back(checkpoint.metadata.at("top_any_records.blocks.0.ffn.moe"));
  }
  EXPECT_EQ(open_records[0], open_records[1]);
  EXPECT_GT(json::parse(open_records[0]).at("unrouted_tokens").get<int64_t>(), 0)
      << open_records[0];
  ASSERT_EQ(runs[0].size(), runs[1].size());
  std::set<int64_t> active;
  for (size_t i = 0; i < runs[0].size(); ++i) {
    EXPECT_EQ(runs[0][i].at("task_loss").get<double>(), runs[1][i].at("task_loss").get<double>())
        << "step " << runs[0][i].at("step");
    EXPECT_EQ(runs[0][i].at("moe"), runs[1][i].at("moe")) << "step " << runs[0][i].at("step");
    active.insert(runs[0][i].at("moe")[0].at("active_experts").get<int64_t>());
  }
  EXPECT_GT(active.size(), 1u);  // experts were added: the windows mattered
}

// A DynMoE update that falls due after the run's last step is not applied: nothing would train the
// added expert, which would take the tokens training left unrouted into the final evaluation and
// the checkpoint untrained. One step earlier in a longer run, the same update is applied.
TEST(Train, NoDynMoEUpdateAfterTheLastStep) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  auto active_experts = [&](int steps) {
    auto config = RunConfig::from_string(lm_config(dir.path / "corpus"));
    // windows of forwards 3..6, 8..11, ...: the first update is due after step 6
    for (const char* s : {"moe.router=\"top_any\"", "moe.storage=\"pool\"", "moe.record=3",
                          "moe.period=5", "moe.initial_experts=1"})
      config.set(s);
    config.set("run.steps=" + std::to_string(steps));
    const auto run = dir.path / ("run" + std::to_string(steps));
    moe::train::run_training(config, run.string(), false);
    const auto file = moe::io::load_safetensors((run / "checkpoint.safetensors").string());
    return file.find("model.blocks.0.ffn.moe.router.active").sum().item<int64_t>();
  };
  EXPECT_EQ(active_experts(7), 2);  // the update after step 6 added an expert
  EXPECT_EQ(active_experts(6), 1);  // after the last step: not applied
}

TEST(Train, MultiTaskModelsTrainOnGeneratedData) {
  for (const char* kind : {"shared_bottom", "omoe", "mmoe", "cgc", "ple"}) {
    TempDir dir;
    auto config = RunConfig::from_string(
        "[run]\ntask = \"multitask\"\nsteps = 40\nbatch_size = 32\nlr = 1e-2\nlog_every = 10\n"
        "eval_every = 20\n[data]\nsamples = 2000\ndim = 16\n[model]\nkind = \"" +
        std::string(kind) + "\"\n");
    const auto summary = moe::train::run_training(config, (dir.path / "run").string(), false);
    const auto train = records(read_metrics(dir.path / "run"), "train");
    ASSERT_EQ(train.size(), 4u) << kind;
    EXPECT_LT(train.back().at("task_loss").get<double>(),
              train.front().at("task_loss").get<double>())
        << kind;
    EXPECT_TRUE(summary.valid.count("mse0") && summary.valid.count("mse1")) << kind;
    // gates are logged for the MoE models, none for the shared bottom
    EXPECT_EQ(train.back().contains("moe"), std::string(kind) != "shared_bottom") << kind;
  }
}

TEST(Train, ClassifierOnFashionMnist) {
  if (!fs::exists("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"))
    GTEST_SKIP() << "dataset-fashion-mnist is not installed (make deps)";
  TempDir dir;
  auto config = RunConfig::from_string(
      "[run]\ntask = \"classify\"\nsteps = 60\nbatch_size = 64\nlog_every = 20\neval_every = 60\n"
      "[model]\nd_model = 32\n[moe]\nnum_experts = 4\nhidden = 32\n");
  const auto summary = moe::train::run_training(config, (dir.path / "run").string(), false);
  EXPECT_GT(summary.valid.at("accuracy"), 0.5);  // 10 classes: chance is 0.1
  ASSERT_EQ(summary.load.size(), 1u);
  EXPECT_EQ(summary.load[0].share.size(), 4u);
}

// ---- the real program ---------------------------------------------------------------------------

TEST(TrainCli, EndToEndLossDecreasesAndEvalReadsTheCheckpoint) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  std::ofstream(dir.path / "lm.toml") << lm_config(dir.path / "corpus");
  const auto run = dir.path / "run";
  auto r = moe_cli("--threads 2 train " + (dir.path / "lm.toml").string() + " --out " +
                   run.string() + " --set run.steps=80 --set run.eval_every=40");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("validation (whole split)"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("blocks.0.ffn"), std::string::npos) << r.output;
  // plain progress lines (stdout is a pipe, not a terminal)
  EXPECT_NE(r.output.find("step 80/80"), std::string::npos) << r.output;
  EXPECT_EQ(r.output.find('\r'), std::string::npos);

  const auto all = read_metrics(run);
  ASSERT_FALSE(all.empty());
  EXPECT_EQ(all.front().at("event"), "start");
  // One thread pool: the program runs OpenBLAS's OpenMP build when it is installed next to the
  // pthread build this test runs on (moe::runtime::configure_threading).
  const auto build = moe::testing::mapped_openblas_build();
  if (build == "pthread") {
    EXPECT_EQ(all.front().at("openblas"),
              moe::testing::openblas_openmp_dir_next_to_mapped().empty() ? "pthread" : "openmp");
  }
  // The CPU features that decide the kernels, and the bf16 product path.
  EXPECT_NE(all.front().at("cpu").get<std::string>().find("bf16 GEMM"), std::string::npos);
  const auto bf16 = all.front().at("bf16_gemm").get<std::string>();
  EXPECT_TRUE(bf16 == "native" || bf16 == "float32") << bf16;
  EXPECT_EQ(all.back().at("event"), "end");
  const auto train = records(all, "train");
  ASSERT_EQ(train.size(), 16u);
  // from ~ln(alphabet) towards the grammar's entropy
  const double first = train.front().at("task_loss"), last = train.back().at("task_loss");
  EXPECT_LT(last, first - 0.8) << first << " -> " << last;
  const auto evals = records(all, "eval");
  ASSERT_EQ(evals.size(), 2u);  // step 40 and the whole split at the end
  EXPECT_EQ(evals.back().at("step"), 80);
  EXPECT_NEAR(evals.back().at("bpc").get<double>(),
              evals.back().at("loss").get<double>() / std::log(2.0), 1e-12);
  // the effective configuration has the override
  EXPECT_EQ(RunConfig::from_file((run / "config.toml").string()).get_int("run.steps", 0), 80);

  // the TensorBoard file holds the same scalars as the JSONL (as float32)
  std::vector<fs::path> tb;
  for (const auto& f : fs::directory_iterator(run))
    if (f.path().filename().string().rfind("events.out.tfevents.", 0) == 0) tb.push_back(f.path());
  ASSERT_EQ(tb.size(), 1u);
  const auto events = read_events(tb[0]);
  ASSERT_EQ(events.size(), 1 + train.size() + evals.size());
  EXPECT_EQ(events[0].file_version, "brain.Event:2");
  size_t matched = 0;
  for (const auto& t : train)
    for (const auto& e : events)
      if (e.step == t.at("step").get<int64_t>() && e.values.count("train/loss")) {
        EXPECT_EQ(e.values.at("train/loss"), static_cast<float>(t.at("loss").get<double>()));
        EXPECT_EQ(e.values.at("train/bpc"), static_cast<float>(t.at("bpc").get<double>()));
        EXPECT_EQ(e.values.at("moe/blocks.1.ffn/cv"),
                  static_cast<float>(t.at("moe")[1].at("cv").get<double>()));
        ++matched;
      }
  EXPECT_EQ(matched, train.size());
  EXPECT_EQ(events.back().values.at("valid/bpc"),
            static_cast<float>(evals.back().at("bpc").get<double>()));

  // the report of this real run: one heat map per MoE layer, curves, nothing external
  r = moe_cli("report " + run.string());
  ASSERT_EQ(r.status, 0) << r.output;
  std::ifstream page_file(run / "report.html");
  const std::string page((std::istreambuf_iterator<char>(page_file)), {});
  size_t heatmaps = 0;
  for (size_t at = page.find("class=\"heatmap\""); at != std::string::npos;
       at = page.find("class=\"heatmap\"", at + 1))
    ++heatmaps;
  EXPECT_EQ(heatmaps, 2u);  // blocks.0.ffn and blocks.1.ffn
  EXPECT_NE(page.find("blocks.1.ffn"), std::string::npos);
  EXPECT_EQ(page.find("http"), std::string::npos);

  // At the training's thread count: on OpenBLAS's OpenMP build the GEMMs round by it.
  r = moe_cli("--threads 2 eval " + run.string() + " --split valid");
  ASSERT_EQ(r.status, 0) << r.output;
  char expected[64];
  std::snprintf(expected, sizeof expected, "bpc %.4f", evals.back().at("bpc").get<double>());
  EXPECT_NE(r.output.find(expected), std::string::npos) << r.output << "\nexpected " << expected;
}

TEST(TrainCli, ErrorsAreClearAndLoseNothing) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto cfg = (dir.path / "lm.toml").string();
  std::ofstream(cfg) << lm_config(dir.path / "corpus");
  // exit codes: 2 for usage and configuration errors, 1 for runtime errors
  auto r = moe_cli("train");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--resume"), std::string::npos) << r.output;
  r = moe_cli("train " + cfg);
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("--out"), std::string::npos) << r.output;
  r = moe_cli("train " + cfg + " --out " + (dir.path / "x").string() + " --set moe.num_expert=3");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("moe.num_expert"), std::string::npos) << r.output;
  std::ofstream(dir.path / "broken.toml") << "[run]\ntask = \"lm\"\nsteps = = 3\n";
  r = moe_cli("train " + (dir.path / "broken.toml").string() + " --out " +
              (dir.path / "y").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("broken.toml:3:"), std::string::npos) << r.output;  // file:line:column
  r = moe_cli("train --resume " + (dir.path / "nothing").string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("does not exist"), std::string::npos) << r.output;
  r = moe_cli("train " + cfg + " --out " + (dir.path / "z").string() +
              " --set data.dir=/nonexistent/corpus");
  EXPECT_EQ(r.status, 1);
  EXPECT_NE(r.output.find("/nonexistent/corpus"), std::string::npos) << r.output;

  // a finished run is never overwritten by a new one
  const auto run = dir.path / "run";
  ASSERT_EQ(moe_cli("train " + cfg + " --out " + run.string() + " --set run.steps=5").status, 0);
  const auto before = fs::last_write_time(run / "checkpoint.safetensors");
  r = moe_cli("train " + cfg + " --out " + run.string());
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("already holds a run"), std::string::npos) << r.output;
  EXPECT_EQ(fs::last_write_time(run / "checkpoint.safetensors"), before);
  r = moe_cli("eval " + run.string() + " --split train");
  EXPECT_EQ(r.status, 2);

  // a resumed run trains the model it started: only logging/eval/checkpoint/data keys may change
  r = moe_cli("train --resume " + run.string() + " --set moe.hidden=16 --set run.lr=0.1");
  EXPECT_EQ(r.status, 2);
  EXPECT_NE(r.output.find("moe.hidden: 32 -> 16"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("run.lr: 0.003"), std::string::npos) << r.output;
  EXPECT_EQ(fs::last_write_time(run / "checkpoint.safetensors"), before);
  r = moe_cli("train --resume " + run.string() + " --out " + (dir.path / "w").string());
  EXPECT_EQ(r.status, 2);

  // --dry-run checks and prints the effective configuration, and trains nothing
  r = moe_cli("train " + cfg + " --out " + (dir.path / "dry").string() +
              " --set model.layers=3 --dry-run");
  EXPECT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("layers = 3"), std::string::npos) << r.output;
  EXPECT_FALSE(fs::exists(dir.path / "dry"));
  r = moe_cli("--version");
  EXPECT_EQ(r.status, 0);
  EXPECT_EQ(r.output.rfind("moe ", 0), 0u) << r.output;
}

// The train records that both runs wrote, compared field by field (bitwise: JSON keeps every
// digit).
void expect_same_training(const std::vector<json>& a, const std::vector<json>& b) {
  const auto ta = records(a, "train"), tb = records(b, "train");
  ASSERT_EQ(ta.size(), tb.size());
  for (size_t i = 0; i < ta.size(); ++i) {
    SCOPED_TRACE("step " + ta[i].at("step").dump());
    EXPECT_EQ(ta[i].at("step"), tb[i].at("step"));
    for (const char* k : {"loss", "task_loss", "aux_loss", "lr", "bpc"})
      EXPECT_EQ(ta[i].at(k).get<double>(), tb[i].at(k).get<double>()) << k;
    if (ta[i].contains("moe")) {
      EXPECT_EQ(ta[i].at("moe"), tb[i].at("moe"));
    }
  }
  const auto ea = records(a, "eval"), eb = records(b, "eval");
  ASSERT_EQ(ea.size(), eb.size());
  for (size_t i = 0; i < ea.size(); ++i)
    EXPECT_EQ(ea[i].at("bpc").get<double>(), eb[i].at("bpc").get<double>());
}

class ResumeAfterKill : public ::testing::TestWithParam<Variant> {};

// Run A trains uninterrupted. Run B is killed (SIGKILL) at some point after its second checkpoint,
// then resumed from whatever checkpoint survived: its records must equal A's bit for bit.
TEST_P(ResumeAfterKill, ReproducesTheUninterruptedRun) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto cfg = (dir.path / "lm.toml").string();
  std::ofstream(cfg) << lm_config(dir.path / "corpus");
  std::vector<std::string> sets = {"run.steps=150", "run.checkpoint_every=5", "run.eval_every=25"};
  for (const auto& x : GetParam().sets) sets.push_back(x);
  std::string shell_sets;
  for (const auto& x : sets) shell_sets += " --set '" + x + "'";
  const auto a = dir.path / "a", b = dir.path / "b";
  auto r = moe_cli("train " + cfg + " --out " + a.string() + shell_sets);
  ASSERT_EQ(r.status, 0) << r.output;

  std::vector<std::string> args = {"train", cfg, "--out", b.string()};
  for (const auto& x : sets) {
    args.push_back("--set");
    args.push_back(x);
  }
  // kill it once it has logged step 10 (a checkpoint or two written; top_any still adds experts
  // after each window, so a resume that lost a window's records would diverge)
  const pid_t pid = spawn_moe(args, (dir.path / "b.log").string());
  ASSERT_GE(pid, 0);
  int status = 0;
  ASSERT_TRUE(signal_at_step(pid, b, 10, SIGKILL, &status)) << "run B never reached step 10";
  ASSERT_TRUE(WIFSIGNALED(status)) << "run B finished before it was killed; make it longer";

  if (std::string(GetParam().name).rfind("top_any", 0) == 0) {
    // the runs must really add experts after step 10, or losing a window would go unnoticed
    std::set<int64_t> counts;
    for (const auto& t : records(read_metrics(a), "train"))
      if (t.at("step").get<int>() > 10)
        counts.insert(t.at("moe")[0].at("active_experts").get<int64_t>());
    EXPECT_GT(counts.size(), 1u) << "no expert was added after step 10";
  }

  r = moe_cli("train --resume " + b.string());
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("resuming"), std::string::npos) << r.output;
  for (const auto& e : fs::directory_iterator(b))  // no temporary file left behind
    EXPECT_EQ(e.path().filename().string().find(".tmp."), std::string::npos) << e.path();
  expect_same_training(read_metrics(a), read_metrics(b));
}

INSTANTIATE_TEST_SUITE_P(
    Lm, ResumeAfterKill,
    ::testing::Values(
        Variant{"noisy_topk", {}, 2},
        // recording windows [3..6], [8..11], [13..16], ...: every checkpoint (a multiple of 5)
        // falls inside an open window, whose records must survive the restart
        Variant{"top_any_resize",
                {"moe.router=\"top_any\"", "moe.storage=\"resize\"", "moe.record=3", "moe.period=5",
                 "moe.initial_experts=1"},
                2},
        Variant{"smoe_dropout", {"moe.router=\"smoe_dropout\"", "moe.k_min=1", "moe.k_max=4"}, 2}),
    [](const auto& info) { return std::string(info.param.name); });

// --stop-at ends a session with a checkpoint; SIGTERM does the same at the end of the current step
// (exit code 130). Both continue with --resume and reproduce the uninterrupted run.
TEST(TrainCli, StopAtAndSigtermResumeExactly) {
  TempDir dir;
  write_corpus(dir.path / "corpus");
  const auto cfg = (dir.path / "lm.toml").string();
  std::ofstream(cfg) << lm_config(dir.path / "corpus");
  const std::string sets = " --set run.steps=120 --set run.checkpoint_every=50";
  const auto a = dir.path / "a", b = dir.path / "b", c = dir.path / "c";
  ASSERT_EQ(moe_cli("train " + cfg + " --out " + a.string() + sets).status, 0);

  auto r = moe_cli("train " + cfg + " --out " + b.string() + sets + " --stop-at 35");
  ASSERT_EQ(r.status, 0) << r.output;
  EXPECT_NE(r.output.find("stopped at step 35 of 120"), std::string::npos) << r.output;
  EXPECT_TRUE(records(read_metrics(b), "end").empty());
  ASSERT_EQ(moe_cli("train --resume " + b.string()).status, 0);
  expect_same_training(read_metrics(a), read_metrics(b));
  // the resumed session's TensorBoard file starts with SessionLog START at the checkpoint's step
  std::vector<fs::path> tb;
  for (const auto& f : fs::directory_iterator(b))
    if (f.path().filename().string().rfind("events.out.tfevents.", 0) == 0) tb.push_back(f.path());
  ASSERT_GE(tb.size(), 1u);
  bool session_start = false;
  for (const auto& f : tb)
    for (const auto& e : read_events(f))
      session_start = session_start || (e.session_status == 1 && e.step == 35);
  EXPECT_TRUE(session_start);
  // elapsed time continues across sessions
  double at_stop = -1, after = -1;
  for (const auto& t : records(read_metrics(b), "train")) {
    if (t.at("step") == 35) at_stop = t.at("elapsed_s").get<double>();
    if (t.at("step") == 40) after = t.at("elapsed_s").get<double>();
  }
  EXPECT_GT(at_stop, 0);
  EXPECT_GT(after, at_stop);

  const pid_t pid = spawn_moe({"train", cfg, "--out", c.string(), "--set", "run.steps=120", "--set",
                               "run.checkpoint_every=50"},
                              (dir.path / "c.log").string());
  ASSERT_GE(pid, 0);
  int status = 0;
  ASSERT_TRUE(signal_at_step(pid, c, 10, SIGTERM, &status));
  ASSERT_TRUE(WIFEXITED(status)) << "moe train did not exit by itself after SIGTERM";
  EXPECT_EQ(WEXITSTATUS(status), 130);
  const auto interrupted = records(read_metrics(c), "train");
  ASSERT_FALSE(interrupted.empty());
  EXPECT_LT(interrupted.back().at("step").get<int>(), 120);
  ASSERT_EQ(moe_cli("train --resume " + c.string()).status, 0);
  // the interrupted session flushed a partial logging interval: compare per-step data where the
  // intervals agree, i.e. everything but the record at the interruption step and the next one
  const int64_t cut = interrupted.back().at("step").get<int64_t>();
  auto ta = records(read_metrics(a), "train"), tc = records(read_metrics(c), "train");
  std::map<int64_t, json> by_step;
  for (const auto& t : tc) by_step[t.at("step").get<int64_t>()] = t;
  int compared = 0;
  for (const auto& t : ta) {
    const int64_t st = t.at("step").get<int64_t>();
    if (st > cut && st <= (cut / 5 + 1) * 5) continue;  // the interval split by the interruption
    ASSERT_TRUE(by_step.count(st)) << st;
    EXPECT_EQ(t.at("task_loss").get<double>(), by_step[st].at("task_loss").get<double>()) << st;
    ++compared;
  }
  EXPECT_GE(compared, 20);
  EXPECT_EQ(records(read_metrics(a), "eval").back().at("bpc").get<double>(),
            records(read_metrics(c), "eval").back().at("bpc").get<double>());
}

// ---- progress display ---------------------------------------------------------------------------

TEST(Progress, LinesAndDurations) {
  EXPECT_EQ(moe::train::format_duration(42.4), "42s");
  EXPECT_EQ(moe::train::format_duration(185), "3m05s");
  EXPECT_EQ(moe::train::format_duration(3720), "1h02m");
  EXPECT_EQ(moe::train::format_duration(NAN), "?");
  std::FILE* f = std::tmpfile();
  // resumed at step 100 of 300: 50 steps in 10 s = 5 steps/s, 150 left = 30 s
  moe::train::Progress p(300, 100, f, /*interactive=*/0, /*plain_interval_s=*/0);
  const auto line = p.line(150, 1.5, 2000, 10);
  EXPECT_NE(line.find("step 150/300"), std::string::npos) << line;
  EXPECT_NE(line.find("5.00 steps/s"), std::string::npos) << line;
  EXPECT_NE(line.find("ETA 30s"), std::string::npos) << line;
  EXPECT_NE(line.find("loss 1.5000"), std::string::npos) << line;
  p.update(150, 1.5, 2000, 10);
  p.note("eval");
  p.finish();
  std::rewind(f);
  char buf[512] = {};
  const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
  std::fclose(f);
  const std::string text(buf, n);
  EXPECT_EQ(text, line + "\n");  // plain lines only, no carriage returns or escapes (notes: stdout)
}

}  // namespace
