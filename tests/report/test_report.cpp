// The `moe report` page (tools/report/report.h): fixture runs written here, the page checked
// structurally against numbers the test computes itself (heat-map cells, histogram bars, kept
// records after a resume), escaping, the conditional sections, errors and the atomic write.
//
// MOE_REPORT_KEEP=FILE.html makes ReportBrowser.WritesRichFixture leave a full page there, for
// tests/report/render_in_chromium.sh.
#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "report/report.h"

namespace {

namespace fs = std::filesystem;
using moe::report::ReportInput;
using nlohmann::json;

// A fresh folder under the system temp dir, removed afterwards.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (fs::temp_directory_path() / "moe_report_test_XXXXXX").string();
    if (!::mkdtemp(pattern.data())) throw std::runtime_error("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void write_file(const fs::path& path, const std::string& text) {
  fs::create_directories(path.parent_path());
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// A run folder: metrics.jsonl from records (one line each).
fs::path write_run(const fs::path& dir, const std::vector<json>& records) {
  std::string text;
  for (const auto& r : records) text += r.dump() + "\n";
  write_file(dir / "metrics.jsonl", text);
  return dir;
}

json start_record(const std::string& task, const std::string& router, int steps) {
  return {{"event", "start"},
          {"task", task},
          {"model", router == "none" ? "dense" : "moe"},
          {"router", router},
          {"steps", steps},
          {"resumed_from", nullptr},
          {"time", "2026-11-22T21:00:00Z"},
          {"seed", 7}};
}

json layer_record(const std::string& name, const std::vector<double>& share, double active,
                  double mean_k) {
  return {{"name", name},    {"share", share},           {"cv", 0.1 + share[0]},
          {"dropped", 0.01}, {"active_experts", active}, {"mean_k", mean_k},
          {"unrouted", 0.0}};
}

json train_record(int step, double loss, const json& moe) {
  json r = {{"event", "train"},
            {"step", step},
            {"elapsed_s", step * 0.1},
            {"loss", loss},
            {"task_loss", loss - 0.05},
            {"aux_loss", 0.05},
            {"lr", 1e-3},
            {"tokens_per_s", 5000}};
  if (!moe.is_null()) r["moe"] = moe;
  return r;
}

json eval_record(int step, double loss) {
  return {
      {"event", "eval"}, {"step", step}, {"split", "valid"}, {"loss", loss}, {"bpc", loss * 1.4}};
}

// A normalised share vector of length n that differs between records and experts.
std::vector<double> make_share(size_t n, int record, int layer) {
  std::vector<double> s(n);
  double total = 0;
  for (size_t e = 0; e < n; ++e)
    total += s[e] = 1.0 + static_cast<double>(e) + (record % 3) * (layer + 1) * (e % 2);
  for (double& v : s) v /= total;
  return s;
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size()))
    ++n;
  return n;
}

bool contains(const std::string& text, const std::string& what) {
  return text.find(what) != std::string::npos;
}

// The <svg> element of the given class for a layer (its name as it appears escaped in the page).
std::string svg_of(const std::string& page, const std::string& cls, const std::string& layer_attr) {
  const std::string open = "<svg class=\"" + cls + "\"";
  for (size_t at = page.find(open); at != std::string::npos; at = page.find(open, at + 1)) {
    const size_t end = page.find("</svg>", at);
    const size_t tag_end = page.find('>', at);
    if (page.substr(at, tag_end - at).find("data-layer=\"" + layer_attr + "\"") !=
        std::string::npos)
      return page.substr(at, end - at);
  }
  return "";
}

struct Bar {
  size_t expert;
  double share, height;
};

// The value of attribute NAME in the tag starting at the beginning of TAG ("" when absent).
std::string attr(const std::string& tag, const std::string& name) {
  const std::string key = " " + name + "=\"";
  const size_t close = tag.find('>');
  const size_t at = tag.find(key);
  if (at == std::string::npos || at > close) return "";
  const size_t b = at + key.size();
  return tag.substr(b, tag.find('"', b) - b);
}

