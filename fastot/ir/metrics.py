"""Retrieval metrics: MRR@k, Recall@k, Precision@k, MAP, nDCG@k, with ``trec_eval``'s definitions.

Two kinds of run, two engines:

- a dense score matrix (``scores[q, d]``, every document ranked), what fastot's loops evaluate: computed here, in
  torch on the scores' device, from the rank of each relevant document (no [Q, D] ranking is sorted and no
  per-query Python runs; ``trec_eval`` itself is the test oracle);
- a TREC-style dict run (``{qid: {docid: score}}``, documents not in the run are never ranked): handed to
  ``trec_eval`` through ``pytrec_eval`` (the ``ir`` extra), so a file run is scored by the reference tool.

The definitions (``trec_eval``'s):

- ``recall@k``: relevant documents in the top k / relevant documents;
- ``precision@k``: relevant documents in the top k / k;
- ``mrr@k``: 1 / rank of the first relevant document if it is in the top k, else 0 (``mrr`` = no cut-off);
- ``map``: average precision over all relevant documents (unretrieved ones add 0), the ``map`` of trec_eval;
  ``map@k`` cuts the ranking at k but still divides by the number of relevant documents (``map_cut``);
- ``ndcg@k``: sum of grade / log2(rank + 1) over the top k, divided by the same sum of the ideal ranking
  (linear gains, trec_eval's ``ndcg_cut``).

A document is relevant when its grade is > 0. The mean is over every query of the qrels, as ``trec_eval -c``
computes it: a query without any relevant document, or missing from a dict run, scores 0. Ties: a score matrix
ranks the lower document index first; a dict run ranks, as trec_eval does, the larger docid string first.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import torch

DEFAULT_METRICS = ("mrr@10", "recall@1", "recall@10", "recall@50", "map", "ndcg@10")
_NAME = re.compile(r"^(mrr|recall|precision|map|ndcg)(?:@([1-9][0-9]*))?$")


def _parse(metrics: Sequence[str]) -> list[tuple[str, str, int | None]]:
    if isinstance(metrics, str):
        metrics = (metrics,)
    out = []
    for m in metrics:
        hit = _NAME.match(m) if isinstance(m, str) else None
        if hit is None:
            raise ValueError(f"metrics: unknown metric {m!r}; expected mrr, map, mrr@k, recall@k, precision@k, "
                             "map@k or ndcg@k (k >= 1)")
        kind, k = hit.group(1), None if hit.group(2) is None else int(hit.group(2))
        if kind in ("recall", "precision", "ndcg") and k is None:
            raise ValueError(f"metrics: {m!r} needs a cut-off, e.g. {kind}@10")
        out.append((m, kind, k))
    return out


def from_ranks(ranks: torch.Tensor, gains: torch.Tensor, metrics: Sequence[str] = DEFAULT_METRICS,
               ideal_gains: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-query metrics from the ranks of the relevant documents.

    Args:
        ranks: [Q, R] 1-based rank of each relevant document (``inf`` = not retrieved; padding entries have
            gain 0 and any rank).
        gains: [Q, R] relevance grades (> 0 for the relevant documents, 0 for padding).
        ideal_gains: [Q, R'] grades for the ideal ranking (default ``gains``: all relevant documents are known).

    Returns:
        ``{name: [Q] float64}``; queries without a relevant document score 0.
    """
    ranks = ranks.to(torch.float64)
    gains = gains.to(torch.float64)
    rel = gains > 0
    n_rel = rel.sum(1)
    ideal = (gains if ideal_gains is None else ideal_gains.to(torch.float64)).sort(1, descending=True).values
    ranks = torch.where(rel, ranks, torch.full_like(ranks, math.inf))
    # rank-order of each relevant document among the relevant ones: the precision at its rank is (that + 1) / rank
    before = (ranks[:, None, :] < ranks[:, :, None]) & rel[:, None, :]
    n_above = before.sum(2).to(torch.float64)
    out: dict[str, torch.Tensor] = {}
    for name, kind, k in _parse(metrics):
        cut = rel & (ranks <= (k if k is not None else math.inf))
        if kind == "recall":
            val = cut.sum(1) / n_rel.clamp_min(1)
        elif kind == "precision":
            val = cut.sum(1).to(torch.float64) / k
        elif kind == "mrr":
            val = torch.where(cut, 1.0 / ranks, torch.zeros_like(ranks)).amax(1) if ranks.shape[1] else \
                torch.zeros(ranks.shape[0], dtype=torch.float64)
        elif kind == "map":
            prec = torch.where(cut, (n_above + 1) / ranks, torch.zeros_like(ranks))
            val = prec.sum(1) / n_rel.clamp_min(1)
        else:  # ndcg
            dcg = torch.where(cut, gains / torch.log2(ranks + 1), torch.zeros_like(ranks)).sum(1)
            pos = torch.arange(1, ideal.shape[1] + 1, dtype=torch.float64)
            idcg = torch.where(pos <= k, ideal / torch.log2(pos + 1), torch.zeros_like(ideal)).sum(1)
            val = dcg / idcg.clamp_min(1e-300)
        out[name] = torch.where(n_rel > 0, val.to(torch.float64), torch.zeros_like(val, dtype=torch.float64))
    return out


