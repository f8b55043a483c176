// Line charts of the report (tools/report/report.h): series of (x, y) drawn as SVG paths over
// round axes, with a legend.
#pragma once

#include <string>
#include <vector>

namespace moe::report {

/// One line; a missing y (NaN) breaks it.
struct Series {
  std::string label;
  std::vector<double> x, y;
  bool dashed = false;
};

struct LineChart {
  std::string title, x_title = "step", y_title;
  std::vector<Series> series;
};

/// At most this many points are drawn per series; longer ones are averaged in consecutive groups.
inline constexpr size_t kMaxLinePoints = 1000;

/// The chart as <svg class="chart">; "" when no series has a point. Series without a point are
/// left out. Colours follow the palette; series past its length are dashed.
std::string render_line_chart(LineChart chart);

}  // namespace moe::report
