// The `moe report` page (tools/report/report.h): parse metrics.jsonl into records, then draw each
// chart as hand-written SVG. Everything the page shows comes from the input files, so every
// string taken from them passes through esc().
#include "report/report.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace moe::report {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;  // keeps the start record's keys in file order

// Missing numbers (absent key, null, or an array entry that is not a number) are NaN; JSON has no
// non-finite numbers, so NaN always means "missing".
constexpr double kMissing = std::numeric_limits<double>::quiet_NaN();
bool present(double v) { return std::isfinite(v); }

// ------------------------------------------------------------------------------------------------
// Text

// printf into a string.
__attribute__((format(printf, 2, 3))) void appendf(std::string& out, const char* format, ...) {
  char buf[256];
  va_list args;
  va_start(args, format);
  va_list again;
  va_copy(again, args);
  const int n = std::vsnprintf(buf, sizeof buf, format, args);
  va_end(args);
  if (n >= 0 && static_cast<size_t>(n) < sizeof buf) {
    out.append(buf, static_cast<size_t>(n));
  } else if (n >= 0) {
    std::string big(static_cast<size_t>(n) + 1, '\0');
    std::vsnprintf(big.data(), big.size(), format, again);
    out.append(big.data(), static_cast<size_t>(n));
  }
  va_end(again);
}