// Each element opening with PREFIX, as the text from there to the end of the document.
std::vector<std::string> tags(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  for (size_t at = text.find(prefix); at != std::string::npos; at = text.find(prefix, at + 1))
    out.push_back(text.substr(at, text.find("</", at) - at));
  return out;
}

std::vector<Bar> bars_of(const std::string& histogram) {
  std::vector<Bar> bars;
  for (const auto& tag : tags(histogram, "<rect class=\"bar\""))
    bars.push_back({std::stoul(attr(tag, "data-expert")), std::stod(attr(tag, "data-share")),
                    std::stod(attr(tag, "height"))});
  return bars;
}

// Checks the bars against the expected mean shares, and that heights are proportional to them.
void expect_bars(const std::string& histogram, const std::vector<double>& expected) {
  const auto bars = bars_of(histogram);
  ASSERT_EQ(bars.size(), expected.size());
  double ratio = -1;
  for (size_t k = 0; k < bars.size(); ++k) {
    EXPECT_EQ(bars[k].expert, k);
    EXPECT_NEAR(bars[k].share, expected[k], 1e-5 * std::max(1.0, expected[k])) << "expert " << k;
    if (expected[k] > 0.01) {
      if (ratio < 0) ratio = bars[k].height / expected[k];
      EXPECT_NEAR(bars[k].height / expected[k], ratio, 1e-2 * ratio)
          << "bar height of expert " << k;
    }
  }
}

// The values of the <title> tooltips of a heat map's cells, in document order.
std::vector<std::string> cell_titles(const std::string& heatmap) {
  std::vector<std::string> titles;
  for (const auto& tag : tags(heatmap, "<rect class=\"cell")) {
    const size_t b = tag.find("><title>");
    titles.push_back(b == std::string::npos ? "" : tag.substr(b + 8));
  }
  return titles;
}

// Whether a non-finite number was printed: a word "nan", "inf", "NaN" or "Infinity".
bool has_non_finite_word(const std::string& text) {
  std::string word;
  for (size_t i = 0; i <= text.size(); ++i) {
    const char c = i < text.size() ? text[i] : ' ';
    if (std::isalnum(static_cast<unsigned char>(c)) || c == '_') {
      word += c;
      continue;
    }
    if (word == "nan" || word == "inf" || word == "NaN" || word == "Infinity") return true;
    word.clear();
  }
  return false;
}

std::string render(const fs::path& dir, const std::vector<std::string>& compare = {}) {
  ReportInput in;
  in.run_dir = dir.string();
  for (const auto& c : compare) in.compare_dirs.push_back(c);
  return moe::report::render_report(in);
}

void expect_error(const std::function<void()>& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    for (const auto& p : parts)
      EXPECT_TRUE(contains(e.what(), p)) << "message \"" << e.what() << "\" lacks \"" << p << "\"";
  }
}

// Page-wide properties every report must have.
void expect_well_formed(const std::string& page) {
  EXPECT_TRUE(contains(page, "<!DOCTYPE html>"));
  EXPECT_TRUE(contains(page, "<meta charset=\"utf-8\">"));
  EXPECT_TRUE(contains(page, "</html>"));
  EXPECT_FALSE(contains(page, "http")) << "no URL of any kind";
  EXPECT_EQ(count(page, "<script"), 1u) << "only the page's own script";
  EXPECT_TRUE(contains(page, "window.addEventListener('error'"));
  EXPECT_FALSE(contains(page, "REPORT-ERROR")) << "the marker appears only after a script error";
  EXPECT_TRUE(contains(page, "dataset.rendered = 'ok'"));
  EXPECT_TRUE(contains(page, "dataset.charts"));
  const size_t svgs = count(page, "<svg ");
  EXPECT_GT(svgs, 0u);
  EXPECT_EQ(count(page, "<svg class=\""), svgs);
  EXPECT_EQ(count(page, "role=\"img\" aria-label=\""), svgs) << "every chart is labelled";
  EXPECT_EQ(count(page, "</svg>"), svgs);
  EXPECT_FALSE(has_non_finite_word(page)) << "a non-finite number was printed";
}

// The lm MoE fixture: 2 layers x 4 experts, 50 train records, evals every 100 steps.
constexpr int kLmRecords = 50;
const char* const kLmLayers[] = {"block1.ffn", "block2.ffn"};

