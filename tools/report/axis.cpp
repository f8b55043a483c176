// Axes of the report's charts (tools/report/axis.h).
#include "report/axis.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "report/format.h"

namespace moe::report {
namespace {

// 1, 2, 5 or 10 times a power of ten near x: the nearest (round) or the next above (!round).
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

}  // namespace

Axis nice_axis(double lo, double hi, int target, bool integer) {
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

}  // namespace moe::report
