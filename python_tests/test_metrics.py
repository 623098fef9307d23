"""fastot.ir.metrics against hand-computed values and against trec_eval (pytrec_eval), which no one here wrote."""

import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastot.ir import metrics as M


def test_hand_computed_single_relevant():
    # query 0: relevant doc 2 is ranked 2nd; query 1: relevant doc 1 ties doc 0 (lower index first) -> 3rd;
    # query 2: relevant doc 3 ranked 1st
    scores = torch.tensor([[0.1, 0.9, 0.5, 0.3], [0.2, 0.2, 0.9, 0.1], [0.0, 0.1, 0.2, 0.8]])
    got = M.evaluate(scores, torch.tensor([2, 1, 3]),
                     ["mrr@10", "mrr@2", "recall@1", "recall@2", "precision@2", "map", "ndcg@10", "ndcg@2", "mrr"])
    assert got["mrr@10"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert got["mrr"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)
    assert got["mrr@2"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["recall@2"] == pytest.approx(2 / 3)
    assert got["precision@2"] == pytest.approx((0.5 + 0 + 0.5) / 3)
    assert got["map"] == pytest.approx((1 / 2 + 1 / 3 + 1) / 3)  # one relevant document: AP = 1 / rank
    ndcg = (1 / math.log2(3) + 1 / math.log2(4) + 1) / 3
    assert got["ndcg@10"] == pytest.approx(ndcg)
    assert got["ndcg@2"] == pytest.approx((1 / math.log2(3) + 0 + 1) / 3)


def test_hand_computed_graded_several_relevant():
    # ranking: d0 (grade 0), d1 (grade 2), d2 (0), d3 (1); d4 (grade 3) never ranked (score NaN ranks last of 5)
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, float("nan")]])
    qrels = torch.tensor([[0, 2, 0, 1, 3]])
    got = M.evaluate(scores, qrels, ["map", "ndcg@4", "recall@4", "mrr@10", "precision@4"])
    # relevant at ranks 2, 4, 5: precisions 1/2, 2/4, 3/5
    assert got["map"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
    dcg = 2 / math.log2(3) + 1 / math.log2(5)
    idcg = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert got["ndcg@4"] == pytest.approx(dcg / idcg)
    assert got["recall@4"] == pytest.approx(2 / 3)
    assert got["mrr@10"] == pytest.approx(1 / 2)
    assert got["precision@4"] == pytest.approx(2 / 4)


def test_queries_without_relevant_documents_score_zero():
    scores = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    qrels = torch.tensor([[1, 0], [0, 0]])
    got, pq = M.evaluate(scores, qrels, ["mrr@10", "ndcg@10", "map"], per_query=True)
    assert got == {"mrr@10": 0.5, "ndcg@10": 0.5, "map": 0.5}  # trec_eval -c: every judged query counts
    assert pq["mrr@10"].tolist() == [1.0, 0.0]


def test_judged_without_relevant_and_missing_queries_as_trec_eval_c():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    qrels = {"q1": {"a": 1, "b": 0}, "q2": {"c": 0}, "q3": {"d": 2}}
    run = {"q1": {"a": 0.1, "b": 0.9}, "q2": {"c": 1.0}}  # q3 is missing from the run
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "map", "ndcg_cut.10"}).evaluate(run)
    got = M.evaluate(run, qrels, ["mrr", "map", "ndcg@10"])
    for ours, theirs in (("mrr", "recip_rank"), ("map", "map"), ("ndcg@10", "ndcg_cut_10")):
        # pytrec_eval reports the queries of the run; -c adds the missing ones as 0
        assert got[ours] == pytest.approx(sum(v[theirs] for v in ref.values()) / len(qrels), abs=1e-6)


def test_dense_and_dict_runs_agree():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(20, 30, generator=g)
    qrels = (torch.rand(20, 30, generator=g) < 0.1).long() * torch.randint(1, 4, (20, 30), generator=g)
    qrels[:, 0] += (qrels.sum(1) == 0).long()  # every query has a relevant document
    names = ["mrr@10", "recall@5", "map", "ndcg@10", "precision@3", "map@5"]
    dense = M.evaluate(scores, qrels, names)
    run = {f"q{i}": {f"d{j:02d}": float(scores[i, j]) for j in range(30)} for i in range(20)}
    qd = {f"q{i}": {f"d{j:02d}": int(qrels[i, j]) for j in range(30) if qrels[i, j] > 0} for i in range(20)}
    assert M.evaluate(run, qd, names) == pytest.approx(dense)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_q=st.integers(1, 12), n_d=st.integers(1, 40), levels=st.integers(1, 8),
       k=st.sampled_from([1, 3, 10]))
