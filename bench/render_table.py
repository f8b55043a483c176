#!/usr/bin/env python3
"""Renders moe_bench JSON lines as Markdown tables (one row per shape x dtype x dist x pass).

    python3 bench/render_table.py build/bench.jsonl > table.md
"""
import json
import sys
from collections import OrderedDict


def main(paths):
    rows = [json.loads(line) for p in paths for line in open(p) if line.strip()]
    cases = OrderedDict()
    for r in rows:
        key = (r["shape_id"], r["dtype"], r["dist"], r["pass"])
        cases.setdefault(key, {})[r["impl"]] = r
    print("| shape | dtype | pass | lib ms | lib tokens/s | lib GFLOP/s | fraction of peak | eta "
          "| x naive | x dense_dispatch (its drop rate) | routing+perm share | lib MiB | naive MiB | check |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (shape, dtype, dist, pas), impls in cases.items():
        lib = impls.get("lib")
        if lib is None:
            continue
        naive, dd = impls.get("naive"), impls.get("dense_dispatch")
        x_naive = f'{naive["t_med_ms"] / lib["t_med_ms"]:.2f}' if naive else "-"
        x_dd = f'{dd["t_med_ms"] / lib["t_med_ms"]:.2f} ({100 * dd["drop_rate"]:.1f}%)' if dd else "-"
        ph = lib.get("phase_ms", {})
        share = (ph.get("plan", 0) + ph.get("permute", 0) + ph.get("router", 0)) / (
            lib["t_med_ms"] + ph.get("router", 0)) if ph else float("nan")
        eta = f'{lib["eta"]:.2f}' if lib.get("eta") is not None else "-"
        checks = all(r.get("gate_ok", True) for r in impls.values())
        print(f'| {shape} | {dtype} | {pas} | {lib["t_med_ms"]:.1f} | {lib["tokens_per_s"]:.0f} '
              f'| {lib["useful_gflops"]:.0f} | {lib["pct_peak"]:.2f} | {eta} | {x_naive} | {x_dd} '
              f'| {100 * share:.1f}% | {lib["peak_mem_delta_bytes"] / 2**20:.0f} '
              f'| {naive["peak_mem_delta_bytes"] / 2**20:.0f} | {"ok" if checks else "FAILED"} |'
              if naive else
              f'| {shape} | {dtype} | {pas} | {lib["t_med_ms"]:.1f} | {lib["tokens_per_s"]:.0f} '
              f'| {lib["useful_gflops"]:.0f} | {lib["pct_peak"]:.2f} | {eta} | - | {x_dd} | {100 * share:.1f}% '
              f'| {lib["peak_mem_delta_bytes"] / 2**20:.0f} | - | {"ok" if checks else "FAILED"} |')


if __name__ == "__main__":
    main(sys.argv[1:])
