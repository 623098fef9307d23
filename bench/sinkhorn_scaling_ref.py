"""The torch references side by side: log-domain (``fastot.reference.sinkhorn``) against the stabilized scaling
iteration with absorption (``fastot.reference.sinkhorn_scaling``, issue 24's oracle), one thread, fp32, 100
iterations, costs in [0, 2], uniform weights. Interleaved rounds, medians; also each one's float32 distance to
the float64 log-domain potentials and the scaling run's absorptions per problem.

    python -m bench.sinkhorn_scaling_ref [--rounds 5]

Only the references: the cpp and Triton kernels of ``method="scaling"`` are issue 24's to write.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fastot.reference import sinkhorn as R
from fastot.reference.sinkhorn_scaling import sinkhorn_fwd_scaling

CELLS = ((64, 64, 0.05), (64, 64, 0.01), (256, 128, 0.05), (64, 64, 0.002))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    print("| B | N=M | eps | log ms | scaling ms | log / scaling | fp32 err log | fp32 err scaling | absorptions |")
    print("|---|---|---|---|---|---|---|---|---|")
    for B, N, eps in CELLS:
        g = torch.Generator().manual_seed(0)
        C = torch.rand(B, N, N, generator=g) * 2
        a = torch.full((B, N), 1.0 / N)
        ref = R.sinkhorn_fwd(C.double(), a.double(), a.double(), eps, 100)
        times = {"log": [], "scaling": []}
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            lg = R.sinkhorn_fwd(C, a, a, eps, 100)
            t1 = time.perf_counter()
            sc = sinkhorn_fwd_scaling(C, a, a, eps, 100, return_stats=True)
            t2 = time.perf_counter()
            times["log"].append(t1 - t0)
            times["scaling"].append(t2 - t1)
        err = lambda out: max((out[i].double() - ref[i]).abs().max().item() for i in (0, 1))  # noqa: E731
        tl, ts = statistics.median(times["log"]), statistics.median(times["scaling"])
        print(f"| {B} | {N} | {eps} | {tl * 1e3:.1f} | {ts * 1e3:.1f} | {tl / ts:.2f} | {err(lg):.1e} | "
              f"{err(sc):.1e} | {sc[4]['absorptions'].float().mean():.1f} |")


if __name__ == "__main__":
    main()