std::string esc(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (const char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

// Compact number: %.4g, or a dash when missing.
std::string num(double v) {
  if (!present(v)) return "—";
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.4g", v);
  return buf;
}

std::string num_list(const std::vector<double>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + num(v[i]);
  return out + "]";
}

std::string duration(double seconds) {
  if (!present(seconds)) return "—";
  std::string out = num(seconds) + " s";
  if (seconds >= 60) {
    const auto s = static_cast<int64_t>(std::llround(seconds));
    char buf[64];
    if (s >= 3600)
      std::snprintf(buf, sizeof buf, " (%lldh %02lldm %02llds)", static_cast<long long>(s / 3600),
                    static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
    else
      std::snprintf(buf, sizeof buf, " (%lldm %02llds)", static_cast<long long>(s / 60),
                    static_cast<long long>(s % 60));
    out += buf;
  }
  return out;
}

// The folder's own name: "runs/a/" and "runs/a" give "a", "." gives the current folder's name.
std::string folder_name(const std::string& dir) {
  fs::path p = fs::absolute(fs::path(dir)).lexically_normal();
  if (p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  return name.empty() ? dir : name;
}

// ------------------------------------------------------------------------------------------------
// Records

struct LayerStat {
  std::vector<double> share;  // per expert; NaN where the entry is null
  double cv = kMissing;
  double dropped = kMissing;
  double active_experts = kMissing;
  double mean_k = kMissing;
  double unrouted = kMissing;
};

struct TrainRecord {
  int64_t step = 0;
  double elapsed_s = kMissing, loss = kMissing, task_loss = kMissing, aux_loss = kMissing;
  double lr = kMissing, tokens_per_s = kMissing, bpc = kMissing, accuracy = kMissing;
  std::vector<double> auc, mse;  // per task, from the keys "auc0", "mse0", "mse1", ... (multitask)
  std::vector<std::pair<std::string, LayerStat>> moe;
};

struct EvalRecord {
  int64_t step = 0;
  std::string split;
  double loss = kMissing, bpc = kMissing, accuracy = kMissing;
  std::vector<double> auc, mse;  // one per task (multitask runs)
};

struct Run {
  std::string name;                // the folder's name
  std::string metrics_path;        // as given, for messages
  std::vector<Json> starts;        // every start record, in file order
  std::vector<TrainRecord> train;  // ascending step; the last record of each step
  std::vector<EvalRecord> eval;    // by split, then ascending step; the last of each
  int64_t records = 0;             // non-blank lines
  int64_t replaced = 0;            // records replaced by a later one (resumed runs)
  bool ended = false;
  int64_t end_step = 0;
  double end_elapsed_s = kMissing;
};

[[noreturn]] void fail_at(const std::string& path, int64_t line, const std::string& what) {
  throw std::runtime_error(path + ": line " + std::to_string(line) + ": " + what);
}

double get_num(const Json& o, const char* key) {
  const auto it = o.find(key);
  return it != o.end() && it->is_number() ? it->get<double>() : kMissing;
}

// A list of numbers; a bare number is a list of one.
std::vector<double> get_nums(const Json& o, const char* key) {
  std::vector<double> v;
  const auto it = o.find(key);
  if (it == o.end()) return v;
  if (it->is_number()) return {it->get<double>()};
  if (!it->is_array()) return v;
  v.reserve(it->size());
  for (const auto& e : *it) v.push_back(e.is_number() ? e.get<double>() : kMissing);
  return v;
}

int64_t get_step(const Json& rec, const std::string& event, const std::string& path, int64_t line) {
  const auto it = rec.find("step");
  if (it == rec.end() || it->is_null())
    fail_at(path, line, "a \"" + event + "\" record without \"step\"");
  if (it->is_number_integer()) return it->get<int64_t>();
  if (it->is_number_float()) {
    const double d = it->get<double>();
    if (d == std::floor(d) && std::fabs(d) < 9e15) return static_cast<int64_t>(d);
  }
  fail_at(path, line, "\"step\" is not an integer: " + it->dump());
}

LayerStat parse_layer(const Json& o) {
  LayerStat s;
  s.share = get_nums(o, "share");
  s.cv = get_num(o, "cv");
  s.dropped = get_num(o, "dropped");
  s.active_experts = get_num(o, "active_experts");
  s.mean_k = get_num(o, "mean_k");
  s.unrouted = get_num(o, "unrouted");
  return s;
}

TrainRecord parse_train(const Json& o, int64_t step) {
  TrainRecord r;
  r.step = step;
  r.elapsed_s = get_num(o, "elapsed_s");
  r.loss = get_num(o, "loss");
  r.task_loss = get_num(o, "task_loss");
  r.aux_loss = get_num(o, "aux_loss");
  r.lr = get_num(o, "lr");
  r.tokens_per_s = get_num(o, "tokens_per_s");
  r.bpc = get_num(o, "bpc");
  r.accuracy = get_num(o, "accuracy");
  for (const auto& [key, value] : o.items()) {
    // Per-task training metrics: "mse" or "auc" followed by the task index.
    if (key.size() < 4 || key.size() > 6 || !value.is_number()) continue;
    std::vector<double>* list = key.compare(0, 3, "mse") == 0   ? &r.mse
                                : key.compare(0, 3, "auc") == 0 ? &r.auc
                                                                : nullptr;
    if (!list || key.find_first_not_of("0123456789", 3) != std::string::npos) continue;
    const size_t task = std::stoul(key.substr(3));
    if (list->size() <= task) list->resize(task + 1, kMissing);
    (*list)[task] = value.get<double>();
  }
  const auto it = o.find("moe");
  if (it != o.end() && it->is_array()) {
    for (const auto& layer : *it) {
      if (!layer.is_object()) continue;
      const auto name = layer.find("name");
      std::string n = name != layer.end() && name->is_string()
                          ? name->get<std::string>()
                          : "layer " + std::to_string(r.moe.size());
      r.moe.emplace_back(std::move(n), parse_layer(layer));
    }
  }
  return r;
}

// Reads DIR/metrics.jsonl. require_train: the run itself (not a compare dir) must have train
// records.
Run load_run(const std::string& dir, bool require_train) {
  Run run;
  run.name = folder_name(dir);
  run.metrics_path = (fs::path(dir) / "metrics.jsonl").string();
  const std::string& path = run.metrics_path;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec))
    throw std::runtime_error(path + ": metrics file not found (is \"" + dir +
                             "\" a run folder written by `moe train`?)");
  std::ifstream file(path, std::ios::binary);
  if (!file) throw std::runtime_error(path + ": cannot open the metrics file");

  std::map<int64_t, TrainRecord> train;
  std::map<std::pair<std::string, int64_t>, EvalRecord> eval;
  std::string line;
  int64_t line_no = 0;
  while (std::getline(file, line)) {
    ++line_no;
    const auto last = line.find_last_not_of(" \t\r\n");
    if (last == std::string::npos) continue;  // blank line
    line.resize(last + 1);
    ++run.records;
    Json rec;
    try {
      rec = Json::parse(line);
    } catch (const Json::parse_error& e) {
      // A last line without its newline is a record that a running `moe train` is writing: the
      // report of a run in progress shows what is complete.
      if (file.eof()) {
        --run.records;
        break;
      }
      // nlohmann numbers lines from 1 within the text it was given (one line here): keep only the
      // column and the reason.
      std::string why = e.what();
      const auto at = why.find("column");
      fail_at(path, line_no,
              "invalid JSON" + (at == std::string::npos ? ": " + why : " at " + why.substr(at)));
    }
    if (!rec.is_object()) fail_at(path, line_no, "not a JSON object: " + line.substr(0, 60));
    const auto event_it = rec.find("event");
    if (event_it == rec.end() || !event_it->is_string())
      fail_at(path, line_no, "a record without \"event\" (a string)");
    const std::string event = event_it->get<std::string>();
    if (event == "start") {
      run.starts.push_back(std::move(rec));
    } else if (event == "train") {
      const int64_t step = get_step(rec, event, path, line_no);
      auto [it, inserted] = train.insert_or_assign(step, parse_train(rec, step));
      run.replaced += inserted ? 0 : 1;
    } else if (event == "eval") {
      EvalRecord r;
      r.step = get_step(rec, event, path, line_no);
      const auto split = rec.find("split");
      r.split = split != rec.end() && split->is_string() ? split->get<std::string>() : "valid";
      r.loss = get_num(rec, "loss");
      r.bpc = get_num(rec, "bpc");
      r.accuracy = get_num(rec, "accuracy");
      r.auc = get_nums(rec, "auc");
      r.mse = get_nums(rec, "mse");
      auto key = std::make_pair(r.split, r.step);
      auto [it, inserted] = eval.insert_or_assign(std::move(key), std::move(r));
      run.replaced += inserted ? 0 : 1;
    } else if (event == "end") {
      run.ended = true;
      run.end_step = get_step(rec, event, path, line_no);
      run.end_elapsed_s = get_num(rec, "elapsed_s");
    }
  }
  if (file.bad())
    throw std::runtime_error(path + ": read error after line " + std::to_string(line_no));
  if (require_train && train.empty())
    throw std::runtime_error(path + ": no train records (" + std::to_string(run.records) +
                             " records read): nothing to report");
  for (auto& [step, r] : train) run.train.push_back(std::move(r));
  for (auto& [key, r] : eval) run.eval.push_back(std::move(r));
  return run;
}

std::vector<std::string> eval_splits(const Run& run) {
  std::vector<std::string> splits;
  for (const auto& r : run.eval)
    if (splits.empty() || splits.back() != r.split) splits.push_back(r.split);
  return splits;
}

// Everything logged about one MoE layer, in step order.
struct Layer {
  std::string name;
  std::vector<std::pair<int64_t, const LayerStat*>> records;
  size_t experts = 0;  // the longest share list seen
};

std::vector<Layer> collect_layers(const Run& run) {
  std::vector<Layer> layers;
  std::unordered_map<std::string, size_t> index;
  for (const auto& r : run.train) {
    for (const auto& [name, stat] : r.moe) {
      auto [it, inserted] = index.emplace(name, layers.size());
      if (inserted) layers.push_back(Layer{name, {}, 0});
      Layer& layer = layers[it->second];
      layer.records.emplace_back(r.step, &stat);
      layer.experts = std::max(layer.experts, stat.share.size());
    }
  }
  return layers;
}

// ------------------------------------------------------------------------------------------------
// Axes

double nice_number(double x, bool round) {
  const double e = std::floor(std::log10(x));
  const double f = x / std::pow(10.0, e);
  double nice;
  if (round)
    nice = f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10;
  else
    nice = f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10;
  return nice * std::pow(10.0, e);
}

struct Axis {
  double lo = 0, hi = 1, step = 0.2;
  std::vector<double> ticks;
  // Maps v in [lo, hi] onto [a, b].
  double map(double v, double a, double b) const { return a + (v - lo) / (hi - lo) * (b - a); }
};

// Round bounds and ticks at 1, 2 or 5 times a power of ten covering [lo, hi]; a single value or a
// constant series gets a range around it. integer: ticks at whole numbers (steps).
Axis nice_axis(double lo, double hi, int target = 5, bool integer = false) {
  if (!present(lo) || !present(hi) || lo > hi) lo = 0, hi = 1;
  if (hi - lo <= 1e-12 * std::max(std::fabs(lo), std::fabs(hi))) {
    const double pad = lo == 0 ? 1 : std::fabs(lo) * 0.1;
    lo -= pad;
    hi += pad;
  }
  Axis a;
  a.step = nice_number(nice_number(hi - lo, false) / (target - 1), true);
  if (integer) a.step = std::max(a.step, 1.0);
  if (!present(a.step) || a.step <= 0) return Axis{0, 1, 0.2, {0, 0.2, 0.4, 0.6, 0.8, 1}};
  a.lo = std::floor(lo / a.step + 1e-9) * a.step;
  a.hi = std::ceil(hi / a.step - 1e-9) * a.step;
  if (!(a.hi > a.lo)) a.hi = a.lo + a.step;
  for (int i = 0; i < 100; ++i) {
    double t = a.lo + i * a.step;
    if (t > a.hi + a.step * 1e-6) break;
    if (std::fabs(t) < a.step * 1e-9) t = 0;  // no "-0"
    a.ticks.push_back(t);
  }
  return a;
}

// Tick labels: as many decimals as the tick step needs.
std::string tick_label(double v, double step) {
  char buf[48];
  if (step >= 1e-5 && std::fabs(v) < 1e7) {
    const int decimals = std::max(0, static_cast<int>(std::ceil(-std::log10(step) - 1e-9)));
    std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  } else {
    std::snprintf(buf, sizeof buf, "%.3g", v);
  }
  return buf;
}

// ------------------------------------------------------------------------------------------------
// SVG pieces

const char* const kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1",
                                "#76b7b2", "#9c755f", "#ff9da7", "#edc948", "#7f7f7f"};
constexpr size_t kPaletteSize = sizeof kPalette / sizeof kPalette[0];
constexpr const char* kAbsentColor = "#d4d4d4";

// Viridis-like ramp: t in [0, 1] to "#rrggbb".
std::string ramp_color(double t) {
  static const double stops[5][3] = {
      {68, 1, 84}, {59, 82, 139}, {33, 145, 140}, {94, 201, 98}, {253, 231, 37}};
  t = std::clamp(present(t) ? t : 0.0, 0.0, 1.0) * 4;
  const int i = std::min(3, static_cast<int>(t));
  const double f = t - i;
  char buf[8];
  int rgb[3];
  for (int c = 0; c < 3; ++c)
    rgb[c] = static_cast<int>(std::lround(stops[i][c] + f * (stops[i + 1][c] - stops[i][c])));
  std::snprintf(buf, sizeof buf, "#%02x%02x%02x", rgb[0], rgb[1], rgb[2]);
  return buf;
}

void svg_open(std::string& out, const char* cls, double w, double h, const std::string& title,
              const std::string& extra_attrs = "") {
  appendf(out,
          "<svg class=\"%s\" role=\"img\" aria-label=\"%s\" width=\"%.0f\" height=\"%.0f\" "
          "viewBox=\"0 0 %.0f %.0f\"%s>",
          cls, esc(title).c_str(), w, h, w, h, extra_attrs.c_str());
  appendf(out, "<title>%s</title>", esc(title).c_str());
  appendf(out, "<text class=\"chart-title\" x=\"%.1f\" y=\"18\" text-anchor=\"middle\">%s</text>",
          w / 2, esc(title).c_str());
}

// Axis frame, grid, ticks and titles for a plot area at (x0, y0) of size (w, h).
void svg_axes(std::string& out, const Axis& xa, const Axis& ya, double x0, double y0, double w,
              double h, const std::string& x_title, const std::string& y_title) {
  out += "<g class=\"axes\">";
  for (const double t : ya.ticks) {
    const double y = ya.map(t, y0 + h, y0);
    appendf(out, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x0, y,
            x0 + w, y);
    appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>", x0 - 5,
            y + 4, tick_label(t, ya.step).c_str());
  }
  for (const double t : xa.ticks) {
    const double x = xa.map(t, x0, x0 + w);
    appendf(out, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x,
            y0 + h, x, y0 + h + 4);
    appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>", x,
            y0 + h + 16, tick_label(t, xa.step).c_str());
  }
  appendf(out, "<path class=\"axis\" d=\"M%.1f,%.1fV%.1fH%.1f\"/>", x0, y0, y0 + h, x0 + w);
  appendf(out, "<text class=\"axis-title\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>",
          x0 + w / 2, y0 + h + 34, esc(x_title).c_str());
  appendf(out,
          "<text class=\"axis-title\" transform=\"translate(14,%.1f) rotate(-90)\" "
          "text-anchor=\"middle\">%s</text>",
          y0 + h / 2, esc(y_title).c_str());
  out += "</g>";
}

