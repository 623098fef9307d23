"""Code-switching on a CUDA GPU, side by side (the GPU targets of issue 5): fastot cuda and triton vs the torch
reference on the same batch in one run, B=1024 rows of L=512 tokens, p=0.5, then the switch as a share of a
cross-encoder training step (MiniLM-L6-sized BERT, random init, bf16 autocast, AdamW) when transformers is
installed. NOT YET RUN on a GPU: written by a session without one.

    python -m bench.codeswitch_gpu --out results.csv
    python -m bench.codeswitch_gpu --sanitize          # one small run per GPU backend, for compute-sanitizer
    python -m bench.codeswitch_gpu --device cpu --B 64 --L 128   # the same code path on CPU (smoke test)

The batch and lexicon are synthetic (no tokenizer or data needed on a bare GPU machine): a 30,522-id vocabulary
of which 70% start words, words of 1-3 ids, a lexicon of 20,000 keys (10% of them two-word keys) with 1-2
translations of 1-4 ids, and rows in which about half the words are lexicon keys. Timing: CUDA events after
warm-up (triton.testing.do_bench), median and 20-80% spread. Throughput counts attended input tokens.
"""

from __future__ import annotations

import argparse
import csv
import random
import statistics
import time

import torch

import fastot

V, N_SPECIAL = 30522, 4


def synthetic(B: int, L: int, n_keys: int = 20000, seed: int = 0):
    """(lexicon, input_ids, attention_mask, token_type_ids) with the statistics described in the module doc."""
    rng = random.Random(seed)
    word_start = torch.tensor([rng.random() < 0.7 for _ in range(V)])
    special = torch.zeros(V, dtype=torch.bool)
    special[:N_SPECIAL] = True
    word_start |= special
    starts = torch.nonzero(word_start & ~special).flatten().tolist()
    conts = torch.nonzero(~word_start).flatten().tolist()

    def word():
        return [rng.choice(starts)] + [rng.choice(conts) for _ in range(rng.randint(0, 2))]

    entries: dict[tuple[int, ...], dict[int, list[tuple[int, ...]]]] = {}
    while len(entries) < n_keys:
        key = tuple(word() + (word() if rng.random() < 0.1 else []))
        entries[key] = {0: [tuple(rng.randrange(N_SPECIAL, V) for _ in range(rng.randint(1, 4)))
                            for _ in range(rng.randint(1, 2))]}
    lex = fastot.Lexicon.pack(entries, ["xx"], word_start, special, 0, "synthetic")
    keys = list(entries)
    ids = torch.zeros(B, L, dtype=torch.long)
    tt = torch.zeros(B, L, dtype=torch.long)
    mask = torch.zeros(B, L, dtype=torch.long)
    for r in range(B):
        n = L - rng.randrange(L // 4 + 1)  # ragged rows
        row, split = [1], n // 4
        while len(row) < n - 1:
            row += list(rng.choice(keys)) if rng.random() < 0.5 else word()
            if len(row) >= split and 2 not in row:
                row.append(2)
        row = row[: n - 1] + [2]
        ids[r, :n] = torch.tensor(row)
        mask[r, :n] = 1
        tt[r, row.index(2) + 1:n] = 1
    return lex, ids, mask, tt


def _bench(fn, device: str) -> tuple[float, float, float]:
    if device == "cuda":
        import triton.testing  # noqa: PLC0415

        q = triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8], rep=200)
        return q[0], q[1], q[2]
    fn()
    times = []
    for _ in range(7):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    qs = statistics.quantiles(times, n=5)
    return statistics.median(times), qs[0], qs[-1]


def _training_step_ms(B: int, L: int, device: str) -> float | None:
    """Median time of one cross-encoder step (forward, BCE loss, backward, AdamW) of a MiniLM-L6-sized BERT."""
    try:
        from transformers import BertConfig, BertForSequenceClassification  # noqa: PLC0415
    except ImportError:
        return None
    cfg = BertConfig(vocab_size=V, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, num_labels=1)
    model = BertForSequenceClassification(cfg).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    ids = torch.randint(N_SPECIAL, V, (B, L), device=device)
    labels = torch.rand(B, device=device)

    def step():
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(input_ids=ids).logits.squeeze(-1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return _bench(step, device)[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--B", type=int, default=1024)
    ap.add_argument("--L", type=int, default=512)
    ap.add_argument("--step-B", type=int, default=64, help="batch of the training-step comparison")
    ap.add_argument("--step-L", type=int, default=256)
    ap.add_argument("--sanitize", action="store_true", help="one small run of each GPU backend, no timing")
    args = ap.parse_args(argv)
    dev = args.device
    if args.sanitize:
        lex, ids, mask, tt = synthetic(8, 64, n_keys=500)
        for be in ("cuda", "triton"):
            for max_length in (None, 48):
                fastot.CodeSwitcher(lex, p=0.5, backend=be)(ids.to(dev), mask.to(dev), tt.to(dev),
                                                            max_length=max_length)
        torch.cuda.synchronize()
        print("sanitize runs done")
        return 0
    lex, ids, mask, tt = synthetic(args.B, args.L)
    ids, mask, tt = ids.to(dev), mask.to(dev), tt.to(dev)
    n_tokens = int(mask.sum())
    ref = fastot.CodeSwitcher(lex, p=0.5, seed=1, backend="torch")(ids, mask, tt, step=3, max_length=args.L)
    rows = []
    name = torch.cuda.get_device_name() if dev == "cuda" else "cpu"
    for be in fastot.available_backends("codeswitch", dev):
        cs = fastot.CodeSwitcher(lex, p=0.5, seed=1, backend=be)
        out = cs(ids, mask, tt, step=3, max_length=args.L)
        equal = all(torch.equal(getattr(out, k), getattr(ref, k)) for k in vars(ref))
        med, lo, hi = _bench(lambda: cs(ids, mask, tt, step=3, max_length=args.L), dev)
        rows.append({"device": name, "torch": torch.__version__, "op": "codeswitch", "backend": be, "B": args.B,
                     "L": args.L, "input_tokens": n_tokens, "median_ms": round(med, 4), "p20_ms": round(lo, 4),
                     "p80_ms": round(hi, 4), "tokens_per_s": round(n_tokens / (med / 1e3)),
                     "equal_to_reference": equal})
    torch_ms = next(r["median_ms"] for r in rows if r["backend"] == "torch")
    for r in rows:
        r["speedup_vs_torch"] = round(torch_ms / r["median_ms"], 2)
    # Share of a training step: the switch of that step's batch vs the step itself.
    step_ms = _training_step_ms(args.step_B, args.step_L, dev)
    s_lex, s_ids, s_mask, s_tt = synthetic(args.step_B, args.step_L, n_keys=2000, seed=1)
    for r in rows:
        cs = fastot.CodeSwitcher(s_lex, p=0.5, backend=r["backend"])
        a = (s_ids.to(dev), s_mask.to(dev), s_tt.to(dev))
        switch_ms = _bench(lambda: cs(*a, max_length=args.step_L), dev)[0]
        r["step_switch_ms"] = round(switch_ms, 4)
        r["train_step_ms"] = None if step_ms is None else round(step_ms, 3)
        r["share_of_train_step"] = None if step_ms is None else round(switch_ms / step_ms, 5)
    cols = list(rows[0])
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    if args.out:
        with open(args.out, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
