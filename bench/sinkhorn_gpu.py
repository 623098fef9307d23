"""Sinkhorn on a CUDA GPU, side by side (the GPU targets of issues 3 and 4): fastot cuda and triton vs the torch
reference in eager mode and under torch.compile, and flash-sinkhorn (the published fused-Triton Sinkhorn, one
call per problem) where it is installed, on the same problems in one run; the same for a large problem
(B=8, N=M=512), which the cuda backend solves with its streaming kernels; then sinkhorn_embeddings at d=768 in
bf16, fused (cuda and triton) vs materialise-then-solve, forward + backward, with peak memory.
NOT YET RUN: written without a GPU.

    python -m bench.sinkhorn_gpu --out results.csv          # B=256, N=M=128, fp32, 100 iterations
    python -m bench.sinkhorn_gpu --sanitize                 # one small solve per path, for compute-sanitizer

Timing: CUDA events after warm-up (triton.testing.do_bench when triton is importable), median and the
20-80% spread. Derived: exp/s = 2 B N M iterations / time, and its fraction of the SFU exp2 bound
(16 ex2 per clock per SM on sm_80/sm_90).
"""

from __future__ import annotations

import argparse
import csv
import statistics

import torch

import fastot

from . import peers
from .run import exp_bound


def _bench(fn, reps: int = 50) -> tuple[float, float, float]:
    try:
        import triton.testing  # noqa: PLC0415

        q = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], rep=200)
        return q[0], q[1], q[2]
    except ImportError:
        for _ in range(5):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e))
        qs = statistics.quantiles(times, n=5)
        return statistics.median(times), qs[0], qs[-1]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--sanitize", action="store_true", help="one small run of each CUDA path, no timing")
    ap.add_argument("--B", type=int, default=256)
    ap.add_argument("--N", type=int, default=128)
    args = ap.parse_args(argv)
    dev = torch.device("cuda")
    if args.sanitize:  # exercise on-chip and streaming forward, plan, sums, fused embeddings fwd + bwd
        backends = [be for be in ("cuda", "triton") if be in fastot.available_backends("sinkhorn", "cuda")]
        for be in backends:
            for B, N, M in [(3, 17, 33), (2, 300, 260)]:
                C = torch.rand(B, N, M, device=dev)
                a = torch.rand(B, N, device=dev)
                a[0, N // 2:] = 0
                r = fastot.sinkhorn(C, a / a.sum(1, keepdim=True), eps=0.05, max_iter=20, tol=1e-6, backend=be)
                r.plan()
                for dt in (torch.bfloat16, torch.float32, torch.float64):  # tensor cores (native, 3xTF32), fp64
                    x = torch.randn(B, N, 40, device=dev, dtype=dt, requires_grad=True)
                    y = torch.randn(B, M, 40, device=dev, dtype=dt, requires_grad=True)
                    r = fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=10, backend=be)
                    r.transport_cost.sum().backward()
                torch.cuda.synchronize()
        print("sanitize run done:", ", ".join(backends))
        return 0
    iters, eps = 100, 0.05
    rows = _solvers(dev, args.B, args.N, iters, eps)
    rows.extend(_solvers(dev, 8, 512, iters, eps))  # streaming on the cuda backend
    rows.extend(_flash_sinkhorn(args.B, args.N, iters, eps))
    rows.extend(_embeddings(args.B, args.N, 768, iters, 0.1))
    if args.out:
        with open(args.out, "w", newline="", encoding="utf-8") as fh:
            fields = list(dict.fromkeys(k for row in rows for k in row))
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    return 0


