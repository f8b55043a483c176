// RunConfig (tools/cli/run_config.h) on toml++.
#include "cli/run_config.h"

#include <toml++/toml.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>

namespace moe::cli {

struct RunConfig::Impl {
  toml::table table;
  std::set<std::string> read;  // keys asked for, found or not (get_* and has are const reads)
};

namespace {

std::vector<std::string> split_key(const std::string& key) {
  std::vector<std::string> parts;
  std::stringstream s(key);
  for (std::string p; std::getline(s, p, '.');) {
    if (p.empty()) throw std::invalid_argument("config: empty part in key '" + key + "'");
    parts.push_back(p);
  }
  if (parts.empty() || key.back() == '.')
    throw std::invalid_argument("config: invalid key '" + key + "'");
  return parts;
}

std::string describe(const toml::node& n);

// The node at a dotted key, or nullptr when it is absent. A path through a value that is not a
// table (`--set run=5`, then run.task) is an error naming that value: reading it as "absent" gave
// "run.task is missing" for a configuration that has a run key.
const toml::node* find(const toml::table& t, const std::string& key) {
  const toml::node* n = &t;
  std::string path;
  for (const auto& part : split_key(key)) {
    const auto* tab = n->as_table();
    if (tab == nullptr)
      throw std::invalid_argument("config: " + path + " is " + describe(*n) +
                                  ", expected a table (a [" + path + "] section) holding " + key);
    n = tab->get(part);
    if (n == nullptr) return nullptr;
    path += (path.empty() ? "" : ".") + part;
  }
  return n;
}

std::string describe(const toml::node& n) {
  std::ostringstream s;
  switch (n.type()) {
    case toml::node_type::string:
      s << "string '" << *n.value<std::string>() << "'";
      break;
    case toml::node_type::integer:
      s << "integer " << *n.value<int64_t>();
      break;
    case toml::node_type::floating_point:
      s << "float " << *n.value<double>();
      break;
    case toml::node_type::boolean:
      s << "boolean " << (*n.value<bool>() ? "true" : "false");
      break;
    case toml::node_type::table:
      s << "a table";
      break;
    case toml::node_type::array:
      s << "an array";
      break;
    default:
      s << "a date/time";
  }
  return s.str();
}

// The byte offset of the code point `index` in UTF-8 `s` (s.size() past the end).
size_t byte_offset(const std::string& s, size_t index) {
  size_t i = 0;
  for (size_t cp = 0; i < s.size() && cp < index; ++cp) {
    ++i;
    while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) ++i;
  }
  return i;
}

// An argument as it can be printed on one line: control characters as \n, \t, \xNN.
std::string printable(const std::string& s) {
  std::string out;
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (c < 0x20 || c == 0x7F) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02X", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

// The value of `--set key=text` as the table {v = value}, or nothing when `text` is not TOML (a
// plain string, such as a path without quotes). Throws when the value is not one TOML value on
// one line.
std::optional<toml::table> parse_value(const std::string& assignment, const std::string& text) {
  // One line: parsed as TOML, a newline would let the value bring more keys or tables along,
  // which the parse accepts and only "v" was kept of (the rest silently dropped).
  if (text.find_first_of("\r\n") != std::string::npos)
    throw std::invalid_argument("config: --set " + printable(assignment) +
                                ": the value must be one TOML value on one line");
  toml::table parsed;
  try {
    parsed = toml::parse("v = " + text);
  } catch (const toml::parse_error&) {
    return std::nullopt;
  }
  const toml::node& v = *parsed.get("v");
  // toml++ counts columns in code points, 1-based, the end exclusive; "v = " is 4 of them.
  const size_t end = byte_offset(text, static_cast<size_t>(v.source().end.column) - 5);
  if (text.find_first_not_of(" \t", end) != std::string::npos)
    throw std::invalid_argument("config: --set " + printable(assignment) + ": '" +
                                text.substr(end) + "' follows the value " + text.substr(0, end) +
                                "; give exactly one TOML value (quote a string that has spaces)");
  return parsed;
}

[[noreturn]] void type_error(const std::string& key, const char* expected, const toml::node& n) {
  throw std::invalid_argument("config: " + key + " must be " + expected + ", got " + describe(n));
}

}  // namespace

RunConfig::RunConfig() : impl_(std::make_unique<Impl>()) {}
RunConfig::~RunConfig() = default;
RunConfig::RunConfig(const RunConfig& o) : impl_(std::make_unique<Impl>(*o.impl_)) {}
RunConfig& RunConfig::operator=(const RunConfig& o) {
  *impl_ = *o.impl_;
  return *this;
}

RunConfig RunConfig::from_string(const std::string& text, const std::string& source) {
  RunConfig c;
  try {
    c.impl_->table = toml::parse(text, source);
  } catch (const toml::parse_error& e) {
    std::ostringstream s;
    s << "config: " << source << ":" << e.source().begin.line << ":" << e.source().begin.column
      << ": " << e.description();
    throw std::invalid_argument(s.str());
  }
  return c;
}

RunConfig RunConfig::from_file(const std::string& path) {
  // A folder opens as an empty stream: without this check it read as an empty configuration.
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw std::invalid_argument("config: " + path + " is a folder, expected a TOML file");
  std::ifstream f(path);
  if (!f) throw std::invalid_argument("config: cannot read " + path + ": " + std::strerror(errno));
  std::stringstream s;
  s << f.rdbuf();
  if (f.bad()) throw std::invalid_argument("config: cannot read " + path);
  return from_string(s.str(), path);
}

void RunConfig::set(const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw std::invalid_argument("config: --set expects key=value, got '" + assignment + "'");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  const auto parts = split_key(key);
  // Every check comes before the first change, so that a rejected --set leaves the configuration
  // as it was (it used to create the missing tables of its key first).
  const toml::table* t = &impl_->table;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const auto* n = t->get(parts[i]);
    if (n == nullptr) break;  // created below, with the tables under it
    t = n->as_table();
    if (t == nullptr)
      throw std::invalid_argument("config: cannot set " + key + ": " + parts[i] + " is " +
                                  describe(*n) + ", not a table");
  }
  const std::optional<toml::table> parsed = parse_value(assignment, text);
  toml::table* table = &impl_->table;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (table->get(parts[i]) == nullptr) table->insert(parts[i], toml::table{});
    table = table->get(parts[i])->as_table();
  }
  if (parsed)
    table->insert_or_assign(parts.back(), *parsed->get("v"));
  else
    table->insert_or_assign(parts.back(), text);
}