def ranks_of(scores: torch.Tensor, qrels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ranks and grades of the relevant documents of a dense run.

    Args:
        scores: [Q, D] (higher = better; NaN ranks last).
        qrels: [Q, D] grades (0 = not relevant), or a [Q] long tensor: the one relevant document of each query
            (grade 1), as in bitext retrieval where document q is the translation of query q.

    Returns:
        (ranks [Q, R], gains [Q, R]) for :func:`from_ranks`, R = the largest number of relevant documents.
    """
    if not isinstance(scores, torch.Tensor) or scores.dim() != 2:
        raise ValueError(f"scores: expected a [Q, D] tensor, got {getattr(scores, 'shape', type(scores).__name__)}")
    Q, D = scores.shape
    s = torch.nan_to_num(scores.detach().to(torch.float64), nan=-math.inf)
    if isinstance(qrels, torch.Tensor) and qrels.dim() == 1:
        if qrels.shape[0] != Q or qrels.is_floating_point():
            raise ValueError(f"qrels: a 1-d qrels must be [Q={Q}] document indices, got {qrels.dtype} {list(qrels.shape)}")
        if Q and (int(qrels.min()) < 0 or int(qrels.max()) >= D):
            raise ValueError(f"qrels: document indices must lie in [0, {D}), got {int(qrels.min())}..{int(qrels.max())}")
        idx = qrels.to(device=s.device, dtype=torch.long)[:, None]
        gains = torch.ones(Q, 1, dtype=torch.float64)
    else:
        if not isinstance(qrels, torch.Tensor) or tuple(qrels.shape) != (Q, D):
            raise ValueError(f"qrels: expected a [Q, D] = [{Q}, {D}] grade tensor or [Q] indices, got "
                             f"{getattr(qrels, 'shape', type(qrels).__name__)}")
        g = qrels.detach().to(device=s.device, dtype=torch.float64)
        R = max(int((g > 0).sum(1).max()) if Q else 0, 1)
        gains, idx = g.topk(R, dim=1)  # the relevant documents first (padding has grade <= 0)
        gains = gains.clamp_min(0).cpu()
    s_rel = s.gather(1, idx)  # [Q, R]
    doc = torch.arange(D, device=s.device)
    ranks = []
    step = max(1, 2**24 // max(D * idx.shape[1], 1))  # queries per chunk: at most 16M comparisons at a time
    for q0 in range(0, Q, step):
        sq, rq, iq = s[q0:q0 + step, None, :], s_rel[q0:q0 + step, :, None], idx[q0:q0 + step, :, None]
        # rank = 1 + documents scored higher + documents with the same score and a lower index
        ranks.append(1 + (sq > rq).sum(2) + ((sq == rq) & (doc < iq)).sum(2))
    ranks = torch.cat(ranks) if ranks else torch.zeros(0, idx.shape[1], dtype=torch.long)
    return ranks.cpu().to(torch.float64), gains


def _mean(per_query: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(v.mean()) if v.numel() else math.nan for name, v in per_query.items()}


def evaluate(run, qrels, metrics: Sequence[str] = DEFAULT_METRICS, per_query: bool = False):
    """Mean retrieval metrics of a run.

    Args:
        run: [Q, D] score tensor, or ``{qid: {docid: score}}``.
        qrels: for a tensor run, [Q, D] grades or [Q] relevant indices (see :func:`ranks_of`); for a dict run,
            ``{qid: {docid: grade}}`` with integer grades (scored by trec_eval: needs ``pytrec_eval``).
        metrics: names such as ``"mrr@10"``, ``"recall@50"``, ``"map"``, ``"ndcg@10"`` (default
            :data:`DEFAULT_METRICS`).
        per_query: also return the per-query values (``{name: [Q] tensor}``; for a dict run the query order
            is ``sorted(qrels)``).

    Returns:
        ``{name: float}`` (and the per-query dict when ``per_query``).
    """
    _parse(metrics)
    if isinstance(run, torch.Tensor):
        pq = from_ranks(*ranks_of(run, qrels), metrics)
    elif isinstance(run, Mapping) and isinstance(qrels, Mapping):
        pq = _dict_eval(run, qrels, metrics)
    else:
        raise TypeError(f"run: expected a [Q, D] tensor or a {{qid: {{docid: score}}}} dict (with dict qrels), "
                        f"got run={type(run).__name__}, qrels={type(qrels).__name__}")
    return (_mean(pq), pq) if per_query else _mean(pq)


# trec_eval's measure and result names for ours; mrr@k is derived from recip_rank (see _dict_eval)
_TREC = {"recall": ("recall.{k}", "recall_{k}"), "precision": ("P.{k}", "P_{k}"), "map": ("map", "map"),
         "map@": ("map_cut.{k}", "map_cut_{k}"), "ndcg": ("ndcg_cut.{k}", "ndcg_cut_{k}"),
         "mrr": ("recip_rank", "recip_rank")}


def _dict_eval(run: Mapping, qrels: Mapping, metrics: Sequence[str]) -> dict[str, torch.Tensor]:
    """Per-query metrics of a dict run from trec_eval (pytrec_eval), in the order ``sorted(qrels)``.

    ``mrr@k`` is trec_eval's ``recip_rank`` where the first relevant document is in the top k (1/rank >= 1/k),
    else 0: trec_eval has no cut-off for it, and ir-measures' ``RR@k`` (its msmarco provider) orders tied
    scores differently from trec_eval."""
    try:
        import pytrec_eval  # noqa: PLC0415
    except ImportError as exc:
        raise ImportError("a dict run is scored by trec_eval through pytrec_eval: pip install 'fastot[ir]' "
                          "(or pass a [Q, D] score tensor)") from exc
    parsed = _parse(metrics)
    q_str = {}
    for q, docs in qrels.items():
        if not isinstance(docs, Mapping):
            raise ValueError(f"qrels: expected {{qid: {{docid: grade}}}}, got {type(docs).__name__} for query {q!r}")
        grades = {}
        for d, g in docs.items():
            if isinstance(g, bool) or not isinstance(g, (int, float)) or g != int(g):
                raise ValueError(f"qrels: grades must be integers (trec_eval's), got {g!r} for ({q!r}, {d!r})")
            grades[str(d)] = int(g)
        q_str[str(q)] = grades
    r_str = {}
    for q, docs in run.items():
        if not isinstance(docs, Mapping):
            raise ValueError(f"run: expected {{qid: {{docid: score}}}}, got {type(docs).__name__} for query {q!r}")
        if str(q) in q_str and docs:
            r_str[str(q)] = {str(d): float(v) for d, v in docs.items()}
    qids = sorted(qrels)
    measures = {}
    for name, kind, k in parsed:
        key = "map@" if kind == "map" and k is not None else kind
        measure, result = _TREC[key]
        measures[name] = (measure.format(k=k), result.format(k=k))
    scored = {}
    if r_str and q_str:
        scored = pytrec_eval.RelevanceEvaluator(q_str, {m for m, _ in measures.values()}).evaluate(r_str)
    out = {}
    for name, kind, k in parsed:
        result = measures[name][1]
        val = torch.tensor([scored.get(str(q), {}).get(result, 0.0) for q in qids], dtype=torch.float64)
        if kind == "mrr" and k is not None:  # recip_rank is 1/rank: the first relevant document within the top k
            val = torch.where(val * k >= 1 - 1e-9, val, torch.zeros_like(val))
        out[name] = val
    return out