fs::path write_lm_run(const fs::path& dir, std::vector<std::vector<double>>* means = nullptr) {
  std::vector<json> records{start_record("lm", "softmax_topk", 500)};
  records.back()["num_experts"] = 4;
  std::vector<std::vector<double>> sum(2, std::vector<double>(4, 0.0));
  for (int i = 0; i < kLmRecords; ++i) {
    const int step = 10 * (i + 1);
    json moe = json::array();
    for (int l = 0; l < 2; ++l) {
      const auto share = make_share(4, i, l);
      for (int e = 0; e < 4; ++e) sum[l][e] += share[e];
      moe.push_back(layer_record(kLmLayers[l], share, 4, 2.0));
    }
    records.push_back(train_record(step, 3.0 - step / 500.0, moe));
    records.back()["bpc"] = 4.0 - step / 500.0;
    if (step % 100 == 0) records.push_back(eval_record(step, 3.2 - step / 600.0));
  }
  records.push_back({{"event", "end"}, {"step", 500}, {"elapsed_s", 300.0}});
  write_run(dir, records);
  write_file(dir / "config.toml", "[train]\nlr = 3e-4  # a<b & \"c\"\nsteps = 500\n");
  if (means) {
    for (auto& layer : sum)
      for (double& v : layer) v /= kLmRecords;
    *means = sum;
  }
  return dir;
}

TEST(Report, LmMoeRunHasCellsBarsAndSections) {
  TempDir tmp;
  std::vector<std::vector<double>> means;
  const auto dir = write_lm_run(tmp.path() / "lm_moe", &means);
  const std::string page = render(dir);
  expect_well_formed(page);
  EXPECT_TRUE(contains(page, "<title>moe report: lm_moe</title>"));
  EXPECT_TRUE(contains(page, "<h1>lm_moe</h1>"));

  for (int l = 0; l < 2; ++l) {
    SCOPED_TRACE(kLmLayers[l]);
    const std::string heat = svg_of(page, "heatmap", kLmLayers[l]);
    ASSERT_FALSE(heat.empty());
    EXPECT_EQ(count(heat, "<rect class=\"cell"), 4u * kLmRecords);
    EXPECT_EQ(count(heat, "<rect class=\"cell absent\""), 0u);
    EXPECT_EQ(count(heat, "<title>"), 1u + 4u * kLmRecords) << "chart title + one tooltip per cell";
    EXPECT_TRUE(contains(heat, ">expert</text>")) << "y axis title";
    EXPECT_TRUE(contains(heat, ">share</text>")) << "color bar title";
    const auto titles = cell_titles(heat);
    ASSERT_EQ(titles.size(), 4u * kLmRecords);
    EXPECT_TRUE(contains(titles[0], "expert 0, step 10: share ")) << titles[0];
    EXPECT_TRUE(contains(titles.back(), "expert 3, step 500: share ")) << titles.back();

    const std::string hist = svg_of(page, "histogram", kLmLayers[l]);
    ASSERT_FALSE(hist.empty());
    expect_bars(hist, means[l]);
    EXPECT_TRUE(contains(hist, "stroke-dasharray")) << "the dashed uniform line";
    EXPECT_TRUE(contains(hist, "uniform 1/E = 0.25"));
  }

  // Summary: start fields, final losses, last eval, wall time, steps.
  EXPECT_TRUE(contains(page, "<th>router</th><td>softmax_topk</td>"));
  EXPECT_TRUE(contains(page, "<th>num_experts</th><td>4</td>"));
  EXPECT_TRUE(contains(page, "<th>final train loss</th><td>2 (step 500)</td>"));
  EXPECT_TRUE(contains(page, "<th>last eval (valid)</th><td>step 500, loss 2.367, bpc 3.313"));
  EXPECT_TRUE(contains(page, "<th>wall time</th><td>300 s (5m 00s)</td>"));
  EXPECT_TRUE(contains(page, "<th>steps</th><td>500 (50 train records, 5 eval records)</td>"));

  // Learning curves: train loss, task loss (differs), eval loss; BPC chart with both.
  EXPECT_TRUE(contains(page, "data-label=\"train loss\" data-points=\"50\""));
  EXPECT_TRUE(contains(page, "data-label=\"train task loss\" data-points=\"50\""));
  EXPECT_TRUE(contains(page, "data-label=\"eval loss\" data-points=\"5\""));
  EXPECT_TRUE(contains(page, "aria-label=\"Bits per character\""));
  EXPECT_TRUE(contains(page, "data-label=\"eval bpc\" data-points=\"5\""));
  EXPECT_FALSE(contains(page, "aria-label=\"AUC per task\""));

  // CV and dropped charts, one series per layer; no adaptive-routing section.
  EXPECT_TRUE(contains(page, "id=\"balance\""));
  EXPECT_EQ(count(page, "data-label=\"block1.ffn\" data-points=\"50\""), 2u);
  EXPECT_FALSE(contains(page, "id=\"adaptive\""));

  // config.toml verbatim, escaped.
  EXPECT_TRUE(contains(page, "lr = 3e-4  # a&lt;b &amp; &quot;c&quot;"));
}