// A line chart: one path per series, breaks where a value is missing.
struct Series {
  std::string label;
  std::vector<double> x, y;
  bool dashed = false;
};

struct LineChart {
  std::string title, x_title = "step", y_title;
  std::vector<Series> series;
};

constexpr size_t kMaxLinePoints = 1000;

// Averages consecutive groups so that at most kMaxLinePoints remain (missing values skipped).
void thin_series(Series& s) {
  const size_t n = s.x.size();
  if (n <= kMaxLinePoints) return;
  Series t;
  for (size_t j = 0; j < kMaxLinePoints; ++j) {
    const size_t b = j * n / kMaxLinePoints, e = (j + 1) * n / kMaxLinePoints;
    double sx = 0, sy = 0;
    int count = 0;
    for (size_t i = b; i < e; ++i)
      if (present(s.y[i])) sx += s.x[i], sy += s.y[i], ++count;
    t.x.push_back(count ? sx / count : s.x[b]);
    t.y.push_back(count ? sy / count : kMissing);
  }
  s.x = std::move(t.x);
  s.y = std::move(t.y);
}

// Legend rows under the plot; returns the height used.
double svg_legend(std::string& out, const std::vector<std::string>& labels,
                  const std::vector<std::string>& colors, const std::vector<bool>& dashed,
                  double x0, double y0, double width) {
  out += "<g class=\"legend\">";
  double x = x0, y = y0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const double item_w = 30 + 6.6 * static_cast<double>(labels[i].size()) + 14;
    if (x > x0 && x + item_w > x0 + width) x = x0, y += 18;
    appendf(out,
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
            "stroke-width=\"2.5\"%s/>",
            x, y - 4, x + 24, y - 4, colors[i].c_str(),
            dashed[i] ? " stroke-dasharray=\"5 3\"" : "");
    appendf(out, "<text x=\"%.1f\" y=\"%.1f\">%s</text>", x + 30, y, esc(labels[i]).c_str());
    x += item_w;
  }
  out += "</g>";
  return labels.empty() ? 0 : y - y0 + 18;
}

