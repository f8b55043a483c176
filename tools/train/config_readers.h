// Checked readers of configuration values, shared by the sections of train_config.cpp and the
// routers' entries (cli_routers.cpp). Each raises std::invalid_argument naming the key, the value
// and what is expected.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace moe::cli {
class RunConfig;
}

namespace moe::train::config {

/// Throws "config: <key> = <value>: expected <expected>".
[[noreturn]] void bad(const std::string& key, const std::string& value,
                      const std::string& expected);

/// A number as an error message shows it (6 significant digits).
std::string number(double v);

int64_t int_at_least(const cli::RunConfig& c, const std::string& key, int64_t fallback,
                     int64_t min);
double number_in(const cli::RunConfig& c, const std::string& key, double fallback, double lo,
                 double hi);
std::string one_of(const cli::RunConfig& c, const std::string& key, const std::string& fallback,
                   const std::vector<std::string>& allowed);
std::vector<int64_t> widths(const cli::RunConfig& c, const std::string& key,
                            const std::vector<int64_t>& fallback);
/// An optional loss coefficient in [0, 1e6]: absent = -1 (the router's default).
double coef(const cli::RunConfig& c, const std::string& key);

}  // namespace moe::train::config
