#!/usr/bin/env python3
"""Paired summary of a multitask_synthetic --jsonl file (docs/multitask.md).

For each model and correlation: the median over seeds of the mean of the two tasks' normalised test
MSE, and how often one model beats another on the same (seed, correlation) data.

    python3 tools/experiments/summarize_multitask.py run.jsonl
"""
import collections
import json
import statistics
import sys


def main(path):
    rows = [json.loads(line) for line in open(path)]
    score = collections.defaultdict(dict)
    for r in rows:
        score[(r["model"], r["p"])][r["seed"]] = (r["nmse1"] + r["nmse2"]) / 2
    models = list(dict.fromkeys(r["model"] for r in rows))
    ps = list(dict.fromkeys(r["p"] for r in rows))
    seeds = sorted({r["seed"] for r in rows})
    print("| model | " + " | ".join(f"p = {p:g}" for p in ps) + " |")
    print("|---|" + "---|" * len(ps))
    for m in models:
        cells = [f"{statistics.median(score[(m, p)].values()):.4f}" for p in ps]
        print(f"| {m} | " + " | ".join(cells) + " |")
    print()
    pairs = [("MMoE", "Shared-Bottom"), ("MMoE", "OMoE"), ("CGC", "MMoE"), ("PLE", "MMoE")]
    print("| comparison (same data) | " + " | ".join(f"p = {p:g}" for p in ps) + " | total |")
    print("|---|" + "---|" * (len(ps) + 1))
    for a, b in pairs:
        if (a, ps[0]) not in score or (b, ps[0]) not in score:
            continue
        wins = [sum(score[(a, p)][s] < score[(b, p)][s] for s in seeds) for p in ps]
        print(f"| {a} better than {b} | " + " | ".join(f"{w}/{len(seeds)}" for w in wins)
              + f" | {sum(wins)}/{len(seeds) * len(ps)} |")


if __name__ == "__main__":
    main(sys.argv[1])