std::string render_line_chart(LineChart chart) {
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  std::vector<Series*> shown;
  for (auto& s : chart.series) {
    bool any = false;
    for (size_t i = 0; i < s.x.size(); ++i) {
      if (!present(s.x[i]) || !present(s.y[i])) continue;
      any = true;
      xmin = std::min(xmin, s.x[i]), xmax = std::max(xmax, s.x[i]);
      ymin = std::min(ymin, s.y[i]), ymax = std::max(ymax, s.y[i]);
    }
    if (any) shown.push_back(&s);
  }
  if (shown.empty()) return "";
  const Axis xa = nice_axis(xmin, xmax, 6, chart.x_title == "step");
  const Axis ya = nice_axis(ymin, ymax, 5);
  const double w = 540, x0 = 64, y0 = 30, pw = w - x0 - 18, ph = 200;

  std::vector<std::string> labels, colors;
  std::vector<bool> dashed;
  for (size_t i = 0; i < shown.size(); ++i) {
    labels.push_back(shown[i]->label);
    colors.emplace_back(kPalette[i % kPaletteSize]);
    dashed.push_back(shown[i]->dashed || (i / kPaletteSize) % 2 == 1);
  }
  std::string legend;
  const double legend_h = svg_legend(legend, labels, colors, dashed, x0, y0 + ph + 58, pw);

  std::string out;
  svg_open(out, "chart", w, y0 + ph + 48 + legend_h + 6, chart.title);
  svg_axes(out, xa, ya, x0, y0, pw, ph, chart.x_title, chart.y_title);
  for (size_t i = 0; i < shown.size(); ++i) {
    Series& s = *shown[i];
    thin_series(s);
    std::string d;
    int points = 0;
    bool pen_down = false;
    std::string dots;
    for (size_t j = 0; j < s.x.size(); ++j) {
      if (!present(s.x[j]) || !present(s.y[j])) {
        pen_down = false;
        continue;
      }
      const double px = xa.map(s.x[j], x0, x0 + pw), py = ya.map(s.y[j], y0 + ph, y0);
      appendf(d, "%s%.1f,%.1f", pen_down ? "L" : "M", px, py);
      appendf(dots, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.4\"/>", px, py);
      pen_down = true;
      ++points;
    }
    appendf(out,
            "<g class=\"series\" data-label=\"%s\" data-points=\"%d\" stroke=\"%s\" fill=\"%s\">",
            esc(s.label).c_str(), points, colors[i].c_str(), colors[i].c_str());
    appendf(out, "<path fill=\"none\" stroke-width=\"1.7\"%s d=\"%s\"/>",
            dashed[i] ? " stroke-dasharray=\"5 3\"" : "", d.c_str());
    if (points <= 30) out += dots;  // markers only where they do not clutter (and for 1 point)
    out += "</g>";
  }
  out += legend;
  out += "</svg>";
  return out;
}

// ------------------------------------------------------------------------------------------------
// Heat map and histogram of expert load

struct HeatColumn {
  int64_t first_step = 0, last_step = 0;
  int records = 0;
  std::vector<double> share;  // per expert; NaN: absent from every record of the column
};

std::vector<HeatColumn> heat_columns(const Layer& layer) {
  const size_t n = layer.records.size();
  const size_t cols = std::min(n, static_cast<size_t>(kMaxHeatmapColumns));
  std::vector<HeatColumn> out(cols);
  for (size_t j = 0; j < cols; ++j) {
    const size_t b = j * n / cols, e = (j + 1) * n / cols;
    HeatColumn& c = out[j];
    c.first_step = layer.records[b].first;
    c.last_step = layer.records[e - 1].first;
    c.records = static_cast<int>(e - b);
    c.share.assign(layer.experts, kMissing);
    for (size_t k = 0; k < layer.experts; ++k) {
      double sum = 0;
      int count = 0;
      for (size_t i = b; i < e; ++i) {
        const auto& share = layer.records[i].second->share;
        if (k < share.size() && present(share[k])) sum += share[k], ++count;
      }
      if (count) c.share[k] = sum / count;
    }
  }
  return out;
}

