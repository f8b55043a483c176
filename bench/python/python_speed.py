#!/usr/bin/env python3
"""The library's SparseMoE from Python against a Mixtral-style eager loop written in Python, in one
process, on the same weights (docs/python.md, shapes of docs/benchmarks.md).

    PYTHONPATH=build/python /usr/bin/python3 bench/python/python_speed.py [--shapes C0,C1] [--reps 7]
        [--threads N]

Both compute softmax top-2 (renormalised over the two) with ReLU experts, fp32; the script first
checks that they agree. Times are medians of --reps runs after one warm-up run.
"""
import argparse
import statistics
import time

import torch

import moe

SHAPES = {  # T, d, d_ff, E, k (docs/benchmarks.md)
    "C0": (2048, 256, 1024, 8, 2),
    "C1": (8192, 512, 2048, 8, 2),
}


class EagerMoE(torch.nn.Module):
    """Mixtral's layer as commonly written in PyTorch: a loop over the experts, each taking its
    tokens by torch.where and adding its weighted output with index_add_."""

    def __init__(self, router_weight, w1, w2, k):
        super().__init__()
        self.router = torch.nn.Parameter(router_weight.detach().clone())
        self.w1 = torch.nn.Parameter(w1.detach().clone())
        self.w2 = torch.nn.Parameter(w2.detach().clone())
        self.k = k

    def forward(self, x):
        probs = torch.softmax(x @ self.router.t(), dim=-1)
        weights, experts = torch.topk(probs, self.k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        out = torch.zeros_like(x)
        for e in range(self.w1.shape[0]):
            token, slot = torch.where(experts == e)
            if token.numel() == 0:
                continue
            h = torch.relu(x[token] @ self.w1[e]) @ self.w2[e]
            out.index_add_(0, token, h * weights[token, slot].unsqueeze(1))
        return out


def median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="C0,C1")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads (torch.set_num_threads); 0: torch's default")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, median of "
          f"{args.reps}")
    print("| shape | pass | library ms | eager loop ms | eager / library | library tokens/s |")
    print("|---|---|---|---|---|---|")
    for name in args.shapes.split(","):
        T, d, h, E, k = SHAPES[name]
        torch.manual_seed(0)
        layer = moe.SparseMoE(d, E, top_k=k, hidden_size=h, router_init_std=1.0,
                              balance_coef=0.0)
        eager = EagerMoE(layer.router.weight, layer.experts.w1, layer.experts.w2, k)
        x = torch.randn(T, d) / d ** 0.5
        with torch.no_grad():
            diff = (layer(x).output - eager(x)).abs().max().item()
        assert diff < 1e-3, f"{name}: the two layers disagree by {diff}"

        def lib_fwd():
            with torch.no_grad():
                layer(x)

        def eager_fwd():
            with torch.no_grad():
                eager(x)

        def lib_fwd_bwd():
            layer(x).output.sum().backward()

        def eager_fwd_bwd():
            eager(x).sum().backward()

        for label, lib, ref in (("fwd", lib_fwd, eager_fwd),
                                ("fwd+bwd", lib_fwd_bwd, eager_fwd_bwd)):
            t_lib = median_ms(lib, args.reps)
            t_ref = median_ms(ref, args.reps)
            print(f"| {name} (T={T}, d={d}, d_ff={h}, E={E}, k={k}) | {label} | {t_lib:.1f} | "
                  f"{t_ref:.1f} | {t_ref / t_lib:.2f} | {T / t_lib * 1e3:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