TEST(Report, DownsamplesHeatMapColumnsByAveraging) {
  TempDir tmp;
  constexpr int kRecords = 450;
  constexpr int kCols = moe::report::kMaxHeatmapColumns;
  static_assert(kRecords > kCols);
  std::vector<json> records{start_record("lm", "switch", 4500)};
  std::vector<std::vector<double>> shares;
  for (int i = 0; i < kRecords; ++i) {
    shares.push_back(make_share(3, i, 0));
    records.push_back(
        train_record(10 * (i + 1), 2.0, json::array({layer_record("ffn", shares.back(), 3, 1)})));
  }
  const std::string page = render(write_run(tmp.path() / "long", records));
  expect_well_formed(page);
  const std::string heat = svg_of(page, "heatmap", "ffn");
  EXPECT_EQ(count(heat, "<rect class=\"cell"), 3u * kCols);
  const auto titles = cell_titles(heat);
  ASSERT_EQ(titles.size(), 3u * kCols);

  // Column j averages records [j*n/C, (j+1)*n/C); check the first and last column of expert 0.
  auto column_mean = [&](int j, int e) {
    const int b = j * kRecords / kCols, end = (j + 1) * kRecords / kCols;
    double s = 0;
    for (int i = b; i < end; ++i) s += shares[i][e];
    return s / (end - b);
  };
  for (const int j : {0, kCols - 1}) {
    const std::string& t = titles[j];  // row 0 (expert 0), column j
    const size_t at = t.find("share ");
    ASSERT_NE(at, std::string::npos) << t;
    EXPECT_NEAR(std::stod(t.substr(at + 6)), column_mean(j, 0), 1e-3) << t;
  }
  EXPECT_TRUE(contains(titles[0], "steps 10–20 (mean of 2)")) << titles[0];
  EXPECT_TRUE(contains(titles[kCols - 1], "steps 4480–4500 (mean of 3)")) << titles[kCols - 1];
  // The histogram still averages every record, not the columns.
  std::vector<double> mean(3, 0.0);
  for (const auto& s : shares)
    for (int e = 0; e < 3; ++e) mean[e] += s[e] / kRecords;
  expect_bars(svg_of(page, "histogram", "ffn"), mean);
  EXPECT_LT(page.size(), 400u * 1024) << "heat maps are downsampled";
}

