// The `moe report` page (tools/report/report.h): the run read into records (run.h), the sections
// drawn as HTML with inline SVG charts (sections.h), assembled here into one page with its style
// and script (page_style.h), and written atomically. Everything the page shows comes from the
// input files, so every string taken from them passes through esc() (format.h).
#include "report/report.h"

#include <c10/util/Exception.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>

#include "moe/io/atomic_file.h"
#include "report/format.h"
#include "report/page_style.h"
#include "report/run.h"
#include "report/sections.h"

namespace moe::report {
namespace {

namespace fs = std::filesystem;

std::string read_text(const fs::path& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

// <head> with the style and the script, and the page's heading.
std::string page_start(const Run& run, const std::vector<Run>& compare) {
  std::string page;
  page += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  page += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  page += "<title>moe report: " + esc(run.name) + "</title>\n";
  page += std::string("<style>") + kStyle + "</style>\n<script>" + kScript +
          "</script>\n</head>\n<body>\n<main>\n";
  page += "<h1>" + esc(run.name) + "</h1>\n<p class=\"sub\">" + esc(run.metrics_path) + ": " +
          std::to_string(run.records) + " records";
  if (!compare.empty()) {
    page += "; compared with ";
    for (size_t i = 0; i < compare.size(); ++i) page += (i ? ", " : "") + esc(compare[i].name);
  }
  page += "</p>\n";
  return page;
}

}  // namespace

std::string render_report(const ReportInput& in) {
  const Run run = load_run(in.run_dir, true);
  std::vector<Run> compare;
  for (const auto& dir : in.compare_dirs) compare.push_back(load_run(dir, false));
  const auto layers = collect_layers(run);

  std::string page;
  page.reserve(1 << 18);
  page += page_start(run, compare);
  page += render_summary(run);
  page += render_curves(run, compare);
  if (layers.empty()) {
    page +=
        "<section id=\"experts\"><h2>Expert load</h2><p class=\"note\">No MoE layers logged (a "
        "dense model)."
        "</p></section>\n";
  } else {
    page += render_experts(layers);
    page += render_balance(layers);
    if (adaptive_routing(run, layers)) page += render_adaptive(layers);
  }
  const fs::path config = fs::path(in.run_dir) / "config.toml";
  std::error_code ec;
  if (fs::is_regular_file(config, ec))
    page += "<section id=\"config\"><h2>Configuration (config.toml)</h2><pre class=\"config\">" +
            esc(read_text(config)) + "</pre></section>\n";
  page += "</main>\n</body>\n</html>\n";
  return page;
}

std::string write_report(const ReportInput& in) {
  const fs::path out =
      in.out_path.empty() ? fs::path(in.run_dir) / "report.html" : fs::path(in.out_path);
  const std::string html = render_report(in);
  try {
    io::write_file_atomically(out.string(), html, "moe report");
  } catch (const c10::Error& e) {  // names the file and the OS error
    throw std::runtime_error(e.what_without_backtrace());
  }
  return out.string();
}

}  // namespace moe::report
