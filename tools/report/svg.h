// SVG pieces of the report's charts (tools/report/report.h): the colours, a chart's frame with
// its title, axes with grid and ticks, and a legend.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "report/axis.h"

namespace moe::report {

/// Series colours, in order (tableau 10).
inline constexpr const char* kPalette[] = {"#4e79a7", "#f28e2b", "#e15759", "#59a14f", "#b07aa1",
                                           "#76b7b2", "#9c755f", "#ff9da7", "#edc948", "#7f7f7f"};
inline constexpr size_t kPaletteSize = sizeof kPalette / sizeof kPalette[0];
/// A heat-map cell of an expert that did not exist then.
inline constexpr const char* kAbsentColor = "#d4d4d4";

/// Viridis-like ramp: t in [0, 1] to "#rrggbb".
std::string ramp_color(double t);

/// Opens <svg> of size (w, h) with an accessible title and a title line at the top.
void svg_open(std::string& out, const char* cls, double w, double h, const std::string& title,
              const std::string& extra_attrs = "");

/// Axis frame, grid, ticks and titles for a plot area at (x0, y0) of size (w, h).
void svg_axes(std::string& out, const Axis& xa, const Axis& ya, double x0, double y0, double w,
              double h, const std::string& x_title, const std::string& y_title);

/// Legend rows under the plot (a line sample and the label per item, wrapped at `width`);
/// returns the height used.
double svg_legend(std::string& out, const std::vector<std::string>& labels,
                  const std::vector<std::string>& colors, const std::vector<bool>& dashed,
                  double x0, double y0, double width);

}  // namespace moe::report
