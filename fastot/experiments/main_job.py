"""The main job: code-switched vs zero-shot reranking (:func:`compare_switching`) and the end-to-end demo
(:func:`demo`: OT distillation -> lexicon -> code-switched reranker -> table; :func:`tico_demo` on the embedded
TICO-19)."""


from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence

import torch

from ..train.rerank import (
    RERANK_METRICS,
    RerankConfig,
    bitext_eval_set,
    build_lexicon,
    evaluate_reranking,
    first_stage,
    train_reranker,
)
from ._report import fmt_p, markdown_table, stuck_warning


def compare_switching(bitext: str, lang: str, out_dir: str, *, first_stage_model="bm25", ps: Sequence[float] = (0.0, 0.5),
                      eval_split: str = "dev", max_queries: int | None = 250, depth: int = 100,
                      eval_batch_size: int = 64, eval_max_length: int = 128, lexicon=None, device=None,
                      progress: bool = True, file=None, **rerank_options) -> dict:
    """Train one reranker per code-switching probability in ``ps`` on the English side of ``bitext``'s
    training split, with one lexicon, and rerank the first stage's top ``depth`` for English
    keyword queries against the target-language documents of ``eval_split``.

    ``lexicon``: the switch's lexicon (default: induced from ``bitext``'s training split). Writes
    ``out_dir/results.json`` and ``results.md``; returns ``{"table": rows, ...}``. The rerankers live in
    ``out_dir/rerank-p<p>`` (a finished one is reused: resume).
    """
    file = sys.stdout if file is None else file
    from ..train.models import load_cross_encoder, load_tokenizer  # noqa: PLC0415

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = RerankConfig(bitext=bitext, lang=lang, device=str(dev), progress=progress, **rerank_options)
    base.check()
    if os.path.isfile(bitext):
        raise ValueError("bitext: a TSV bitext has no splits, so the evaluation would use the training pairs; "
                         "give a folder with train and dev splits")
    os.makedirs(out_dir, exist_ok=True)
    tok = load_tokenizer(base.model)
    t0 = time.perf_counter()
    lexicon = lexicon if lexicon is not None else build_lexicon(base, tok)
    print(f"lexicon: {lexicon.n_keys} English keys from {bitext} ({time.perf_counter() - t0:.0f} s)", file=file)
    es = bitext_eval_set(bitext, lang, eval_split, max_queries=max_queries)
    cov = lexicon.coverage(es.queries, tok)["covered"]
    print(f"evaluation: {len(es.queries)} English keyword queries, {len(es.documents)} {lang} documents "
          f"({eval_split}); lexicon covers {100 * sum(cov.values()):.0f}% of the query words", file=file)
    cand = first_stage(first_stage_model, es.queries, es.documents, depth, device=dev, progress=progress,
                       max_length=eval_max_length)
    fs_name = "BM25" if first_stage_model == "bm25" else f"dense {first_stage_model}"
    rows, runs = [], {}
    first = None
    for p in ps:
        cfg_dir = os.path.join(out_dir, f"rerank-p{fmt_p(p)}")
        t1 = time.perf_counter()
        res = train_reranker(base, lexicon=lexicon, output_dir=cfg_dir, p=float(p))
        t_train = time.perf_counter() - t1
        model = load_cross_encoder(os.path.join(cfg_dir, "reranker")).to(dev)
        t1 = time.perf_counter()
        m = evaluate_reranking(model, tok, es, cand, batch_size=eval_batch_size, max_length=eval_max_length,
                               device=dev, progress=progress)
        runs[fmt_p(p)] = {"train": res, "metrics": m["reranked"], "train_s": t_train,
                           "eval_s": time.perf_counter() - t1}
        first = m["first_stage"]
        print(f"p={fmt_p(p)}: trained {res['steps']} steps in {t_train:.0f} s (switched-word ratio "
              f"{res['switched_ratio']:.2f}); " + ", ".join(f"{k} {v:.3f}" for k, v in m["reranked"].items()),
              file=file)
        if res.get("stuck_on_prior"):
            print(stuck_warning(f"p={fmt_p(p)}", res), file=file)
    rows.append([f"first stage ({fs_name}, top {cand.shape[1]})"] + [first[k] for k in RERANK_METRICS])
    for p in ps:
        label = "reranker, zero-shot (p=0)" if p == 0 else f"reranker, code-switched (p={fmt_p(p)})"
        label += " † stuck on the prior" if runs[fmt_p(p)]["train"].get("stuck_on_prior") else ""
        rows.append([label] + [runs[fmt_p(p)]["metrics"][k] for k in RERANK_METRICS])
    table = markdown_table(["", *RERANK_METRICS], rows)
    result = {"bitext": bitext, "lang": lang, "eval_split": eval_split, "queries": len(es.queries),
              "documents": len(es.documents), "depth": int(cand.shape[1]), "first_stage": fs_name,
              "first_stage_metrics": first, "runs": runs, "lexicon_keys": lexicon.n_keys,
              "query_word_coverage": cov, "table": table}
    with open(os.path.join(out_dir, "results.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2, default=str)
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as fh:
        fh.write(table + "\n")
    print("\n" + table, file=file)
    return result


def demo(bitext: str | None = None, lang: str | None = None, out_dir: str = "runs/demo", *, student: str | None = None,
         rerank_steps: int | None = None, max_queries: int | None = None, depth: int | None = None, seed: int = 0,
         model: str = "minilm", overwrite: bool = False, device=None, progress: bool = True, file=None,
         synthetic: bool = False, reranker_init: str = "model") -> dict:
    """The main job: OT distillation -> lexicon induction -> code-switched reranker training -> evaluation table.

    Default (no ``bitext``, not ``synthetic``): :func:`tico_demo`, on the TICO-19 health bitext that ships inside
    the package (``lang`` "swa", the default, or "hau"), evaluated per domain.

    With ``synthetic``: on a built-in synthetic sample (:mod:`fastot.experiments.synthetic`, a seeded cipher language with a
    known lexicon, reported as synthetic), a few minutes on a 2-core CPU. With ``bitext`` (e.g.
    ``../shared/data/mafand/en-swa``, ``lang="swa"``): the same on real data (train -> dev); ``student`` skips
    the distillation and uses that encoder as the first stage. ``model``: the teacher, the student's and the
    reranker's initialisation ("minilm", the embedded pretrained encoder; "tiny" for tests). Finished runs in
    ``out_dir`` are reused (resume); ``overwrite`` trains them again.
    """
    file = sys.stdout if file is None else file
    from ..train.distill import DistillConfig, distill  # noqa: PLC0415

    if bitext is None and not synthetic:
        return tico_demo(lang or "swa", out_dir, student=student, rerank_steps=rerank_steps, max_queries=max_queries,
                         depth=depth, seed=seed, model=model, overwrite=overwrite, device=device, progress=progress,
                         reranker_init=reranker_init, file=file)
    if reranker_init != "model":
        raise ValueError("reranker_init: 'student' is an option of the TICO-19 demo (no --bitext, no --synthetic)")
    if bitext is not None and synthetic:
        raise ValueError("synthetic: the synthetic sample replaces bitext; give one of them")
    depth = 100 if depth is None else depth
    t0 = time.perf_counter()
    if not synthetic and lang is None:
        raise ValueError("lang: give the target language of the bitext, e.g. lang='swa'")
    for name, v in (("rerank_steps", rerank_steps), ("max_queries", max_queries), ("depth", depth)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if not synthetic and not os.path.isdir(bitext):
        raise FileNotFoundError(f"bitext: {bitext!r} is not a folder with train and dev splits")
    os.makedirs(out_dir, exist_ok=True)
    summary: dict = {"synthetic": synthetic}
    if synthetic:
        from . import synthetic as syn  # noqa: PLC0415

        lang = syn.LANG
        bitext = os.path.join(out_dir, "data")
        info = syn.write_sample(bitext, seed=seed)
        print(f"[1/4] SYNTHETIC sample (not real language data): {info['train']} training and {info['dev']} dev "
              f"pairs of generated English and its seeded word-cipher '{lang}' in {bitext}", file=file)
        distill_opts = dict(max_length=48, batch_size=32, lr=1e-4, warmup_steps=10, epochs=2, eval_batch_size=256)
        rerank_steps = 60 if rerank_steps is None else rerank_steps
        max_queries = 100 if max_queries is None else max_queries
    else:
        print(f"[1/4] bitext {bitext} (en-{lang})", file=file)
        distill_opts = {}
        rerank_steps = 400 if rerank_steps is None else rerank_steps
        max_queries = 250 if max_queries is None else max_queries
    if student is None:
        d_out = os.path.join(out_dir, "distill")
        print(f"[2/4] OT distillation of the MiniLM student -> {d_out}", file=file)
        res = distill(DistillConfig(bitext=bitext, lang=lang, output_dir=d_out, seed=seed, device=device,
                                    teacher=model, overwrite=overwrite, progress=progress, **distill_opts))
        summary["distill"] = {"before": res.get("before"), "after": res.get("after"), "steps": res["steps"]}
        print("      dense retrieval (full sentences) MRR@10 before -> after: "
              f"{res['before']['mrr@10']:.3f} -> {res['after']['mrr@10']:.3f}", file=file)
        student = os.path.join(d_out, "student")
    else:
        print(f"[2/4] first stage: the given dense encoder {student} (no distillation)", file=file)
    induced = None
    if synthetic:
        from ..train.models import load_tokenizer  # noqa: PLC0415

        cfg = RerankConfig(bitext=bitext, lang=lang, model=model)
        lex_pairs = syn.true_lexicon(seed=seed)
        induced = build_lexicon(cfg, load_tokenizer(cfg.model))
        check = syn.lexicon_accuracy(bitext, lang, lex_pairs)
        summary["lexicon"] = check
        print(f"[3/4] lexicon induced from the training bitext: {induced.n_keys} keys; against the cipher's true "
              f"lexicon: precision {check['precision']:.3f}, recall {check['recall']:.3f}", file=file)
    else:
        print("[3/4] lexicon: induced from the training bitext (Dice, top-1)", file=file)
    print(f"[4/4] rerankers p=0 and p=0.5 ({rerank_steps} steps each), reranking the top {depth}", file=file)
    # synthetic: random negatives, which a few dozen CPU steps can learn from (BM25 negatives of template
    # sentences need far more)
    opts = dict(max_length=48, warmup_steps=10, lr=1e-4, negatives="random") if synthetic else {}
    comp = compare_switching(bitext, lang, os.path.join(out_dir, "compare"), first_stage_model=student,
                             max_queries=max_queries, depth=depth, lexicon=induced, device=device,
                             progress=progress, file=file,
                             max_steps=rerank_steps, seed=seed, model=model, overwrite=overwrite, **opts)
    summary["compare"] = {k: comp[k] for k in ("queries", "documents", "depth", "first_stage", "table")}
    summary["seconds"] = time.perf_counter() - t0
    with open(os.path.join(out_dir, "summary.json"), "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2, default=str)
    label = "SYNTHETIC sample (cipher language, not real data)" if synthetic else f"{bitext} en-{lang}, dev split"
    print(f"\nfastot demo on {label}: {summary['seconds'] / 60:.1f} min; results in {out_dir}", file=file)
    return summary


# --- the main job on the embedded TICO-19 ---------------------------------------------------------------------

TICO_TRAIN = ("tico-pubmed", "tico-wikipedia")


def bootstrap_ci(x, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` (queries resampled with replacement)."""
    import numpy as np  # noqa: PLC0415

    x = np.asarray(x, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n_boot, x.size))].mean(1)
    return float(np.quantile(means, (1 - level) / 2)), float(np.quantile(means, 1 - (1 - level) / 2))


def tico_demo(lang: str = "swa", out_dir: str = "runs/demo", *, student: str | None = None,
              rerank_steps: int | None = None, max_queries: int | None = None, depth: int | None = None,
              seed: int = 0, model: str = "minilm", overwrite: bool = False, device=None, progress: bool = True,
              distill_epochs: int = 3, switch_p: float = 0.5, reranker_init: str = "model", file=None) -> dict:
    """The main job on the TICO-19 bitext embedded in the package (public domain; six health sub-domains).

    1. The domains (:func:`fastot.experiments.domains.prepare_domains`): pubmed and wikipedia split into training and
       evaluation parts (seeded, disjoint), the other four are held out (evaluation only).
    2. OT distillation of the MiniLM student on the training parts; its dense retrieval (English sentence ->
       its translation) before and after, on every domain's evaluation part.
    3. A Dice lexicon induced from the training parts.
    4. Two rerankers trained on the English side of the training parts: zero-shot (p = 0) and code-switched
       (p = ``switch_p``, ramped from 0 over the first third of the steps).
    5. Reranking of the student's top ``depth`` for English keyword queries on every domain: MRR@10 with 95%
       bootstrap intervals over queries, and a paired randomization test of code-switched vs zero-shot, per
       domain and pooled over the training domains and over the held-out domains.

    ``reranker_init``: the rerankers start from ``model`` (the English MiniLM, default) or from the distilled
    ``student`` (which has seen the target language), each with a new head.

    Defaults are sized for about 15 minutes on a 2-core CPU (``rerank_steps`` 120, ``max_queries`` 50 per
    domain, ``depth`` 20). Writes ``summary.json`` and ``results.md`` to ``out_dir``; finished runs are reused.
    """
    file = sys.stdout if file is None else file
    import numpy as np  # noqa: PLC0415

    from ..ir.data import read_bitext  # noqa: PLC0415
    from ..ir.retrieval import evaluate_bitext  # noqa: PLC0415
    from ..ir.stats import paired_randomization_test  # noqa: PLC0415
    from ..train.distill import DistillConfig, distill  # noqa: PLC0415
    from ..train.models import load_cross_encoder, load_encoder, load_tokenizer  # noqa: PLC0415
    from .domains import domain_eval_sets, prepare_domains, write_embedded_tico19  # noqa: PLC0415

    if lang not in ("swa", "hau"):
        raise ValueError(f"lang: the embedded TICO-19 has 'swa' and 'hau', got {lang!r}")
    if reranker_init not in ("model", "student"):
        raise ValueError(f"reranker_init: expected 'model' or 'student', got {reranker_init!r}")
    for name, v in (("rerank_steps", rerank_steps), ("max_queries", max_queries), ("depth", depth),
                    ("distill_epochs", distill_epochs)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    if isinstance(switch_p, bool) or not isinstance(switch_p, (int, float)) or not 0 < switch_p <= 1:
        raise ValueError(f"switch_p: expected a probability in (0, 1], got {switch_p!r}")
    if student is not None and not os.path.isdir(student):
        raise FileNotFoundError(f"student: {student!r} is not a model folder")
    rerank_steps, max_queries, depth = rerank_steps or 120, max_queries or 50, depth or 20
    t0 = time.perf_counter()
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    os.makedirs(out_dir, exist_ok=True)
    root = write_embedded_tico19(os.path.join(out_dir, "tico19-data"))
    data = os.path.join(out_dir, "domains")
    man = prepare_domains(data, lang, data=root, split_domains=TICO_TRAIN, seed=seed)
    doms = man["domains"]
    held = [d for d in doms if d not in TICO_TRAIN]
    n_train = sum(doms[d]["train"] for d in TICO_TRAIN)
    print(f"[1/5] TICO-19 en-{lang} (embedded, public domain): training domains "
          + ", ".join(f"{d} ({doms[d]['train']} training / {doms[d]['eval']} evaluation pairs)" for d in TICO_TRAIN)
          + "; held out: " + ", ".join(f"{d} ({doms[d]['eval']})" for d in held), file=file)
    summary: dict = {"data": "tico19 (embedded)", "lang": lang, "domains": doms, "training_domains": list(TICO_TRAIN),
                     "held_out_domains": held}
    tok = load_tokenizer(model)
    dense: dict = {}

    def dense_eval(enc) -> dict:
        out = {}
        for d in doms:
            en, tgt = read_bitext(data, lang, f"{d}-eval")
            out[d] = evaluate_bitext(enc, tok, en, tgt, metrics=("mrr@10", "recall@10"), device=dev)
        return out

    if student is None:
        d_out = os.path.join(out_dir, "distill")
        print(f"[2/5] OT distillation of the MiniLM student on the {n_train} training pairs -> {d_out}", file=file)
        # 39 steps of 32 pairs per epoch: 10 warm-up steps, not the 50 of a MAFAND-sized run
        res = distill(DistillConfig(bitext=data, lang=lang, train_split="all-train", eval_split=None, output_dir=d_out,
                                    seed=seed, device=str(dev), teacher=model, overwrite=overwrite, warmup_steps=10,
                                    epochs=distill_epochs, progress=progress))
        student = os.path.join(d_out, "student")
        dense["before"] = dense_eval(load_encoder(model).to(dev))
        summary["distill"] = {"steps": res["steps"], "final_loss": res.get("final_loss")}
    else:
        print(f"[2/5] the given student {student} (no distillation)", file=file)
    dense["after"] = dense_eval(load_encoder(student).to(dev))
    summary["dense"] = dense
    for d in doms:
        b = dense.get("before", {}).get(d, {}).get("mrr@10")
        print(f"      dense retrieval {d}: MRR@10 " + (f"{b:.3f} -> " if b is not None else "")
              + f"{dense['after'][d]['mrr@10']:.3f}", file=file)
    base = RerankConfig(bitext=data, lang=lang, model=model if reranker_init == "model" else student,
                        lexicon_split="all-train", device=str(dev),
                        progress=progress, save_every=0, max_steps=rerank_steps, seed=seed, max_length=96,
                        switch_warmup_steps=rerank_steps // 3)
    lexicon = build_lexicon(base, tok)
    sets = domain_eval_sets(data, lang, kinds=("keyword",), max_queries=max_queries)
    cov = lexicon.coverage([q for es in sets for q in es.queries], tok)["covered"]
    print(f"[3/5] lexicon induced from the training pairs (Dice, top-1): {lexicon.n_keys} English keys, covering "
          f"{100 * sum(cov.values()):.0f}% of the evaluation queries' words", file=file)
    print(f"[4/5] rerankers p=0 (zero-shot) and p={fmt_p(switch_p)} (code-switched) from "
          f"{'the distilled student' if reranker_init == 'student' else model}, {rerank_steps} steps each on the "
          f"English side of {' + '.join(TICO_TRAIN)}", file=file)
    train_split = ",".join(f"{d}-train" for d in TICO_TRAIN)
    cands = {es.name: first_stage(student, es.queries, es.documents, depth, device=dev) for es in sets}
    runs: dict = {}
    for p in (0.0, float(switch_p)):
        r_out = os.path.join(out_dir, f"rerank-p{fmt_p(p)}")
        res = train_reranker(base, lexicon=lexicon, output_dir=r_out, p=p, train_split=train_split,
                             overwrite=overwrite)
        if res.get("stuck_on_prior"):
            print(stuck_warning(f"p={fmt_p(p)}", res), file=file)
        reranker = load_cross_encoder(os.path.join(r_out, "reranker")).to(dev)
        runs[p] = {"train": res, "eval": {es.name: evaluate_reranking(reranker, tok, es, cands[es.name], device=dev,
                                                                       per_query=True, progress=progress)
                                          for es in sets}}
    p0, p1 = 0.0, float(switch_p)
    first = {n: e["per_query"]["first_stage"]["mrr@10"] for n, e in runs[p0]["eval"].items()}
    rows, tests = [], {}

    def row(label, q0, q1, qf):
        t = paired_randomization_test(q1, q0)
        lo0, hi0 = bootstrap_ci(q0)
        lo1, hi1 = bootstrap_ci(q1)
        rows.append([label, len(q0), f"{np.mean(qf):.3f}", f"{np.mean(q0):.3f} [{lo0:.3f}, {hi0:.3f}]",
                     f"{np.mean(q1):.3f} [{lo1:.3f}, {hi1:.3f}]", f"{t['diff']:+.3f}", f"{t['p']:.3g}"])
        tests[label] = t

    per = {n: (runs[p0]["eval"][n]["per_query"]["reranked"]["mrr@10"],
               runs[p1]["eval"][n]["per_query"]["reranked"]["mrr@10"], first[n]) for n in first}
    for n, (q0, q1, qf) in per.items():
        row(n.split("/")[0] + (" (trained on)" if n.split("/")[0] in TICO_TRAIN else " (held out)"), q0, q1, qf)
    for label, keep in (("pooled: training domains", TICO_TRAIN), ("pooled: held-out domains", held)):
        pick = [n for n in per if n.split("/")[0] in keep]
        row(label, *(sum((per[n][k] for n in pick), []) for k in range(3)))
    stuck = {p: bool(runs[p]["train"].get("stuck_on_prior")) for p in runs}
    mark = {p: " †" if stuck[p] else "" for p in runs}
    table = markdown_table(["domain (keyword queries)", "queries", f"first stage (student, top {depth})",
                            f"zero-shot p=0{mark[p0]} [95% CI]", f"code-switched p={fmt_p(p1)}{mark[p1]} [95% CI]",
                            "difference", "paired p"], rows)
    summary.update({"rerank_steps": rerank_steps, "reranker_init": reranker_init, "depth": depth, "max_queries": max_queries, "table": table,
                    "tests": tests, "stuck_on_prior": {fmt_p(p): v for p, v in stuck.items()},
                    "rerank": {fmt_p(p): {"train": r["train"], "mean": {n: e["reranked"] for n, e in r["eval"].items()}}
                               for p, r in runs.items()},
                    "first_stage": {n: e["first_stage"] for n, e in runs[p0]["eval"].items()}})
    summary["seconds"] = time.perf_counter() - t0
    better = tests["pooled: held-out domains"]
    verdict = ("Code-switching helped on the held-out domains" if better["diff"] > 0 and better["p"] < 0.05 else
               "Code-switching hurt on the held-out domains" if better["diff"] < 0 and better["p"] < 0.05 else
               "No significant difference between code-switched and zero-shot on the held-out domains at 0.05")
    text = (f"# fastot demo: TICO-19 en-{lang}, MRR@10 per domain\n\n{table}\n\n"
            f"Paired randomization test of code-switched vs zero-shot per query (two-sided, not corrected for the "
            f"{len(rows)} rows). {verdict} (difference {better['diff']:+.3f}, p = {better['p']:.3g})."
            + (" † training ended on the prior: that reranker learnt no ranking." if any(stuck.values()) else "")
            + f"\n\n{summary['seconds'] / 60:.1f} min on {dev}.\n")
    for name, content in (("summary.json", json.dumps(summary, indent=2, default=str)), ("results.md", text)):
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as fh:
            fh.write(content)
    print("[5/5] reranking the student's candidates on every domain\n\n" + text, file=file)
    return summary