std::string render_heatmap(const Layer& layer) {
  const auto cols = heat_columns(layer);
  const size_t experts = layer.experts, c = cols.size();
  if (experts == 0 || c == 0) return "";
  double vmax = 0;
  bool any_absent = false;
  for (const auto& col : cols)
    for (const double v : col.share) {
      if (present(v))
        vmax = std::max(vmax, v);
      else
        any_absent = true;
    }
  const double scale = vmax > 0 ? vmax : 1;

  const double w = 1100, x0 = 64, y0 = 30, pw = w - x0 - 110;
  const double cell_h = std::clamp(240.0 / static_cast<double>(experts), 5.0, 36.0);
  const double ph = cell_h * static_cast<double>(experts), cell_w = pw / static_cast<double>(c);
  const double bar_h = std::max(ph, 120.0);
  const double h = y0 + bar_h + 50;
  const std::string title = "Expert load: " + layer.name;

  std::string out;
  char attrs[96];
  std::snprintf(attrs, sizeof attrs, " data-experts=\"%zu\" data-columns=\"%zu\"", experts, c);
  svg_open(out, "heatmap", w, h, title,
           std::string(" data-layer=\"") + esc(layer.name) + "\"" + attrs);

  // Cells, one row per expert (expert 0 at the top).
  out += "<g class=\"cells\" shape-rendering=\"crispEdges\">";
  for (size_t k = 0; k < experts; ++k) {
    const double y = y0 + cell_h * static_cast<double>(k);
    for (size_t j = 0; j < c; ++j) {
      const HeatColumn& col = cols[j];
      const double x = x0 + cell_w * static_cast<double>(j);
      const double v = col.share[k];
      std::string steps = col.records == 1 ? "step " + std::to_string(col.first_step)
                                           : "steps " + std::to_string(col.first_step) + "–" +
                                                 std::to_string(col.last_step) + " (mean of " +
                                                 std::to_string(col.records) + ")";
      appendf(out,
              "<rect class=\"cell%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" "
              "fill=\"%s\"><title>expert %zu, %s: %s</title></rect>",
              present(v) ? "" : " absent", x, y, cell_w + 0.3, cell_h,
              present(v) ? ramp_color(v / scale).c_str() : kAbsentColor, k, steps.c_str(),
              present(v) ? ("share " + num(v)).c_str() : "absent");
    }
  }
  out += "</g><g class=\"axes\">";
  appendf(out, "<rect class=\"frame\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>", x0,
          y0, pw, ph);
  // Expert labels (at most ~16) and step labels at up to 7 columns.
  const size_t every = (experts + 15) / 16;
  for (size_t k = 0; k < experts; k += every)
    appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%zu</text>",
            x0 - 5, y0 + cell_h * (static_cast<double>(k) + 0.5) + 4, k);
  const size_t labels = std::min<size_t>(c, 7);
  for (size_t i = 0; i < labels; ++i) {
    const size_t j = labels == 1 ? 0 : i * (c - 1) / (labels - 1);
    const double x = x0 + cell_w * (static_cast<double>(j) + 0.5);
    appendf(out, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x,
            y0 + ph, x, y0 + ph + 4);
    appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%lld</text>", x,
            y0 + ph + 16, static_cast<long long>(cols[j].first_step));
  }
  const size_t n = layer.records.size();
  const std::string x_title = c < n ? "step (" + std::to_string(n) +
                                          " logged records averaged into " + std::to_string(c) +
                                          " columns)"
                                    : "step (one column per logged record)";
  appendf(out, "<text class=\"axis-title\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>",
          x0 + pw / 2, y0 + ph + 34, x_title.c_str());
  appendf(out,
          "<text class=\"axis-title\" transform=\"translate(14,%.1f) rotate(-90)\" "
          "text-anchor=\"middle\">expert</text>",
          y0 + ph / 2);

  // Color bar: 0 at the bottom, the largest share at the top.
  const double bx = x0 + pw + 24, bw = 14, steps = 24;
  for (int i = 0; i < steps; ++i) {
    const double t = (i + 0.5) / steps;
    appendf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.2f\" fill=\"%s\"/>", bx,
            y0 + bar_h * (1 - (i + 1) / steps), bw, bar_h / steps + 0.3, ramp_color(t).c_str());
  }
  appendf(out, "<rect class=\"frame\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>", bx,
          y0, bw, bar_h);
  for (const double t : {0.0, 0.5, 1.0})
    appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\">%s</text>", bx + bw + 4,
            y0 + bar_h * (1 - t) + 4, num(t * vmax).c_str());
  appendf(out,
          "<text class=\"axis-title\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">share</text>",
          bx + bw / 2, y0 - 6);
  if (any_absent) {
    appendf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"10\" fill=\"%s\"/>", bx,
            y0 + bar_h + 12, bw, kAbsentColor);
    appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\">absent</text>", bx + bw + 4,
            y0 + bar_h + 21);
  }
  out += "</g></svg>";
  return out;
}

// Mean share of each expert over every record of the layer; an entry the record lacks (fewer
// experts then, or null) counts as 0, so the means still sum to about 1.
std::vector<double> mean_shares(const Layer& layer) {
  std::vector<double> mean(layer.experts, 0.0);
  for (const auto& [step, stat] : layer.records)
    for (size_t k = 0; k < stat->share.size(); ++k)
      if (present(stat->share[k])) mean[k] += stat->share[k];
  for (double& m : mean) m /= static_cast<double>(std::max<size_t>(1, layer.records.size()));
  return mean;
}

std::string render_histogram(const Layer& layer) {
  const auto mean = mean_shares(layer);
  const size_t experts = mean.size();
  if (experts == 0) return "";
  const double uniform = 1.0 / static_cast<double>(experts);
  double top = uniform;
  for (const double m : mean) top = std::max(top, m);
  Axis ya = nice_axis(0, top, 5);
  ya.lo = 0;  // bars start at zero
  const double w = 540, x0 = 64, y0 = 30, pw = w - x0 - 18, ph = 200;
  const std::string title = "Mean token share per expert: " + layer.name;
  std::string out;
  svg_open(out, "histogram", w, y0 + ph + 66, title, " data-layer=\"" + esc(layer.name) + "\"");
  Axis xa;  // no numeric x ticks: experts are labelled under their bars
  xa.ticks.clear();
  svg_axes(out, xa, ya, x0, y0, pw, ph, "expert", "share of routed assignments");
  const double slot = pw / static_cast<double>(experts),
               every = std::ceil(static_cast<double>(experts) / 32);
  for (size_t k = 0; k < experts; ++k) {
    const double bh = mean[k] / (ya.hi - ya.lo) * ph;
    const double x = x0 + slot * (static_cast<double>(k) + 0.1);
    appendf(out,
            "<rect class=\"bar\" data-expert=\"%zu\" data-share=\"%.6g\" x=\"%.2f\" y=\"%.2f\" "
            "width=\"%.2f\" height=\"%.3f\" fill=\"%s\"><title>expert %zu: mean share "
            "%s</title></rect>",
            k, mean[k], x, y0 + ph - bh, slot * 0.8, bh, kPalette[0], k, num(mean[k]).c_str());
    if (k % static_cast<size_t>(every) == 0)
      appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%zu</text>",
              x0 + slot * (static_cast<double>(k) + 0.5), y0 + ph + 16, k);
  }
  const double uy = ya.map(uniform, y0 + ph, y0);
  appendf(out,
          "<line class=\"uniform\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
          "stroke-dasharray=\"6 4\"/>",
          x0, uy, x0 + pw, uy);
  // Legend of the dashed line, under the axis title (inside the plot it would cover bars).
  const double ly = y0 + ph + 56;
  appendf(out,
          "<line class=\"uniform\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
          "stroke-dasharray=\"6 4\"/>",
          x0, ly - 4, x0 + 24, ly - 4);
  appendf(out, "<text x=\"%.1f\" y=\"%.1f\">uniform 1/E = %s</text>", x0 + 30, ly,
          num(uniform).c_str());
  out += "</svg>";
  return out;
}

