// SVG pieces of the report's charts (tools/report/svg.h).
#include "report/svg.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "report/format.h"

namespace moe::report {

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
              const std::string& extra_attrs) {
  appendf(out,
          "<svg class=\"%s\" role=\"img\" aria-label=\"%s\" width=\"%.0f\" height=\"%.0f\" "
          "viewBox=\"0 0 %.0f %.0f\"%s>",
          cls, esc(title).c_str(), w, h, w, h, extra_attrs.c_str());
  appendf(out, "<title>%s</title>", esc(title).c_str());
  appendf(out, "<text class=\"chart-title\" x=\"%.1f\" y=\"18\" text-anchor=\"middle\">%s</text>",
          w / 2, esc(title).c_str());
}

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

}  // namespace moe::report