TEST(Report, TopAnyRunWithGrowingLayerShowsAbsentCellsAndAdaptiveSection) {
  TempDir tmp;
  std::vector<json> records{start_record("classify", "top_any", 300)};
  std::vector<double> mean(5, 0.0);
  constexpr int kRecords = 30, kSmall = 10;
  for (int i = 0; i < kRecords; ++i) {
    const size_t experts = i < kSmall ? 2 : 5;
    const auto share = make_share(experts, i, 0);
    for (size_t e = 0; e < experts; ++e) mean[e] += share[e] / kRecords;  // absent counts as 0
    json r = train_record(10 * (i + 1), 1.0,
                          json::array({layer_record("dyn", share, experts, 1.5 + 0.01 * i)}));
    r["accuracy"] = 0.5 + 0.01 * i;
    records.push_back(r);
  }
  records.push_back(
      {{"event", "eval"}, {"step", 300}, {"split", "valid"}, {"loss", 0.9}, {"accuracy", 0.8}});
  const std::string page = render(write_run(tmp.path() / "topany", records));
  expect_well_formed(page);

  const std::string heat = svg_of(page, "heatmap", "dyn");
  EXPECT_EQ(count(heat, "<rect class=\"cell"), 5u * kRecords);
  EXPECT_EQ(count(heat, "<rect class=\"cell absent\""), 3u * kSmall);
  EXPECT_TRUE(contains(heat, ">absent</text>")) << "legend entry for the absent color";
  const auto titles = cell_titles(heat);
  EXPECT_EQ(titles[4 * kRecords], "expert 4, step 10: absent");
  expect_bars(svg_of(page, "histogram", "dyn"), mean);
  EXPECT_TRUE(contains(page, "uniform 1/E = 0.2"));

  EXPECT_TRUE(contains(page, "id=\"adaptive\""));
  EXPECT_TRUE(contains(page, "aria-label=\"Active experts\""));
  EXPECT_TRUE(contains(page, "aria-label=\"Mean experts per token (k)\""));
  EXPECT_TRUE(contains(page, "aria-label=\"Accuracy\""));
  EXPECT_TRUE(contains(page, "data-label=\"eval accuracy\" data-points=\"1\""));
}

TEST(Report, MultitaskRunHasPerTaskCurves) {
  TempDir tmp;
  std::vector<json> records{start_record("multitask", "none", 40)};
  for (int i = 0; i < 4; ++i) {
    json r = train_record(10 * (i + 1), 1.0 - 0.1 * i, nullptr);
    r["mse0"] = 0.5 - 0.1 * i;
    r["mse1"] = 0.6 - 0.1 * i;
    records.push_back(r);
    records.push_back({{"event", "eval"},
                       {"step", 10 * (i + 1)},
                       {"split", "valid"},
                       {"loss", 1.1},
                       {"auc", {0.7 + 0.01 * i, 0.8}},
                       {"mse", {0.5, 0.4}}});
  }
  const std::string page = render(write_run(tmp.path() / "mt", records));
  expect_well_formed(page);
  EXPECT_TRUE(contains(page, "aria-label=\"AUC per task\""));
  EXPECT_TRUE(contains(page, "data-label=\"eval auc task 1\" data-points=\"4\""));
  EXPECT_TRUE(contains(page, "data-label=\"eval auc task 2\" data-points=\"4\""));
  EXPECT_TRUE(contains(page, "data-label=\"train mse task 2\" data-points=\"4\""));
  EXPECT_TRUE(contains(page, "data-label=\"eval mse task 1\" data-points=\"4\""));
  EXPECT_TRUE(contains(page, "step 40, loss 1.1, AUC [0.73, 0.8], MSE [0.5, 0.4]"));
}

TEST(Report, AdaptiveSectionFollowsRouterAndActiveExperts) {
  TempDir tmp;
  auto run = [&](const std::string& name, const std::string& router, bool varying) {
    std::vector<json> records{start_record("lm", router, 100)};
    for (int i = 0; i < 5; ++i)
      records.push_back(train_record(
          10 * (i + 1), 1.0,
          json::array({layer_record("ffn", make_share(4, i, 0), varying ? 4 - i % 2 : 4, 2)})));
    return render(write_run(tmp.path() / name, records));
  };
  EXPECT_FALSE(contains(run("softmax", "softmax_topk", false), "id=\"adaptive\""));
  EXPECT_TRUE(contains(run("topany", "top_any", false), "id=\"adaptive\""));
  EXPECT_TRUE(contains(run("shrinking", "noisy_topk", true), "id=\"adaptive\""));
}