def test_dense_metrics_against_trec_eval(seed, n_q, n_d, levels, k):
    """fastot's own engine (dense score matrices, ranks in torch) against trec_eval on the same run written as a
    dict, ties included: scores take few levels, and the docids are named so that trec_eval's tie order (larger
    docid first) is the matrix's (lower index first)."""
    pytrec_eval = pytest.importorskip("pytrec_eval")
    g = torch.Generator().manual_seed(seed)
    scores = torch.randint(0, levels, (n_q, n_d), generator=g).double()
    grades = (torch.rand(n_q, n_d, generator=g) < 0.2).long() * torch.randint(1, 4, (n_q, n_d), generator=g)
    name = lambda j: f"d{n_d - 1 - j:03d}"  # noqa: E731
    run = {f"q{i}": {name(j): float(scores[i, j]) for j in range(n_d)} for i in range(n_q)}
    qrels = {f"q{i}": {name(j): int(grades[i, j]) for j in range(n_d)} for i in range(n_q)}
    names = ["mrr", f"mrr@{k}", "map", f"map@{k}", f"ndcg@{k}", f"recall@{k}", f"precision@{k}"]
    got = M.evaluate(scores, grades, names, per_query=True)[1]
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "map", f"map_cut.{k}", f"ndcg_cut.{k}",
                                                 f"recall.{k}", f"P.{k}"}).evaluate(run)
    for i in range(n_q):
        r = ref[f"q{i}"]
        rr = r["recip_rank"]
        want = {"mrr": rr, f"mrr@{k}": rr if rr * k >= 1 - 1e-9 else 0.0, "map": r["map"],
                f"map@{k}": r[f"map_cut_{k}"], f"ndcg@{k}": r[f"ndcg_cut_{k}"], f"recall@{k}": r[f"recall_{k}"],
                f"precision@{k}": r[f"P_{k}"]}
        for m in names:  # trec_eval keeps some sums in float32
            assert float(got[m][i]) == pytest.approx(want[m], abs=2e-6), (m, i)


def test_dict_mrr_cutoff_against_ir_measures():
    """A dict run's mrr@k comes from trec_eval's uncut recip_rank (see fastot.ir.metrics._dict_eval); ir-measures'
    RR@k (its msmarco provider) is the peer on runs without tied scores, where the two orders agree."""
    ir_measures = pytest.importorskip("ir_measures")
    rng = random.Random(3)
    run, qrels = {}, {}
    for q in range(40):
        docs = [f"d{j}" for j in range(rng.randint(1, 30))]
        run[f"q{q}"] = {d: s / 7 for d, s in zip(docs, rng.sample(range(1000), len(docs)))}
        qrels[f"q{q}"] = {d: 1 for d in rng.sample(docs + ["missing"], rng.randint(1, min(3, len(docs) + 1)))}
    for k in (1, 5, 10):
        want = {m.query_id: m.value for m in ir_measures.iter_calc([ir_measures.RR @ k], qrels, run)}
        got = M.evaluate(run, qrels, [f"mrr@{k}"], per_query=True)[1][f"mrr@{k}"]
        assert got.tolist() == pytest.approx([want[q] for q in sorted(qrels)], abs=1e-9)


def test_dict_qrels_need_integer_grades():
    with pytest.raises(ValueError, match="qrels: grades must be integers"):
        M.evaluate({"q": {"a": 1.0}}, {"q": {"a": 0.5}}, ["map"])
    assert M.evaluate({}, {"q": {"a": 1}}, ["map", "mrr@10"]) == {"map": 0.0, "mrr@10": 0.0}


def test_chunked_ranks_match_one_shot():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(700, 3000, generator=g).round(decimals=1)  # many ties
    qrels = torch.randint(0, 3000, (700,), generator=g)
    ranks, _ = M.ranks_of(scores, qrels)  # 8 chunks of 5592 // 1 ... queries
    s = scores.double()
    sr = s.gather(1, qrels[:, None])
    expect = 1 + (s > sr).sum(1) + ((s == sr) & (torch.arange(3000) < qrels[:, None])).sum(1)
    assert torch.equal(ranks[:, 0], expect.double())


@pytest.mark.parametrize("name", ["mrr@0", "recall", "ndcg", "hits@10", "map@-1", 3])
def test_bad_metric_names(name):
    with pytest.raises(ValueError, match="metric"):
        M.evaluate(torch.zeros(1, 2), torch.tensor([0]), [name])


def test_bad_qrels():
    with pytest.raises(ValueError, match="qrels"):
        M.evaluate(torch.zeros(2, 3), torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="qrels"):
        M.evaluate(torch.zeros(2, 3), torch.zeros(2, 2))
    with pytest.raises(ValueError, match="scores"):
        M.evaluate(torch.zeros(3), torch.tensor([0]))
    with pytest.raises(TypeError, match="run"):
        M.evaluate([[1.0]], {"q": {"d": 1}})
