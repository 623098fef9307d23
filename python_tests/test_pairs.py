"""Reranker training examples built from English sentences: queries from content words, BM25 hard negatives."""

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fastot.ir.bm25 import tokenize
from fastot.train import build_training_examples, content_words
from fastot.train.pairs import spread_queries

MAFAND = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa")
SENTS = ["The government said the river water is safe for children.",
         "Police in the city said new schools will open this year.",
         "The president visited the market and met people from the country.",
         "Farmers sold maize at the market near the river.",
         "Children in the city schools received books.",
         "Rain flooded the river banks in 2020.",
         "It is so.",
         "",
         "The government said the river water is safe for children."]  # a duplicate of line 0


def test_content_words():
    assert content_words("The river's 2020 floods hit Dar es Salaam.") == ["river", "floods", "hit", "dar", "salaam"]


def test_examples_are_well_formed_and_seeded():
    ex = build_training_examples(SENTS, n_negatives=3, query_words=(2, 4), seed=1)
    assert [e.source_index for e in ex] == [0, 1, 2, 3, 4, 5, 8]  # "It is so." has no content word
    for e in ex:
        words = e.query.split()
        assert 2 <= len(words) <= 4
        cw = content_words(e.positive)
        it = iter(cw)
        assert all(w in it for w in words)  # a subsequence of the content words: sampled in sentence order
        assert len(e.negatives) == 3 and len(set(e.negatives)) == 3
        assert e.positive not in e.negatives and "" not in e.negatives
    assert ex == build_training_examples(SENTS, n_negatives=3, query_words=(2, 4), seed=1)
    assert ex != build_training_examples(SENTS, n_negatives=3, query_words=(2, 4), seed=2)
    assert len(build_training_examples(SENTS, n_negatives=3, query_words=(2, 4), max_examples=2)) == 2


@pytest.mark.skipif(not os.path.isdir(MAFAND), reason="MAFAND bitext (../shared/data) not present")
def test_bm25_negatives_are_harder_than_random():
    with open(os.path.join(MAFAND, "train.en"), encoding="utf-8") as fh:
        sents = [line.strip() for _, line in zip(range(3000), fh)]

    def overlap(examples):
        tot = 0
        for e in examples:
            q = set(e.query.split())
            tot += sum(len(q & set(tokenize(n))) for n in e.negatives) / len(e.negatives)
        return tot / len(examples)

    hard = build_training_examples(sents, max_examples=200, seed=0)
    rand = build_training_examples(sents, max_examples=200, seed=0, negatives="random")
    assert [e.query for e in hard] == [e.query for e in rand]  # the same queries; only the negatives differ
    assert overlap(hard) > 3 * overlap(rand)


@pytest.mark.parametrize("kw,match", [
    (dict(query_words=(0, 3)), "query_words"), (dict(query_words=(4, 2)), "query_words"),
    (dict(n_negatives=0), "n_negatives"), (dict(negatives="dense"), "negatives"), (dict(bm25_depth=0), "bm25_depth"),
    (dict(n_negatives=20), "sentences"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        build_training_examples(SENTS, **kw)


@settings(max_examples=60, deadline=None)
@given(picks=st.lists(st.integers(0, len(SENTS) - 1), max_size=40), cap=st.none() | st.integers(1, 12),
       seed=st.integers(0, 3), shift=st.integers(0, 100))
def test_spread_queries_keeps_an_even_ordered_subset(picks, cap, seed, shift):
    """The evaluation queries: every sentence with enough content words has one (the same with and without a cap);
    a cap keeps that many, in order, starting with the first; ``ids`` change the draws, not which sentences."""
    sents = [SENTS[i] for i in picks]
    full = spread_queries(sents, seed=seed)
    assert [j for j, _ in full] == [j for j, s in enumerate(sents) if len(content_words(s)) >= 3]
    for j, q in full:
        assert set(q.split()) <= set(content_words(sents[j])) and 3 <= len(q.split()) <= 6
    capped = spread_queries(sents, seed=seed, max_queries=cap)
    assert len(capped) == (len(full) if cap is None else min(cap, len(full)))
    assert set(capped) <= set(full) and [j for j, _ in capped] == sorted({j for j, _ in capped})
    assert capped[:1] == full[:1]
    moved = spread_queries(sents, ids=[j + shift for j in range(len(sents))], seed=seed)
    assert [j for j, _ in moved] == [j for j, _ in full]


def test_spread_queries_rejects_ids_of_another_length():
    with pytest.raises(ValueError, match=r"ids: expected one per sentence \(2\), got 1"):
        spread_queries(SENTS[:2], ids=[0])
