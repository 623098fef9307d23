"""Why code-switched rerankers sit on the prior (issue 20, item 3): loss curves, a lexical-cue diagnostic and
the reranking quality of rerankers that differ in one setting each, on MAFAND en-swa.

    python -m bench.rerank_plateau --runs runs/plateau --out bench/results

Every reranker: the embedded MiniLM with a new head, 150 steps of 8 queries (1 positive + 4 BM25 negatives) from
the first 2,000 training queries of MAFAND train, lr 5e-5, 30 warm-up steps, seed 0, pairs cut to 128 tokens,
the Dice lexicon of MAFAND train, the output bias as loaded (``head_bias="keep"``, the default before issue 20);
only the named setting differs. Evaluation: 150 English keyword queries of
news' evaluation part (MAFAND dev, ``fastot.experiments.domains``) against its 1,782 Swahili sentences, BM25 top 30
reranked; per-query MRR@10, paired randomization tests against plain p = 0.5.

The cue diagnostic: for 400 training groups switched at each p, how often the positive passage shares strictly
more of the query's tokens than every negative does (the lexical shortcut a reranker learns first).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.sinkhorn_cpu import cpu_name, git_sha  # noqa: E402
from fastot.codeswitch import CodeSwitcher, Lexicon  # noqa: E402
from fastot.collate import CodeSwitchCollator  # noqa: E402
from fastot.experiments.domains import data_root, domain_eval_sets, prepare_domains  # noqa: E402
from fastot.ir.stats import paired_randomization_test  # noqa: E402
from fastot.train.models import load_cross_encoder, load_tokenizer  # noqa: E402
from fastot.train.rerank import (  # noqa: E402
    RerankConfig,
    build_lexicon,
    evaluate_reranking,
    first_stage,
    prior_plateau,
    train_reranker,
    training_examples,
)

CONFIGS = {
    "p0": {"p": 0.0, "head_bias": "keep"},
    "p0 prior-bias": {"p": 0.0, "head_bias": "prior"},
    "p0.5": {"p": 0.5, "head_bias": "keep"},
    "p0.5 ramp50": {"p": 0.5, "switch_warmup_steps": 50, "head_bias": "keep"},
    "p0.5 prior-bias": {"p": 0.5, "head_bias": "prior"},
    "p0.5 prior-bias ramp50": {"p": 0.5, "head_bias": "prior", "switch_warmup_steps": 50},
    "p1": {"p": 1.0, "head_bias": "keep"},
    # the same reranker started from the OT-distilled student (--student) instead of MiniLM
    "student p0": {"init": "student", "p": 0.0, "head_bias": "keep"},
    "student p0.5": {"init": "student", "p": 0.5, "head_bias": "keep"},
    "student p0 prior-bias": {"init": "student", "p": 0.0, "head_bias": "prior"},
    "student p0.5 prior-bias": {"init": "student", "p": 0.5, "head_bias": "prior"},
}


def cue(tok, lex, examples, ps=(0.0, 0.25, 0.5, 0.75, 1.0), groups=400) -> list[dict]:
    special = set(tok.all_special_ids)
    groups = min(groups, len(examples))
    out = []
    for p in ps:
        col = CodeSwitchCollator(tok, CodeSwitcher(lex, p=p, seed=0), max_length=128)
        wins = n = 0
        for k in range(0, groups, 8):
            items = [(e.query, t, float(j == 0)) for e in examples[k:k + 8]
                     for j, t in enumerate((e.positive,) + e.negatives)]
            b = col(items, step=k)
            for g in range(0, len(items), 1 + len(examples[0].negatives)):
                ov = []
                for r in range(g, g + 1 + len(examples[0].negatives)):
                    row = [(int(i), int(t)) for i, t, a in zip(b["input_ids"][r], b["token_type_ids"][r],
                                                               b["attention_mask"][r]) if a and int(i) not in special]
                    q = {i for i, t in row if t == 0}
                    ov.append(len(q & {i for i, t in row if t == 1}) / max(1, len(q)))
                wins += ov[0] > max(ov[1:])
                n += 1
        out.append({"p": p, "groups": n, "positive_has_strictly_most_overlap": wins / n})
        print(f"cue p={p:g}: positive strictly most overlap in {wins / n:.3f} of {n} groups", flush=True)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=None)
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of {list(CONFIGS)}")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--queries", type=int, default=150)
    ap.add_argument("--model", default="minilm")
    ap.add_argument("--student", default=None,
                    help="the OT-distilled student folder, the initialisation of the 'student ...' configs (e.g. "
                         "runs/distill-domains-swa/student from bench.distill_domains)")
    ap.add_argument("--tag", default="rerank-plateau", help="output name: bench/results/vm-DATE-TAG.csv")
    ap.add_argument("--max-train-queries", type=int, default=2000)
    ap.add_argument("--runs", default="runs/plateau")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    bad = [c for c in names if c not in CONFIGS]
    if bad:
        ap.error(f"--configs: unknown {bad}; choose from {list(CONFIGS)}")
    if any(CONFIGS[c].get("init") == "student" for c in names) and not (
            args.student and os.path.isfile(os.path.join(args.student, "config.json"))):
        ap.error(f"--student: the 'student ...' configs need the distilled student's folder; got {args.student!r}")
    root = data_root(args.data)
    bitext = os.path.join(root, "mafand", "en-swa")
    tok = load_tokenizer(args.model)
    base = RerankConfig(bitext=bitext, lang="swa", model=args.model, max_steps=args.steps, save_every=0,
                        max_train_queries=args.max_train_queries, progress=False)
    lex_path = os.path.join(args.runs, "lexicon.pt")
    os.makedirs(args.runs, exist_ok=True)
    lex = Lexicon.load(lex_path, tok) if os.path.exists(lex_path) else build_lexicon(base, tok)
    lex.save(lex_path)
    cues = cue(tok, lex, training_examples(base))
    dom = os.path.join(args.runs, "domains-swa")
    prepare_domains(dom, "swa", data=root)
    (es,) = domain_eval_sets(dom, "swa", domains=["news"], kinds=("keyword",), max_queries=args.queries)
    cand = first_stage("bm25", es.queries, es.documents, 30)
    results, curves = {}, []
    for name in names:
        out = os.path.join(args.runs, name.replace(" ", "-"))
        t0 = time.perf_counter()
        done = os.path.exists(os.path.join(out, "metrics.json"))
        settings = {k: v for k, v in CONFIGS[name].items() if k != "init"}
        if CONFIGS[name].get("init") == "student":
            settings["model"] = args.student
        res = (json.load(open(os.path.join(out, "metrics.json"))) if done else
               train_reranker(base, lexicon=lex, output_dir=out, overwrite=True, **settings))
        train_s = time.perf_counter() - t0
        losses = [json.loads(line)["loss"] for line in open(os.path.join(out, "log.jsonl"))]
        curves += [{"run": name, "step": i + 1, "loss": v} for i, v in enumerate(losses)]
        ev = evaluate_reranking(load_cross_encoder(os.path.join(out, "reranker")), tok, es, cand, per_query=True)
        results[name] = {"res": res, "ev": ev, "train_s": None if done else train_s, "losses": losses,
                         "windows": [sum(losses[i:i + 10]) / len(losses[i:i + 10]) for i in range(0, len(losses), 10)]}
        print(f"{name}: loss by 10 steps {' '.join(f'{w:.2f}' for w in results[name]['windows'])}; "
              f"MRR@10 {ev['reranked']['mrr@10']:.3f} (BM25 {ev['first_stage']['mrr@10']:.3f})", flush=True)
    ref = results.get("p0.5")
    rows = []
    for name, r in results.items():
        q = r["ev"]["per_query"]["reranked"]["mrr@10"]
        vs = paired_randomization_test(q, ref["ev"]["per_query"]["reranked"]["mrr@10"]) if ref else None
        vs_bm25 = paired_randomization_test(q, r["ev"]["per_query"]["first_stage"]["mrr@10"])
        verdict = prior_plateau(r["losses"], 1 / 5)  # from the log: runs trained before the verdict existed too
        twin = results.get(name.removeprefix("student ")) if name.startswith("student ") else None
        vs_twin = (paired_randomization_test(q, twin["ev"]["per_query"]["reranked"]["mrr@10"])
                   if twin is not None else None)
        rows.append({"run": name, "init": CONFIGS[name].get("init", "minilm"),
                     **{k: v for k, v in CONFIGS[name].items() if k != "init"}, "tail_loss": verdict["tail_loss"],
                     "stuck_on_prior": verdict["stuck_on_prior"],
                     "first_step_below_0.45": next((10 * i for i, w in enumerate(r["windows"]) if w < 0.45), None),
                     "mrr@10": r["ev"]["reranked"]["mrr@10"], "bm25_mrr@10": r["ev"]["first_stage"]["mrr@10"],
                     "diff_vs_p0.5": vs["diff"] if vs else None, "p_vs_p0.5": vs["p"] if vs else None,
                     "diff_vs_bm25": vs_bm25["diff"], "p_vs_bm25": vs_bm25["p"],
                     "diff_vs_minilm_init": vs_twin["diff"] if vs_twin else None,
                     "p_vs_minilm_init": vs_twin["p"] if vs_twin else None, "train_s": r["train_s"]})
    stamp = f"{datetime.date.today():%Y-%m-%d}"
    base_out = os.path.join(args.out, f"vm-{stamp}-{args.tag}")
    os.makedirs(args.out, exist_ok=True)
    fields = sorted({k for r in rows for k in r}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99)
    with open(base_out + ".csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    with open(base_out + "-curves.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["run", "step", "loss"])
        w.writeheader()
        w.writerows(curves)
    with open(base_out + "-cue.json", "w", encoding="utf-8") as fh:
        json.dump({"cue": cues, "fastot": git_sha(), "cpu": cpu_name(), "torch": torch.__version__}, fh, indent=2)
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
