"""OT distillation per domain (issue 20): distil the MiniLM student on MAFAND news (train), then score dense
cross-lingual retrieval (English sentence -> its translation among all target sentences of a domain's
evaluation part) before and after, on every domain of :func:`fastot.experiments.domains.prepare_domains`.

    python -m bench.distill_domains --langs swa,hau --max-train-pairs 6000 --out bench/results

Writes ``<out>/<machine>-<date>-distill-domains.{csv,md}``; the runs go to ``runs/distill-domains-<lang>``
(resumed when rerun with the same settings).
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from bench.sinkhorn_cpu import cpu_name, git_sha  # noqa: E402
from fastot.experiments.domains import data_root, prepare_domains  # noqa: E402
from fastot.ir.data import read_bitext  # noqa: E402
from fastot.ir.retrieval import evaluate_bitext  # noqa: E402
from fastot.train import DistillConfig, distill, load_encoder, load_tokenizer  # noqa: E402

METRICS = ("mrr@10", "recall@10", "recall@50")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--langs", default="swa,hau")
    ap.add_argument("--data", default=None, help="shared data folder (default ../shared/data)")
    ap.add_argument("--max-train-pairs", type=int, default=6000, help="MAFAND training pairs (default 6000)")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--model", default="minilm", help="teacher and student initialisation (tiny for tests)")
    ap.add_argument("--max-eval-pairs", type=int, default=None, help="first n pairs of each evaluation part")
    ap.add_argument("--runs", default="runs", help="where the distillation runs and domain splits go")
    ap.add_argument("--out", default="bench/results")
    args = ap.parse_args(argv)
    root = data_root(args.data)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    tok = load_tokenizer(args.model)
    rows = []
    t_all = time.perf_counter()
    for lang in [x.strip() for x in args.langs.split(",") if x.strip()]:
        dom_dir = os.path.join(args.runs, f"domains-{lang}")
        man = prepare_domains(dom_dir, lang, data=root)
        t0 = time.perf_counter()
        res = distill(DistillConfig(bitext=dom_dir, lang=lang, train_split="news-train", eval_split=None,
                                    output_dir=os.path.join(args.runs, f"distill-domains-{lang}"), teacher=args.model,
                                    max_train_pairs=args.max_train_pairs, epochs=args.epochs, device=dev))
        t_distill = time.perf_counter() - t0
        models = {"before": load_encoder(args.model).to(dev),
                  "after": load_encoder(os.path.join(args.runs, f"distill-domains-{lang}", "student")).to(dev)}
        for d in man["domains"]:
            en, tgt = read_bitext(dom_dir, lang, f"{d}-eval")
            en, tgt = en[:args.max_eval_pairs], tgt[:args.max_eval_pairs]
            out = {k: evaluate_bitext(m, tok, en, tgt, metrics=METRICS, device=dev) for k, m in models.items()}
            rows.append({"lang": lang, "domain": d, "pairs": len(en), "trained_on": d == "news",
                         **{f"{k}_{m}": out[k][m] for k in out for m in METRICS},
                         "distill_steps": res["steps"], "distill_pairs": min(args.max_train_pairs,
                                                                             man["domains"]["news"]["train"]),
                         "distill_s": round(t_distill, 1)})
            print(f"{lang} {d:18s} MRR@10 {out['before']['mrr@10']:.3f} -> {out['after']['mrr@10']:.3f}", flush=True)
    stamp = f"{datetime.date.today():%Y-%m-%d}"
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"vm-{stamp}-distill-domains")
    with open(base + ".csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"OT distillation on MAFAND news, dense retrieval per domain (fastot {git_sha()}, {cpu_name()}, "
             f"torch {torch.__version__}, {stamp}, {(time.perf_counter() - t_all) / 60:.1f} min)", "",
             "| lang | domain | pairs | MRR@10 before | MRR@10 after | Recall@10 before | Recall@10 after |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['lang']} | {r['domain']}{' (trained on)' if r['trained_on'] else ''} | {r['pairs']} | "
              f"{r['before_mrr@10']:.3f} | {r['after_mrr@10']:.3f} | {r['before_recall@10']:.3f} | "
              f"{r['after_recall@10']:.3f} |" for r in rows]
    with open(base + ".md", "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
