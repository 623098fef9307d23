"""Data-parallel scaling of the training loops on this machine: steps/s at world size 1 and 2 under torchrun
(gloo on CPU), and the parallel efficiency.

    python -m bench.scaling                        # MiniLM distill + rerank on MAFAND en-swa, 1 and 2 processes
    python -m bench.scaling --model tiny --steps 4 # smoke test

Each configuration runs the README's command as written (``torchrun --standalone --nproc-per-node W -m fastot
distill|rerank ...``) in a fresh output folder, with the same global micro-batch at every world size; the time of
a step is read from the run's log.jsonl (``pairs_per_s``: the time between two optimizer steps, training only,
as the loop measures it). Every configuration trains the same sequence of batches, whose lengths vary (length
grouping), so the rate compares the mean time of the same steps (those after the first ``--skip``); the median
and the 20-80% spread of the step times are reported beside it.

Configurations: ``W=1 x 1 thread``, ``W=1 x 2 threads`` (one process using both cores) and ``W=2 x 1 thread``
(OMP_NUM_THREADS per process). Parallel efficiency = steps/s(W=2) / (2 x steps/s(W=1 x 1 thread)): the speedup
per process of the same per-process resources; ``vs 2 threads`` compares with one process on both cores, which
is what the processes compete with on a CPU machine. On GPUs the per-process resources are a whole device: only
the efficiency on GPUs measures that, and none was lent for this project yet.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from bench.sinkhorn_cpu import cpu_name, write_rows

CONFIGS = [(1, 1), (1, 2), (2, 1)]  # (world size, threads per process)
FSDP = (2, 1, "fsdp")  # --fsdp adds: 2 processes x 1 thread with the student sharded


def data_dir() -> tuple[str, str]:
    """MAFAND en-swa when the shared data is there, else the built-in synthetic sample (written to a temp dir)."""
    from fastot.experiments.domains import data_root  # noqa: PLC0415

    try:
        path = os.path.join(data_root(None), "mafand", "en-swa")
        if os.path.exists(os.path.join(path, "train.swa")):
            return path, "swa"
    except (FileNotFoundError, ValueError):
        pass
    from fastot.experiments import synthetic  # noqa: PLC0415

    path = os.path.join(tempfile.mkdtemp(prefix="fastot-scaling-"), "data")
    synthetic.write_sample(path)
    return path, synthetic.LANG


def command(loop: str, world: int, bitext: str, lang: str, out: str, args, fsdp: bool = False) -> list[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
           "-m", "fastot", loop, "--bitext", bitext, "--lang", lang, "--output-dir", out, "--max-steps",
           str(args.steps), "--save-every", "0", "--no-progress", "--max-length", str(args.max_length)]
    cmd += ["--fsdp"] if fsdp else []
    if loop == "distill":
        return cmd + ["--teacher", args.model, "--batch-size", str(args.distill_batch), "--eval-split", "none",
                      "--max-train-pairs", str(args.distill_batch * (args.steps + 1))]
    return cmd + ["--model", args.model, "--batch-size", str(args.rerank_batch), "--p", "0.5",
                  "--max-train-queries", str(args.rerank_batch * (args.steps + 1)), "--negatives", "random"]


def run_one(loop: str, world: int, threads: int, bitext: str, lang: str, args, fsdp: bool = False) -> dict:
    out = tempfile.mkdtemp(prefix=f"fastot-scaling-{loop}-")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = subprocess.run(command(loop, world, bitext, lang, os.path.join(out, "run"), args, fsdp), env=env,
                          capture_output=True, text=True, start_new_session=True, timeout=args.timeout)
    wall = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{loop} W={world}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    with open(os.path.join(out, "run", "log.jsonl"), encoding="utf-8") as fh:
        steps = [json.loads(line) for line in fh if '"loss"' in line]
    shutil.rmtree(out, ignore_errors=True)
    batch = args.distill_batch if loop == "distill" else args.rerank_batch * (1 + 4)  # pairs per micro-batch
    secs = [batch / r["pairs_per_s"] for r in steps[args.skip:] if r.get("pairs_per_s")]
    mean, med = statistics.fmean(secs), statistics.median(secs)
    q = statistics.quantiles(secs, n=5) if len(secs) >= 2 else [med] * 4
    return {"loop": loop, "world_size": world, "threads_per_process": threads, "fsdp": fsdp, "steps_timed": len(secs),
            "s_per_step": round(mean, 4), "median_s": round(med, 4), "p20": round(q[0], 4), "p80": round(q[-1], 4),
            "steps_per_s": round(1 / mean, 4), "wall_s": round(wall, 1)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minilm", help="minilm (default) or tiny")
    ap.add_argument("--steps", type=int, default=10, help="optimizer steps per run (default 10)")
    ap.add_argument("--skip", type=int, default=2, help="first steps left out of the median (default 2)")
    ap.add_argument("--distill-batch", type=int, default=16, help="global micro-batch of pairs (default 16)")
    ap.add_argument("--rerank-batch", type=int, default=4, help="global micro-batch of queries (default 4, x5 pairs)")
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--loops", default="distill,rerank")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeats", type=int, default=1, help="run every configuration this many times, interleaved")
    ap.add_argument("--fsdp", action="store_true", help="also 2 processes with --fsdp (the student sharded)")
    args = ap.parse_args(argv)
    bitext, lang = data_dir()
    stamp = {"device": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "python":
             platform.python_version(), "data": os.path.basename(os.path.dirname(bitext)) + "/" +
             os.path.basename(bitext), "model": args.model, "max_length": args.max_length}
    rows = []
    for loop in [x.strip() for x in args.loops.split(",") if x.strip()]:
        configs = [(w, t, "") for w, t in CONFIGS] + ([FSDP] if args.fsdp else [])
        runs = {c: [] for c in configs}
        for rep in range(args.repeats):  # interleaved: a slow spell of the shared machine hits every configuration
            for world, threads, kind in configs:
                r = run_one(loop, world, threads, bitext, lang, args, fsdp=kind == "fsdp")
                runs[(world, threads, kind)].append(r)
                print(f"{loop:8s} run {rep + 1}: W={world} x {threads} thread(s){' fsdp' if kind else ''}: "
                      f"{r['s_per_step']:.3f} s/step (mean; median {r['median_s']:.3f} [{r['p20']:.3f}, "
                      f"{r['p80']:.3f}])", flush=True)
        res = {}
        for c, rs in runs.items():  # the run with the median mean step time stands for the configuration
            res[c] = {**sorted(rs, key=lambda r: r["s_per_step"])[len(rs) // 2], "repeats": len(rs),
                      "s_per_step_runs": " ".join(f"{r['s_per_step']:.3f}" for r in rs)}
        one, two_threads, two = res[(1, 1, "")], res[(1, 2, "")], res[(2, 1, "")]
        for r in res.values():
            r["efficiency_vs_1x1"] = round(r["steps_per_s"] / (r["world_size"] * r["threads_per_process"]
                                                              * one["steps_per_s"]), 3)
            r["speedup_vs_1x2"] = round(r["steps_per_s"] / two_threads["steps_per_s"], 3)
            rows.append({**stamp, "global_batch": args.distill_batch if loop == "distill" else args.rerank_batch,
                         **r})
        print(f"{loop}: parallel efficiency W=2 {two['efficiency_vs_1x1']:.2f} (vs one single-thread process); "
              f"speedup over one process on both cores {two['speedup_vs_1x2']:.2f}x")
    write_rows(rows, args.out, "scaling")


if __name__ == "__main__":
    main()