def _solvers(dev, B, N, iters, eps):
    """fastot cuda and triton vs the torch reference (eager, torch.compile) on one [B,N,N] fp32 batch."""
    C = torch.rand(B, N, N, device=dev) * 2
    rows = []
    ref = fastot.sinkhorn(C.double(), eps=eps, max_iter=iters, backend="torch").f
    compiled = torch.compile(lambda c: fastot.sinkhorn(c, eps=eps, max_iter=iters, backend="torch").f)
    here = fastot.available_backends("sinkhorn", "cuda")
    cands = {}  # the first is the base of the ratios: fastot cuda, else fastot triton, else the reference
    for be in ("cuda", "triton"):
        if be in here:
            cands[f"fastot {be}"] = lambda be=be: fastot.sinkhorn(C, eps=eps, max_iter=iters, backend=be).f
        else:
            print(f"fastot {be}: not available here, skipped")
    cands["torch reference (eager)"] = lambda: fastot.sinkhorn(C, eps=eps, max_iter=iters, backend="torch").f
    cands["torch reference (torch.compile)"] = lambda: compiled(C)
    base = None
    for name, fn in cands.items():
        err = (fn().double() - ref).abs().max().item()
        med, p20, p80 = _bench(fn)
        base = base or med
        exps = 2 * B * N * N * iters / (med * 1e-3)
        rows.append({"contender": name, "B": B, "N": N, "iters": iters, "median_ms": med, "p20_ms": p20,
                     "p80_ms": p80, "slower_than_first": med / base, "f_max_abs_err_vs_fp64": err,
                     "exp_per_s": exps, "fraction_of_ex2_bound": exps / exp_bound(dev),
                     "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda})
        print(f"B={B} N={N} {name:34s} {med:9.3f} ms [{p20:.3f}-{p80:.3f}]  x{med / base:6.1f}  err {err:.1e}  "
              f"{exps:.2e} exp/s ({exps / exp_bound(dev):.0%} of ex2 bound)")
    return rows


def _flash_sinkhorn(B, N, iters, eps):
    """flash-sinkhorn on the same batch of point clouds (sqeuclidean), as ``bench.run`` drives it
    (:func:`bench.peers.flash_sinkhorn_embeddings`), against fastot triton's fused sqeuclidean solve. Reported
    as missing when it is not installed or refuses the call."""
    x = torch.randn(B, N, 64, device="cuda")
    y = torch.randn(B, N, 64, device="cuda")
    c = peers.flash_sinkhorn_embeddings(x, y, eps, iters)
    if isinstance(c, peers.Missing):
        print(f"flash-sinkhorn: missing ({c.reason})")
        return [{"contender": "flash-sinkhorn", "B": B, "N": N, "iters": iters, "missing": c.reason}]
    ours = lambda: fastot.sinkhorn_embeddings(x, y, cost="sqeuclidean", eps=eps, max_iter=iters,  # noqa: E731
                                              backend="triton").value
    rows = []
    for name, fn in (("fastot triton (sqeuclidean, fused)", ours), (c.name, c.fwd)):
        med, p20, p80 = _bench(fn)
        rows.append({"contender": name, "B": B, "N": N, "iters": iters, "median_ms": med, "p20_ms": p20,
                     "p80_ms": p80, "gpu": torch.cuda.get_device_name()})
        print(f"{name:34s} {med:9.3f} ms [{p20:.3f}-{p80:.3f}]")
    return rows


def _embeddings(B, N, d, iters, eps):
    """Forward + backward of transport_cost, bf16 embeddings: fused (cuda, triton) vs materialise-then-solve with
    the same backend's solver."""
    here = [be for be in ("cuda", "triton") if be in fastot.available_backends("sinkhorn", "cuda")]
    x = torch.randn(B, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(B, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def fused(be):
        fastot.sinkhorn_embeddings(x, y, eps=eps, max_iter=iters, backend=be).transport_cost.sum().backward()

    def materialised(be):
        C = fastot.pairwise_cost(x, y)
        fastot.sinkhorn(C, eps=eps, max_iter=iters, backend=be).transport_cost.sum().backward()

    rows = []
    cands = [(f"embeddings {kind} ({be})", (lambda fn=fn, be=be: fn(be))) for be in here
             for kind, fn in (("fused", fused), ("materialised + solve", materialised))]
    for name, fn in cands:
        fn()
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
        med, p20, p80 = _bench(fn)
        rows.append({"contender": name, "B": B, "N": N, "d": d, "iters": iters, "median_ms": med, "p20_ms": p20,
                     "p80_ms": p80, "peak_extra_MiB": peak / 2**20, "gpu": torch.cuda.get_device_name()})
        print(f"{name:40s} {med:9.3f} ms [{p20:.3f}-{p80:.3f}]  peak +{peak / 2**20:.0f} MiB "
              f"(one [B,N,N] fp32 = {B * N * N * 4 / 2**20:.0f} MiB)")
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
