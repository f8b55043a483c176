// The expert-load charts of one MoE layer (tools/report/load_charts.h).
#include "report/load_charts.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "report/axis.h"
#include "report/format.h"
#include "report/report.h"
#include "report/svg.h"

namespace moe::report {
namespace {

// Consecutive records of a layer averaged into one heat-map column.
struct HeatColumn {
  int64_t first_step = 0, last_step = 0;
  int records = 0;
  std::vector<double> share;  // per expert; NaN: absent from every record of the column
};

// Column j of C covers records [floor(j*n/C), floor((j+1)*n/C)).
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
    c.share.assign(layer.experts, metrics::kMissing);
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

// The geometry of a heat map: the grid at (x0, y0) of size (pw, ph), cells of (cell_w, cell_h),
// the colour bar bar_h high.
struct HeatGeometry {
  double w = 1100, x0 = 64, y0 = 30, pw = 1100 - 64 - 110;
  double cell_h = 0, cell_w = 0, ph = 0, bar_h = 0;
};

// The cells, one row per expert (expert 0 at the top), with a tooltip each.
void heatmap_cells(std::string& out, const std::vector<HeatColumn>& cols, size_t experts,
                   double scale, const HeatGeometry& g) {
  out += "<g class=\"cells\" shape-rendering=\"crispEdges\">";
  for (size_t k = 0; k < experts; ++k) {
    const double y = g.y0 + g.cell_h * static_cast<double>(k);
    for (size_t j = 0; j < cols.size(); ++j) {
      const HeatColumn& col = cols[j];
      const double x = g.x0 + g.cell_w * static_cast<double>(j);
      const double v = col.share[k];
      std::string steps = col.records == 1 ? "step " + std::to_string(col.first_step)
                                           : "steps " + std::to_string(col.first_step) + "–" +
                                                 std::to_string(col.last_step) + " (mean of " +
                                                 std::to_string(col.records) + ")";
      appendf(out,
              "<rect class=\"cell%s\" x=\"%.1f\" y=\"%.1f\" width=\"%.2f\" height=\"%.1f\" "
              "fill=\"%s\"><title>expert %zu, %s: %s</title></rect>",
              present(v) ? "" : " absent", x, y, g.cell_w + 0.3, g.cell_h,
              present(v) ? ramp_color(v / scale).c_str() : kAbsentColor, k, steps.c_str(),
              present(v) ? ("share " + num(v)).c_str() : "absent");
    }
  }
  out += "</g>";
}

// The frame, expert labels (at most ~16), step labels at up to 7 columns and the axis titles.
void heatmap_axes(std::string& out, const std::vector<HeatColumn>& cols, size_t experts,
                  size_t records, const HeatGeometry& g) {
  const size_t c = cols.size();
  appendf(out, "<rect class=\"frame\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>", g.x0,
          g.y0, g.pw, g.ph);
  const size_t every = (experts + 15) / 16;
  for (size_t k = 0; k < experts; k += every)
    appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%zu</text>",
            g.x0 - 5, g.y0 + g.cell_h * (static_cast<double>(k) + 0.5) + 4, k);
  const size_t labels = std::min<size_t>(c, 7);
  for (size_t i = 0; i < labels; ++i) {
    const size_t j = labels == 1 ? 0 : i * (c - 1) / (labels - 1);
    const double x = g.x0 + g.cell_w * (static_cast<double>(j) + 0.5);
    appendf(out, "<line class=\"axis\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", x,
            g.y0 + g.ph, x, g.y0 + g.ph + 4);
    appendf(out, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%lld</text>", x,
            g.y0 + g.ph + 16, static_cast<long long>(cols[j].first_step));
  }
  const std::string x_title = c < records ? "step (" + std::to_string(records) +
                                                " logged records averaged into " +
                                                std::to_string(c) + " columns)"
                                          : "step (one column per logged record)";
  appendf(out, "<text class=\"axis-title\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>",
          g.x0 + g.pw / 2, g.y0 + g.ph + 34, x_title.c_str());
  appendf(out,
          "<text class=\"axis-title\" transform=\"translate(14,%.1f) rotate(-90)\" "
          "text-anchor=\"middle\">expert</text>",
          g.y0 + g.ph / 2);
}

// The colour bar right of the grid: 0 at the bottom, the largest share (vmax) at the top; a grey
// "absent" sample under it when some cell is absent.
void heatmap_color_bar(std::string& out, double vmax, bool any_absent, const HeatGeometry& g) {
  const double bx = g.x0 + g.pw + 24, bw = 14, steps = 24, y0 = g.y0, bar_h = g.bar_h;
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

}  // namespace

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
  HeatGeometry g;
  g.cell_h = std::clamp(240.0 / static_cast<double>(experts), 5.0, 36.0);
  g.ph = g.cell_h * static_cast<double>(experts);
  g.cell_w = g.pw / static_cast<double>(c);
  g.bar_h = std::max(g.ph, 120.0);
  const double h = g.y0 + g.bar_h + 50;

  std::string out;
  char attrs[96];
  std::snprintf(attrs, sizeof attrs, " data-experts=\"%zu\" data-columns=\"%zu\"", experts, c);
  svg_open(out, "heatmap", g.w, h, "Expert load: " + layer.name,
           std::string(" data-layer=\"") + esc(layer.name) + "\"" + attrs);
  heatmap_cells(out, cols, experts, vmax > 0 ? vmax : 1, g);
  out += "<g class=\"axes\">";
  heatmap_axes(out, cols, experts, layer.records.size(), g);
  heatmap_color_bar(out, vmax, any_absent, g);
  out += "</g></svg>";
  return out;
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

}  // namespace moe::report
