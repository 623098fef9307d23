"""BM25 against its formula by hand and against bm25s (Lucene method), which no one here wrote; the IR file
readers on well-formed and malformed files."""

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastot.ir import data as irdata
from fastot.ir import metrics
from fastot.ir.bm25 import BM25, tokenize

MAFAND = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa")
DOCS = ["the river is long", "a market by the river", "people of the city", "the the the river", ""]


def test_hand_computed():
    bm = BM25().index(DOCS)
    n, lengths = 5, [4, 5, 4, 4, 0]
    avgdl = sum(lengths) / n
    idf = lambda df: math.log(1 + (n - df + 0.5) / (df + 0.5))  # noqa: E731
    norm = lambda dl: 0.9 * (1 - 0.4 + 0.4 * dl / avgdl)  # noqa: E731
    want = [idf(3) / (1 + norm(4)), idf(3) / (1 + norm(5)), idf(1) / (1 + norm(4)), idf(3) / (1 + norm(4)), 0.0]
    np.testing.assert_allclose(bm.scores("River, city!"), want, rtol=1e-6)
    # "the" occurs 3 times in doc 3: tf saturates
    np.testing.assert_allclose(bm.scores("the")[3], idf(4) * 3 / (3 + norm(4)), rtol=1e-6)
    assert bm.scores("unknownword").tolist() == [0.0] * 5


def test_search_order_ties_and_k():
    bm = BM25().index(DOCS)
    idx, val = bm.search(["river city", "nothing here"], k=10)
    assert idx.shape == (2, 5) and idx.dtype == torch.int64
    assert idx[0].tolist() == [2, 0, 3, 1, 4]  # docs 0 and 3 tie: lower index first
    assert torch.all(val[0][:-1] >= val[0][1:])
    assert idx[1].tolist() == [0, 1, 2, 3, 4] and val[1].abs().max() == 0


def _bm25s_scores(docs_tokens, query_tokens, k1, b):
    bm25s = pytest.importorskip("bm25s")
    r = bm25s.BM25(method="lucene", k1=k1, b=b)
    r.index(docs_tokens, show_progress=False)
    return r.get_scores(query_tokens)


@pytest.mark.parametrize("k1,b", [(0.9, 0.4), (1.2, 0.75), (0.5, 0.0)])
def test_matches_bm25s_lucene(k1, b):
    if os.path.isdir(MAFAND):
        with open(os.path.join(MAFAND, "dev.en"), encoding="utf-8") as fh:
            docs = [line.strip() for _, line in zip(range(400), fh)]
    else:
        g = np.random.default_rng(0)
        words = [f"w{i}" for i in range(300)]
        docs = [" ".join(g.choice(words, size=g.integers(3, 30))) for _ in range(400)]
    bm = BM25(k1=k1, b=b).index(docs)
    for q in docs[:25:3]:
        toks = tokenize(q) + tokenize(q)[:2]  # a repeated token counts once per occurrence in both
        want = _bm25s_scores([tokenize(d) for d in docs], toks, k1, b)
        np.testing.assert_allclose(bm.scores(" ".join(toks)), want, rtol=2e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n_docs=st.integers(1, 60), k=st.integers(1, 70))
def test_search_is_the_full_sort_cut_at_k(seed, n_docs, k):
    """search takes the top k from the documents scoring at least the k-th best score; that equals sorting every
    document (score descending, index ascending) and cutting at k, ties at the cut included (few words: many
    documents tie)."""
    g = np.random.default_rng(seed)
    words = ["a", "b", "c", "d", "e"]
    docs = [" ".join(g.choice(words, size=g.integers(1, 6))) for _ in range(n_docs)]
    queries = [" ".join(g.choice(words, size=g.integers(1, 4))) for _ in range(5)]
    bm = BM25().index(docs)
    idx, val = bm.search(queries, k=k)
    for i, q in enumerate(queries):
        s = bm.scores(q)
        full = np.lexsort((np.arange(len(s)), -s))[:k]
        assert idx[i].tolist() == full.tolist() and np.array_equal(val[i].numpy(), s[full])