TEST(Report, DenseRunHasCurvesButNoExpertCharts) {
  TempDir tmp;
  std::vector<json> records{start_record("lm", "none", 100)};
  for (int i = 0; i < 10; ++i)
    records.push_back(train_record(10 * (i + 1), 2.0 - 0.1 * i, nullptr));
  records.push_back(eval_record(100, 1.5));
  const std::string page = render(write_run(tmp.path() / "dense", records));
  expect_well_formed(page);
  EXPECT_TRUE(contains(page, "No MoE layers logged"));
  EXPECT_FALSE(contains(page, "class=\"heatmap\""));
  EXPECT_FALSE(contains(page, "class=\"histogram\""));
  EXPECT_FALSE(contains(page, "id=\"balance\""));
  EXPECT_FALSE(contains(page, "id=\"adaptive\""));
  EXPECT_TRUE(contains(page, "data-label=\"train loss\" data-points=\"10\""));
  EXPECT_TRUE(contains(page, "<th>wall time</th><td>10 s (no end record"));
}

TEST(Report, ResumedRunKeepsTheLastRecordOfEachStep) {
  TempDir tmp;
  std::vector<json> records{start_record("lm", "softmax_topk", 150)};
  // First launch: steps 10..100, all load on expert 0; evals at 50 and 100.
  for (int step = 10; step <= 100; step += 10)
    records.push_back(
        train_record(step, 5.0, json::array({layer_record("ffn", {1.0, 0.0}, 2, 1)})));
  records.push_back(eval_record(50, 9.0));
  records.push_back(eval_record(100, 9.0));
  // Resumed from step 50: steps 60..150 again, all load on expert 1.
  json resumed = start_record("lm", "softmax_topk", 150);
  resumed["resumed_from"] = 50;
  records.push_back(resumed);
  for (int step = 60; step <= 150; step += 10)
    records.push_back(train_record(step, 1.0 + step / 1000.0,
                                   json::array({layer_record("ffn", {0.0, 1.0}, 2, 1)})));
  records.push_back(eval_record(100, 0.5));
  records.push_back(eval_record(150, 0.4));
  const std::string page = render(write_run(tmp.path() / "resumed", records));
  expect_well_formed(page);

  // 15 distinct steps: 10..50 from the first launch, 60..150 from the second.
  const std::string heat = svg_of(page, "heatmap", "ffn");
  EXPECT_EQ(count(heat, "<rect class=\"cell"), 2u * 15);
  const auto titles = cell_titles(heat);
  ASSERT_EQ(titles.size(), 30u);
  EXPECT_EQ(titles[4], "expert 0, step 50: share 1");
  EXPECT_EQ(titles[5], "expert 0, step 60: share 0") << "the resumed record replaced the first";
  EXPECT_EQ(titles[15 + 9], "expert 1, step 100: share 1");
  expect_bars(svg_of(page, "histogram", "ffn"), {5.0 / 15, 10.0 / 15});

  EXPECT_TRUE(contains(page, "data-label=\"train loss\" data-points=\"15\""));
  EXPECT_TRUE(contains(page, "data-label=\"eval loss\" data-points=\"3\""));
  EXPECT_TRUE(contains(page, "<th>final train loss</th><td>1.15 (step 150)</td>"));
  EXPECT_TRUE(contains(page, "<th>last eval (valid)</th><td>step 150, loss 0.4,"));
  EXPECT_TRUE(contains(page, "<th>resumed_from</th><td>— → 50</td>"));
  EXPECT_TRUE(contains(page, "<th>launches</th><td>2 (resumed)</td>"));
}

TEST(Report, CompareDirsAreOverlaidAndLabelledByFolderName) {
  TempDir tmp;
  const auto dir = write_lm_run(tmp.path() / "main");
  const auto cmp1 =
      write_run(tmp.path() / "cmp&co",
                {start_record("lm", "none", 500), eval_record(100, 2.5), eval_record(200, 2.4)});
  const auto cmp2 = write_run(tmp.path() / "baseline", {eval_record(100, 2.8)});
  const std::string page = render(dir, {cmp1.string(), cmp2.string() + "/"});
  expect_well_formed(page);
  EXPECT_TRUE(contains(page, "data-label=\"cmp&amp;co\" data-points=\"2\""));
  EXPECT_TRUE(contains(page, "data-label=\"baseline\" data-points=\"1\""));
  EXPECT_FALSE(contains(page, "cmp&co"));
  EXPECT_TRUE(contains(page, ">cmp&amp;co</text>")) << "legend entry";
  // The compare runs' BPC is on the BPC chart too (baseline has bpc, so 2 series there).
  EXPECT_EQ(count(page, "data-label=\"baseline\""), 2u);
}

