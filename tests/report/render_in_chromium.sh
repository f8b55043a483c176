#!/usr/bin/env bash
# Renders a `moe report` page in headless Chromium and checks that it really renders:
#   1. --dump-dom: the page's own script ran to the end (body data-rendered="ok", data-charts > 0)
#      and reported no script error (its error listener prefixes document.title "REPORT-ERROR:");
#   2. --screenshot: a PNG larger than a blank page's;
#   3. neither run logged a console message from the page (the report writes none).
#
# Usage: render_in_chromium.sh REPORT.html
#   MOE_REPORT_SCREENSHOT=FILE.png   keep the screenshot there
#   MOE_REPORT_MIN_PNG_BYTES=N       the screenshot size threshold (default 30000)
# Exit status: 0 pass, 1 fail, 2 usage, 77 no Chromium installed (ctest SKIP_RETURN_CODE 77).
#
# Why these thresholds and patterns (Chromium 156, Debian 12, 1280x2400 window):
#   - a blank page's screenshot is about 14 KB, a page with one heading and one line of text
#     about 19.5 KB; the smallest report (one train record, one chart) about 45 KB, the full test
#     fixture (ReportBrowser.WritesRichFixture) about 184 KB: 30 KB sits between;
#   - with --enable-logging=stderr every console message (log, warn and error alike: this
#     Chromium does not tell them apart) and every uncaught exception is a line like
#       [pid:tid:date/time:INFO:CONSOLE:1] "Uncaught Error: boom", source: file:///... (1)
#     older builds write "INFO:CONSOLE(1)]", hence the pattern ':CONSOLE[:(]'.
set -euo pipefail

if [[ $# -ne 1 || ! -f ${1} ]]; then
  echo "usage: $0 REPORT.html   (an existing HTML file written by moe report)" >&2
  exit 2
fi

browser=""
for candidate in chromium chromium-browser; do
  if command -v "$candidate" >/dev/null 2>&1; then
    browser=$(command -v "$candidate")
    break
  fi
done
if [[ -z $browser ]]; then
  echo "SKIP: neither chromium nor chromium-browser is on PATH (Debian: apt-get install chromium)"
  exit 77
fi

html=$(realpath "$1")
min_png_bytes=${MOE_REPORT_MIN_PNG_BYTES:-30000}
work=$(mktemp -d "${TMPDIR:-/tmp}/moe_report_chromium.XXXXXX")
trap 'rm -rf "$work"' EXIT

# file:// URL: percent-encode the characters that would end or change the path.
url_path=${html//%/%25}
url_path=${url_path// /%20}
url_path=${url_path//#/%23}
url_path=${url_path//\?/%3F}
url="file://$url_path"

failures=0
fail() {
  echo "FAIL: $*" >&2
  failures=$((failures + 1))
}

# run_chromium NAME ARGS...: stdout to $work/NAME.out, stderr to $work/NAME.err, each with its own
# fresh profile folder (removed with $work).
run_chromium() {
  local name=$1
  shift
  local profile
  profile=$(mktemp -d "$work/profile.XXXXXX")
  local status=0
  timeout 120 "$browser" --headless --no-sandbox --disable-gpu --disable-dev-shm-usage \
    --user-data-dir="$profile" \
    --enable-logging=stderr --v=0 "$@" "$url" >"$work/$name.out" 2>"$work/$name.err" || status=$?
  if [[ $status -ne 0 ]]; then
    fail "chromium ($name) exited with status $status$([[ $status -eq 124 ]] && echo ' (timed out after 120 s)')"
    tail -n 20 "$work/$name.err" >&2 || true
  fi
}

check_console() {
  local name=$1
  if grep -E ':CONSOLE[:(]' "$work/$name.err" >"$work/$name.console"; then
    fail "the page logged to the console during the $name run:"
    sed 's/^/    /' "$work/$name.console" >&2
  fi
}

echo "render_in_chromium: $browser on $html"

# 1. The DOM after the page's script ran.
run_chromium dom --dump-dom
dom="$work/dom.out"
if ! grep -q 'data-rendered="ok"' "$dom"; then
  fail "the DOM lacks data-rendered=\"ok\" (the page's script did not finish)"
fi
if grep -q 'REPORT-ERROR' "$dom"; then
  fail "script error: $(grep -o 'REPORT-ERROR[^<]*' "$dom" | head -n 1)"
fi
charts=$(grep -o 'data-charts="[0-9]*"' "$dom" | head -n 1 | tr -dc '0-9' || true)
if [[ -z $charts || $charts -eq 0 ]]; then
  fail "the page counted no <svg> charts (data-charts=\"${charts}\")"
fi
check_console dom

# 2. A screenshot, which must hold more than a blank page.
png="$work/page.png"
run_chromium screenshot --screenshot="$png" --window-size=1280,2400 --hide-scrollbars
if [[ ! -f $png ]]; then
  fail "no screenshot was written"
else
  size=$(stat -c %s "$png")
  if [[ $size -le $min_png_bytes ]]; then
    fail "the screenshot is $size bytes, not more than $min_png_bytes: a blank or nearly blank page"
  fi
  if [[ -n ${MOE_REPORT_SCREENSHOT:-} ]]; then
    cp "$png" "$MOE_REPORT_SCREENSHOT"
  fi
fi
check_console screenshot

if [[ $failures -ne 0 ]]; then
  echo "render_in_chromium: $failures check(s) failed for $html" >&2
  exit 1
fi
echo "render_in_chromium: OK (charts=$charts, screenshot ${size} bytes > $min_png_bytes)"
