"""Sinkhorn on CPU, side by side: fastot cpp vs the torch reference vs POT, on the same problems, in one run.

    python -m bench.sinkhorn_cpu                 # the sizes of issue 3; writes bench/results/<machine>-<date>-sinkhorn_cpu.csv
    python -m bench.sinkhorn_cpu --quick         # tiny sizes, one round (smoke test)
    python -m bench.sinkhorn_cpu --markdown      # also print the table as Markdown (for bench/RESULTS.md)

Problems: costs uniform in [0, 2], eps = 0.05, uniform weights, fp32, a fixed number of iterations (100)
for everyone (POT: method="log_sinkhorn", tol=0 so it never stops early). Timing: rounds interleave the
contenders (each round runs every contender once, in turn) so that load on this shared machine hits them
alike; medians with the 20-80% spread. Error: max |P - P_fp64| of the plan against the float64 reference.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch

import fastot
from fastot.reference import sinkhorn as ref

RESULTS = os.path.join(os.path.dirname(__file__), "results")


def git_sha() -> str:
    """The short sha of HEAD, with "+dirty" when tracked files differ from it."""
    here = os.path.dirname(__file__)
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, cwd=here, timeout=10).stdout.strip()
        return (sha + ("+dirty" if dirty else "")) if sha else "unknown"
    except OSError:
        return "unknown"


def write_rows(rows: list[dict], out: str | None, name: str) -> str:
    """Write ``rows`` as CSV to ``out`` (default ``bench/results/vm-<date>-<name>.csv``); returns the path."""
    out = out or os.path.join("bench", "results", f"vm-{datetime.date.today().isoformat()}-{name}.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {out}")
    return out


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo, or the platform's processor string."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def contenders(eps: float, iters: int) -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    """name -> fn(cost) returning the plan [B,N,M] (computed after the timed solve, see run())."""
    out: dict[str, Callable] = {}
    if "cpp" in fastot.available_backends("sinkhorn"):
        out["fastot cpp"] = lambda C: fastot.sinkhorn(C, eps=eps, max_iter=iters, backend="cpp")
    out["fastot torch (reference, eager)"] = lambda C: fastot.sinkhorn(C, eps=eps, max_iter=iters, backend="torch")
    try:
        import ot.batch  # noqa: PLC0415

        out["POT ot.batch log_sinkhorn"] = lambda C: ot.batch.solve_batch(
            C, reg=eps, max_iter=iters, tol=0.0, method="log_sinkhorn", reg_type="kl", grad="detach")
    except ImportError as exc:
        print(f"POT missing: {exc}")
    return out


def _plan(name: str, res) -> torch.Tensor:
    return torch.as_tensor(res.plan) if name.startswith("POT") else res.plan()


def run(sizes, rounds: int, eps: float, iters: int, time_budget_s: float) -> list[dict]:
    rows = []
    for B, N in sizes:
        g = torch.Generator().manual_seed(B * 1000 + N)
        C = torch.rand(B, N, N, generator=g) * 2
        f64, g64, _, _ = ref.sinkhorn_fwd(C.double(), torch.full((B, N), 1.0 / N, dtype=torch.float64),
                                          torch.full((B, N), 1.0 / N, dtype=torch.float64), eps, iters)
        u = torch.full((B, N), 1.0 / N, dtype=torch.float64)
        P64 = ref.sinkhorn_plan(C.double(), u, u, f64, g64, eps)
        cands = contenders(eps, iters)
        times: dict[str, list[float]] = {k: [] for k in cands}
        errs: dict[str, float] = {}
        for name, fn in cands.items():  # warm-up, and the accuracy check
            errs[name] = (_plan(name, fn(C)).double() - P64).abs().max().item()
        start = time.perf_counter()
        for r in range(rounds):
            for name, fn in cands.items():
                # slow contenders get fewer rounds once the budget is spent (at least 3)
                if r >= 3 and time.perf_counter() - start > time_budget_s and name != "fastot cpp":
                    continue
                t0 = time.perf_counter()
                fn(C)
                times[name].append(time.perf_counter() - t0)
        base = statistics.median(times["fastot cpp"]) if "fastot cpp" in times else None
        for name in cands:
            ts = sorted(times[name])
            med = statistics.median(ts)
            q = statistics.quantiles(ts, n=5) if len(ts) >= 2 else [med, med, med, med]
            rows.append({
                "op": "sinkhorn", "B": B, "N": N, "M": N, "dtype": "fp32", "iters": iters, "eps": eps,
                "contender": name, "median_ms": 1e3 * med, "p20_ms": 1e3 * q[0], "p80_ms": 1e3 * q[-1],
                "runs": len(ts), "plan_max_abs_err_vs_fp64": errs[name],
                "speedup_of_fastot_cpp": (med / base) if base else float("nan"),
                "problems_iters_per_s": B * iters / med, "exp_per_s": 2 * B * N * N * iters / med,
            })
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one round (smoke test)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--out", default=None, help="CSV path (default bench/results/<machine>-<date>-sinkhorn_cpu.csv)")
    args = p.parse_args(argv)
    sizes = [(8, 16)] if args.quick else [(64, 64), (256, 128)]
    rows = run(sizes, 1 if args.quick else args.rounds, 0.05, 10 if args.quick else 100,
               time_budget_s=5 if args.quick else 120)
    stamp = {
        "machine": platform.node(), "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "cpu_isa": torch.ops.fastot.cpu_isa() if "cpp" in fastot.available_backends("sinkhorn") else "n/a",
        "torch": torch.__version__, "fastot_sha": git_sha(), "date": datetime.date.today().isoformat(),
    }
    for r in rows:
        r.update(stamp)
    out = args.out or os.path.join(RESULTS, f"{platform.node()}-{stamp['date']}-sinkhorn_cpu{'-quick' if args.quick else ''}.csv")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{stamp['cpu']}, {stamp['threads']} threads, ISA {stamp['cpu_isa']}, torch {stamp['torch']}, fastot {stamp['fastot_sha']}")
    head = "| size | contender | median ms [p20-p80] | fastot cpp is faster by | plan max abs err vs fp64 |"
    lines = [head, "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| B={r['B']} N=M={r['N']} | {r['contender']} | {r['median_ms']:.1f} [{r['p20_ms']:.1f}-{r['p80_ms']:.1f}] "
                     f"| {r['speedup_of_fastot_cpp']:.1f}x | {r['plan_max_abs_err_vs_fp64']:.1e} |")
    print("\n".join(lines) if args.markdown else "\n".join(lines[2:]).replace("|", " "))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