// ------------------------------------------------------------------------------------------------
// Page sections

std::string json_text(const Json& v) {
  if (v.is_null()) return "—";
  if (v.is_string()) return v.get<std::string>();
  if (v.is_number_float()) return num(v.get<double>());
  return v.dump();
}

void row(std::string& out, const std::string& key, const std::string& value_html) {
  out += "<tr><th>" + esc(key) + "</th><td>" + value_html + "</td></tr>";
}

std::string eval_text(const EvalRecord& r) {
  std::string s = "step " + std::to_string(r.step);
  if (present(r.loss)) s += ", loss " + num(r.loss);
  if (present(r.bpc)) s += ", bpc " + num(r.bpc);
  if (present(r.accuracy)) s += ", accuracy " + num(r.accuracy);
  if (!r.auc.empty()) s += ", AUC " + num_list(r.auc);
  if (!r.mse.empty()) s += ", MSE " + num_list(r.mse);
  return s;
}

std::string render_summary(const Run& run) {
  std::string out = "<section id=\"summary\"><h2>Summary</h2><table class=\"summary\">";
  // Start-record fields; a key whose value changed between launches shows each value in turn.
  std::vector<std::string> keys;
  std::map<std::string, std::vector<std::string>> values;
  for (const auto& start : run.starts) {
    for (const auto& [key, value] : start.items()) {
      if (key == "event") continue;
      auto [it, inserted] = values.try_emplace(key);
      if (inserted) keys.push_back(key);
      const std::string text = json_text(value);
      if (it->second.empty() || it->second.back() != text) it->second.push_back(text);
    }
  }
  for (const auto& key : keys) {
    std::string joined;
    for (const auto& v : values[key]) joined += (joined.empty() ? "" : " → ") + esc(v);
    row(out, key, joined);
  }
  if (run.starts.size() > 1) row(out, "launches", std::to_string(run.starts.size()) + " (resumed)");

  const TrainRecord* last_loss = nullptr;
  const TrainRecord* last_metric = nullptr;
  for (const auto& r : run.train) {
    if (present(r.loss)) last_loss = &r;
    if (present(r.bpc) || present(r.accuracy)) last_metric = &r;
  }
  row(out, "final train loss",
      last_loss ? num(last_loss->loss) + " (step " + std::to_string(last_loss->step) + ")" : "—");
  if (last_metric) {
    std::string s;
    if (present(last_metric->bpc)) s += "bpc " + num(last_metric->bpc) + " ";
    if (present(last_metric->accuracy)) s += "accuracy " + num(last_metric->accuracy) + " ";
    row(out, "final train metrics", s + "(step " + std::to_string(last_metric->step) + ")");
  }
  for (const auto& split : eval_splits(run)) {
    const EvalRecord* last = nullptr;
    for (const auto& r : run.eval)
      if (r.split == split) last = &r;
    row(out, "last eval (" + split + ")", esc(eval_text(*last)));
  }
  if (run.eval.empty()) row(out, "last eval", "— (no eval records)");

  double elapsed = run.end_elapsed_s;
  for (auto it = run.train.rbegin(); !present(elapsed) && it != run.train.rend(); ++it)
    elapsed = it->elapsed_s;
  row(out, "wall time",
      duration(elapsed) + (run.ended ? "" : " (no end record: still running or stopped early)"));
  const int64_t last_step = std::max(run.train.back().step, run.ended ? run.end_step : int64_t{0});
  row(out, "steps",
      std::to_string(last_step) + " (" + std::to_string(run.train.size()) + " train records, " +
          std::to_string(run.eval.size()) + " eval records)");
  double tps = kMissing;
  for (const auto& r : run.train)
    if (present(r.tokens_per_s)) tps = r.tokens_per_s;
  if (present(tps)) row(out, "tokens/s (last logged)", num(tps));
  if (run.replaced > 0)
    row(out, "replaced records",
        std::to_string(run.replaced) + " (a later record with the same step kept)");
  out += "</table></section>\n";
  return out;
}

void add_series(std::vector<Series>& to, std::string label, const std::vector<double>& x,
                std::vector<double> y, bool dashed = false) {
  to.push_back(Series{std::move(label), x, std::move(y), dashed});
}

// Eval series of one run: label prefix, one series per split (and per task for list metrics).
void add_eval_series(std::vector<Series>& to, const Run& run, const std::string& prefix,
                     const std::string& metric, bool dashed) {
  const auto splits = eval_splits(run);
  for (const auto& split : splits) {
    std::vector<double> x;
    std::vector<std::vector<double>> ys;  // one per task for auc/mse, else one
    for (const auto& r : run.eval) {
      if (r.split != split) continue;
      x.push_back(static_cast<double>(r.step));
      const std::vector<double> vals = metric == "loss"       ? std::vector<double>(1, r.loss)
                                       : metric == "bpc"      ? std::vector<double>(1, r.bpc)
                                       : metric == "accuracy" ? std::vector<double>(1, r.accuracy)
                                       : metric == "auc"      ? r.auc
                                                              : r.mse;
      if (ys.size() < vals.size())
        ys.resize(vals.size(), std::vector<double>(x.size() - 1, kMissing));
      for (size_t t = 0; t < ys.size(); ++t) ys[t].push_back(t < vals.size() ? vals[t] : kMissing);
    }
    for (size_t t = 0; t < ys.size(); ++t) {
      std::string label = prefix;
      if (splits.size() > 1 || split != "valid") label += " " + split;
      if (metric == "auc" || metric == "mse") label += " task " + std::to_string(t + 1);
      add_series(to, label, x, std::move(ys[t]), dashed);
    }
  }
}