def test_stopwords_and_custom_tokenizer():
    bm = BM25(stopwords={"the"}).index(DOCS)
    assert bm.scores("the").max() == 0
    bm2 = BM25(tokenizer=str.split).index(["River river", "river"])
    assert bm2.scores("river")[0] > 0 and bm2.scores("River")[1] == 0


def test_bitext_retrieval_with_bm25_and_metrics():
    docs = ["mto mrefu", "soko la mji", "watu wa mji", "maji safi"]
    queries = ["mrefu mto", "soko", "watu", "maji"]  # same-language, each query's words in its document
    idx, val = BM25().index(docs).search(queries, k=4)
    scores = torch.full((4, 4), -1.0).scatter(1, idx, val)
    assert metrics.evaluate(scores, torch.arange(4), ["mrr@10"])["mrr@10"] == 1.0


def test_bm25_bad_input():
    with pytest.raises(ValueError, match="k1"):
        BM25(k1=-1)
    with pytest.raises(ValueError, match="b"):
        BM25(b=2)
    with pytest.raises(RuntimeError, match="index"):
        BM25().scores("x")
    with pytest.raises(TypeError, match="documents"):
        BM25().index("a single string")
    with pytest.raises(ValueError, match="k"):
        BM25().index(DOCS).search(["x"], k=0)


def test_readers(tmp_path):
    (tmp_path / "q.tsv").write_text("q1\triver bank\nq2\tmarket\n\n")
    (tmp_path / "c.tsv").write_text("d1\tthe river\nd2\tTitle\tthe market\n")
    (tmp_path / "c.jsonl").write_text('{"_id": "d1", "title": "", "text": "the river"}\n'
                                      '{"id": 7, "title": "T", "text": "x"}\n')
    (tmp_path / "qrels.trec").write_text("q1 0 d1 1\nq1 0 d2 0\nq2 0 d2 2\n")
    (tmp_path / "qrels.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t1\n")
    (tmp_path / "t.tsv").write_text("river\tthe river\tthe market\n")
    assert irdata.read_queries(tmp_path / "q.tsv") == {"q1": "river bank", "q2": "market"}
    assert irdata.read_collection(tmp_path / "c.tsv") == {"d1": "the river", "d2": "Title. the market"}
    assert irdata.read_collection(tmp_path / "c.jsonl") == {"d1": "the river", "7": "T. x"}
    assert irdata.read_qrels(tmp_path / "qrels.trec") == {"q1": {"d1": 1, "d2": 0}, "q2": {"d2": 2}}
    assert irdata.read_qrels(tmp_path / "qrels.tsv") == {"q1": {"d1": 1}}
    assert irdata.read_triples(tmp_path / "t.tsv") == [("river", "the river", "the market")]
    run = {"q1": {"d1": 0.5, "d2": 0.9}, "q2": {"d2": 1.0}}
    irdata.write_run(tmp_path / "run.trec", run)
    lines = (tmp_path / "run.trec").read_text().splitlines()
    assert lines[0] == "q1 Q0 d2 1 0.900000 fastot" and len(lines) == 3
    pytrec_eval = pytest.importorskip("pytrec_eval")
    with open(tmp_path / "run.trec") as fh:
        parsed_run = pytrec_eval.parse_run(fh)
    with open(tmp_path / "qrels.trec") as fh:
        parsed_qrels = pytrec_eval.parse_qrel(fh)
    assert parsed_run == run and parsed_qrels == irdata.read_qrels(tmp_path / "qrels.trec")


@pytest.mark.parametrize("reader,content,match", [
    ("read_queries", "no tab here\n", "line 1"),
    ("read_collection", "d1\ta\tb\tc\n", "line 1"),
    ("read_qrels", "q1 0 d1 1\nq1 0 d2 x\n", "line 2"),
    ("read_triples", "q\tp\n", "line 1"),
])
def test_readers_name_the_bad_line(tmp_path, reader, content, match):
    p = tmp_path / "f.tsv"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        getattr(irdata, reader)(p)
    with pytest.raises(FileNotFoundError):
        getattr(irdata, reader)(tmp_path / "missing.tsv")
