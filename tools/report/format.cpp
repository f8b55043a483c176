// Text of the report page (tools/report/format.h).
#include "report/format.h"

#include <cstdarg>
#include <cstdint>
#include <cstdio>

namespace moe::report {

void appendf(std::string& out, const char* format, ...) {
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

void table_row(std::string& out, const std::string& key, const std::string& value_html) {
  out += "<tr><th>" + esc(key) + "</th><td>" + value_html + "</td></tr>";
}

}  // namespace moe::report
