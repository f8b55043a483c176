// The style sheet and the script of the report page (tools/report/report.h), inlined into its
// <head>: the page is one self-contained file.
#pragma once

namespace moe::report {

inline constexpr const char* kStyle = R"(
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;
  background:#fafafa;margin:0}
main{max-width:1140px;margin:0 auto;padding:16px 20px 40px}
h1{font-size:24px;margin:8px 0 2px}
h2{font-size:19px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:18px 0 6px;font-family:ui-monospace,monospace}
.sub,.note{color:#555}.note{font-size:13px;max-width:900px}
table.summary{border-collapse:collapse;background:#fff;margin:4px 0;align-self:flex-start}
table.summary th,table.summary td{border:1px solid #ddd;padding:3px 10px;text-align:left;
  vertical-align:top}
table.summary th{background:#f0f0f0;font-weight:600;white-space:nowrap}
.charts{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start}
svg{background:#fff;border:1px solid #e2e2e2;border-radius:4px;font-size:11px;max-width:100%;
  height:auto}
svg .chart-title{font-size:13px;font-weight:600}
svg .tick{fill:#444}svg .axis-title{fill:#333;font-size:12px}
svg .grid{stroke:#ececec}svg .axis{stroke:#666;fill:none}svg .frame{fill:none;stroke:#999}
svg .uniform{stroke:#c0392b;stroke-width:1.5}
svg .cell:hover{stroke:#000;stroke-width:1}
pre.config{background:#fff;border:1px solid #ddd;padding:10px;overflow:auto;font-size:12.5px}
)";

// Reports script errors in the title ("REPORT-ERROR: message") and marks the body once rendered,
// for the headless-browser test (tests/report/render_in_chromium.sh). The marker is split in the
// source so that the page contains it only after an error.
inline constexpr const char* kScript = R"(
window.addEventListener('error', function (e) {
  document.title = 'REPORT' + '-ERROR: ' + (e && e.message ? e.message : 'unknown error');
});
document.addEventListener('DOMContentLoaded', function () {
  document.body.dataset.charts = String(document.querySelectorAll('svg').length);
  document.body.dataset.rendered = 'ok';
});
)";

}  // namespace moe::report
