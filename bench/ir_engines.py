"""fastot's own IR code against the well-kept libraries it could hand the work to, side by side in one run.

    python -m bench.ir_engines                 # MAFAND en-swa from ../shared/data, 5 rounds
    python -m bench.ir_engines --rounds 2 --docs 2000 --queries 200   # quicker

Two questions, each answered on real data and with the results checked equal before anything is timed:

1. BM25 first stage: ``fastot.ir.bm25.BM25`` (numpy postings, Lucene's variant, k1 = 0.9, b = 0.4) against
   ``bm25s`` (``method="lucene"``, the same tokens): index the English side of MAFAND en-swa train, then the top
   100 for each query (the dev English sentences). Checked: the same top-100 scores (to float32 rounding: bm25s
   sums in float32, fastot in float64), and how many queries' top 31 (the hard-negative pool of
   ``fastot.train.pairs``) come in another order.
2. Metrics of a dense run (what fastot's loops evaluate: a [Q, D] similarity matrix of bitext retrieval, the
   translation of query q is document q): ``fastot.ir.metrics.evaluate`` on the matrix (torch) against trec_eval
   through ``pytrec_eval`` on the top-100 dict run that a library needs (building it is timed with it), and
   ``ir_measures`` the same way. Checked: MRR@10 and nDCG@10 equal.

Medians over interleaved rounds with the 20-80% spread; CSV to bench/results/.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import time

import numpy as np
import torch

from bench.sinkhorn_cpu import cpu_name, git_sha
from fastot.experiments.domains import data_root
from fastot.ir.bm25 import BM25, tokenize
from fastot.ir.data import read_bitext
from fastot.ir.metrics import evaluate


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _spread(xs):
    q = statistics.quantiles(xs, n=5) if len(xs) > 1 else [xs[0]] * 4
    return statistics.median(xs), q[0], q[-1]


def _interleaved(task: str, contenders: dict, size: str, rounds: int) -> list[dict]:
    """Each contender once per round, in turn; a row per contender with the median and the 20-80% spread."""
    times = {n: [] for n in contenders}
    for _ in range(rounds):
        for name, fn in contenders.items():
            times[name].append(_timed(fn)[0])
    return [dict(zip(("median_s", "p20_s", "p80_s"), _spread(ts)), task=task, engine=name, size=size)
            for name, ts in times.items()]


def bm25_contenders(docs, queries, k):
    import bm25s  # noqa: PLC0415

    def ours():
        bm = BM25().index(docs)
        return bm.search(queries, k=k)

    def theirs():
        r = bm25s.BM25(method="lucene", k1=0.9, b=0.4)  # fastot's tokens, tokenized inside the timer as fastot's
        r.index([tokenize(d) for d in docs], show_progress=False)
        idx, val = r.retrieve([tokenize(q) for q in queries], k=k, show_progress=False, n_threads=1)
        return torch.from_numpy(np.asarray(idx, dtype=np.int64)), torch.from_numpy(np.asarray(val, dtype=np.float32))

    return {"fastot": ours, "bm25s": theirs}


def metric_contenders(scores: torch.Tensor, names, depth: int):
    import ir_measures  # noqa: PLC0415
    import pytrec_eval  # noqa: PLC0415

    Q = scores.shape[0]
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(Q)}
    trec = {"mrr@10": "recip_rank", "ndcg@10": "ndcg_cut.10"}

    def dict_run():
        top = scores.topk(depth, dim=1)
        ix, val = top.indices.tolist(), top.values.tolist()
        return {f"q{i}": {f"d{j}": v for j, v in zip(ix[i], val[i])} for i in range(Q)}

    def ours():
        return evaluate(scores, torch.arange(Q), names)

    def pte():
        res = pytrec_eval.RelevanceEvaluator(qrels, set(trec.values())).evaluate(dict_run())
        rr = [r["recip_rank"] if r["recip_rank"] >= 0.1 - 1e-9 else 0.0 for r in res.values()]
        return {"mrr@10": sum(rr) / Q, "ndcg@10": sum(r["ndcg_cut_10"] for r in res.values()) / Q}

    def irm():
        agg = ir_measures.calc_aggregate([ir_measures.RR @ 10, ir_measures.nDCG @ 10], qrels, dict_run())
        return {"mrr@10": agg[ir_measures.RR @ 10], "ndcg@10": agg[ir_measures.nDCG @ 10]}

    return {"fastot (dense, torch)": ours, "pytrec_eval (top-100 dict run)": pte,
            "ir_measures (top-100 dict run)": irm}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None, help="the shared data folder (default: ../shared/data or $FASTOT_DATA)")
    ap.add_argument("--docs", type=int, default=None, help="index the first n training sentences (default: all)")
    ap.add_argument("--queries", type=int, default=None, help="the first n dev sentences as queries (default all)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    root = data_root(args.data)
    train_en, _ = read_bitext(os.path.join(root, "mafand", "en-swa"), "swa", "train")
    dev_en, dev_sw = read_bitext(os.path.join(root, "mafand", "en-swa"), "swa", "dev")
    docs = [d for d in train_en if d.strip()][:args.docs]
    queries = [q for q in dev_en if q.strip()][:args.queries]
    rows = []

    bm = bm25_contenders(docs, queries, 100)
    ref = {name: fn() for name, fn in bm.items()}
    a, b = ref["fastot"][1], ref["bm25s"][1]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4), "BM25 scores differ"
    reordered = int((ref["fastot"][0][:, :31] != ref["bm25s"][0][:, :31]).any(1).sum())
    print(f"BM25: {len(docs)} documents, {len(queries)} queries, top 100: scores equal to "
          f"{float((a - b).abs().max()):.1e}; top 31 in another order for {reordered} queries")
    rows += _interleaved("bm25 index + top-100", bm, f"{len(docs)} docs x {len(queries)} q", args.rounds)

    # a dense bitext run: MiniLM-free (no model load needed for the timing), the scores of random unit vectors
    # around each translation so that ranks spread; the metric code never looks at where scores come from
    Q = len(dev_sw[:args.queries]) if args.queries else len(dev_sw)
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.normalize(torch.randn(Q, 64, generator=g), dim=1)
    y = torch.nn.functional.normalize(x + 0.9 * torch.randn(Q, 64, generator=g), dim=1)
    scores = x @ y.T
    mc = metric_contenders(scores, ["mrr@10", "ndcg@10"], 100)
    got = {name: fn() for name, fn in mc.items()}
    for name, val in got.items():
        for m in ("mrr@10", "ndcg@10"):
            assert abs(val[m] - got["fastot (dense, torch)"][m]) < 1e-5, (name, m, val, got)
    print(f"metrics: {Q} x {Q} bitext run; MRR@10 {got['fastot (dense, torch)']['mrr@10']:.4f} from every engine")
    rows += _interleaved("mrr@10 + ndcg@10 of a dense run", mc, f"{Q} x {Q}", args.rounds)

    for task in dict.fromkeys(r["task"] for r in rows):
        base = next(r for r in rows if r["task"] == task and r["engine"].startswith("fastot"))["median_s"]
        for r in rows:
            if r["task"] == task:
                r["vs_fastot"] = r["median_s"] / base
    stamp = datetime.date.today().isoformat()
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"vm-{stamp}-ir-engines.csv")
    with open(out, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["task", "engine", "size", "median_s", "p20_s", "p80_s", "vs_fastot",
                                           "cpu", "threads", "git", "date"])
        w.writeheader()
        for r in rows:
            w.writerow({**r, "cpu": cpu_name(), "threads": 1, "git": git_sha(), "date": stamp})
    for r in rows:
        print(f"{r['task']:34s} {r['engine']:32s} {r['median_s'] * 1e3:9.1f} ms  ({r['p20_s'] * 1e3:.1f}-"
              f"{r['p80_s'] * 1e3:.1f})  x{r['vs_fastot']:.2f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
