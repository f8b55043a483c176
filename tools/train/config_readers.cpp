// Checked readers of configuration values (tools/train/config_readers.h).
#include "train/config_readers.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <stdexcept>

#include "cli/run_config.h"

namespace moe::train::config {

using moe::cli::RunConfig;

std::string number(double v) {
  std::ostringstream s;
  s << v;  // 6 significant digits: 1e-15 stays 1e-15, 0.002 stays 0.002
  return s.str();
}

[[noreturn]] void bad(const std::string& key, const std::string& value,
                      const std::string& expected) {
  throw std::invalid_argument("config: " + key + " = " + value + ": expected " + expected);
}

int64_t int_at_least(const RunConfig& c, const std::string& key, int64_t fallback, int64_t min) {
  const int64_t v = c.get_int(key, fallback);
  if (v < min) bad(key, std::to_string(v), "an integer >= " + std::to_string(min));
  return v;
}

double number_in(const RunConfig& c, const std::string& key, double fallback, double lo,
                 double hi) {
  const double v = c.get_double(key, fallback);
  if (!std::isfinite(v) || v < lo || v > hi) {
    std::ostringstream s;
    s << "a number in [" << lo << ", " << hi << "]";
    bad(key, number(v), s.str());
  }
  return v;
}

std::string one_of(const RunConfig& c, const std::string& key, const std::string& fallback,
                   const std::vector<std::string>& allowed) {
  const std::string v = c.get_string(key, fallback);
  if (std::find(allowed.begin(), allowed.end(), v) == allowed.end()) {
    std::string list;
    for (const auto& a : allowed) list += (list.empty() ? "" : ", ") + a;
    bad(key, "'" + v + "'", "one of " + list);
  }
  return v;
}

std::vector<int64_t> widths(const RunConfig& c, const std::string& key,
                            const std::vector<int64_t>& fallback) {
  const auto v = c.get_int_list(key, fallback);
  for (const int64_t w : v)
    if (w < 1) bad(key, std::to_string(w), "widths >= 1");
  return v;
}

double coef(const RunConfig& c, const std::string& key) {
  if (!c.has(key)) return -1;
  return number_in(c, key, 0, 0, 1e6);
}

}  // namespace moe::train::config
