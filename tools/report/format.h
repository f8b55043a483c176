// Text of the report page (tools/report/report.h): HTML escaping and the way numbers, lists of
// numbers and durations are printed. Every string taken from the input files passes through esc().
#pragma once

#include <cmath>
#include <string>
#include <string_view>
#include <vector>

namespace moe::report {

/// Whether a number is there: missing numbers are NaN (tools/train/metrics_schema.h).
inline bool present(double v) { return std::isfinite(v); }

/// printf into a string.
__attribute__((format(printf, 2, 3))) void appendf(std::string& out, const char* format, ...);

/// The text with & < > " ' as HTML character references.
std::string esc(std::string_view s);

/// Compact number: %.4g, or a dash when missing.
std::string num(double v);

/// "[a, b, c]" of num().
std::string num_list(const std::vector<double>& v);

/// "75 s", "812.5 s (13m 33s)", "3723 s (1h 02m 03s)"; a dash when missing.
std::string duration(double seconds);

/// A row of a two-column table: the key escaped, the value as HTML.
void table_row(std::string& out, const std::string& key, const std::string& value_html);

}  // namespace moe::report