TEST(Report, EscapesStringsFromTheInput) {
  TempDir tmp;
  std::vector<json> records{start_record("lm", "<b>router</b>", 100)};
  for (int i = 0; i < 3; ++i)
    records.push_back(
        train_record(10 * (i + 1), 1.0,
                     json::array({layer_record("<script>x</script>", make_share(2, i, 0), 2, 1)})));
  const std::string page = render(write_run(tmp.path() / "a&b", records));
  expect_well_formed(page);  // among others: exactly one <script
  EXPECT_TRUE(contains(page, "&lt;script&gt;x&lt;/script&gt;"));
  EXPECT_FALSE(contains(page, "<script>x"));
  EXPECT_TRUE(contains(page, "&lt;b&gt;router&lt;/b&gt;"));
  EXPECT_TRUE(contains(page, "<title>moe report: a&amp;b</title>"));
  EXPECT_EQ(count(svg_of(page, "heatmap", "&lt;script&gt;x&lt;/script&gt;"), "<rect class=\"cell"),
            6u);
}

TEST(Report, SinglePointConstantAndNullValuesRender) {
  TempDir tmp;
  // One train record only.
  const std::string one = render(write_run(tmp.path() / "one", {train_record(1, 2.0, nullptr)}));
  expect_well_formed(one);
  EXPECT_TRUE(contains(one, "data-label=\"train loss\" data-points=\"1\""));
  EXPECT_TRUE(contains(one, "<circle"));

  // Constant series, nulls in numbers and in a share list, no start record.
  std::vector<json> records;
  for (int i = 0; i < 6; ++i) {
    json layer = layer_record("ffn", {0.5, 0.5}, 2, 1);
    if (i == 2)
      layer["share"] = json::array({0.5, nullptr}), layer["cv"] = nullptr,
      layer["mean_k"] = nullptr;
    json r = train_record(10 * (i + 1), 3.0, json::array({layer}));
    if (i == 3) r["loss"] = nullptr, r["lr"] = nullptr;
    records.push_back(r);
  }
  records.push_back({{"event", "something_new"}, {"x", 1}});  // ignored
  const std::string page = render(write_run(tmp.path() / "const", records));
  expect_well_formed(page);
  EXPECT_TRUE(contains(page, "data-label=\"train loss\" data-points=\"5\""));
  const std::string heat = svg_of(page, "heatmap", "ffn");
  EXPECT_EQ(count(heat, "<rect class=\"cell"), 12u);
  EXPECT_EQ(count(heat, "<rect class=\"cell absent\""), 1u);
  expect_bars(svg_of(page, "histogram", "ffn"), {0.5, 0.5 * 5 / 6});
}

TEST(Report, ErrorsNameTheFileTheLineAndTheProblem) {
  TempDir tmp;
  const fs::path missing = tmp.path() / "nothing_here";
  expect_error([&] { render(missing); }, {(missing / "metrics.jsonl").string(), "not found"});

  const fs::path bad = tmp.path() / "bad";
  write_file(bad / "metrics.jsonl",
             "{\"event\":\"start\"}\n{\"event\":\"train\",\"step\":1,\"loss\":1}\n{\"event\":"
             "\"train\",\"step\":2,\"loss\":}\n");
  expect_error([&] { render(bad); }, {(bad / "metrics.jsonl").string(), "line 3", "invalid JSON"});

  // ... but a last line without its newline is a record being written by a running `moe train`:
  // the page shows the complete records.
  const fs::path running = tmp.path() / "running";
  write_file(running / "metrics.jsonl",
             "{\"event\":\"start\"}\n{\"event\":\"train\",\"step\":1,\"loss\":1}\n{\"event\":"
             "\"train\",\"st");
  EXPECT_NO_THROW(render(running));

  const fs::path no_event = tmp.path() / "no_event";
  write_file(no_event / "metrics.jsonl", "{\"event\":\"start\"}\n{\"step\":1,\"loss\":1}\n");
  expect_error([&] { render(no_event); },
               {(no_event / "metrics.jsonl").string(), "line 2", "\"event\""});

  const fs::path no_step = tmp.path() / "no_step";
  write_file(no_step / "metrics.jsonl", "{\"event\":\"train\",\"loss\":1}\n");
  expect_error([&] { render(no_step); },
               {(no_step / "metrics.jsonl").string(), "line 1", "\"step\""});

  const fs::path no_train = tmp.path() / "no_train";
  write_run(no_train, {start_record("lm", "none", 10), eval_record(10, 1.0)});
  expect_error([&] { render(no_train); },
               {(no_train / "metrics.jsonl").string(), "no train records"});

  // A compare dir is read with the same checks (but needs no train records).
  const auto good = write_run(tmp.path() / "good", {train_record(1, 1.0, nullptr)});
  expect_error([&] { render(good, {missing.string()}); }, {(missing / "metrics.jsonl").string()});
  EXPECT_NO_THROW(render(good, {no_train.string()}));
}

