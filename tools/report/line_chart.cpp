// Line charts of the report (tools/report/line_chart.h).
#include "report/line_chart.h"

#include <algorithm>
#include <cmath>

#include "report/axis.h"
#include "report/format.h"
#include "report/svg.h"
#include "train/metrics_schema.h"

namespace moe::report {
namespace {

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
    t.y.push_back(count ? sy / count : metrics::kMissing);
  }
  s.x = std::move(t.x);
  s.y = std::move(t.y);
}

// Where a series is drawn: the axes and the plot area at (x0, y0) of size (w, h).
struct Plot {
  Axis xa, ya;
  double x0, y0, w, h;
};

// One series as <g class="series">: the path, and markers where there are at most 30 points.
void draw_series(std::string& out, Series& s, const std::string& color, bool dashed,
                 const Plot& p) {
  thin_series(s);
  std::string d, dots;
  int points = 0;
  bool pen_down = false;
  for (size_t j = 0; j < s.x.size(); ++j) {
    if (!present(s.x[j]) || !present(s.y[j])) {
      pen_down = false;
      continue;
    }
    const double px = p.xa.map(s.x[j], p.x0, p.x0 + p.w), py = p.ya.map(s.y[j], p.y0 + p.h, p.y0);
    appendf(d, "%s%.1f,%.1f", pen_down ? "L" : "M", px, py);
    appendf(dots, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.4\"/>", px, py);
    pen_down = true;
    ++points;
  }
  appendf(out,
          "<g class=\"series\" data-label=\"%s\" data-points=\"%d\" stroke=\"%s\" fill=\"%s\">",
          esc(s.label).c_str(), points, color.c_str(), color.c_str());
  appendf(out, "<path fill=\"none\" stroke-width=\"1.7\"%s d=\"%s\"/>",
          dashed ? " stroke-dasharray=\"5 3\"" : "", d.c_str());
  if (points <= 30) out += dots;  // markers only where they do not clutter (and for 1 point)
  out += "</g>";
}

}  // namespace

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
  const double w = 540;
  const Plot plot{nice_axis(xmin, xmax, 6, chart.x_title == "step"),
                  nice_axis(ymin, ymax, 5),
                  64,
                  30,
                  w - 64 - 18,
                  200};

  std::vector<std::string> labels, colors;
  std::vector<bool> dashed;
  for (size_t i = 0; i < shown.size(); ++i) {
    labels.push_back(shown[i]->label);
    colors.emplace_back(kPalette[i % kPaletteSize]);
    dashed.push_back(shown[i]->dashed || (i / kPaletteSize) % 2 == 1);
  }
  std::string legend;
  const double legend_h =
      svg_legend(legend, labels, colors, dashed, plot.x0, plot.y0 + plot.h + 58, plot.w);

  std::string out;
  svg_open(out, "chart", w, plot.y0 + plot.h + 48 + legend_h + 6, chart.title);
  svg_axes(out, plot.xa, plot.ya, plot.x0, plot.y0, plot.w, plot.h, chart.x_title, chart.y_title);
  for (size_t i = 0; i < shown.size(); ++i) draw_series(out, *shown[i], colors[i], dashed[i], plot);
  out += legend;
  out += "</svg>";
  return out;
}

}  // namespace moe::report
