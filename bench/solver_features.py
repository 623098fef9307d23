"""Issue 25's measured effects on real bitext: warm starts across training steps, eps-scaling at small eps, and
what the debiased divergence costs.

    python -m bench.solver_features                 # MiniLM on B = 32 MAFAND en-swa pairs, 8 training steps
    python -m bench.solver_features --model tiny --B 4 --steps 3    # smoke test

Workload (as ``bench.distill_step``): B (English, Swahili) pairs from MAFAND en-swa train (generated word salad
when the data is absent), MiniLM's WordPiece, at most 128 tokens; teacher = the pretrained MiniLM-L6 on English,
student = a copy on Swahili, trained with ``OTDistillationLoss`` (cosine, eps 0.05, 50 iterations) and AdamW
(lr 2e-5) on that one batch for ``--steps`` steps. The solves below use the token states of each step, cosine cost,
uniform weights on non-special tokens, the cpp backend (fp32), tol 1e-4 on the L1 marginal error:

- warm starts: iterations to tol at each step from zero potentials (cold) and from the previous step's potentials
  (warm), and the time of each solve (median of 5);
- eps-scaling: at eps 0.05 ... 0.002 (cosine costs lie in [0, 2]), iterations to tol at fixed eps and with
  ``eps_schedule="geometric"`` (from 2, ratio 0.5; the stages' iterations counted) on the first step's states;
- divergence: time of ``sinkhorn_embeddings`` (one problem per pair) and ``sinkhorn_divergence`` (three), forward
  + backward, 50 iterations, median of 5.

Writes ``bench/results/<machine>-<date>-solver-features.{csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import time

import torch

import fastot
from fastot.train import load_encoder, load_tokenizer

from .distill_step import _pairs
from .sinkhorn_cpu import RESULTS, cpu_name, git_sha

EPS, TOL, MAX_LENGTH = 0.05, 1e-4, 128


def _median_ms(fn, rounds: int = 5) -> float:
    fn()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def _states(model: str, B: int, steps: int, seed: int = 0):
    """[(student states, student mask, teacher states, teacher mask)] of each training step (detached)."""
    torch.manual_seed(seed)
    en, sw, source = _pairs(B)
    tok = load_tokenizer(model)
    teacher = load_encoder(model).eval().requires_grad_(False)
    student = load_encoder(model).train()
    opt = torch.optim.AdamW(student.parameters(), lr=2e-5)
    enc_t = tok(en, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    enc_s = tok(sw, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    mt = fastot.content_mask(enc_t["input_ids"], enc_t["attention_mask"], tok.all_special_ids)
    ms = fastot.content_mask(enc_s["input_ids"], enc_s["attention_mask"], tok.all_special_ids)
    with torch.no_grad():
        yt = teacher(**enc_t).last_hidden_state
    crit = fastot.OTDistillationLoss(eps=EPS, max_iter=50, backend="cpp")
    out = []
    for _ in range(steps):
        xs = student(**enc_s).last_hidden_state
        out.append((xs.detach().clone(), ms, yt, mt))
        loss = crit(xs, ms, yt, mt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return out, source


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="encoder (default: the packaged MiniLM-L6; 'tiny' for a smoke test)")
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    states, source = _states(args.model, args.B, args.steps)
    rows = []
    solve = dict(cost="cosine", tol=TOL, max_iter=20000, backend="cpp")

    prev = None
    for step, (xs, ms, yt, mt) in enumerate(states):
        cold = fastot.sinkhorn_embeddings(xs, yt, ms, mt, eps=EPS, **solve)
        row = dict(kind="warm_start", step=step, eps=EPS, iters_cold=float(cold.n_iter.float().mean()),
                   ms_cold=_median_ms(lambda: fastot.sinkhorn_embeddings(xs, yt, ms, mt, eps=EPS, **solve)))
        if prev is not None:
            f0, g0 = prev.f, prev.g
            warm = fastot.sinkhorn_embeddings(xs, yt, ms, mt, eps=EPS, f0=f0, g0=g0, **solve)
            row.update(iters_warm=float(warm.n_iter.float().mean()),
                       ms_warm=_median_ms(lambda: fastot.sinkhorn_embeddings(xs, yt, ms, mt, eps=EPS, f0=f0, g0=g0,
                                                                              **solve)),
                       value_diff=float((warm.value - cold.value).abs().max()))
        rows.append(row)
        prev = cold

    xs, ms, yt, mt = states[0]
    for eps in (0.05, 0.02, 0.01, 0.005, 0.002):
        fixed = fastot.sinkhorn_embeddings(xs, yt, ms, mt, eps=eps, **solve)
        annealed = fastot.sinkhorn_embeddings(xs, yt, ms, mt, eps=eps, eps_schedule="geometric", **solve)
        rows.append(dict(kind="eps_schedule", step=0, eps=eps, iters_cold=float(fixed.n_iter.float().mean()),
                         iters_warm=float(annealed.n_iter.float().mean()),
                         ms_cold=_median_ms(lambda e=eps: fastot.sinkhorn_embeddings(xs, yt, ms, mt, eps=e, **solve)),
                         ms_warm=_median_ms(lambda e=eps: fastot.sinkhorn_embeddings(
                             xs, yt, ms, mt, eps=e, eps_schedule="geometric", **solve)),
                         value_diff=float((annealed.value - fixed.value).abs().max()),
                         converged=f"{int((fixed.err < TOL).sum())}/{int((annealed.err < TOL).sum())}"))

    def plain():
        x = xs.clone().requires_grad_()
        fastot.sinkhorn_embeddings(x, yt, ms, mt, eps=EPS, max_iter=50, backend="cpp").value.sum().backward()

    def debiased():
        x = xs.clone().requires_grad_()
        fastot.sinkhorn_divergence(x, yt, ms, mt, eps=EPS, max_iter=50, backend="cpp").value.sum().backward()

    div = fastot.sinkhorn_divergence(xs, yt, ms, mt, eps=EPS, max_iter=50, backend="cpp")
    rows.append(dict(kind="divergence", step=0, eps=EPS, ms_cold=_median_ms(plain), ms_warm=_median_ms(debiased),
                     iters_cold=50.0, iters_warm=float(div.n_iter[1:].float().mean()),
                     value_diff=float(div.value.min())))

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"vm-{datetime.date.today().isoformat()}-solver-features")
    keys = ["kind", "step", "eps", "iters_cold", "iters_warm", "ms_cold", "ms_warm", "value_diff", "converged"]
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in keys})
    stamp = (f"{cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; fastot {git_sha()}; "
             f"{platform.python_version()}; data: {source}; model: {args.model or 'MiniLM-L6'}; B {args.B}")
    lines = [f"### `python -m bench.solver_features` — {datetime.date.today().isoformat()}", "", stamp, "",
             "#### Warm starts across training steps (cosine, eps 0.05, tol 1e-4, cpp fp32)", "",
             "| step | iterations cold | iterations warm | cold / warm | ms cold | ms warm | max value diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "warm_start":
            if "iters_warm" in r:
                lines.append(f"| {r['step']} | {r['iters_cold']:.1f} | {r['iters_warm']:.1f} | "
                             f"{r['iters_cold'] / max(r['iters_warm'], 1e-9):.2f}× | {r['ms_cold']:.1f} | "
                             f"{r['ms_warm']:.1f} | {r['value_diff']:.1e} |")
            else:
                lines.append(f"| {r['step']} | {r['iters_cold']:.1f} | — | — | {r['ms_cold']:.1f} | — | — |")
    lines += ["", "#### eps-scaling (first step's states; iterations include the stages)", "",
              "| eps | iterations fixed | iterations geometric | fixed / geometric | ms fixed | ms geometric | "
              "converged fixed / geometric | max value diff |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "eps_schedule":
            lines.append(f"| {r['eps']} | {r['iters_cold']:.1f} | {r['iters_warm']:.1f} | "
                         f"{r['iters_cold'] / r['iters_warm']:.2f}× | {r['ms_cold']:.1f} | {r['ms_warm']:.1f} | "
                         f"{r['converged']} of {args.B} | {r['value_diff']:.1e} |")
    d = next(r for r in rows if r["kind"] == "divergence")
    lines += ["", "#### Debiased divergence (eps 0.05, 50 iterations, forward + backward)", "",
              f"`sinkhorn_embeddings` {d['ms_cold']:.1f} ms, `sinkhorn_divergence` {d['ms_warm']:.1f} ms "
              f"({d['ms_warm'] / d['ms_cold']:.2f}×); the self-problems' symmetric steps: {d['iters_warm']:.1f} "
              f"on average; smallest divergence {d['value_diff']:.2e}.", ""]
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
