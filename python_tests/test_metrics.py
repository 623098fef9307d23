"""fastot.metrics against hand-computed values and against trec_eval (pytrec_eval), which no one here wrote."""

import math
import random

import pytest
import torch

from fastot import metrics as M


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


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_trec_eval(seed):
    pytrec_eval = pytest.importorskip("pytrec_eval")
    rng = random.Random(seed)
    run, qrels = {}, {}
    for q in range(25):
        docs = [f"d{j}" for j in range(rng.randint(5, 60))]
        # distinct scores (trec_eval breaks ties by docid; we do too for dict runs, but keep the test clean)
        scores = rng.sample(range(10_000), len(docs))
        run[f"q{q}"] = {d: s / 100 for d, s in zip(docs, scores)}
        rel = rng.sample(docs + [f"unretrieved{q}-{k}" for k in range(3)], rng.randint(1, 6))
        qrels[f"q{q}"] = {d: rng.randint(1, 3) for d in rel}
    ev = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "map", "ndcg_cut.10", "recall.1", "recall.10",
                                                "recall.50", "P.5", "map_cut.10"})
    ref = ev.evaluate(run)  # trec_eval keeps some sums in float32: agreement to 1e-6
    mean = lambda key: sum(v[key] for v in ref.values()) / len(ref)  # noqa: E731
    got = M.evaluate(run, qrels, ["mrr", "map", "ndcg@10", "recall@1", "recall@10", "recall@50", "precision@5",
                                  "map@10"])
    assert got["mrr"] == pytest.approx(mean("recip_rank"), abs=1e-6)
    assert got["map"] == pytest.approx(mean("map"), abs=1e-6)
    assert got["ndcg@10"] == pytest.approx(mean("ndcg_cut_10"), abs=1e-6)
    assert got["recall@1"] == pytest.approx(mean("recall_1"), abs=1e-6)
    assert got["recall@10"] == pytest.approx(mean("recall_10"), abs=1e-6)
    assert got["recall@50"] == pytest.approx(mean("recall_50"), abs=1e-6)
    assert got["precision@5"] == pytest.approx(mean("P_5"), abs=1e-6)
    assert got["map@10"] == pytest.approx(mean("map_cut_10"), abs=1e-6)


def test_ties_in_dict_runs_follow_trec_eval():
    pytrec_eval = pytest.importorskip("pytrec_eval")
    run = {"q": {"a": 1.0, "b": 1.0, "c": 1.0, "d": 0.5}}
    qrels = {"q": {"a": 1, "d": 1}}
    ref = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank", "map"}).evaluate(run)["q"]
    got = M.evaluate(run, qrels, ["mrr", "map"])
    assert got["mrr"] == pytest.approx(ref["recip_rank"])
    assert got["map"] == pytest.approx(ref["map"])


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
