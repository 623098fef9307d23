"""BM25 first-stage retrieval (Lucene's variant), for reranking experiments on small collections.

score(q, d) = sum over query tokens t of  idf(t) * tf(t, d) / (tf(t, d) + k1 * (1 - b + b * |d| / avgdl)),
idf(t) = ln(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

which is Lucene's ``BM25Similarity`` (no (k1 + 1) factor: the ranking is the same) with Anserini's defaults
k1 = 0.9, b = 0.4. A query token that occurs twice counts twice. Tokens: lower-cased ``\\w+`` runs (Unicode), no
stemming or stop words unless given. The index is a set of numpy posting arrays; a query costs one
``bincount`` over the postings of its tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch

_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased runs of word characters: ``"The river's bank"`` -> ``["the", "river", "s", "bank"]``."""
    return _WORD.findall(text.lower())


class BM25:
    """BM25 over a fixed collection.

    Args:
        k1, b: BM25 parameters (defaults 0.9 and 0.4, Anserini's).
        tokenizer: text -> list of tokens (default :func:`tokenize`).
        stopwords: tokens to drop from documents and queries.

    Usage: ``bm = BM25().index(documents)``; ``bm.scores("query")`` -> [D] float32 numpy array;
    ``bm.search(queries, k=100)`` -> (indices [Q, k] int64, scores [Q, k] float32) tensors, best first.
    """

    def __init__(self, k1: float = 0.9, b: float = 0.4, tokenizer: Callable[[str], list[str]] | None = None,
                 stopwords: Iterable[str] | None = None):
        if not isinstance(k1, (int, float)) or isinstance(k1, bool) or not k1 >= 0:
            raise ValueError(f"k1: expected a number >= 0, got {k1!r}")
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not 0 <= b <= 1:
            raise ValueError(f"b: expected a number in [0, 1], got {b!r}")
        self.k1, self.b = float(k1), float(b)
        self.tokenizer = tokenizer or tokenize
        self.stopwords = frozenset(stopwords or ())
        self.n_docs = 0

    def _tokens(self, text: str) -> list[str]:
        return [t for t in self.tokenizer(text) if t not in self.stopwords]

    def index(self, documents: Sequence[str]) -> BM25:
        """Index ``documents`` (replacing any previous index); returns self."""
        if isinstance(documents, str) or not all(isinstance(d, str) for d in documents):
            raise TypeError("documents: expected a sequence of strings")
        vocab: dict[str, int] = {}
        terms, docs, tfs = [], [], []
        lengths = np.zeros(len(documents), dtype=np.float64)
        for i, text in enumerate(documents):
            toks = self._tokens(text)
            lengths[i] = len(toks)
            counts: dict[int, int] = {}
            for t in toks:
                tid = vocab.setdefault(t, len(vocab))
                counts[tid] = counts.get(tid, 0) + 1
            terms.extend(counts)
            docs.extend([i] * len(counts))
            tfs.extend(counts.values())
        terms_a = np.asarray(terms, dtype=np.int64)
        order = np.argsort(terms_a, kind="stable")  # postings grouped by term, documents ascending
        self._docs = np.asarray(docs, dtype=np.int64)[order]
        tf = np.asarray(tfs, dtype=np.float64)[order]
        df = np.bincount(terms_a, minlength=len(vocab)).astype(np.float64)
        self._offsets = np.concatenate([[0], np.cumsum(df)]).astype(np.int64)
        n = len(documents)
        avgdl = lengths.mean() if n and lengths.sum() > 0 else 1.0
        idf = np.log1p((n - df + 0.5) / (df + 0.5))
        norm = self.k1 * (1 - self.b + self.b * lengths[self._docs] / avgdl)
        self._weights = (np.repeat(idf, df.astype(np.int64)) * tf / (tf + norm)).astype(np.float32)
        self.vocab, self.n_docs, self.avgdl = vocab, n, float(avgdl)
        return self

    def scores(self, query: str) -> np.ndarray:
        """[D] float32 BM25 score of every document for ``query`` (0 where no token matches)."""
        if not hasattr(self, "_weights"):
            raise RuntimeError("BM25: call index(documents) first")
        out = np.zeros(self.n_docs, dtype=np.float64)
        for t in self._tokens(query):
            tid = self.vocab.get(t)
            if tid is not None:
                s, e = self._offsets[tid], self._offsets[tid + 1]
                out += np.bincount(self._docs[s:e], weights=self._weights[s:e], minlength=self.n_docs)
        return out.astype(np.float32)

    def search(self, queries: Sequence[str], k: int = 100) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k documents per query: (indices [Q, k'] int64, scores [Q, k'] float32), k' = min(k, D), best
        first; equal scores rank the lower document index first."""
        if isinstance(queries, str) or not all(isinstance(q, str) for q in queries):
            raise TypeError("queries: expected a sequence of strings")
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k: expected an integer >= 1, got {k!r}")
        k = min(k, self.n_docs)
        idx = np.zeros((len(queries), k), dtype=np.int64)
        val = np.zeros((len(queries), k), dtype=np.float32)
        for i, q in enumerate(queries):
            s = self.scores(q)
            if k < len(s):  # the documents scoring at least the k-th best score (ties at the cut included)
                cand = np.flatnonzero(s >= np.partition(s, len(s) - k)[len(s) - k])
            else:
                cand = np.arange(len(s))
            order = cand[np.lexsort((cand, -s[cand]))][:k]  # score descending, then index ascending
            idx[i], val[i] = order, s[order]
        return torch.from_numpy(idx), torch.from_numpy(val)
