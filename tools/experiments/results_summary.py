#!/usr/bin/env python3
"""The tables of docs/results.md from the run folders of tools/experiments/results.sh.

    python3 tools/experiments/results_summary.py [RUNS] [SECTION...]

RUNS defaults to runs/results; sections default to every one that has runs. Each table is printed
as Markdown; a run still training is left out. Only the Python standard library is used.
"""
import json
import math
import os
import re
import statistics
import sys


def records(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def finished(run):
    try:
        return any(r["event"] == "end" for r in records(run))
    except FileNotFoundError:
        return False


def runs_of(root, section):
    folder = os.path.join(root, section)
    if not os.path.isdir(folder):
        return {}
    return {n: os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if os.path.isdir(os.path.join(folder, n)) and finished(os.path.join(folder, n))}


def final_eval(recs):
    return [r for r in recs if r["event"] == "eval" and r.get("full_split")][-1]


def start(recs):
    return [r for r in recs if r["event"] == "start"][0]


def train_recs(recs):
    return [r for r in recs if r["event"] == "train"]


def second_half(recs):
    t = train_recs(recs)
    steps = start(recs)["steps"]
    return [r for r in t if r["step"] > steps / 2]


def wall(recs):
    return [r for r in recs if r["event"] == "end"][-1]["elapsed_s"]


def eval_file(run, tag):
    """The numbers of a `moe eval` output line (RUN/eval-TAG.txt) by key."""
    path = os.path.join(run, f"eval-{tag}.txt")
    if not os.path.exists(path):
        return {}
    text = open(path).read().split(":", 1)[-1]
    return {k: float(v) for k, v in re.findall(r"(\S+) (-?[0-9.]+(?:e[-+]?[0-9]+)?)", text)}


def mean_std(values):
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def layer_means(recs, key):
    """Per layer: the mean of `key` over the records (in layer order)."""
    per = {}
    for r in recs:
        for l in r.get("moe", []):
            if l.get(key) is not None:
                per.setdefault(l["name"], []).append(l[key])
    return [statistics.mean(v) for v in per.values()]


def last_layers(recs, key):
    last = train_recs(recs)[-1]
    return [l.get(key) for l in last.get("moe", [])]


def eval_layers(values, prefix):
    return [v for k, v in sorted(values.items()) if k.startswith(prefix + ".")]


def fmt_list(values, digits=2, percent=False):
    if percent:
        return " / ".join(f"{100 * v:.0f}%" for v in values)
    return " / ".join(f"{v:.{digits}f}" for v in values)


def balance(root):
    runs = runs_of(root, "balance")
    if not runs:
        return
    print("| w_importance | w_load | valid BPC | CV(importance) | CV(load) | max/mean load "
          "(mean over layers; worst layer) | wall s |")
    print("|---|---|---|---|---|---|---|")
    paper = ["imp0-load0", "imp0.2-load0", "imp0-load0.2", "imp0.1-load0.1", "imp0.01-load0.01",
             "imp1-load1"]  # the rows of Shazeer et al.'s Table 6
    for name in [n for n in paper if n in runs] + [n for n in runs if n not in paper]:
        run = runs[name]
        recs = records(run)
        m = re.match(r"imp([0-9.]+)-load([0-9.]+)", name)
        half = second_half(recs)
        E = start(recs)["num_experts"]
        # each layer's assignment shares over the second half of training, then max x E
        shares = {}
        for r in half:
            for l in r["moe"]:
                acc = shares.setdefault(l["name"], [0.0] * len(l["share"]))
                for i, s in enumerate(l["share"]):
                    acc[i] += s
        ratios = [max(v) / (sum(v) / E) for v in shares.values()]
        print(f"| {m.group(1)} | {m.group(2)} | {final_eval(recs)['bpc']:.4f} | "
              f"{statistics.mean(layer_means(half, 'cv_importance')):.3f} | "
              f"{statistics.mean(layer_means(half, 'cv')):.3f} | "
              f"{statistics.mean(ratios):.2f}; {max(ratios):.2f} | {wall(recs):.0f} |")
    print()


def scaling(root):
    runs = runs_of(root, "scaling")
    if not runs:
        return
    order = ["dense", "flat-4", "flat-16", "flat-64", "hierarchical-256", "hierarchical-16",
             "hierarchical-16-k2x2", "hierarchical-256-k2x2"]
    print("| model | parameters | active per token | valid BPC | tokens/s | wall s |")
    print("|---|---|---|---|---|---|")
    for name in [n for n in order if n in runs] + [n for n in runs if n not in order]:
        recs = records(runs[name])
        s = start(recs)
        tps = statistics.mean(r["tokens_per_s"] for r in train_recs(recs))
        print(f"| {name} | {s['parameters'] / 1e6:.2f} M | {s['active_parameters'] / 1e6:.2f} M | "
              f"{final_eval(recs)['bpc']:.4f} | {tps:.0f} | {wall(recs):.0f} |")
    print()


def dynmoe(root):
    runs = runs_of(root, "dynmoe")
    if not runs:
        return
    print("| run | valid BPC (arg-max fallback) | valid BPC (zero fallback) | train BPC (last 50 "
          "steps) | experts per token: train / eval | unrouted per layer: train | unrouted per "
          "layer: eval | experts at the end per layer | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    groups = {}
    for name, run in runs.items():
        recs = records(run)
        ev = final_eval(recs)
        last = train_recs(recs)[-1]
        zero = eval_file(run, "zero")
        mean_k_train = statistics.mean(last_layers(recs, "mean_k"))
        mean_k_eval = statistics.mean(eval_layers(ev, "mean_k"))
        unrouted_train = last_layers(recs, "unrouted")
        unrouted_eval = eval_layers(ev, "unrouted")
        active = last_layers(recs, "active_experts")
        top_any = name.startswith("top_any")
        zero_bpc = f"{zero['bpc']:.4f}" if zero else "–"
        print(f"| {name} | {ev['bpc']:.4f} | {zero_bpc} | "
              f"{last['bpc']:.4f} | {mean_k_train:.2f} / {mean_k_eval:.2f} | "
              f"{fmt_list(unrouted_train, percent=True) if top_any else '–'} | "
              f"{fmt_list(unrouted_eval, percent=True) if top_any else '–'} | "
              f"{' / '.join(str(a) for a in active) if top_any else start(recs)['num_experts']} | "
              f"{wall(recs):.0f} |")
        group = re.sub(r"-s[0-9]+$", "", name)
        g = groups.setdefault(group, {"bpc": [], "zero": [], "k": []})
        g["bpc"].append(ev["bpc"])
        g["k"].append(mean_k_eval)
        if zero:
            g["zero"].append(zero["bpc"])
    print()
    print("| model | runs | valid BPC (mean ± std) | zero fallback | experts per token (eval) |")
    print("|---|---|---|---|---|")
    for group, g in groups.items():
        print(f"| {group} | {len(g['bpc'])} | {mean_std(g['bpc'])} | {mean_std(g['zero'])} | "
              f"{statistics.mean(g['k']):.2f} |")
    print()


def hyper(root):
    runs = runs_of(root, "hyper")
    if not runs:
        return
    ks = [1, 2, 4, 8, 16]
    table = {}
    for name, run in runs.items():
        router, seed = re.match(r"(.+)-s([0-9]+)$", name).groups()
        table.setdefault(router, {})[seed] = [eval_file(run, f"k{k}").get("bpc", math.nan)
                                              for k in ks]
    print("| router | seeds | " + " | ".join(f"k = {k}" for k in ks) + " |")
    print("|---|---|" + "---|" * len(ks))
    for router in [r for r in ["smoe", "smoe_dropout", "hyper"] if r in table]:
        seeds = table[router]
        cells = [mean_std([v[i] for v in seeds.values()]) for i in range(len(ks))]
        print(f"| {router} | {len(seeds)} | " + " | ".join(cells) + " |")
    if "hyper" in table and "smoe_dropout" in table:
        common = sorted(set(table["hyper"]) & set(table["smoe_dropout"]))
        wins = [sum(table["hyper"][s][i] < table["smoe_dropout"][s][i] for s in common)
                for i in range(len(ks))]
        print("| HyperRouter below SMoE-Dropout (same seed) | " + str(len(common)) + " | "
              + " | ".join(f"{w}/{len(common)}" for w in wins) + " |")
    print()


def multitask(root):
    runs = runs_of(root, "multitask")
    if not runs:
        return
    print("| correlation | validation MSE task 0 / task 1 | task 0 gate: mean weight per "
          "expert | task 1 gate | total variation between the gates |")
    print("|---|---|---|---|---|")
    for name, run in runs.items():
        recs = records(run)
        ev = final_eval(recs)
        gates = [l["share"] for l in second_half(recs)[-1]["moe"]]
        tv = 0.5 * sum(abs(a - b) for a, b in zip(gates[0], gates[1]))
        print(f"| {name.split('-p')[-1]} | {fmt_list(ev['mse'], 4)} | {fmt_list(gates[0])} | "
              f"{fmt_list(gates[1])} | {tv:.3f} |")
    print()


def demo(root):
    runs = runs_of(root, "demo")
    if runs:
        print("| seed | MoE valid BPC | dense valid BPC | dense − MoE | MoE wall s | dense wall s |")
        print("|---|---|---|---|---|---|")
        diffs = []
        for seed in sorted({re.sub(r"^.*-s", "", n) for n in runs}):
            m, d = runs.get(f"moe-s{seed}"), runs.get(f"dense-s{seed}")
            if not m or not d:
                continue
            rm, rd = records(m), records(d)
            bm, bd = final_eval(rm)["bpc"], final_eval(rd)["bpc"]
            diffs.append(bd - bm)
            print(f"| {seed} | {bm:.4f} | {bd:.4f} | {bd - bm:+.4f} | {wall(rm):.0f} | "
                  f"{wall(rd):.0f} |")
        print(f"| mean ± std | | | {mean_std(diffs)} | | |")
        print()
    earlier = runs_of(root, "demo-4x600")
    if earlier:
        print("The demo as it was (4 blocks, 600 steps): validation BPC")
        print()
        print("| seed | 16 experts | 8 experts | dense |")
        print("|---|---|---|---|")
        for seed in sorted({re.sub(r"^.*-s", "", n) for n in earlier}):
            cells = [earlier.get(f"{m}-s{seed}") for m in ("moe16", "moe8", "dense")]
            print(f"| {seed} | " + " | ".join(f"{final_eval(records(c))['bpc']:.4f}" if c else "–"
                                             for c in cells) + " |")
        print()


SECTIONS = {"balance": balance, "scaling": scaling, "dynmoe": dynmoe, "hyper": hyper,
            "multitask": multitask, "demo": demo}


def main(argv):
    root = argv[1] if len(argv) > 1 else "runs/results"
    names = argv[2:] or list(SECTIONS)
    for n in names:
        if n not in SECTIONS:
            sys.exit(f"results_summary.py: unknown section {n!r}; expected {', '.join(SECTIONS)}")
        if runs_of(root, n):
            print(f"### {n}\n")
            SECTIONS[n](root)


if __name__ == "__main__":
    main(sys.argv)