TEST(Report, WritesAtomicallyWithoutLeavingTemporaryFiles) {
  TempDir tmp;
  const auto dir = write_lm_run(tmp.path() / "run");
  write_file(dir / "report.html", "old");
  ReportInput in;
  in.run_dir = dir.string();
  const std::string path = moe::report::write_report(in);
  EXPECT_EQ(fs::path(path), dir / "report.html");
  std::ifstream f(path, std::ios::binary);
  const std::string written((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(written, moe::report::render_report(in)) << "the old page was replaced";
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"config.toml", "metrics.jsonl", "report.html"}));

  in.out_path = (tmp.path() / "elsewhere.html").string();
  EXPECT_EQ(moe::report::write_report(in), in.out_path);
  EXPECT_TRUE(fs::is_regular_file(in.out_path));

  in.out_path = (tmp.path() / "no_such_folder" / "r.html").string();
  expect_error([&] { moe::report::write_report(in); }, {in.out_path});
  for (const auto& e : fs::directory_iterator(tmp.path()))
    EXPECT_FALSE(contains(e.path().filename().string(), ".tmp")) << e.path();
}

// A page with every section (two MoE layers, one growing; a compare dir), for the browser test.
TEST(ReportBrowser, WritesRichFixture) {
  TempDir tmp;
  std::vector<json> records{start_record("lm", "top_any", 1000)};
  for (int i = 0; i < 100; ++i) {
    const int step = 10 * (i + 1);
    const size_t grown = i < 40 ? 4 : 8;
    json moe =
        json::array({layer_record("block1.ffn", make_share(grown, i, 0), grown, 1.5 + 0.005 * i),
                     layer_record("block2.ffn", make_share(8, i, 1), 8, 2.0 - 0.004 * i)});
    json r = train_record(step, 3.0 * std::exp(-step / 400.0) + 1.0, moe);
    r["bpc"] = 4.0 * std::exp(-step / 400.0) + 1.4;
    records.push_back(r);
    if (step % 100 == 0) records.push_back(eval_record(step, 3.1 * std::exp(-step / 450.0) + 1.05));
  }
  records.push_back({{"event", "end"}, {"step", 1000}, {"elapsed_s", 812.5}});
  const auto dir = write_run(tmp.path() / "rich_top_any", records);
  write_file(dir / "config.toml", "[model]\nrouter = \"top_any\"\nnum_experts = 8\n");
  std::vector<json> base;
  for (int step = 100; step <= 1000; step += 100)
    base.push_back(eval_record(step, 3.3 * std::exp(-step / 500.0) + 1.2));
  const auto cmp = write_run(tmp.path() / "dense_baseline", base);

  ReportInput in;
  in.run_dir = dir.string();
  in.compare_dirs = {cmp.string()};
  const char* keep = std::getenv("MOE_REPORT_KEEP");
  if (keep && *keep) in.out_path = keep;
  const std::string path = moe::report::write_report(in);
  std::ifstream f(path, std::ios::binary);
  const std::string page((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  expect_well_formed(page);
  for (const char* id : {"summary", "curves", "experts", "balance", "adaptive", "config"})
    EXPECT_TRUE(contains(page, std::string("id=\"") + id + "\"")) << id;
}

}  // namespace
