"""The code-switching-frequency sweep (:func:`sweep`): rerankers trained at several switching rates, seeds and
training domains, evaluated in and out of domain, with correlations and significance tests."""


from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

import torch

from ..train._run import read_json
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

# --- the sweep ------------------------------------------------------------------------------------------------

def _ranks(x):
    import numpy as np  # noqa: PLC0415

    x = np.asarray(x, dtype=float)
    order = x.argsort(kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):  # ties share their mean rank
        r[x == v] = r[x == v].mean()
    return r


def _pearson(x, y) -> float:
    import numpy as np  # noqa: PLC0415

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:  # a constant side: undefined
        return float("nan")
    dx, dy = x - x.mean(), y - y.mean()
    return float((dx * dy).sum() / np.sqrt((dx * dx).sum() * (dy * dy).sum()))


def correlation(x, y, *, method: str = "spearman", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson or Spearman correlation of ``x`` and ``y`` with a percentile bootstrap confidence interval
    (pairs resampled with replacement). Undefined (NaN) where a side is constant or there are fewer than 3
    distinct (x, y) points, through which a line always passes (±1 by construction, not a measurement);
    resamples like that are left out, and ``boot_used`` counts the others."""
    import numpy as np  # noqa: PLC0415

    if method not in ("spearman", "pearson"):
        raise ValueError(f"method: expected 'spearman' or 'pearson', got {method!r}")
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"x, y: expected two 1-d sequences of one length, got {x.shape} and {y.shape}")

    def corr(a, b):
        if len(set(zip(a.tolist(), b.tolist()))) < 3:
            return float("nan")
        return _pearson(_ranks(a), _ranks(b)) if method == "spearman" else _pearson(a, b)

    r = corr(x, y)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(x), len(x))
        v = corr(x[i], y[i])
        if not np.isnan(v):
            boots.append(v)
    lo, hi = ((float(np.quantile(boots, (1 - level) / 2)), float(np.quantile(boots, 1 - (1 - level) / 2)))
              if boots else (float("nan"), float("nan")))
    return {"r": r, "ci_low": lo, "ci_high": hi, "n": int(len(x)), "boot_used": len(boots)}


def _parse_eval_set(spec: str, default_bitext: str | None) -> tuple[str, str, str]:
    name, sep, rest = spec.partition("=")
    if not sep or not name.strip() or not rest.strip():
        raise ValueError(f"eval_sets: expected 'name=path:split' or 'name=split' entries, got {spec!r}")
    path, colon, split = rest.rpartition(":")
    if not colon:
        path, split = default_bitext, rest
    if not path:
        raise ValueError(f"eval_sets: {spec!r} names no bitext and there is no default bitext")
    return name.strip(), path, split.strip()


SYNTHETIC_SWEEP = dict(train_domains=("train-politics", "train-politics,train-sports"),
                       eval_sets=("politics=dev-politics", "sports=dev-sports", "health=dev-health"))

# The real-data presets (issue 20): news (MAFAND) as the one in-domain training set, health (TICO-19 pubmed,
# wikipedia) added for the multi-domain settings, every other domain held out.
DOMAIN_PRESETS = {"domains-swa": "swa", "domains-hau": "hau"}
DOMAIN_TRAIN = ("news-train", "news-train,tico-pubmed-train", "news-train,tico-pubmed-train,tico-wikipedia-train")
# Sizes: "cpu" is what one 2-core machine can finish over a few sessions (the cells resume), "gpu" the size the
# questions need (13x the training steps of "cpu", 7.5x the queries). Measured cost per cell: bench/RESULTS.md.
DOMAIN_SCALES = {
    # depth above 50, so that Recall@50 can tell rerankers apart (at depth <= 50 they all keep the first stage's set)
    "cpu": dict(steps=150, max_queries=30, depth=60, seeds=(0, 1, 2), query_kinds=("keyword", "article"),
                rerank=dict(max_length=96, max_train_queries=2000, switch_warmup_steps=50)),
    "gpu": dict(steps=2000, max_queries=300, depth=100, seeds=(0, 1, 2, 3, 4),
                query_kinds=("keyword", "sentence", "article"),
                rerank=dict(max_length=128, batch_size=16, max_train_queries=None, warmup_steps=200,
                            switch_warmup_steps=400)),
}


def domain_preset(preset: str, data_dir: str, *, data: str | None = None, scale: str = "cpu",
                  query_kinds: Sequence[str] | None = None, max_queries: int | None = None,
                  max_news_train: int | None = None) -> dict:
    """The sweep arguments of a real-data preset (``"domains-swa"`` or ``"domains-hau"``): the domains of
    :func:`fastot.experiments.domains.prepare_domains` written to ``data_dir`` (from ``data``, the shared data folder),
    training settings news, news + pubmed, news + pubmed + wikipedia, evaluation sets of every domain
    (``query_kinds``), the drops measured from news (``news/keyword`` by default), the lexicon induced from the union of the
    training parts (split ``all-train``), and the ``scale``'s sizes (:data:`DOMAIN_SCALES`)."""
    from .domains import domain_eval_sets, prepare_domains  # noqa: PLC0415

    if preset not in DOMAIN_PRESETS:
        raise ValueError(f"preset: expected one of {sorted(DOMAIN_PRESETS)}, got {preset!r}")
    if scale not in DOMAIN_SCALES:
        raise ValueError(f"scale: expected one of {sorted(DOMAIN_SCALES)}, got {scale!r}")
    lang, size = DOMAIN_PRESETS[preset], DOMAIN_SCALES[scale]
    kinds = tuple(query_kinds or size["query_kinds"])
    sentence_kinds = [k for k in kinds if k != "article"]
    if not sentence_kinds:
        raise ValueError(f"query_kinds: the drops are measured from news, which has no articles; add keyword or "
                         f"sentence to {list(kinds)}")
    man = prepare_domains(data_dir, lang, data=data, max_news_train=max_news_train)
    if "news" not in man["domains"]:
        raise FileNotFoundError(f"data: {data!r} has no mafand/en-{lang} (train and dev), the news domain of {preset}")
    sets = domain_eval_sets(data_dir, lang, kinds=kinds, max_queries=max_queries or size["max_queries"])
    return {"bitext": data_dir, "lang": lang, "train_domains": DOMAIN_TRAIN, "eval_sets": sets,
            "reference": f"news/{sentence_kinds[0]}", "lexicon_split": "all-train", "manifest": man, "size": size}


def sweep(bitext: str | None = None, lang: str | None = None, out_dir: str = "runs/sweep", *,
          preset: str | None = None, data: str | None = None, data_dir: str | None = None, scale: str = "cpu",
          query_kinds: Sequence[str] | None = None,
          ps: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0), seeds: Sequence[int] | None = None,
          train_domains: Sequence[str] | None = None, eval_sets: Sequence | None = None,
          reference: str | None = None, first_stage_model="bm25", depth: int | None = None,
          max_queries: int | None = None, max_documents: int | None = 60, steps: int | None = None,
          metrics: Sequence[str] = RERANK_METRICS, n_boot: int = 1000, n_resamples: int = 10_000,
          keep_models: bool = False, overwrite: bool = False, device=None, progress: bool = True, file=None,
          shard: str | None = None, **rerank_options) -> dict:
    """Code-switching frequency x seeds x training domains: train a reranker per cell, evaluate it on every
    evaluation set, relate p to the drop from the in-domain set to each shifted one, and test each p > 0
    against p = 0 and multi-domain against single-domain training per query.

    Args:
        bitext, lang: the bitext folder; default: the built-in SYNTHETIC sample (four topic domains), written
            to ``out_dir/data``, with ``train_domains`` politics and politics+sports and evaluation sets
            politics (in-domain), sports and health.
        preset: ``"domains-swa"`` / ``"domains-hau"``: the real multi-domain design (:func:`domain_preset`) on
            the shared data (``data``, default :func:`fastot.experiments.domains.data_root`), its domains written to
            ``data_dir`` (default ``runs/domains-<lang>``, kept out of ``out_dir`` so the results can be shared
            without the bitext); ``scale`` "cpu" or "gpu" sets steps, queries, depth, seeds and reranker
            sizes (explicit arguments win); ``query_kinds`` which queries (keyword, sentence, article).
        ps, seeds: the grid (a seed fixes the reranker's head, data order and switching stream); default seeds
            (0, 1), or the preset scale's.
        train_domains: one entry per training setting: split(s) of ``bitext`` whose English side makes the
            training pairs, comma-separated to join several domains (equal shares, see
            :func:`fastot.train.rerank.training_examples`).
        eval_sets: ``"name=split"`` (a split of ``bitext``) or ``"name=path:split"`` entries, or
            :class:`fastot.train.rerank.EvalSet` objects.
        reference: the in-domain evaluation set the drops are measured from (default: the first).
        depth, max_queries, max_documents: per evaluation set: the first-stage candidates reranked (default
            60), queries (default 20) and the documents (first n of the split; spec entries only).
        steps: optimizer steps per reranker (default 40); ``rerank_options``: other :class:`RerankConfig`
            fields.
        n_boot: bootstrap resamples of the correlations; n_resamples: sign flips of the paired tests.
        keep_models: keep every reranker (default: only its log, metrics and per-query scores, to save disk).
        overwrite: delete an earlier sweep's results in ``out_dir`` first; without it, a sweep with the same
            settings skips its finished cells and one with other settings (``sweep.json``) is refused.
        shard: ``"i/n"``: this worker trains the cells ``j`` with ``j % n == i`` (a Slurm array task, or any
            scheduler: n workers on one ``out_dir``). Under torchrun the default is ``RANK/WORLD_SIZE``, each
            process training its cells alone on its own device. A cell is claimed atomically
            (``runs/<cell>.claim``), so two workers never train the same one; a failed cell is reported
            (``runs/<cell>.failed``) and retried by the next run, the other cells are kept; the tables and plots
            are written by the worker that finds every cell finished.

    Cells, workers and resumption: a finished cell is ``runs/<cell>/rows.json``; the cells are trained in the
    same order with the same seeds whatever the workers, so n workers give the rows of one worker.

    Writes ``sweep.csv`` (one row per cell and evaluation set: metrics, drops, whether training ended on the
    prior), ``runs/<cell>/perquery.json``, ``correlations.csv``, ``significance.csv``, ``table.md``,
    ``sweep.png``, ``drop.png`` and ``multi_vs_single.png`` to ``out_dir``; a cell already in ``sweep.csv`` is
    not trained again.
    """
    file = sys.stdout if file is None else file
    t0 = time.perf_counter()
    ps = [float(p) for p in ps]
    if not ps or any(not 0 <= p <= 1 for p in ps):
        raise ValueError(f"ps: expected probabilities in [0, 1], got {ps}")
    if seeds is not None and (not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise ValueError(f"seeds: expected integers >= 0, got {list(seeds)}")
    for name, v in (("depth", depth), ("max_queries", max_queries), ("steps", steps)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ValueError(f"{name}: expected an integer >= 1, got {v!r}")
    shard_i, shard_n = _parse_shard(shard)
    from ..train._dist import setup  # noqa: PLC0415

    group, dev_auto = setup("auto", device) if shard is None else (None, None)
    if group is not None and group.on:
        shard_i, shard_n = group.rank, group.world
    if overwrite and shard_n > 1 and (group is None or not group.on):
        raise ValueError("overwrite: with --shard the workers cannot agree on a clean start; delete the folder (or "
                         "run once with --overwrite alone) before starting the shards")
    try:
        return _sweep(bitext, lang, out_dir, preset, data, data_dir, scale, query_kinds, ps, seeds, train_domains,
                      eval_sets, reference, first_stage_model, depth, max_queries, max_documents, steps, metrics,
                      n_boot, n_resamples, keep_models, overwrite, device if dev_auto is None else dev_auto,
                      progress, file, t0, shard_i, shard_n, group, rerank_options)
    finally:
        if group is not None:
            group.close()


def _parse_shard(shard) -> tuple[int, int]:
    if shard is None:
        return 0, 1
    i, sep, n = str(shard).partition("/")
    try:
        i, n = int(i), int(n)
    except ValueError:
        i = n = -1
    if not sep or not 0 <= i < n:
        raise ValueError(f"shard: expected 'i/n' with 0 <= i < n (e.g. 0/4), got {shard!r}")
    return i, n


def _sweep(bitext, lang, out_dir, preset, data, data_dir, scale, query_kinds, ps, seeds, train_domains, eval_sets,
           reference, first_stage_model, depth, max_queries, max_documents, steps, metrics, n_boot, n_resamples,
           keep_models, overwrite, device, progress, file, t0, shard_i, shard_n, group, rerank_options) -> dict:
    import csv  # noqa: PLC0415
    import shutil  # noqa: PLC0415

    from ..train.models import load_tokenizer  # noqa: PLC0415
    from ..train.rerank import EvalSet  # noqa: PLC0415

    main = group is None or group.main
    synthetic = bitext is None and preset is None
    title = "sweep"
    if preset is not None:
        if bitext is not None or eval_sets is not None:
            raise ValueError("preset: a preset chooses the bitext and the evaluation sets; drop bitext/eval_sets")
        if preset not in DOMAIN_PRESETS:  # checked before anything is written
            raise ValueError(f"preset: expected one of {sorted(DOMAIN_PRESETS)}, got {preset!r}")
        if scale not in DOMAIN_SCALES:
            raise ValueError(f"scale: expected one of {sorted(DOMAIN_SCALES)}, got {scale!r}")
        from .domains import QUERY_KINDS, data_root  # noqa: PLC0415

        if query_kinds is not None and (not query_kinds or any(k not in QUERY_KINDS for k in query_kinds)):
            raise ValueError(f"query_kinds: expected some of {QUERY_KINDS}, got {list(query_kinds)}")
        data = data_root(data)
        lang = DOMAIN_PRESETS[preset]
        size = DOMAIN_SCALES[scale]
        steps, depth = steps or size["steps"], depth or size["depth"]
        max_queries, seeds = max_queries or size["max_queries"], seeds or size["seeds"]
        rerank_options = {**size["rerank"], "lexicon_split": "all-train", **rerank_options}
        RerankConfig(lang=lang, **rerank_options).check(need_examples=False, need_lexicon=False)
        pre = domain_preset(preset, data_dir or os.path.join("runs", f"domains-{lang}"), data=data, scale=scale,
                            query_kinds=query_kinds, max_queries=max_queries)
        bitext, eval_sets = pre["bitext"], pre["eval_sets"]
        train_domains = train_domains or pre["train_domains"]
        reference = reference or pre["reference"]
        title = f"{preset} ({scale} scale)"
        counts = ", ".join(f"{d} {e['train'] or 0}+{e['eval']}" for d, e in pre["manifest"]["domains"].items())
        print(f"sweep preset {preset} at {scale} scale: domains of {data} in {bitext} ({counts} training+evaluation "
              "lines)", file=file)
    seeds = list(seeds) if seeds is not None else [0, 1]
    steps, depth, max_queries = steps or 40, depth or 60, max_queries or 20
    if synthetic:
        from . import synthetic as syn  # noqa: PLC0415

        bitext, lang = os.path.join(out_dir, "data"), syn.LANG
        train_domains = train_domains or SYNTHETIC_SWEEP["train_domains"]
        eval_sets = eval_sets or SYNTHETIC_SWEEP["eval_sets"]
        # random negatives: with a few dozen CPU steps, BM25 negatives of template sentences teach nothing yet
        rerank_options = {"max_length": 48, "warmup_steps": 5, "lr": 1e-4, "batch_size": 6, "negatives": "random",
                          **rerank_options}
        title = "SYNTHETIC sample (cipher language, not real data)"
        print(f"sweep on the built-in SYNTHETIC sample (cipher language '{lang}', not real data) in {bitext}",
              file=file)
    if lang is None or not train_domains or not eval_sets:
        raise ValueError("sweep: with a bitext give lang, train_domains and eval_sets")
    given = [e for e in eval_sets if isinstance(e, EvalSet)]
    specs = [_parse_eval_set(s, bitext) for s in eval_sets if not isinstance(s, EvalSet)]
    names = [e.name for e in given] + [n for n, _, _ in specs]
    for n, path, _ in specs:
        if os.path.isfile(path) and os.path.abspath(path) == os.path.abspath(bitext):
            raise ValueError(f"eval_sets: {n!r} reads the training TSV {path!r}, which has no splits: the evaluation "
                             "would use the training pairs; give a held-out folder or file")
    if len(set(names)) != len(names):
        raise ValueError(f"eval_sets: names must be distinct, got {names}")
    reference = reference or names[0]
    if reference not in names:
        raise ValueError(f"reference: {reference!r} is not one of the evaluation sets {names}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = RerankConfig(bitext=bitext, lang=lang, device=str(dev), progress=False, save_every=0,
                        max_steps=steps, distributed="off", **rerank_options)
    dataclasses.replace(base, bitext=None).check(need_examples=False, need_lexicon=False)  # paths come later
    if synthetic and main:  # only now that the arguments are checked; under torchrun, rank 0 writes it
        os.makedirs(out_dir, exist_ok=True)
        syn.write_sample(bitext, seed=0)
    if group is not None:
        group.barrier()
    base.check()
    os.makedirs(out_dir, exist_ok=True)
    tok = load_tokenizer(base.model)
    lexicon = build_lexicon(base, tok)
    sets, cands = {e.name: e for e in given}, {}
    for name, path, split in specs:
        sets[name] = bitext_eval_set(path, lang, split, name=name, max_queries=max_queries,
                                     max_documents=max_documents)
    sets = {n: sets[n] for n in names}
    for name, es in sets.items():
        cands[name] = first_stage(first_stage_model, es.queries, es.documents, depth, device=dev)
    print(f"lexicon: {lexicon.n_keys} keys; evaluation sets: "
          + ", ".join(f"{n} ({len(s.queries)} queries, {len(s.documents)} docs)" for n, s in sets.items())
          + f"; reference (in-domain): {reference}", file=file)

    csv_path = os.path.join(out_dir, "sweep.csv")
    settings = json.loads(json.dumps({
        "bitext": bitext if preset is None else preset, "lang": lang, "eval_sets": names if given else specs,
        "reference": reference, "first_stage": str(first_stage_model), "depth": depth, "max_queries": max_queries,
        "max_documents": None if given else max_documents, "metrics": list(metrics),
        "rerank": {k: v for k, v in dataclasses.asdict(base).items()
                   if k not in ("device", "progress", "output_dir", "bitext", "distributed", "fsdp")
                   and not (k == "length_chunks" and v == 1)},  # sweeps from before the option stay resumable
    }, default=list))
    settings_path = os.path.join(out_dir, "sweep.json")
    if overwrite and main:
        for name in ("sweep.csv", "sweep.json", "correlations.csv", "significance.csv", "table.md", "sweep.png",
                     "drop.png", "multi_vs_single.png", "first_stage.json"):
            if os.path.exists(os.path.join(out_dir, name)):
                os.remove(os.path.join(out_dir, name))
        shutil.rmtree(os.path.join(out_dir, "runs"), ignore_errors=True)
    if group is not None:
        group.barrier()  # rank 0 has cleaned up before any process claims a cell
    if os.path.exists(settings_path):
        prev = read_json(settings_path, "sweep")
        changed = sorted(k for k in set(prev) | set(settings) if prev.get(k) != settings.get(k))
        if changed:
            raise ValueError(f"out_dir: {out_dir!r} holds a sweep with other settings ({', '.join(changed)}); its "
                             "finished cells would be mixed in: pass overwrite=True (--overwrite) or another folder")
    _write_atomic(settings_path, json.dumps(settings, indent=2))
    fields = ["train_domains", "p", "seed", "eval_set", *metrics, *(f"drop_{m}" for m in metrics),
              "switched_ratio", "steps", "train_s", "stuck_on_prior", "tail_loss", "prior_loss"]
    legacy: list[dict] = []
    if os.path.exists(csv_path):  # resume: keep the finished cells of a sweep.csv (sweeps before rows.json)
        with open(csv_path, newline="", encoding="utf-8") as fh:
            legacy = [r for r in csv.DictReader(fh) if r.get("eval_set") in names]
    cells = [(td, p, s) for td in train_domains for p in ps for s in seeds]
    runs = os.path.join(out_dir, "runs")
    os.makedirs(runs, exist_ok=True)

    def done(cell) -> bool:
        return (any((r["train_domains"], float(r["p"]), int(r["seed"])) == cell for r in legacy)
                or os.path.exists(os.path.join(runs, _cell_dir(*cell), "rows.json")))

    from tqdm.auto import tqdm  # noqa: PLC0415

    mine = [c for j, c in enumerate(cells) if j % shard_n == shard_i]
    label = f" {shard_i}/{shard_n}" if shard_n > 1 else ""
    bar = tqdm(mine, desc=f"sweep{label}", unit="model", disable=not progress)
    failed, skipped = [], []
    for td, p, seed in bar:
        cell = (td, p, seed)
        if done(cell):
            continue
        name = _cell_dir(td, p, seed)
        holder = _claim(os.path.join(runs, name + ".claim"))
        if holder is not None:  # another worker trains it now
            skipped.append(f"{name} (claimed by {holder})")
            continue
        try:
            if done(cell):  # finished between the check and the claim
                continue
            bar.set_postfix(train=td, p=p, seed=seed, refresh=True)
            _train_cell(out_dir, runs, name, cell, base, tok, lexicon, sets, cands, names, reference, metrics,
                        dev, keep_models, file)
            if os.path.exists(os.path.join(runs, name + ".failed")):
                os.remove(os.path.join(runs, name + ".failed"))
        except Exception as exc:  # noqa: BLE001 - reported, the other cells go on
            import traceback  # noqa: PLC0415

            failed.append(f"{name}: {type(exc).__name__}: {exc}")
            _write_atomic(os.path.join(runs, name + ".failed"), traceback.format_exc())
            print(f"sweep: cell {name} failed ({type(exc).__name__}: {exc}); the others go on, a rerun retries it",
                  file=file)
        finally:
            os.remove(os.path.join(runs, name + ".claim"))
    bar.close()
    if group is not None:
        group.barrier()  # every process is past its cells
    pending = [_cell_dir(*c) for c in cells if not done(c)]
    rows = []
    for c in dict.fromkeys([*cells, *((r["train_domains"], float(r["p"]), int(r["seed"])) for r in legacy)]):
        path = os.path.join(runs, _cell_dir(*c), "rows.json")
        if os.path.exists(path):  # a cell's own rows win over an earlier sweep.csv's
            rows += read_json(path, "sweep")
        else:
            rows += [r for r in legacy if (r["train_domains"], float(r["p"]), int(r["seed"])) == c]
    result = None
    if not pending and main and _claim(os.path.join(out_dir, "merge.claim")) is None:
        try:  # one worker writes the tables: the one that finds every cell finished
            tmp = f"{csv_path}.{os.getpid()}.tmp"
            with open(tmp, "w", newline="", encoding="utf-8") as fh:
                w = csv.DictWriter(fh, fieldnames=fields)
                w.writeheader()
                w.writerows(rows)
            os.replace(tmp, csv_path)
            result = summarise_sweep(csv_path, out_dir, reference=reference, metrics=metrics, n_boot=n_boot,
                                     n_resamples=n_resamples, title=title, seconds=time.perf_counter() - t0,
                                     file=file)
        finally:
            os.remove(os.path.join(out_dir, "merge.claim"))
    if failed:
        raise RuntimeError(f"sweep: {len(failed)} cell(s) failed and will be retried by the next run (the finished "
                           "cells are kept): " + "; ".join(failed))
    if result is None:
        waiting = f"; claimed by other workers: {', '.join(skipped)}" if skipped else ""
        print(f"sweep{label}: {len(cells) - len(pending)} of {len(cells)} cells finished; the tables are written "
              f"when every cell is (by the last worker to finish, or by rerunning the sweep){waiting}", file=file)
        result = {"pending": pending, "rows": len(rows), "claimed_elsewhere": skipped}
    return result


def _train_cell(out_dir, runs, name, cell, base, tok, lexicon, sets, cands, names, reference, metrics, dev,
                keep_models, file) -> None:
    """Train one (training domains, p, seed) cell, evaluate it on every set and write ``runs/<cell>/rows.json``
    (last, atomically: the cell is finished exactly when it exists)."""
    import shutil  # noqa: PLC0415

    from ..train.models import load_cross_encoder  # noqa: PLC0415

    td, p, seed = cell
    run_dir = os.path.join(runs, name)
    model = load_cross_encoder(base.model, seed=seed)
    t1 = time.perf_counter()
    res = train_reranker(base, reranker=model, tokenizer=tok, lexicon=lexicon, output_dir=run_dir, p=p,
                         seed=seed, train_split=td, overwrite=True)
    t_train = time.perf_counter() - t1
    if res.get("stuck_on_prior"):
        print(stuck_warning(f"train={td} p={fmt_p(p)} seed={seed}", res), file=file)
    ev = {n: evaluate_reranking(model, tok, sets[n], cands[n], metrics=metrics, device=dev, per_query=True)
          for n in names}
    per_set = {n: ev[n]["reranked"] for n in names}
    _write_atomic(os.path.join(run_dir, "perquery.json"),
                  json.dumps({n: ev[n]["per_query"]["reranked"] for n in names}))
    if not os.path.exists(os.path.join(out_dir, "first_stage.json")):
        _write_atomic(os.path.join(out_dir, "first_stage.json"), json.dumps(
            {n: {"mean": ev[n]["first_stage"], "per_query": ev[n]["per_query"]["first_stage"]} for n in names}))
    rows = [{"train_domains": td, "p": p, "seed": seed, "eval_set": n, **per_set[n],
             **{f"drop_{m}": per_set[reference][m] - per_set[n][m] for m in metrics},
             "switched_ratio": res["switched_ratio"], "steps": res["steps"], "train_s": round(t_train, 1),
             "stuck_on_prior": res.get("stuck_on_prior"), "tail_loss": res.get("tail_loss"),
             "prior_loss": res.get("prior_loss")} for n in names]
    if not keep_models:
        for sub in ("reranker", *(d for d in os.listdir(run_dir) if d.startswith("checkpoint-"))):
            shutil.rmtree(os.path.join(run_dir, sub), ignore_errors=True)
    _write_atomic(os.path.join(run_dir, "rows.json"), json.dumps(rows))


def _write_atomic(path: str, text: str) -> None:
    """Through a file of this process's own and a rename: concurrent workers never see a partial file."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def _claim(path: str) -> str | None:
    """Create ``path`` exclusively (O_CREAT | O_EXCL: atomic, also on NFS v3+) holding ``host pid``; returns None
    when this process now holds it, else the holder. A claim of a process that no longer runs on this host (a
    killed worker) is taken over."""
    import socket  # noqa: PLC0415

    me = f"{socket.gethostname()} {os.getpid()}"
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                with open(path, encoding="utf-8") as fh:
                    holder = fh.read().strip()
            except FileNotFoundError:  # released meanwhile: try again
                continue
            host, _, pid = holder.partition(" ")
            if host == socket.gethostname() and pid.isdigit() and not _alive(int(pid)):
                os.remove(path)  # stale: its worker was killed
                continue
            return holder or "another worker"
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(me)
        return None
    return "another worker"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _cell_dir(td: str, p: float, seed: int) -> str:
    return f"{td.replace(',', '+')}-p{fmt_p(p)}-s{seed}"


def _domain_of(name: str) -> str:
    return name.split("/", 1)[0]


def _seen(eval_set: str, train_domains: str) -> bool:
    """Whether an evaluation set's domain is one of a training setting's (``news/keyword`` is seen by
    ``news-train``; the synthetic ``politics`` by ``train-politics``)."""
    d = _domain_of(eval_set)
    return any(s.strip() in (d, f"{d}-train", f"train-{d}") for s in train_domains.split(","))


SIGNIFICANCE_METRICS = ("recall@50", "map", "mrr@10")


def _cannot_differ(metric: str, depth: int | None) -> bool:
    """A cut-off metric at or beyond the reranking depth: every reranker of the same candidates scores alike."""
    kind, _, k = metric.partition("@")
    return depth is not None and kind in ("recall", "precision") and k.isdigit() and int(k) >= depth


def sweep_significance(out_dir: str, rows: Sequence[dict], *, metrics: Sequence[str] = SIGNIFICANCE_METRICS,
                       n_resamples: int = 10_000, alpha: float = 0.05, depth: int | None = None) -> list[dict]:
    """Paired per-query randomization tests over a sweep's evaluation sets that a training setting has not seen:
    each p > 0 against p = 0 (same training domains), and each multi-domain setting against the single-domain
    one (same p). A system's per-query score is its mean over the seeds both sides have; Holm's correction
    runs over each family (one comparison kind and metric). A cut-off metric (recall@k, precision@k) with k at
    or above the reranking ``depth`` is left out: every reranker then has the first stage's set, so the test
    could only say "equal". Reads ``runs/<cell>/perquery.json``; writes ``significance.csv``; returns its rows."""
    import csv  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    from ..ir.stats import holm, paired_randomization_test  # noqa: PLC0415

    metrics = [m for m in metrics if rows and m in rows[0] and not _cannot_differ(m, depth)]
    cells = {(r["train_domains"], float(r["p"]), int(r["seed"])) for r in rows}
    stuck = {(r["train_domains"], float(r["p"]), int(r["seed"])) for r in rows
             if str(r.get("stuck_on_prior")) == "True"}
    perq: dict = {}
    for td, p, seed in cells:
        path = os.path.join(out_dir, "runs", _cell_dir(td, p, seed), "perquery.json")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                perq[(td, p, seed)] = json.load(fh)
    tds = list(dict.fromkeys(r["train_domains"] for r in rows))
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    ps = sorted({float(r["p"]) for r in rows})
    single = next((td for td in tds if "," not in td), None)

    def system(td, p, n, m, seeds):
        return np.mean([perq[(td, p, s)][n][m] for s in seeds], axis=0)

    def seeds_of(td, p):
        return {s for (t, q, s) in perq if t == td and q == p}

    out = []

    def test(kind, td, p, base_td, base_p, n, m):
        common = sorted(seeds_of(td, p) & seeds_of(base_td, base_p))
        if not common:
            return
        a, b = system(td, p, n, m, common), system(base_td, base_p, n, m, common)
        r = paired_randomization_test(a, b, n_resamples=n_resamples, seed=0)
        flagged = sum((td, p, s) in stuck or (base_td, base_p, s) in stuck for s in common)
        out.append({"comparison": kind, "train_domains": td, "p": p, "baseline_train_domains": base_td,
                    "baseline_p": base_p, "eval_set": n, "metric": m, "queries": r["n"], "seeds": len(common),
                    "mean": r["mean_a"], "baseline_mean": r["mean_b"], "diff": r["diff"], "p_value": r["p"],
                    "exact": r["exact"], "stuck_runs": flagged})

    for m in metrics:
        for td in tds:
            for n in sets:
                if _seen(n, td):
                    continue
                for p in ps:
                    if p > 0 and 0.0 in ps:
                        test("p vs 0", td, p, td, 0.0, n, m)
        if single is not None:
            for td in tds:
                if td == single or "," not in td:
                    continue
                for n in sets:
                    if _seen(n, td):
                        continue
                    for p in ps:
                        test("multi vs single", td, p, single, p, n, m)
    for kind in ("p vs 0", "multi vs single"):
        for m in metrics:
            fam = [r for r in out if r["comparison"] == kind and r["metric"] == m]
            for r, adj in zip(fam, holm([r["p_value"] for r in fam])):
                r["p_holm"] = adj
                r["significant"] = bool(adj < alpha)
    fields = ["comparison", "train_domains", "p", "baseline_train_domains", "baseline_p", "eval_set", "metric",
              "queries", "seeds", "mean", "baseline_mean", "diff", "p_value", "exact", "p_holm", "significant",
              "stuck_runs"]
    with open(os.path.join(out_dir, "significance.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(out)
    return out


def summarise_sweep(csv_path: str, out_dir: str, *, reference: str, metrics: Sequence[str] = RERANK_METRICS,
                    n_boot: int = 1000, n_resamples: int = 10_000, title: str = "sweep",
                    seconds: float | None = None, file=None) -> dict:
    """From ``sweep.csv`` (and the cells' ``perquery.json``): the printed/markdown table (mean over seeds; a
    ``†k`` after p counts the seeds whose training ended on the prior), correlations.csv, significance.csv
    (:func:`sweep_significance`), sweep.png, drop.png and multi_vs_single.png."""
    file = sys.stdout if file is None else file
    import csv  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415

    with open(csv_path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    tds = list(dict.fromkeys(r["train_domains"] for r in rows))
    sets = list(dict.fromkeys(r["eval_set"] for r in rows))
    ps = sorted({float(r["p"]) for r in rows})

    def vals(td, n, p, key):
        return [float(r[key]) for r in rows if r["train_domains"] == td and r["eval_set"] == n and float(r["p"]) == p]

    def p_label(td, p):
        k = len({r["seed"] for r in rows if r["train_domains"] == td and float(r["p"]) == p
                 and str(r.get("stuck_on_prior")) == "True"})
        return fmt_p(p) + (f" †{k}" if k else "")

    parts = []
    for m in metrics:
        header = ["training domains", "p", *sets, *(f"drop → {n}" for n in sets if n != reference)]
        body = []
        for td in tds:
            for p in ps:
                body.append([td, p_label(td, p), *(float(np.mean(vals(td, n, p, m))) for n in sets),
                             *(float(np.mean(vals(td, n, p, f"drop_{m}"))) for n in sets if n != reference)])
        parts.append(f"**{m}** (mean over seeds; drop = {reference} − set)\n\n" + markdown_table(header, body))
    corr_rows = []
    for td in tds:
        for n in sets:
            if n == reference:
                continue
            for m in metrics:
                cell = [r for r in rows if r["train_domains"] == td and r["eval_set"] == n]
                x = [float(r["p"]) for r in cell]
                y = [float(r[f"drop_{m}"]) for r in cell]
                s = correlation(x, y, method="spearman", n_boot=n_boot)
                pe = correlation(x, y, method="pearson", n_boot=n_boot)
                corr_rows.append({"train_domains": td, "shifted_set": n, "metric": m, "n": s["n"],
                                  "bootstrap_used": s["boot_used"],
                                  "spearman": s["r"], "spearman_ci_low": s["ci_low"], "spearman_ci_high": s["ci_high"],
                                  "pearson": pe["r"], "pearson_ci_low": pe["ci_low"], "pearson_ci_high": pe["ci_high"]})
    with open(os.path.join(out_dir, "correlations.csv"), "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(corr_rows[0]) if corr_rows else ["train_domains"])
        w.writeheader()
        w.writerows(corr_rows)

    def ci(r, lo, hi):
        return f"{r:+.2f} [{lo:+.2f}, {hi:+.2f}]" if not np.isnan(r) else "n/a (constant, or < 3 points)"

    corr_table = markdown_table(["training domains", "shifted set", "metric", "cells", "resamples used",
                                 "Spearman [95% CI]", "Pearson [95% CI]"],
                                [[c["train_domains"], c["shifted_set"], c["metric"], c["n"], c["bootstrap_used"],
                                  ci(c["spearman"], c["spearman_ci_low"], c["spearman_ci_high"]),
                                  ci(c["pearson"], c["pearson_ci_low"], c["pearson_ci_high"])] for c in corr_rows])
    depth = None
    if os.path.exists(os.path.join(out_dir, "sweep.json")):
        with open(os.path.join(out_dir, "sweep.json"), encoding="utf-8") as fh:
            depth = json.load(fh).get("depth")
    sig = sweep_significance(out_dir, rows, n_resamples=n_resamples, depth=depth)
    left_out = [m for m in metrics if _cannot_differ(m, depth)]
    sig_text = ""
    if sig:
        summary = []
        for kind in ("p vs 0", "multi vs single"):
            for m in dict.fromkeys(r["metric"] for r in sig):
                fam = [r for r in sig if r["comparison"] == kind and r["metric"] == m]
                if fam:
                    up = sum(r["significant"] and r["diff"] > 0 for r in fam)
                    down = sum(r["significant"] and r["diff"] < 0 for r in fam)
                    summary.append([kind, m, len(fam), up, down, min(r["p_holm"] for r in fam),
                                    float(np.mean([r["diff"] for r in fam]))])
        shown = sorted((r for r in sig if r["significant"]), key=lambda r: r["p_holm"])[:30]
        sig_text = ("\n\n**Paired per-query randomization tests on unseen domains** (Holm-corrected per comparison and "
                    "metric, alpha 0.05; per-query score = mean over seeds)\n\n"
                    + markdown_table(["comparison", "metric", "tests", "significant +", "significant −",
                                      "smallest Holm p", "mean difference"], summary))
        if left_out:
            sig_text += (f"\n\nNot tested: {', '.join(left_out)}, whose cut-off is at or above the reranking depth "
                         f"({depth}): every reranker keeps the first stage's candidates, so it cannot differ.")
        if shown:
            sig_text += "\n\n" + markdown_table(
                ["comparison", "training", "p", "baseline", "evaluation set", "metric", "diff", "Holm p"],
                [[r["comparison"], r["train_domains"], fmt_p(r["p"]), f"{r['baseline_train_domains']} p="
                  f"{fmt_p(r['baseline_p'])}", r["eval_set"], r["metric"], f"{r['diff']:+.3f}", f"{r['p_holm']:.3g}"]
                 for r in shown])
    stuck = sorted({(r["train_domains"], fmt_p(float(r["p"])), r["seed"]) for r in rows
                    if str(r.get("stuck_on_prior")) == "True"})
    stuck_text = ("\n\n**Runs whose training ended on the prior** (evaluated, but they learnt no ranking): "
                  + ", ".join(f"{td} p={p} seed {s}" for td, p, s in stuck)) if stuck else ""
    text = (f"# Code-switching frequency sweep: {title}\n\n" + "\n\n".join(parts)
            + f"\n\n**Correlation of p with the drop** ({n_boot} bootstrap resamples of the (p, seed) cells)\n\n"
            + corr_table + sig_text + stuck_text + "\n")
    with open(os.path.join(out_dir, "table.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    plot = _plot_sweep(rows, tds, sets, ps, metrics, os.path.join(out_dir, "sweep.png"), title)
    plots = [plot, _plot_drops(rows, tds, sets, ps, reference, metrics[0], os.path.join(out_dir, "drop.png"), title)]
    shown_metrics = [m for m in ("recall@50", "map") if m in metrics and m not in left_out] or list(metrics[:1])
    multi = _plot_multi(rows, tds, sets, ps, shown_metrics,
                        os.path.join(out_dir, "multi_vs_single.png"), title)
    if multi:
        plots.append(multi)
    print("\n" + text, file=file)
    tail = f" in {seconds / 60:.1f} min" if seconds is not None else ""
    print(f"sweep: {len(rows)} rows{tail}; {csv_path}, {os.path.join(out_dir, 'correlations.csv')}, "
          f"{os.path.join(out_dir, 'significance.csv')}, {os.path.join(out_dir, 'table.md')}, {', '.join(plots)}",
          file=file)
    return {"rows": len(rows), "csv": csv_path, "table": text, "plot": plot, "plots": plots,
            "correlations": corr_rows, "significance": sig, "seconds": seconds}


def _plot_sweep(rows, tds, sets, ps, metrics, path, title) -> str:
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    import numpy as np  # noqa: PLC0415

    fig, axes = plt.subplots(len(tds), len(metrics), figsize=(3.6 * len(metrics), 3.0 * len(tds)), squeeze=False)
    for i, td in enumerate(tds):
        for j, m in enumerate(metrics):
            ax = axes[i][j]
            for n in sets:
                ys = [[float(r[m]) for r in rows if r["train_domains"] == td and r["eval_set"] == n
                       and float(r["p"]) == p] for p in ps]
                mean = [np.mean(y) if y else np.nan for y in ys]
                lo = [mean[k] - min(y) if y else 0 for k, y in enumerate(ys)]
                hi = [max(y) - mean[k] if y else 0 for k, y in enumerate(ys)]
                ax.errorbar(ps, mean, yerr=[lo, hi], marker="o", capsize=3, label=n)
            ax.set_title(f"{m} | train: {td}", fontsize=9)
            ax.set_xlabel("code-switching probability p")
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(title="evaluation set", fontsize=8)
    fig.suptitle(f"{title}: metric vs p (mean, min-max over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _mean_spread(rows, td, n, p, key):
    import numpy as np  # noqa: PLC0415

    y = [float(r[key]) for r in rows if r["train_domains"] == td and r["eval_set"] == n and float(r["p"]) == p]
    if not y:
        return np.nan, 0.0, 0.0
    m = float(np.mean(y))
    return m, m - min(y), max(y) - m


def _plot_drops(rows, tds, sets, ps, reference, metric, path, title) -> str:
    """One panel per training setting: the drop of ``metric`` from the reference set to each other set vs p."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, len(tds), figsize=(4.6 * len(tds), 3.8), squeeze=False)
    for ax, td in zip(axes[0], tds):
        for n in sets:
            if n == reference:
                continue
            stats = [_mean_spread(rows, td, n, p, f"drop_{metric}") for p in ps]
            ax.errorbar(ps, [s[0] for s in stats], yerr=[[s[1] for s in stats], [s[2] for s in stats]], marker="o",
                        capsize=2, label=n, alpha=0.8, linestyle="--" if _seen(n, td) else "-")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_title(f"train: {td}", fontsize=9)
        ax.set_xlabel("code-switching probability p")
        ax.set_ylabel(f"drop of {metric} ({reference} − set)")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=6, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.suptitle(f"{title}: in-domain → shifted drop vs p (mean, min-max over seeds; dashed: a domain the "
                 "setting trained on)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_multi(rows, tds, sets, ps, metrics, path, title) -> str | None:
    """One panel per evaluation set unseen by every training setting and metric: each setting's metric vs p."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    if len(tds) < 2:
        return None
    unseen = [n for n in sets if not any(_seen(n, td) for td in tds)]
    if not unseen:
        return None
    cols = min(4, len(unseen))
    nrows = -(-len(unseen) // cols)
    fig, axes = plt.subplots(nrows * len(metrics), cols, figsize=(3.6 * cols, 2.9 * nrows * len(metrics)),
                             squeeze=False)
    for k, (m, n) in enumerate((m, n) for m in metrics for n in unseen):
        mi, ni = divmod(k, len(unseen))
        ax = axes[mi * nrows + ni // cols][ni % cols]
        for td in tds:
            stats = [_mean_spread(rows, td, n, p, m) for p in ps]
            ax.errorbar(ps, [s[0] for s in stats], yerr=[[s[1] for s in stats], [s[2] for s in stats]], marker="o",
                        capsize=2, label=td)
        ax.set_title(f"{n}: {m}", fontsize=8)
        ax.set_xlabel("p", fontsize=8)
        ax.grid(alpha=0.3)
    for mi in range(len(metrics)):  # the empty panels of each metric's block
        for ni in range(len(unseen), nrows * cols):
            axes[mi * nrows + ni // cols][ni % cols].axis("off")
    axes[0][0].legend(title="training domains", fontsize=6, title_fontsize=7)
    fig.suptitle(f"{title}: multi- vs single-domain training on unseen domains (mean, min-max over seeds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