std::string render_curves(const Run& run, const std::vector<Run>& compare) {
  std::vector<double> steps;
  for (const auto& r : run.train) steps.push_back(static_cast<double>(r.step));
  auto train_values = [&](double TrainRecord::*field) {
    std::vector<double> v;
    for (const auto& r : run.train) v.push_back(r.*field);
    return v;
  };
  std::string charts;

  LineChart loss{"Loss", "step", "loss", {}};
  add_series(loss.series, "train loss", steps, train_values(&TrainRecord::loss));
  bool task_differs = false;
  for (const auto& r : run.train)
    if (present(r.loss) && present(r.task_loss) &&
        std::fabs(r.loss - r.task_loss) > 1e-9 * std::max(1.0, std::fabs(r.loss)))
      task_differs = true;
  if (task_differs)
    add_series(loss.series, "train task loss", steps, train_values(&TrainRecord::task_loss));
  add_eval_series(loss.series, run, "eval loss", "loss", false);
  for (const auto& c : compare) add_eval_series(loss.series, c, c.name, "loss", true);
  charts += render_line_chart(loss);

  struct Metric {
    const char* key;
    const char* title;
    const char* axis;
    double TrainRecord::*train;
  };
  const Metric metrics[] = {{"bpc", "Bits per character", "bits per character", &TrainRecord::bpc},
                            {"accuracy", "Accuracy", "accuracy", &TrainRecord::accuracy},
                            {"auc", "AUC per task", "AUC", nullptr},
                            {"mse", "MSE per task", "MSE", nullptr}};
  for (const auto& m : metrics) {
    LineChart chart{m.title, "step", m.axis, {}};
    if (m.train) {
      add_series(chart.series, std::string("train ") + m.key, steps, train_values(m.train));
    } else {  // per task
      const bool auc = std::string(m.key) == "auc";
      size_t tasks = 0;
      for (const auto& r : run.train) tasks = std::max(tasks, (auc ? r.auc : r.mse).size());
      for (size_t t = 0; t < tasks; ++t) {
        std::vector<double> y;
        for (const auto& r : run.train) {
          const auto& v = auc ? r.auc : r.mse;
          y.push_back(t < v.size() ? v[t] : kMissing);
        }
        add_series(chart.series, std::string("train ") + m.key + " task " + std::to_string(t + 1),
                   steps, std::move(y));
      }
    }
    add_eval_series(chart.series, run, std::string("eval ") + m.key, m.key, false);
    for (const auto& c : compare) add_eval_series(chart.series, c, c.name, m.key, true);
    charts += render_line_chart(chart);
  }

  bool aux = false;
  for (const auto& r : run.train) aux = aux || (present(r.aux_loss) && r.aux_loss != 0);
  if (aux) {
    LineChart chart{"Auxiliary (load-balancing) loss", "step", "aux loss", {}};
    add_series(chart.series, "aux loss", steps, train_values(&TrainRecord::aux_loss));
    charts += render_line_chart(chart);
  }
  LineChart lr{"Learning rate", "step", "learning rate", {}};
  add_series(lr.series, "lr", steps, train_values(&TrainRecord::lr));
  charts += render_line_chart(lr);
  LineChart tps{"Throughput", "step", "tokens per second", {}};
  add_series(tps.series, "tokens/s", steps, train_values(&TrainRecord::tokens_per_s));
  charts += render_line_chart(tps);

  std::string out = "<section id=\"curves\"><h2>Learning curves</h2>";
  if (!compare.empty()) {
    out += "<p class=\"note\">Dashed: eval curves of ";
    for (size_t i = 0; i < compare.size(); ++i)
      out += (i ? ", " : "") + std::string("<b>") + esc(compare[i].name) + "</b>";
    out += ".</p>";
  }
  return out + "<div class=\"charts\">" + charts + "</div></section>\n";
}

// One series per layer of a per-layer number.
LineChart layer_chart(const std::vector<Layer>& layers, const char* title, const char* axis,
                      double LayerStat::*field) {
  LineChart chart{title, "step", axis, {}};
  for (const auto& layer : layers) {
    Series s{layer.name, {}, {}};
    for (const auto& [step, stat] : layer.records) {
      s.x.push_back(static_cast<double>(step));
      s.y.push_back(stat->*field);
    }
    chart.series.push_back(std::move(s));
  }
  return chart;
}

std::string render_experts(const std::vector<Layer>& layers) {
  std::string out = "<section id=\"experts\"><h2>Expert load per layer</h2>";
  out +=
      "<p class=\"note\">Heat maps: the fraction of the layer's routed token-expert assignments "
      "each expert "
      "received per logging interval (grey: the expert did not exist then). Bars: that share "
      "averaged over the "
      "run (an absent expert counts as 0); dashed line: the uniform share 1/E.</p>";
  for (size_t i = 0; i < layers.size(); ++i) {
    const Layer& layer = layers[i];
    appendf(out, "<section class=\"layer\" id=\"layer-%zu\" data-layer=\"%s\"><h3>%s</h3>", i,
            esc(layer.name).c_str(), esc(layer.name).c_str());
    if (layer.experts == 0) {
      out += "<p class=\"note\">No expert shares logged for this layer.</p></section>";
      continue;
    }
    out += render_heatmap(layer);
    out += "<div class=\"charts\">" + render_histogram(layer);
    double cv = 0, dropped = 0, mean_k = 0;
    int ncv = 0, ndropped = 0, nk = 0;
    for (const auto& [step, s] : layer.records) {
      if (present(s->cv)) cv += s->cv, ++ncv;
      if (present(s->dropped)) dropped += s->dropped, ++ndropped;
      if (present(s->mean_k)) mean_k += s->mean_k, ++nk;
    }
    const LayerStat& last = *layer.records.back().second;
    out += "<table class=\"summary\">";
    row(out, "experts (most seen)", std::to_string(layer.experts));
    row(out, "logged records", std::to_string(layer.records.size()));
    row(out, "mean CV of load", ncv ? num(cv / ncv) : "—");
    row(out, "mean dropped fraction", ndropped ? num(dropped / ndropped) : "—");
    row(out, "mean experts per token", nk ? num(mean_k / nk) : "—");
    row(out, "active experts (last)", num(last.active_experts));
    out += "</table></div></section>";
  }
  return out + "</section>\n";
}

bool any_value(const std::vector<Layer>& layers, double LayerStat::*field) {
  for (const auto& layer : layers)
    for (const auto& [step, s] : layer.records)
      if (present(s->*field) && s->*field != 0) return true;
  return false;
}

