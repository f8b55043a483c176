// The sections of the report page about MoE layers: expert load, load balance, adaptive routing
// (tools/report/sections.h).
#include "report/format.h"
#include "report/line_chart.h"
#include "report/load_charts.h"
#include "report/sections.h"

namespace moe::report {
namespace {

using Stat = std::optional<double> metrics::LayerRecord::*;

// One series per layer of a per-layer statistic.
LineChart layer_chart(const std::vector<Layer>& layers, const char* title, const char* axis,
                      Stat field) {
  LineChart chart{title, "step", axis, {}};
  for (const auto& layer : layers) {
    Series s{layer.name, {}, {}};
    for (const auto& [step, record] : layer.records) {
      s.x.push_back(static_cast<double>(step));
      s.y.push_back(stat(record->*field));
    }
    chart.series.push_back(std::move(s));
  }
  return chart;
}

bool any_value(const std::vector<Layer>& layers, Stat field) {
  for (const auto& layer : layers)
    for (const auto& [step, s] : layer.records)
      if (present(stat(s->*field)) && stat(s->*field) != 0) return true;
  return false;
}

// The table beside a layer's histogram: means of its statistics over the run.
void layer_table(std::string& out, const Layer& layer) {
  double cv = 0, dropped = 0, mean_k = 0;
  int ncv = 0, ndropped = 0, nk = 0;
  for (const auto& [step, s] : layer.records) {
    if (present(stat(s->cv))) cv += *s->cv, ++ncv;
    if (present(stat(s->dropped))) dropped += *s->dropped, ++ndropped;
    if (present(stat(s->mean_k))) mean_k += *s->mean_k, ++nk;
  }
  const metrics::LayerRecord& last = *layer.records.back().second;
  out += "<table class=\"summary\">";
  table_row(out, "experts (most seen)", std::to_string(layer.experts));
  table_row(out, "logged records", std::to_string(layer.records.size()));
  table_row(out, "mean CV of load", ncv ? num(cv / ncv) : "—");
  table_row(out, "mean dropped fraction", ndropped ? num(dropped / ndropped) : "—");
  table_row(out, "mean experts per token", nk ? num(mean_k / nk) : "—");
  table_row(out, "active experts (last)", num(stat(last.active_experts)));
  out += "</table>";
}

}  // namespace

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
    layer_table(out, layer);
    out += "</div></section>";
  }
  return out + "</section>\n";
}

std::string render_balance(const std::vector<Layer>& layers) {
  using metrics::LayerRecord;
  std::string charts = render_line_chart(layer_chart(layers, "Load imbalance (CV of expert load)",
                                                     "coefficient of variation", &LayerRecord::cv));
  LineChart dropped = layer_chart(layers, "Dropped fraction (over capacity)", "fraction of tokens",
                                  &LayerRecord::dropped);
  if (any_value(layers, &LayerRecord::unrouted)) {
    LineChart unrouted = layer_chart(layers, "", "", &LayerRecord::unrouted);
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
    const auto it = start.find(metrics::key::kRouter);
    if (it != start.end() && it->is_string() && it->get<std::string>() == "top_any") return true;
  }
  for (const auto& layer : layers) {
    double first = metrics::kMissing;
    for (const auto& [step, s] : layer.records) {
      const double active = stat(s->active_experts);
      if (!present(active)) continue;
      if (!present(first))
        first = active;
      else if (active != first)
        return true;
    }
  }
  return false;
}

std::string render_adaptive(const std::vector<Layer>& layers) {
  using metrics::LayerRecord;
  std::string charts = render_line_chart(layer_chart(
      layers, "Active experts", "experts that can receive tokens", &LayerRecord::active_experts));
  charts += render_line_chart(
      layer_chart(layers, "Mean experts per token (k)", "mean k", &LayerRecord::mean_k));
  if (charts.empty()) charts = "<p class=\"note\">No active_experts or mean_k values logged.</p>";
  return "<section id=\"adaptive\"><h2>Adaptive routing: active experts and k</h2>"
         "<div class=\"charts\">" +
         charts + "</div></section>\n";
}

}  // namespace moe::report
