"""A reranker training step with the batch padded to max_length, to its longest row (``CodeSwitchCollator``'s
``padding``), or split into length-sorted chunks each padded to its own longest row, side by side.

    python -m bench.rerank_step                          # CPU, the embedded MiniLM, MAFAND en-swa groups
    python -m bench.rerank_step --model tiny --rounds 2  # smoke test

Workload: the training groups of ``fastot rerank`` on MAFAND en-swa (8 queries x (1 positive + 4 BM25
negatives) = 40 pairs a step; built from the first 400 training queries), code-switched at p = 0.5 by the
Dice lexicon of those pairs, cut to ``max_length`` (96, the sweep's cpu scale, and 128, the default). One step:
the cross-encoder's forward, BCE, backward and an AdamW step, fp32 on the CPU (bf16 autocast on CUDA, as
``train_reranker`` runs it); the chunked step (``RerankConfig.length_chunks``) runs one forward + backward per chunk (the per-pair BCE summed and
divided by the batch's pairs: the same gradient up to rounding and dropout's draws) and one AdamW step. Rounds
interleave the contenders on the same batches; medians with the 20-80% spread; ``median_tokens``: rows x width
fed to the model per step. ``max_abs_logit_diff``: the largest |logit| difference between the two paddings of a batch, before any
step (the narrower batch only drops padding columns, so it should be rounding noise).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.sinkhorn_cpu import cpu_name, git_sha  # noqa: E402
from fastot.codeswitch import CodeSwitcher  # noqa: E402
from fastot.collate import CodeSwitchCollator  # noqa: E402
from fastot.experiments.domains import data_root  # noqa: E402
from fastot.train.models import load_cross_encoder, load_tokenizer  # noqa: E402
from fastot.train.rerank import RerankConfig, _length_chunks, build_lexicon, training_examples  # noqa: E402


def length_stats(tok, lex, examples, max_length: int, p: float, batches: int) -> dict:
    """Row lengths of ``batches`` switched 40-row training batches cut to ``max_length``: the mean row, the
    median longest row, and the share of batches whose longest row reaches the cut (trimming saves nothing)."""
    col = CodeSwitchCollator(tok, CodeSwitcher(lex, p=p, seed=0), max_length=max_length)
    rows, longest = [], []
    for k in range(min(batches, len(examples) // 8)):
        b = col([(e.query, t) for e in examples[8 * k:8 * k + 8] for t in (e.positive,) + e.negatives], step=k)
        lengths = b["attention_mask"].sum(1).tolist()
        rows += lengths
        longest.append(max(lengths))
    return {"p": p, "max_length": max_length, "batches": len(longest), "mean_row": statistics.mean(rows),
            "median_longest_row": statistics.median(longest),
            "share_at_cap": sum(w == max_length for w in longest) / len(longest)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="the shared data folder (default: $FASTOT_DATA or ../shared/data)")
    ap.add_argument("--model", default="minilm", help="minilm (default) or tiny (smoke test)")
    ap.add_argument("--max-lengths", default="96,128")
    ap.add_argument("--rounds", type=int, default=10, help="batches timed per contender (default 10)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--chunks", type=int, default=4, help="length-sorted chunks of the third contender (default 4)")
    ap.add_argument("--stats-batches", type=int, default=50,
                    help="training batches whose row lengths are reported, at p = 0 and 0.5 (default 50)")
    ap.add_argument("--out", default=None, help="CSV path (default bench/results/vm-DATE-rerank-step.csv)")
    args = ap.parse_args(argv)
    try:
        lengths = [int(v) for v in args.max_lengths.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--max-lengths: comma-separated integers, got {args.max_lengths!r}")
    if not lengths or min(lengths) < 8:
        ap.error(f"--max-lengths: integers >= 8, got {args.max_lengths!r}")
    if args.rounds < 1:
        ap.error(f"--rounds: at least 1, got {args.rounds}")
    if args.chunks < 2:
        ap.error(f"--chunks: at least 2, got {args.chunks}")
    device = torch.device(args.device)
    cfg = RerankConfig(bitext=os.path.join(data_root(args.data), "mafand", "en-swa"), lang="swa", model=args.model,
                       max_train_queries=max(400, 8 * args.rounds, 8 * args.stats_batches), progress=False)
    tok = load_tokenizer(args.model)
    examples = training_examples(cfg)
    lex = build_lexicon(cfg, tok)
    batches = [[(e.query, t, float(j == 0)) for e in examples[8 * r:8 * r + 8]
                for j, t in enumerate((e.positive,) + e.negatives)] for r in range(args.rounds)]
    model = load_cross_encoder(args.model, seed=0).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    amp = torch.bfloat16 if device.type == "cuda" else None
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def logits(b):
        kw = {k: b[k].to(device) for k in ("input_ids", "attention_mask", "token_type_ids") if k in b}
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            return model(**kw).logits[:, 0].float()

    def step(b, chunks: int = 1) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        if chunks == 1:
            loss_fn(logits(b), b["labels"].to(device)).backward()
        else:  # train_reranker's length_chunks: the per-pair BCE summed over the chunks, / pairs
            n = b["labels"].shape[0]
            for part in _length_chunks(b, chunks):
                (torch.nn.functional.binary_cross_entropy_with_logits(
                    logits(part), part["labels"].to(device), reduction="sum") / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    stats = []
    for max_length in lengths:
        for p in (0.0, 0.5):
            stats.append(st := length_stats(tok, lex, examples, max_length, p, args.stats_batches))
            print(f"max_length {max_length}, p {p:g}: rows {st['mean_row']:.1f} tokens on average, the longest of "
                  f"a batch {st['median_longest_row']:g} (median of {st['batches']} batches), at the cut in "
                  f"{st['share_at_cap']:.0%} of them", flush=True)
    rows = []
    for max_length in lengths:
        cols = {pad: CodeSwitchCollator(tok, CodeSwitcher(lex, p=0.5, seed=0), max_length=max_length, padding=pad,
                                        pad_to_multiple_of=8 if pad == "longest" else None)
                for pad in ("max_length", "longest")}
        collated = {pad: [col(b, step=r) for r, b in enumerate(batches)] for pad, col in cols.items()}
        model.eval()
        with torch.no_grad():
            diff = max(float((logits(a) - logits(b)).abs().max())
                       for a, b in zip(collated["max_length"], collated["longest"]))
        model.train()
        step(collated["max_length"][0])  # warm-up (allocator, first-call costs)
        contenders = {"max_length": ("max_length", 1), "longest": ("longest", 1),
                      f"longest, {args.chunks} length-sorted chunks": ("longest", args.chunks)}
        times = {name: [] for name in contenders}
        for r in range(args.rounds):
            for name, (pad, chunks) in contenders.items():
                times[name].append(step(collated[pad][r], chunks))
        base = statistics.median(times["max_length"])
        for name, ts in times.items():
            med = statistics.median(ts)
            lo, *_, hi = statistics.quantiles(ts, n=5, method="inclusive") if len(ts) > 1 else [med] * 4
            pad, chunks = contenders[name]
            # tokens a step feeds the model (rows x width, summed over its chunks)
            tokens = [sum(part["input_ids"].numel() for part in _length_chunks(b, chunks)) for b in collated[pad]]
            widths = [b["input_ids"].shape[1] for b in collated[pad]]
            rows.append({"max_length": max_length, "padding": name, "median_width": statistics.median(widths),
                         "median_tokens": statistics.median(tokens),
                         "median_ms": 1e3 * med, "p20_ms": 1e3 * lo, "p80_ms": 1e3 * hi,
                         "speedup_vs_max_length": base / med, "max_abs_logit_diff": diff, "rounds": args.rounds,
                         "pairs_per_step": len(batches[0]), "model": args.model, "device": str(device),
                         "cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__,
                         "fastot_sha": git_sha()})
            print(f"max_length {max_length}, padding {name}: width {rows[-1]['median_width']:g}, "
                  f"{1e3 * med:.0f} ms/step [{1e3 * lo:.0f}, {1e3 * hi:.0f}], x{base / med:.2f}; "
                  f"max |logit diff| {diff:.1e}", flush=True)
    out = args.out or os.path.join("bench", "results", f"vm-{datetime.date.today():%Y-%m-%d}-rerank-step.csv")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with open(out[:-4] + "-lengths.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(stats[0]))
        w.writeheader()
        w.writerows(stats)
    print(f"wrote {out} and its -lengths.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
