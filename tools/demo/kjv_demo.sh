#!/usr/bin/env bash
# `make demo`: a character-level MoE transformer (noisy top-k gating) on the King James Bible, then
# a dense transformer of equal active compute on the same data, then the report page.
#
#   tools/demo/kjv_demo.sh BUILD_DIR [RUNS_DIR]
#
# The runs go to RUNS_DIR/demo-moe and RUNS_DIR/demo-dense (default RUNS_DIR: runs); earlier demo
# runs there are replaced. Each model trains for a few minutes on 2 cores.
set -euo pipefail
export LC_ALL=C  # printf's number format
build=${1:?usage: kjv_demo.sh BUILD_DIR [RUNS_DIR]}
runs=${2:-runs}
moe="$build/moe"
config=configs/kjv_moe.toml

if [ ! -s data/kjv/train.txt ]; then
  "$moe" data kjv --out data/kjv
fi
rm -rf "$runs/demo-moe" "$runs/demo-dense"
start=$(date +%s)
echo "== 1/2: MoE transformer ($config: noisy top-k, 16 experts per block, k = 2)"
"$moe" train "$config" --out "$runs/demo-moe"
echo
echo "== 2/2: dense baseline (same model, dense FFN of width top_k x expert hidden)"
"$moe" train "$config" --out "$runs/demo-dense" --set model.moe_every=0
"$moe" report "$runs/demo-moe" --compare "$runs/demo-dense"

# The whole-split validation BPC is on the last eval record of each run.
final_bpc() {
  grep '"full_split":true' "$1/metrics.jsonl" | tail -1 | grep -o '"bpc":[0-9.e+-]*' | cut -d: -f2 || echo nan
}
echo
echo "== validation bits per character (whole split, lower is better)"
moe_bpc=$(final_bpc "$runs/demo-moe")
dense_bpc=$(final_bpc "$runs/demo-dense")
printf '  MoE   (%s)  %.4f\n' "$runs/demo-moe" "$moe_bpc"
printf '  dense (%s)  %.4f\n' "$runs/demo-dense" "$dense_bpc"
# docs/results.md, section 6: 0.033-0.064 BPC in the MoE's favour in each of three seeds here
awk -v m="$moe_bpc" -v d="$dense_bpc" 'BEGIN {
  if (m == "nan" || d == "nan") exit
  if (m < d) printf "  the MoE is ahead by %.4f BPC at the same active compute (docs/results.md, section 6)\n", d - m
  else printf "  the dense model is ahead by %.4f BPC this time (docs/results.md, section 6)\n", m - d
}'
echo "  wall time: $(( $(date +%s) - start )) s"
echo "  report: $runs/demo-moe/report.html (open it in a browser)"