std::string render_balance(const std::vector<Layer>& layers) {
  std::string charts = render_line_chart(layer_chart(layers, "Load imbalance (CV of expert load)",
                                                     "coefficient of variation", &LayerStat::cv));
  LineChart dropped = layer_chart(layers, "Dropped fraction (over capacity)", "fraction of tokens",
                                  &LayerStat::dropped);
  if (any_value(layers, &LayerStat::unrouted)) {
    LineChart unrouted = layer_chart(layers, "", "", &LayerStat::unrouted);
    for (auto& s : unrouted.series) {
      s.label += " (unrouted)";
      s.dashed = true;
      dropped.series.push_back(std::move(s));
    }
    dropped.title = "Dropped and unrouted fractions";
  }
  charts += render_line_chart(dropped);
  if (charts.empty()) return "";
  return "<section id=\"balance\"><h2>Load balance</h2><div class=\"charts\">" + charts +
         "</div></section>\n";
}

bool adaptive_routing(const Run& run, const std::vector<Layer>& layers) {
  for (const auto& start : run.starts) {
    const auto it = start.find("router");
    if (it != start.end() && it->is_string() && it->get<std::string>() == "top_any") return true;
  }
  for (const auto& layer : layers) {
    double first = kMissing;
    for (const auto& [step, s] : layer.records) {
      if (!present(s->active_experts)) continue;
      if (!present(first))
        first = s->active_experts;
      else if (s->active_experts != first)
        return true;
    }
  }
  return false;
}

std::string render_adaptive(const std::vector<Layer>& layers) {
  std::string charts = render_line_chart(layer_chart(
      layers, "Active experts", "experts that can receive tokens", &LayerStat::active_experts));
  charts += render_line_chart(
      layer_chart(layers, "Mean experts per token (k)", "mean k", &LayerStat::mean_k));
  if (charts.empty()) charts = "<p class=\"note\">No active_experts or mean_k values logged.</p>";
  return "<section id=\"adaptive\"><h2>Adaptive routing: active experts and k</h2>"
         "<div class=\"charts\">" +
         charts + "</div></section>\n";
}

constexpr const char* kStyle = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
  background:#fafafa;margin:0}
main{max-width:1140px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:24px;margin:8px 0 2px}
h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px;font-family:ui-monospace,monospace}
.sub,.note{color:#555}.note{font-size:13px;max-width:900px}
table.summary{border-collapse:collapse;background:#fff;margin:4px 0;align-self:flex-start}
table.summary th,table.summary td{border:1px solid #ddd;padding:3px 10px;text-align:left;
  vertical-align:top}
table.summary th{background:#f0f0f0;font-weight:600;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
svg{background:#fff;border:1px solid #e2e2e2;border-radius:4px;font-size:11px;max-width:100%;
  height:auto}
svg .chart-title{font-size:13px;font-weight:600}
svg .tick{fill:#444}svg .axis-title{fill:#333;font-size:12px}
svg .grid{stroke:#ececec}svg .axis{stroke:#666;fill:none}svg .frame{fill:none;stroke:#999}
svg .uniform{stroke:#c0392b;stroke-width:1.5}
svg .cell:hover{stroke:#000;stroke-width:1}
pre.config{background:#fff;border:1px solid #ddd;padding:10px;overflow:auto;font-size:12.5px}
)";

// Reports script errors in the title ("REPORT-ERROR: message") and marks the body once rendered,
// for the headless-browser test (tests/report/render_in_chromium.sh). The marker is split in the
// source so that the page contains it only after an error.
constexpr const char* kScript = R"(
window.addEventListener('error', function (e) {
  document.title = 'REPORT' + '-ERROR: ' + (e && e.message ? e.message : 'unknown error');
});
document.addEventListener('DOMContentLoaded', function () {
  document.body.dataset.charts = String(document.querySelectorAll('svg').length);
  document.body.dataset.rendered = 'ok';
});
)";

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

}  // namespace

std::string render_report(const ReportInput& in) {
  const Run run = load_run(in.run_dir, true);
  std::vector<Run> compare;
  for (const auto& dir : in.compare_dirs) compare.push_back(load_run(dir, false));
  const auto layers = collect_layers(run);

  std::string page;
  page.reserve(1 << 18);
  page += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  page += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  page += "<title>moe report: " + esc(run.name) + "</title>\n";
  page += std::string("<style>") + kStyle + "</style>\n<script>" + kScript +
          "</script>\n</head>\n<body>\n<main>\n";
  page += "<h1>" + esc(run.name) + "</h1>\n<p class=\"sub\">" + esc(run.metrics_path) + ": " +
          std::to_string(run.records) + " records";
  if (!compare.empty()) {
    page += "; compared with ";
    for (size_t i = 0; i < compare.size(); ++i) page += (i ? ", " : "") + esc(compare[i].name);
  }
  page += "</p>\n";

  page += render_summary(run);
  page += render_curves(run, compare);
  if (layers.empty()) {
    page +=
        "<section id=\"experts\"><h2>Expert load</h2><p class=\"note\">No MoE layers logged (a "
        "dense model)."
        "</p></section>\n";
  } else {
    page += render_experts(layers);
    page += render_balance(layers);
    if (adaptive_routing(run, layers)) page += render_adaptive(layers);
  }
  const fs::path config = fs::path(in.run_dir) / "config.toml";
  std::error_code ec;
  if (fs::is_regular_file(config, ec))
    page += "<section id=\"config\"><h2>Configuration (config.toml)</h2><pre class=\"config\">" +
            esc(read_text(config)) + "</pre></section>\n";
  page += "</main>\n</body>\n</html>\n";
  return page;
}

std::string write_report(const ReportInput& in) {
  const fs::path out =
      in.out_path.empty() ? fs::path(in.run_dir) / "report.html" : fs::path(in.out_path);
  const std::string html = render_report(in);

  // A temporary file beside the target, then rename: readers never see a half-written page.
  std::random_device seed;
  char suffix[48];
  std::snprintf(suffix, sizeof suffix, ".tmp-%ld-%08x", static_cast<long>(::getpid()), seed());
  fs::path tmp = out;
  tmp += suffix;
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f)
      throw std::runtime_error(out.string() + ": cannot write the report (does the folder exist?)");
    f.write(html.data(), static_cast<std::streamsize>(html.size()));
    f.close();
    if (!f) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw std::runtime_error(tmp.string() + ": write failed (disk full?)");
    }
  }
  std::error_code ec;
  fs::rename(tmp, out, ec);
  if (ec) {
    std::error_code ignored;
    fs::remove(tmp, ignored);
    throw std::runtime_error(out.string() +
                             ": cannot rename the temporary report into place: " + ec.message());
  }
  return out.string();
}

}  // namespace moe::report
