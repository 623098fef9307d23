"""The OT distillation loss as a share of a distillation training step, fused vs naive, on CPU or GPU.

    python -m bench.distill_step                      # CPU, MiniLM teacher + student, B=32 MAFAND pairs
    python -m bench.distill_step --device cuda --B 64 # GPU (bf16 autocast, as the training loop runs it)
    python -m bench.distill_step --model tiny --B 4 --rounds 2   # smoke test

Workload: B (English, Swahili) pairs from MAFAND en-swa train (every 8th of the first 8B non-empty pairs sorted
by length: a spread of lengths, as a shuffled batch has; generated word salad when the data is absent), tokenized with MiniLM's WordPiece to at most 128 tokens. Teacher
and student are the embedded pretrained MiniLM-L6 (``--model tiny``: the 32-d random BERT of the tests). The loss
is eps = 0.05, 50 Sinkhorn iterations, cosine cost, uniform weights on non-special tokens.

Contenders, timed in interleaved rounds (medians, 20-80% spread):

- ``step (fastot loss)``: one whole distillation step: teacher forward (no grad), student forward,
  ``OTDistillationLoss`` forward + backward, student backward, AdamW step;
- ``step (naive loss)``: the same step with the naive loss;
- ``loss fastot``: the loss forward + backward alone on fixed hidden states (the fused backend of the device:
  cpp on CPU, triton on CUDA; the cost is built inside the kernels);
- ``loss naive``: the same loss as one would write it in PyTorch: the [B,N,M] cosine cost materialised, 50
  log-domain Sinkhorn iterations unrolled under autograd, ``<P, C>``.

Peak memory of the loss alone: on CUDA ``max_memory_allocated`` above the inputs; on CPU the growth of the peak
resident set of a fresh subprocess that builds the inputs, resets its peak (``/proc/self/clear_refs``) and runs
the contender once (``VmHWM - VmRSS``).
``loss_abs_diff``: |fastot - naive| of the loss value (both solve in fp32; the gradients differ by design:
fastot's is the envelope gradient, the naive one is differentiated through the iterations).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

import fastot
from fastot.train import load_encoder, load_tokenizer

from .run import rss_peak_growth
from .sinkhorn_cpu import RESULTS, cpu_name, git_sha

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa")
EPS, ITERS, MAX_LENGTH = 0.05, 50, 128


def naive_loss(xs, ms, yt, mt, eps: float = EPS, iters: int = ITERS) -> torch.Tensor:
    """The OT distillation loss written plainly in PyTorch: materialised cost, unrolled log-domain Sinkhorn."""
    xs, yt = xs.float(), yt.float()
    C = 1 - torch.nn.functional.normalize(xs, dim=-1) @ torch.nn.functional.normalize(yt, dim=-1).transpose(1, 2)
    a = ms.float() / ms.sum(1, keepdim=True)
    b = mt.float() / mt.sum(1, keepdim=True)
    loga, logb = a.log(), b.log()
    f = torch.zeros_like(a)
    g = torch.zeros_like(b)
    for _ in range(iters):
        f = -eps * torch.logsumexp((g[:, None, :] - C) / eps + logb[:, None, :], dim=2)
        g = -eps * torch.logsumexp((f[:, :, None] - C) / eps + loga[:, :, None], dim=1)
    P = torch.exp((f[:, :, None] + g[:, None, :] - C) / eps + loga[:, :, None] + logb[:, None, :])
    return (P * C).sum((1, 2)).mean()


def _pairs(B: int) -> tuple[list[str], list[str], str]:
    if os.path.exists(os.path.join(DATA, "train.en")):
        from fastot.ir.data import read_bitext  # noqa: PLC0415

        en, sw = read_bitext(DATA, "swa", "train")
        keep = [i for i in range(min(len(en), 64 * B)) if en[i].strip() and sw[i].strip()][: 8 * B]
        keep = sorted(keep, key=lambda i: len(sw[i]))[::8][:B]  # a spread of lengths, as a shuffled batch has
        return [en[i] for i in keep], [sw[i] for i in keep], "MAFAND en-swa train"
    g = torch.Generator().manual_seed(0)
    words = ["serikali", "watu", "mto", "soko", "maji", "river", "market", "the", "people", "water", "city"]
    make = lambda n: " ".join(words[int(i)] for i in torch.randint(0, len(words), (n,), generator=g))  # noqa: E731
    lens = torch.randint(8, 40, (B,), generator=g).tolist()
    return [make(n) for n in lens], [make(2 * n) for n in lens], "generated"


class Setup:
    def __init__(self, model: str, B: int, device: str):
        self.device = torch.device(device)
        self.tok = load_tokenizer(model)
        self.teacher = load_encoder(model).to(self.device).eval().requires_grad_(False)
        self.student = load_encoder(model).to(self.device).train()
        self.opt = torch.optim.AdamW(self.student.parameters(), lr=1e-5)
        en, sw, self.source = _pairs(B)
        self.te = self.tok(en, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt").to(device)
        self.se = self.tok(sw, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt").to(device)
        special = self.tok.all_special_ids
        self.mt = fastot.content_mask(self.te["input_ids"], self.te["attention_mask"], special)
        self.ms = fastot.content_mask(self.se["input_ids"], self.se["attention_mask"], special)
        self.amp = torch.bfloat16 if self.device.type == "cuda" else None
        self.crit = fastot.OTDistillationLoss(eps=EPS, max_iter=ITERS)
        with torch.no_grad(), self._autocast():
            self.ht = self.teacher(**self._inputs(self.te)).last_hidden_state
            self.hs = self.student(**self._inputs(self.se)).last_hidden_state
        self.backend = fastot.sinkhorn_embeddings(self.hs[:1].float(), self.ht[:1].float(), eps=EPS,
                                                  max_iter=1).backend

    @staticmethod
    def _inputs(enc):
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp, enabled=self.amp is not None)

    def step(self, loss_fn):
        with self._autocast():
            with torch.no_grad():
                ht = self.teacher(**self._inputs(self.te)).last_hidden_state
            hs = self.student(**self._inputs(self.se)).last_hidden_state
        loss = loss_fn(hs, self.ms, ht, self.mt)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss

    def loss_only(self, loss_fn):
        hs = self.hs.detach().requires_grad_()
        loss = loss_fn(hs, self.ms, self.ht, self.mt)
        loss.backward()
        return loss

    def contenders(self):
        return {
            "step (fastot loss)": lambda: self.step(self.crit),
            "step (naive loss)": lambda: self.step(naive_loss),
            "loss fastot": lambda: self.loss_only(self.crit),
            "loss naive": lambda: self.loss_only(naive_loss),
        }


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _peak_cpu_subprocess(name: str, args) -> int | None:
    cmd = [sys.executable, "-m", "bench.distill_step", "--_peak", name, "--model", args.model, "--B", str(args.B)]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=os.path.join(os.path.dirname(__file__), ".."))
    if res.returncode != 0:
        print(f"(peak memory of {name!r} not measured: {res.stderr.strip()[-300:]})", file=sys.stderr)
        return None
    return int(res.stdout.strip().splitlines()[-1])


def _peak_here(name: str, args) -> int:
    """Bytes by which the resident set grows at its peak while ``name`` runs once (after its inputs exist)."""
    s = Setup(args.model, args.B, "cpu")
    return rss_peak_growth(s.contenders()[name])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--model", default="minilm", help="minilm (default) or tiny")
    ap.add_argument("--B", type=int, default=32, help="pairs per step (default 32)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds (default 7)")
    ap.add_argument("--out", default=None, help="CSV path (default bench/results/<machine>-<date>-distill_step.csv)")
    ap.add_argument("--_peak", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._peak:
        print(_peak_here(args._peak, args))
        return 0
    s = Setup(args.model, args.B, args.device)
    dev = s.device
    names = list(s.contenders())
    times = {n: [] for n in names}
    for n in names:  # warm-up (allocator, autotune, the first AdamW step)
        s.contenders()[n]()
    _sync(dev)
    for _ in range(args.rounds):
        for n, fn in s.contenders().items():
            _sync(dev)
            t0 = time.perf_counter()
            fn()
            _sync(dev)
            times[n].append(1e3 * (time.perf_counter() - t0))
    peaks = {}
    for n in ("loss fastot", "loss naive"):
        if dev.type == "cuda":
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            s.contenders()[n]()
            torch.cuda.synchronize()
            peaks[n] = torch.cuda.max_memory_allocated() - base
        else:
            peaks[n] = _peak_cpu_subprocess(n, args)
    with torch.no_grad():
        diff = abs(float(s.crit(s.hs, s.ms, s.ht, s.mt)) - float(naive_loss(s.hs, s.ms, s.ht, s.mt)))

    med = {n: statistics.median(v) for n, v in times.items()}
    q = lambda v, p: sorted(v)[min(len(v) - 1, int(p * len(v)))]  # noqa: E731
    N, M = s.se["input_ids"].shape[1], s.te["input_ids"].shape[1]
    meta = {"device": torch.cuda.get_device_name() if dev.type == "cuda" else cpu_name(),
            "threads": torch.get_num_threads(), "torch": torch.__version__, "fastot_sha": git_sha(),
            "model": args.model, "B": args.B, "N_student": N, "M_teacher": M, "data": s.source,
            "loss_backend": s.backend, "precision": "bf16 autocast" if s.amp else "fp32",
            "date": datetime.date.today().isoformat()}
    rows = []
    for n in names:
        step = med["step (fastot loss)"] if "fastot" in n else med["step (naive loss)"]
        loss = med["loss fastot"] if "fastot" in n else med["loss naive"]
        rows.append({"contender": n, "median_ms": round(med[n], 3), "p20_ms": round(q(times[n], 0.2), 3),
                     "p80_ms": round(q(times[n], 0.8), 3), "runs": len(times[n]),
                     "loss_share_of_step": round(loss / step, 4),
                     "loss_peak_bytes": peaks.get(n, ""), "loss_abs_diff": f"{diff:.2e}", **meta})
    out = args.out or os.path.join(RESULTS, f"{platform.node() or 'machine'}-{meta['date']}-distill_step.csv")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{meta['device']}, torch {meta['torch']}, {meta['threads']} threads; B={args.B} N={N} M={M} "
          f"({s.source}), loss backend {s.backend}, {meta['precision']}")
    print(f"{'contender':<22} {'median ms':>10} {'20-80% ms':>17} {'loss share':>10} {'loss peak MiB':>14}")
    for r in rows:
        pk = r["loss_peak_bytes"]
        print(f"{r['contender']:<22} {r['median_ms']:>10.1f} {r['p20_ms']:>8.1f}-{r['p80_ms']:<8.1f} "
              f"{r['loss_share_of_step']:>10.1%} {pk / 2**20 if pk not in ('', None) else float('nan'):>14.2f}")
    f, nv = med["loss fastot"], med["loss naive"]
    print(f"loss fwd+bwd: fastot {nv / f:.1f}x faster than naive; |loss diff| {diff:.1e}; written to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
