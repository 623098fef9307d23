"""Packed (varlen) against padded input on real bitext batches: what padding costs ``sinkhorn_embeddings``.

    python -m bench.varlen                      # MiniLM, 6 batches of 32 MAFAND en-swa pairs, cpp fp32
    python -m bench.varlen --model tiny --batches 1 --B 4 --rounds 2     # smoke test

Workload: ``--batches`` batches of B (English, Swahili) pairs drawn at random (seed 0) from MAFAND en-swa train
(generated word salad when the data is absent), tokenized by MiniLM's WordPiece (at most 128 tokens), padded two
ways: to the batch's longest sentence (``padding=True``) and to 128 (``padding="max_length"``, the fixed shape many
training scripts use). Token states: the pretrained MiniLM-L6 (teacher on English, student on Swahili; no training).
Real tokens = non-special tokens (``fastot.content_mask``). Three ways to the same OT distillation loss
(``transport_cost``, cosine, eps 0.05, 50 iterations, default method, cpp backend, fp32), forward + backward for the
student states, median of ``--rounds`` interleaved rounds:

- padded: ``sinkhorn_embeddings(x [B, L, d], y, x_mask, y_mask)``;
- packed: ``sinkhorn_embeddings(x [Tx, d], y [Ty, d], cu_seqlens_x=, cu_seqlens_y=)`` (states already packed, as a
  varlen encoder gives them);
- pack + packed: ``fastot.pack_tokens`` on the padded student and teacher states (one gather each, the student's
  backward included) and the packed call: what a user whose encoder returns padded states pays.

Also reported: the share of the padded token-state tensors that is padding, their bytes against the packed ones,
and the largest difference between the padded and packed losses (they must agree to rounding).
Writes ``bench/results/<machine>-<date>-varlen.{csv,md}``.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import random
import statistics
import time

import torch

import fastot
from fastot.train import load_encoder, load_tokenizer

from .distill_step import DATA
from .sinkhorn_cpu import RESULTS, cpu_name, git_sha

EPS, ITERS, MAX_LENGTH = 0.05, 50, 128


def _batches(n: int, B: int, seed: int = 0) -> tuple[list[tuple[list[str], list[str]]], str]:
    if os.path.exists(os.path.join(DATA, "train.en")):
        from fastot.ir.data import read_bitext  # noqa: PLC0415

        en, sw = read_bitext(DATA, "swa", "train")
        idx = [i for i in range(len(en)) if en[i].strip() and sw[i].strip()]
        random.Random(seed).shuffle(idx)
        return [([en[i] for i in idx[k * B:(k + 1) * B]], [sw[i] for i in idx[k * B:(k + 1) * B]])
                for k in range(n)], "MAFAND en-swa train"
    g = random.Random(seed)
    words = ["serikali", "watu", "mto", "soko", "maji", "river", "market", "the", "people", "water", "city"]
    make = lambda k: " ".join(g.choice(words) for _ in range(k))  # noqa: E731
    out = []
    for _ in range(n):
        lens = [g.randint(5, 60) for _ in range(B)]
        out.append(([make(k) for k in lens], [make(k + g.randint(0, 10)) for k in lens]))
    return out, "generated"


def _median_ms(fns: dict, rounds: int) -> dict:
    """Median ms of each function, called in interleaved rounds (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    ts = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) * 1e3 for k, v in ts.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="encoder (default: the packaged MiniLM-L6; 'tiny' for a smoke test)")
    ap.add_argument("--B", type=int, default=32)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--out", default=RESULTS)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    batches, source = _batches(args.batches, args.B)
    tok = load_tokenizer(args.model)
    enc = load_encoder(args.model).eval().requires_grad_(False)
    solve = dict(cost="cosine", eps=EPS, max_iter=ITERS, backend="cpp")
    rows = []
    for bi, (en, sw) in enumerate(batches):
        for padding in ("longest", "max_length"):
            kw = dict(padding=True if padding == "longest" else "max_length", truncation=True, max_length=MAX_LENGTH,
                      return_tensors="pt")
            te, se = tok(en, **kw), tok(sw, **kw)
            with torch.no_grad():
                yt, xs = enc(**te).last_hidden_state, enc(**se).last_hidden_state
            mt = fastot.content_mask(te["input_ids"], te["attention_mask"], tok.all_special_ids)
            ms = fastot.content_mask(se["input_ids"], se["attention_mask"], tok.all_special_ids)
            (xp, cx), (yp, cy) = fastot.pack_tokens(xs, ms), fastot.pack_tokens(yt, mt)

            xs_leaf, xp_leaf = xs.clone().requires_grad_(), xp.clone().requires_grad_()

            def padded():  # the gradient for the student states, as a training step needs it
                loss = fastot.sinkhorn_embeddings(xs_leaf, yt, ms, mt, **solve).transport_cost.sum()
                torch.autograd.grad(loss, xs_leaf)
                return loss

            def packed():
                loss = fastot.sinkhorn_embeddings(xp_leaf, yp, cu_seqlens_x=cx, cu_seqlens_y=cy,
                                                  **solve).transport_cost.sum()
                torch.autograd.grad(loss, xp_leaf)
                return loss

            def pack_then_packed():
                loss = fastot.sinkhorn_embeddings(fastot.pack_tokens(xs_leaf, ms)[0], fastot.pack_tokens(yt, mt)[0],
                                                  cu_seqlens_x=cx, cu_seqlens_y=cy, **solve).transport_cost.sum()
                torch.autograd.grad(loss, xs_leaf)
                return loss

            t = _median_ms({"padded": padded, "packed": packed, "pack_packed": pack_then_packed}, args.rounds)
            cells = xs.shape[0] * (xs.shape[1] + yt.shape[1])
            real = int(ms.sum()) + int(mt.sum())
            rows.append(dict(batch=bi, padding=padding, B=xs.shape[0], N=xs.shape[1], M=yt.shape[1],
                             tokens=real, pad_share=1 - real / cells,
                             mb_padded=cells * xs.shape[2] * xs.element_size() / 2**20,
                             mb_packed=real * xs.shape[2] * xs.element_size() / 2**20,
                             ms_padded=t["padded"], ms_packed=t["packed"], ms_pack_packed=t["pack_packed"],
                             loss_diff=abs(float(padded()) - float(packed()))))
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rows[-1].items()}, flush=True)

    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"vm-{datetime.date.today().isoformat()}-varlen")
    keys = list(rows[0])
    with open(stem + ".csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, keys)
        w.writeheader()
        w.writerows(rows)
    stamp = (f"{cpu_name()}, {torch.get_num_threads()} threads; torch {torch.__version__}; fastot {git_sha()}; "
             f"{platform.python_version()}; data: {source}; model: {args.model or 'MiniLM-L6'}; "
             f"{args.batches} batches of B {args.B}; median of {args.rounds} rounds")
    lines = [f"### `python -m bench.varlen` — {datetime.date.today().isoformat()}", "", stamp, "",
             "Forward + backward of the OT distillation loss (cosine, eps 0.05, 50 iterations, cpp fp32).", "",
             "| padding | batch | B × (N + M) | padding share | MiB padded / packed | ms padded | ms packed | "
             "padded / packed | ms pack + packed | padded / (pack + packed) | loss diff |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['padding']} | {r['batch']} | {r['B']} × ({r['N']} + {r['M']}) | {r['pad_share']:.0%} | "
                     f"{r['mb_padded']:.1f} / {r['mb_packed']:.1f} | {r['ms_padded']:.1f} | {r['ms_packed']:.1f} | "
                     f"{r['ms_padded'] / r['ms_packed']:.2f}× | {r['ms_pack_packed']:.1f} | "
                     f"{r['ms_padded'] / r['ms_pack_packed']:.2f}× | {r['loss_diff']:.1e} |")
    lines += ["", "Medians over the batches:", ""]
    for padding in ("longest", "max_length"):
        sel = [r for r in rows if r["padding"] == padding]
        med = lambda k, sel=sel: statistics.median(r[k] for r in sel)  # noqa: E731
        lines.append(f"- padding={padding}: padding share {med('pad_share'):.0%}, padded / packed "
                     f"{statistics.median(r['ms_padded'] / r['ms_packed'] for r in sel):.2f}×, padded / "
                     f"(pack + packed) {statistics.median(r['ms_padded'] / r['ms_pack_packed'] for r in sel):.2f}×, "
                     f"token-state memory {med('mb_padded'):.1f} → {med('mb_packed'):.1f} MiB")
    lines.append("")
    with open(stem + ".md", "w") as fh:
        fh.write("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
