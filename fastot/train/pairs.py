"""English reranker training data from the English side of a bitext, where no queries or judgements exist.

For each usable sentence: the query is a sample of its content words (in sentence order), the positive is the
sentence, and the negatives are hard negatives: other sentences drawn from the sentence's BM25 top list for
that query (``negatives="bm25"``, the default), or random other sentences (``"random"``). Content words are
tokens of at least ``min_word_len`` letters that are not English stop words or numbers.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..ir.bm25 import BM25, tokenize
from ..lexicons import ENGLISH_STOPWORDS


@dataclass(frozen=True)
class TrainingExample:
    """One query with its positive passage and ``len(negatives)`` negative passages (all English text)."""

    query: str
    positive: str
    negatives: tuple[str, ...]
    source_index: int  # line of the positive in the input sentences


def content_words(sentence: str, stopwords: Iterable[str] = ENGLISH_STOPWORDS, min_word_len: int = 3) -> list[str]:
    """Lower-cased content words of ``sentence``, in order (repeats kept)."""
    stop = stopwords if isinstance(stopwords, (set, frozenset)) else frozenset(stopwords)
    return [w for w in tokenize(sentence) if len(w) >= min_word_len and w not in stop and not w.isdigit()]


def sample_query(sentence: str, index: int, *, seed: int = 0, query_words: tuple[int, int] = (3, 6),
                 stopwords: Iterable[str] = ENGLISH_STOPWORDS, min_word_len: int = 3) -> str | None:
    """A keyword query for ``sentence``: between ``query_words[0]`` and ``[1]`` of its content words, in sentence
    order, or None when it has fewer than ``query_words[0]``. A pure function of (sentence, index, seed,
    query_words): one random stream per (seed, index), so a query never depends on other lines."""
    lo, hi = query_words
    words = content_words(sentence, stopwords, min_word_len)
    if len(words) < lo or not sentence.strip():
        return None
    rng = random.Random(f"fastot-query-{seed}-{index}")  # str seeds hash deterministically
    k = rng.randint(lo, min(hi, len(words)))
    return " ".join(words[j] for j in sorted(rng.sample(range(len(words)), k)))


def spread_queries(sentences: Sequence[str], *, ids: Sequence[int] | None = None, seed: int = 0,
                   query_words: tuple[int, int] = (3, 6), max_queries: int | None = None) -> list[tuple[int, str]]:
    """The keyword queries of an evaluation set: ``(position, query)`` for each of ``sentences`` that has one
    (:func:`sample_query` with index ``ids[position]``, default the position), at most ``max_queries`` of them
    spread evenly over the list (the k-th of n kept is the ``round(k * n / max_queries)``-th), in order."""
    ids = range(len(sentences)) if ids is None else ids
    if len(ids) != len(sentences):
        raise ValueError(f"ids: expected one per sentence ({len(sentences)}), got {len(ids)}")
    out = [(j, q) for j, (s, i) in enumerate(zip(sentences, ids))
           if (q := sample_query(s, i, seed=seed, query_words=query_words)) is not None]
    if max_queries is not None and len(out) > max_queries:
        out = [out[round(k * len(out) / max_queries)] for k in range(max_queries)]
    return out


def build_training_examples(sentences: Sequence[str], *, n_negatives: int = 4, query_words: tuple[int, int] = (3, 6),
                            negatives: str = "bm25", bm25_depth: int = 30, seed: int = 0,
                            stopwords: Iterable[str] = ENGLISH_STOPWORDS, min_word_len: int = 3,
                            max_examples: int | None = None) -> list[TrainingExample]:
    """Build (query, positive, negatives) examples from English sentences; see the module docstring.

    Args:
        sentences: English sentences (e.g. the ``.en`` side of a training bitext). Duplicates are fine: a
            sentence never serves as a negative for a text equal to it.
        n_negatives: negatives per example (>= 1; 4 in the code-switching paper's 1:4 set-up).
        query_words: (min, max) content words per query; sentences with fewer than min are skipped.
        negatives: "bm25" (sampled from the top ``bm25_depth`` for the query, topped up at random when the
            list is short) or "random".
        seed: the sampling is a pure function of (sentences, arguments, seed).
        max_examples: stop after this many examples (the first usable sentences).
    """
    lo, hi = query_words if isinstance(query_words, (tuple, list)) and len(query_words) == 2 else (None, None)
    if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
        raise ValueError(f"query_words: expected (min, max) integers with 1 <= min <= max, got {query_words!r}")
    if not isinstance(n_negatives, int) or n_negatives < 1:
        raise ValueError(f"n_negatives: expected an integer >= 1, got {n_negatives!r}")
    if negatives not in ("bm25", "random"):
        raise ValueError(f"negatives: expected 'bm25' or 'random', got {negatives!r}")
    if not isinstance(bm25_depth, int) or bm25_depth < 1:
        raise ValueError(f"bm25_depth: expected an integer >= 1, got {bm25_depth!r}")
    if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
        raise TypeError("sentences: expected a sequence of strings")
    distinct = len(set(s.strip() for s in sentences if s.strip()))
    if distinct < n_negatives + 1:
        raise ValueError(f"sentences: {distinct} distinct non-empty sentences cannot give 1 positive and "
                         f"{n_negatives} negatives")
    stop = frozenset(stopwords)
    bm = BM25().index(sentences) if negatives == "bm25" else None
    out: list[TrainingExample] = []
    for i, sent in enumerate(sentences):
        if max_examples is not None and len(out) >= max_examples:
            break
        query = sample_query(sent, i, seed=seed, query_words=(lo, hi), stopwords=stop, min_word_len=min_word_len)
        if query is None:
            continue
        positive = sent.strip()
        rng = random.Random(f"fastot-negatives-{seed}-{i}")
        pool: list[int] = []
        if bm is not None:
            top, _ = bm.search([query], k=bm25_depth + 1)
            seen = {positive, ""}
            pool = [j for j in top[0].tolist()
                    if sentences[j].strip() not in seen and not seen.add(sentences[j].strip())]  # distinct texts
            pool = rng.sample(pool, min(n_negatives, len(pool)))
        chosen = {sentences[j].strip() for j in pool}
        while len(pool) < n_negatives:  # random negatives (or a top-up of a short BM25 list)
            j = rng.randrange(len(sentences))
            text = sentences[j].strip()
            if text and text != positive and text not in chosen:
                pool.append(j)
                chosen.add(text)
        out.append(TrainingExample(query, positive, tuple(sentences[j].strip() for j in pool), i))
    return out
