"""The fused ``sinkhorn_embeddings`` forward + backward with a frozen teacher (y without gradient, as in
``OTDistillationLoss``) against the same call with both sides differentiated, side by side.

    python -m bench.teacher_grad                  # cpp backend, the distillation shapes, 15 rounds
    python -m bench.teacher_grad --rounds 3       # smoke test

Since issue 21 the backward computes no gradient nobody asked for: with y frozen the kernel skips the Qᵀx GEMM
of the teacher side (one of the three GEMMs of the backward). Shapes: B = 32 sentence pairs of N = M = 48 tokens
(MAFAND's median sentence is about 30 WordPiece tokens, padded batches are wider), d = 384 (MiniLM) and 768
(XLM-R base), cosine cost, eps 0.05, 50 iterations, fp32. Rounds interleave the two contenders; medians with the
20-80% spread of forward + backward; the backward alone is timed too (``*_bwd_ms``). The output CSV goes to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time

import torch

import fastot
from bench.sinkhorn_cpu import cpu_name, git_sha, write_rows


def step(x, y, y_grad: bool, backend: str) -> tuple[float, float]:
    """(forward + backward, backward alone) seconds."""
    xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_(y_grad)
    t0 = time.perf_counter()
    r = fastot.sinkhorn_embeddings(xg, yg, eps=0.05, max_iter=50, backend=backend)
    t1 = time.perf_counter()
    r.transport_cost.sum().backward()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--backend", default="cpp")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be >= 1")
    rows = []
    for d in (384, 768):
        g = torch.Generator().manual_seed(d)
        x, y = torch.randn(32, 48, d, generator=g), torch.randn(32, 48, d, generator=g)
        for y_grad in (True, False):  # warm-up
            step(x, y, y_grad, args.backend)
        times, bwd = {True: [], False: []}, {True: [], False: []}
        for _ in range(args.rounds):
            for y_grad in (True, False):
                total, back = step(x, y, y_grad, args.backend)
                times[y_grad].append(total)
                bwd[y_grad].append(back)
        med = {k: statistics.median(v) for k, v in times.items()}
        med_b = {k: statistics.median(v) for k, v in bwd.items()}
        q = {k: statistics.quantiles(v, n=5) if len(v) > 1 else [v[0]] * 4 for k, v in times.items()}
        rows.append(dict(backend=args.backend, d=d, B=32, N=48, M=48, rounds=args.rounds,
                         both_sides_ms=round(1e3 * med[True], 2), both_p20=round(1e3 * q[True][0], 2),
                         both_p80=round(1e3 * q[True][3], 2), frozen_teacher_ms=round(1e3 * med[False], 2),
                         frozen_p20=round(1e3 * q[False][0], 2), frozen_p80=round(1e3 * q[False][3], 2),
                         speedup=round(med[True] / med[False], 3), both_bwd_ms=round(1e3 * med_b[True], 2),
                         frozen_bwd_ms=round(1e3 * med_b[False], 2), bwd_speedup=round(med_b[True] / med_b[False], 3),
                         threads=torch.get_num_threads(),
                         cpu=cpu_name(), git=git_sha(), date=datetime.date.today().isoformat()))
        print(rows[-1])
    write_rows(rows, args.out, "teacher-grad")


if __name__ == "__main__":
    main()
