"""What the per-problem input checks (``SinkhornResult.status``, issue 21) cost next to the solve they guard.

    python -m bench.status_overhead              # cpp backend, 15 rounds
    python -m bench.status_overhead --rounds 3   # smoke test

For each shape: the whole public call (checks + cpp solve, 100 iterations, fp32) and the status pass alone, on
clean inputs (the fast path on CPU: two reductions over the cost, or over x and y) and on inputs with one NaN in a
padded entry (the full, sync-free pass that CUDA and torch.compile always take). Rounds interleave the calls;
medians. The output CSV goes to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import statistics
import time

import torch

import fastot
from bench.sinkhorn_cpu import cpu_name, git_sha, write_rows

S = importlib.import_module("fastot.sinkhorn")  # the module (fastot.sinkhorn is also the function)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    rows = []
    for B, N, d in ((64, 64, 384), (256, 128, 384)):
        g = torch.Generator().manual_seed(B)
        C = torch.rand(B, N, N, generator=g)
        a = torch.full((B, N), 1.0 / N)
        a[:, -1] = 0  # one padded point per problem, so that the dirty input's NaN sits in padding
        a = a / a.sum(1, keepdim=True)
        b = torch.full((B, N), 1.0 / N)
        x, y = torch.randn(B, N, d, generator=g), torch.randn(B, N, d, generator=g)
        xm = torch.ones(B, N, dtype=torch.bool)
        xm[:, -1] = False
        dirty_C, dirty_x = C.clone(), x.clone()
        dirty_C[:, -1, 0] = float("nan")
        dirty_x[:, -1, 0] = float("nan")
        calls = {
            "sinkhorn": lambda: fastot.sinkhorn(C, a, b, eps=0.05, max_iter=100, backend="cpp"),
            "status clean": lambda: S._cost_status(C, a, b, 0.05, None, None),
            "status padding NaN": lambda: S._cost_status(dirty_C, a, b, 0.05, None, None),
            "sinkhorn_embeddings": lambda: fastot.sinkhorn_embeddings(x, y, xm, eps=0.05, max_iter=100, backend="cpp"),
            "emb status clean": lambda: S._embeddings_status(x, y, a, b, 0, 0.05, None, None),
            "emb status padding NaN": lambda: S._embeddings_status(dirty_x, y, a, b, 0, 0.05, None, None),
        }
        for fn in calls.values():
            fn()
        times = {k: [] for k in calls}
        for _ in range(args.rounds):
            for k, fn in calls.items():
                times[k].append(timed(fn))
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        row = dict(B=B, N=N, M=N, d=d, rounds=args.rounds, **{f"{k.replace(' ', '_')}_ms": round(v, 3)
                                                               for k, v in med.items()})
        row.update(clean_share=round(med["status clean"] / med["sinkhorn"], 4),
                   full_share=round(med["status padding NaN"] / med["sinkhorn"], 4),
                   emb_clean_share=round(med["emb status clean"] / med["sinkhorn_embeddings"], 4),
                   emb_full_share=round(med["emb status padding NaN"] / med["sinkhorn_embeddings"], 4),
                   threads=torch.get_num_threads(), cpu=cpu_name(), git=git_sha(),
                   date=datetime.date.today().isoformat())
        rows.append(row)
        print(row)
    write_rows(rows, args.out, "status-overhead")


if __name__ == "__main__":
    main()
