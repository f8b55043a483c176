// Axes of the report's charts (tools/report/report.h): round bounds and ticks, and tick labels.
#pragma once

#include <string>
#include <vector>

namespace moe::report {

struct Axis {
  double lo = 0, hi = 1, step = 0.2;
  std::vector<double> ticks;
  /// Maps v in [lo, hi] onto [a, b].
  double map(double v, double a, double b) const { return a + (v - lo) / (hi - lo) * (b - a); }
};

/// Round bounds and ticks at 1, 2 or 5 times a power of ten covering [lo, hi], about `target`
/// ticks; a single value or a constant series gets a range around it. integer: ticks at whole
/// numbers (steps).
Axis nice_axis(double lo, double hi, int target = 5, bool integer = false);

/// A tick label: as many decimals as the tick step needs.
std::string tick_label(double v, double step);

}  // namespace moe::report