bool RunConfig::has(const std::string& key) const {
  impl_->read.insert(key);
  return find(impl_->table, key) != nullptr;
}

int64_t RunConfig::get_int(const std::string& key, int64_t fallback) const {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (n == nullptr) return fallback;
  if (!n->is_integer()) type_error(key, "an integer", *n);
  return *n->value<int64_t>();
}

double RunConfig::get_double(const std::string& key, double fallback) const {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (n == nullptr) return fallback;
  if (!n->is_number()) type_error(key, "a number", *n);
  return *n->value<double>();
}

bool RunConfig::get_bool(const std::string& key, bool fallback) const {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (n == nullptr) return fallback;
  if (!n->is_boolean()) type_error(key, "true or false", *n);
  return *n->value<bool>();
}

std::string RunConfig::get_string(const std::string& key, const std::string& fallback) const {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (n == nullptr) return fallback;
  if (!n->is_string()) type_error(key, "a string", *n);
  return *n->value<std::string>();
}

std::vector<int64_t> RunConfig::get_int_list(const std::string& key,
                                             const std::vector<int64_t>& fallback) const {
  impl_->read.insert(key);
  const auto* n = find(impl_->table, key);
  if (n == nullptr) return fallback;
  const auto* a = n->as_array();
  if (a == nullptr) type_error(key, "an array of integers", *n);
  std::vector<int64_t> out;
  for (const auto& e : *a) {
    if (!e.is_integer()) type_error(key, "an array of integers", e);
    out.push_back(*e.value<int64_t>());
  }
  return out;
}

namespace {

void collect_leaves(const toml::table& t, const std::string& prefix,
                    std::map<std::string, std::string>* out) {
  for (const auto& [k, v] : t) {
    const std::string key =
        prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (const auto* sub = v.as_table()) {
      collect_leaves(*sub, key, out);
    } else {
      std::ostringstream s;
      v.visit([&](const auto& node) { s << node; });
      (*out)[key] = s.str();
    }
  }
}

}  // namespace

std::map<std::string, std::string> RunConfig::leaves() const {
  std::map<std::string, std::string> out;
  collect_leaves(impl_->table, "", &out);
  return out;
}

std::vector<std::string> RunConfig::unread_keys() const {
  std::vector<std::string> unread;
  for (const auto& [k, v] : leaves())
    if (impl_->read.count(k) == 0) unread.push_back(k);
  return unread;
}

std::string RunConfig::to_toml() const {
  std::ostringstream s;
  s << impl_->table << "\n";
  return s.str();
}

void RunConfig::write(const std::string& path) const {
  std::ofstream f(path);
  f << to_toml();
  if (!f) throw std::invalid_argument("config: cannot write " + path);
}

}  // namespace moe::cli
