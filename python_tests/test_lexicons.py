"""Lexicon word-pair producers: hand-computed Dice and IBM1 values, pure-Python oracles for both, nearest
neighbour and CSLS against brute-force numpy, a constructed hub, file parsers with malformed input, and
MAFAND en-swa when the data is there."""

import math
import os
import random
import re
from collections import defaultdict

import numpy as np
import pytest
import torch

from fastot import lexicons as lx
from fastot.ir.data import read_bitext

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa")


def _write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


# ------------------------------------------------------------------------------------------------
# Bitext: Dice

DICE_SRC = ["The cat, the cat!", "the dog 42", "a cat", "Dog and cat"]
DICE_TGT = ["le chat le chat", "le chien 42", "un chat", "chien et chat"]
# counts (sentences): the 2, cat 3, dog 2, a 1, and 1 | le 2, chat 3, chien 2, un 1, et 1; "42" is skipped.
DICE_ALL = {
    ("cat", "chat"): 1.0, ("cat", "le"): 2 / 5, ("cat", "chien"): 2 / 5, ("cat", "un"): 2 / 4, ("cat", "et"): 2 / 4,
    ("the", "le"): 1.0, ("the", "chat"): 2 / 5, ("the", "chien"): 2 / 4,
    ("dog", "chien"): 1.0, ("dog", "le"): 2 / 4, ("dog", "chat"): 2 / 5, ("dog", "et"): 2 / 3,
    ("a", "un"): 1.0, ("a", "chat"): 2 / 4,
    ("and", "et"): 1.0, ("and", "chien"): 2 / 3, ("and", "chat"): 2 / 4,
}


def test_dice_hand_computed_all_pairs():
    out = lx.induce_from_bitext(DICE_SRC, DICE_TGT, min_count=1, min_score=0, top_k=100)
    assert {(s, t): c for s, t, c in out} == pytest.approx(DICE_ALL, rel=1e-15)
    assert len(out) == len(DICE_ALL)


def test_dice_filters_order_and_ties():
    # min_count=2 leaves sources cat (3), dog (2), the (2) and targets chat, chien, le; by count, then alphabetical.
    assert lx.induce_from_bitext(DICE_SRC, DICE_TGT, min_count=2) == [
        ("cat", "chat", 1.0), ("dog", "chien", 1.0), ("the", "le", 1.0)]
    # cat: chat 1.0, then et and un tie at 0.5 -> alphabetical; "le"/"chien" (0.4) fall below min_score.
    out = lx.induce_from_bitext(DICE_SRC, DICE_TGT, min_count=1, min_score=0.45, top_k=2)
    assert [p for p in out if p[0] == "cat"] == [("cat", "chat", 1.0), ("cat", "et", 0.5)]
    assert [p for p in out if p[0] == "and"] == [("and", "et", 1.0), ("and", "chien", pytest.approx(2 / 3))]
    # max_sentences: only "The cat, the cat!" / "le chat le chat" is left.
    assert lx.induce_from_bitext(DICE_SRC, DICE_TGT, min_count=1, top_k=5, max_sentences=1) == [
        ("cat", "chat", 1.0), ("cat", "le", 1.0), ("the", "chat", 1.0), ("the", "le", 1.0)]
    # lowercase=False: "The" and "the" are different words, "Dog" and "dog" too.
    out = lx.induce_from_bitext(DICE_SRC, DICE_TGT, min_count=1, min_score=0, top_k=100, lowercase=False)
    assert {s for s, _, _ in out} == {"The", "the", "cat", "dog", "Dog", "a", "and"}


def _words(s):
    return [w for w in re.findall(r"\w+", s.lower()) if not w.isdigit()]


def _random_corpus(seed, n=40):
    rng = random.Random(seed)
    src_vocab = [f"e{i}" for i in range(12)] + ["ü", "straße"]
    tgt_vocab = [f"f{i}" for i in range(9)] + ["ñu"]
    src = [" ".join(rng.choices(src_vocab, k=rng.randint(0, 7))) + rng.choice(["", " 7", ", 12."]) for _ in range(n)]
    tgt = [" ".join(rng.choices(tgt_vocab, k=rng.randint(0, 6))) for _ in range(n)]
    return src, tgt


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dice_matches_python_oracle(seed):
    src, tgt = _random_corpus(seed)
    c_s, c_t, c_st = defaultdict(int), defaultdict(int), defaultdict(int)
    for e, f in zip(src, tgt):
        es, fs = set(_words(e)), set(_words(f))
        for w in es:
            c_s[w] += 1
        for w in fs:
            c_t[w] += 1
        for a in es:
            for b in fs:
                c_st[a, b] += 1
    want = {(a, b): 2 * c / (c_s[a] + c_t[b]) for (a, b), c in c_st.items() if c_s[a] >= 3 and c_t[b] >= 3}
    out = lx.induce_from_bitext(src, tgt, min_count=3, min_score=0, top_k=1000)
    assert {(s, t): c for s, t, c in out} == pytest.approx(want, rel=1e-12)
    best = lx.induce_from_bitext(src, tgt, min_count=3, min_score=0.2)
    for s, _t, c in best:
        rivals = [v for (a, _), v in want.items() if a == s]
        assert c == pytest.approx(max(rivals)) and c >= 0.2


# ------------------------------------------------------------------------------------------------
# Bitext: IBM Model 1


def _ibm1_oracle(src, tgt, iterations):
    """Token-level IBM Model 1 with a NULL source word, textbook loops."""
    corpus = [(["<null>"] + _words(e), _words(f)) for e, f in zip(src, tgt)]
    t = defaultdict(lambda: 1.0)  # any uniform start gives the same first E-step
    for _ in range(iterations):
        count, total = defaultdict(float), defaultdict(float)
        for es, fs in corpus:
            for f in fs:
                z = sum(t[e, f] for e in es)
                for e in es:
                    count[e, f] += t[e, f] / z
                    total[e] += t[e, f] / z
        t = defaultdict(float, {k: v / total[k[0]] for k, v in count.items()})
    return t


def test_ibm1_classic_example():
    src, tgt = ["the house", "the book", "a book"], ["das haus", "das buch", "ein buch"]
    out = lx.induce_from_bitext(src, tgt, method="ibm1", min_count=1, min_score=0, iterations=5)
    assert [(s, t) for s, t, _ in out] == [("book", "buch"), ("the", "das"), ("a", "ein"), ("house", "haus")]
    full = lx.induce_from_bitext(src, tgt, method="ibm1", min_count=1, min_score=0, top_k=10, iterations=5)
    for s in ("book", "the", "a", "house"):
        assert sum(c for a, _, c in full if a == s) == pytest.approx(1.0)  # no NULL target: t(.|s) sums to 1
    # EM sharpens: t(buch|book) grows with the rounds.
    t1, t5 = (next(c for s, t, c in lx.induce_from_bitext(src, tgt, method="ibm1", min_count=1, iterations=k)
                   if s == "book") for k in (1, 5))
    assert t1 == pytest.approx(0.5) and t5 > 0.85


@pytest.mark.parametrize("seed,iterations", [(0, 1), (1, 3), (2, 6)])
def test_ibm1_matches_python_oracle(seed, iterations):
    src, tgt = _random_corpus(seed)
    want = {k: v for k, v in _ibm1_oracle(src, tgt, iterations).items() if k[0] != "<null>"}
    out = lx.induce_from_bitext(src, tgt, method="ibm1", min_count=1, min_score=0, top_k=1000, iterations=iterations)
    assert {(s, t): c for s, t, c in out} == pytest.approx(want, rel=1e-10)


def test_induce_from_bitext_bad_input():
    with pytest.raises(ValueError, match="method"):
        lx.induce_from_bitext(DICE_SRC, DICE_TGT, method="giza")
    with pytest.raises(ValueError, match="top_k.*-1"):
        lx.induce_from_bitext(DICE_SRC, DICE_TGT, top_k=-1)
    with pytest.raises(ValueError, match="top_k"):
        lx.induce_from_bitext(DICE_SRC, DICE_TGT, top_k=0)
    with pytest.raises(ValueError, match="min_count"):
        lx.induce_from_bitext(DICE_SRC, DICE_TGT, min_count=0)
    with pytest.raises(ValueError, match="min_score"):
        lx.induce_from_bitext(DICE_SRC, DICE_TGT, min_score=-0.1)
    with pytest.raises(ValueError, match="iterations"):
        lx.induce_from_bitext(DICE_SRC, DICE_TGT, method="ibm1", iterations=0)
    with pytest.raises(ValueError, match="max_sentences"):
        lx.induce_from_bitext(DICE_SRC, DICE_TGT, max_sentences=0)
    with pytest.raises(ValueError, match=r"tgt_sentences.*\(4\), got 3"):
        lx.induce_from_bitext(DICE_SRC, DICE_TGT[:3])
    with pytest.raises(TypeError, match="src_sentences: sentence 1"):
        lx.induce_from_bitext(["a", None], ["b", "c"])
    assert lx.induce_from_bitext([], []) == []
    assert lx.induce_from_bitext(["1 2", ""], ["x", "y"], min_count=1, method="ibm1") == []


# ------------------------------------------------------------------------------------------------
# Bitext files


def test_read_bitext_directory_and_tsv(tmp_path):
    _write(tmp_path / "train.en", "The cat.\n\nA dog\r\n")
    _write(tmp_path / "train.swa", "Paka.\n\nMbwa\u2028x\r\n")  # U+2028 does not split a line
    _write(tmp_path / "dev.en", "one\ntwo\n")
    _write(tmp_path / "dev.swa", "moja\n")
    before = _snapshot(tmp_path)
    assert read_bitext(tmp_path, "swa") == (["The cat.", "", "A dog"], ["Paka.", "", "Mbwa\u2028x"])
    with pytest.raises(ValueError, match="2 lines.*has 1"):
        read_bitext(tmp_path, "swa", split="dev")
    with pytest.raises(FileNotFoundError, match=r"path: .*train\.hau"):
        read_bitext(tmp_path, "hau")
    with pytest.raises(ValueError, match="lang"):
        read_bitext(tmp_path, "")
    tsv = _write(tmp_path / "pairs.tsv", "the cat\tpaka\n\nwater\tmaji\n")
    assert read_bitext(tsv, "swa") == (["the cat", "water"], ["paka", "maji"])
    bad = _write(tmp_path / "bad.tsv", "the cat\tpaka\nwater maji\n")
    with pytest.raises(ValueError, match="line 2: expected 2 tab-separated fields"):
        read_bitext(bad, "swa")
    with pytest.raises(FileNotFoundError, match="path"):
        read_bitext(tmp_path / "missing.tsv", "swa")
    assert {k: v for k, v in _snapshot(tmp_path).items() if k in before} == before


# ------------------------------------------------------------------------------------------------
# Embeddings


def _words_of(prefix, n):
    return [f"{prefix}{i}" for i in range(n)]


@pytest.mark.parametrize("method", ["nn", "csls"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_rotated_noisy_copies_recover_identity(method, dtype):
    g = torch.Generator().manual_seed(0)
    n, d = 301, 64
    X = torch.randn(n, d, generator=g, dtype=dtype)
    Q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    perm = torch.randperm(n, generator=g)
    Y = (X @ Q.to(dtype) + 0.1 * torch.randn(n, d, generator=g, dtype=dtype))[perm]
    src = _words_of("w", n)
    tgt = [f"x{i}" for i in perm.tolist()]  # target row j is the translation of source perm[j]
    out = lx.induce_from_embeddings(src, X @ Q.to(dtype), tgt, Y, method=method, batch_size=64)
    assert [(s, t) for s, t, _ in out] == [(f"w{i}", f"x{i}") for i in range(n)]
    assert all(isinstance(c, float) for _, _, c in out)
    if method == "nn":
        assert min(c for _, _, c in out) > 0.9


def _csls_numpy(X, Y, k):
    X = X / np.linalg.norm(X, axis=1, keepdims=True)
    Y = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    C = X @ Y.T
    r_t = np.sort(C, axis=1)[:, ::-1][:, : min(k, C.shape[1])].mean(1)
    r_s = np.sort(C.T, axis=1)[:, ::-1][:, : min(k, C.shape[0])].mean(1)
    csls = 2 * C - r_t[:, None] - r_s[None, :]
    return csls.argmax(1), csls.max(1)


@pytest.mark.parametrize("n_src,n_tgt,k,batch", [
    pytest.param(57, 43, 5, 7, id="S57-T43-k5-b7"),
    pytest.param(33, 97, 10, 4096, id="S33-T97-k10-b4096"),
    pytest.param(7, 1, 3, 1, id="S7-T1-k3-b1"),
    pytest.param(1, 33, 1000, 2, id="S1-T33-k1000"),
])
def test_csls_matches_bruteforce_numpy(n_src, n_tgt, k, batch):
    rng = np.random.default_rng(n_src * 1000 + n_tgt)
    X, Y = rng.standard_normal((n_src, 8)), rng.standard_normal((n_tgt, 8))
    want_idx, want_score = _csls_numpy(X, Y, k)
    src, tgt = _words_of("s", n_src), _words_of("t", n_tgt)
    out = lx.induce_from_embeddings(src, torch.from_numpy(X), tgt, torch.from_numpy(Y), method="csls", csls_k=k,
                                    batch_size=batch)
    assert [t for _, t, _ in out] == [tgt[j] for j in want_idx]
    np.testing.assert_allclose([c for _, _, c in out], want_score, rtol=0, atol=1e-12)
    nn = lx.induce_from_embeddings(src, torch.from_numpy(X), tgt, torch.from_numpy(Y), batch_size=batch)
    Xn, Yn = X / np.linalg.norm(X, axis=1, keepdims=True), Y / np.linalg.norm(Y, axis=1, keepdims=True)
    assert [t for _, t, _ in nn] == [tgt[j] for j in (Xn @ Yn.T).argmax(1)]


def test_csls_avoids_a_hub():
    # Sources x_i = (alpha u + e_i) / |.|, true targets y_i = e_i, hub h = u, with u, e_1..e_m orthonormal:
    # cos(x_i, h) = alpha / sqrt(1 + alpha^2) = 0.768 beats cos(x_i, y_i) = 1 / sqrt(1 + alpha^2) = 0.640.
    m, k, alpha = 8, 5, 1.2
    eye = torch.eye(m + 1, dtype=torch.float64)
    X = alpha * eye[0] + eye[1:]
    Y = torch.cat([eye[1:], eye[:1]])
    src, tgt = _words_of("s", m), _words_of("t", m) + ["hub"]
    hub_cos, true_cos = alpha / math.sqrt(1 + alpha**2), 1 / math.sqrt(1 + alpha**2)
    nn = lx.induce_from_embeddings(src, X, tgt, Y, method="nn")
    assert nn == [(s, "hub", pytest.approx(hub_cos)) for s in src]
    # r_S(hub) = hub_cos (every source is as close), r_S(y_i) = true_cos / k, r_T(x_i) = (hub_cos + true_cos) / k.
    want = 2 * true_cos - (hub_cos + true_cos) / k - true_cos / k
    assert want > 2 * hub_cos - (hub_cos + true_cos) / k - hub_cos  # the hub's CSLS
    csls = lx.induce_from_embeddings(src, X, tgt, Y, method="csls", csls_k=k)
    assert csls == [(s, t, pytest.approx(want)) for s, t in zip(src, tgt)]


def test_source_vocab_is_case_insensitive():
    X = torch.eye(4)
    out = lx.induce_from_embeddings(["Paris", "cat", "dog", "the"], X, ["a", "b", "c", "d"], X,
                                    source_vocab=["paris", "DOG", "bird"])
    assert out == [("Paris", "a", pytest.approx(1.0)), ("dog", "c", pytest.approx(1.0))]
    assert lx.induce_from_embeddings(["cat"], X[:1], ["a"], X[:1], source_vocab=[]) == []


def test_induce_from_embeddings_bad_input():
    X = torch.randn(3, 4)
    w = ["a", "b", "c"]
    with pytest.raises(ValueError, match="method: expected 'nn' or 'csls', got 'cosine'"):
        lx.induce_from_embeddings(w, X, w, X, method="cosine")
    with pytest.raises(ValueError, match=r"src_words: .*\(3\), got 2"):
        lx.induce_from_embeddings(w[:2], X, w, X)
    with pytest.raises(ValueError, match="tgt_vecs: expected dimension 4"):
        lx.induce_from_embeddings(w, X, w, torch.randn(3, 5))
    with pytest.raises(ValueError, match="tgt_vecs: expected a 2-D floating-point tensor"):
        lx.induce_from_embeddings(w, X, w, torch.ones(3, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="tgt_words: expected at least one"):
        lx.induce_from_embeddings(w, X, [], torch.zeros(0, 4))
    with pytest.raises(ValueError, match="csls_k"):
        lx.induce_from_embeddings(w, X, w, X, method="csls", csls_k=0)
    with pytest.raises(ValueError, match="batch_size"):
        lx.induce_from_embeddings(w, X, w, X, batch_size=-1)


# ------------------------------------------------------------------------------------------------
# .vec files

VEC = "4 3\ncat 1 0 0 \ndog 0 1.5 0\ncat 9 9 9\n\u00e9t\u00e9\u00a0x -1e-3 2 3.25\n"


def test_read_vec(tmp_path):
    path = _write(tmp_path / "en.vec", VEC)
    words, vecs = lx.read_vec(path)
    assert words == ["cat", "dog", "\u00e9t\u00e9\u00a0x"]  # repeated "cat" keeps its first row
    assert vecs.dtype == torch.float32 and vecs.shape == (3, 3)
    assert torch.equal(vecs, torch.tensor([[1, 0, 0], [0, 1.5, 0], [-1e-3, 2, 3.25]]))
    words, vecs = lx.read_vec(path, max_words=2)
    assert words == ["cat", "dog"] and vecs.shape == (2, 3)
    words, vecs = lx.read_vec(path, vocab=["dog", "Cat"])
    assert words == ["dog"] and torch.equal(vecs, torch.tensor([[0, 1.5, 0]]))
    words, vecs = lx.read_vec(path, max_words=1, vocab={"dog"})  # vocab applies within the first rows
    assert words == [] and vecs.shape == (0, 3) and vecs.dtype == torch.float32


@pytest.mark.parametrize("text,match", [
    pytest.param("4\ncat 1 2 3\n", "line 1: expected the header 'n_words dim'", id="header-one-field"),
    pytest.param("cat 1 2 3\n", "line 1: expected the header", id="no-header"),
    pytest.param("2 0\ncat\n", "line 1: expected the header", id="dim-0"),
    pytest.param("2 3\ncat 1 2 3\ndog 1 2\n", "line 3: expected a word and 3 values, got 2 values", id="short"),
    pytest.param("2 3\ncat 1 2 3 4\ndog 1 2 3\n", "line 2: expected a word and 3 values, got 4", id="long"),
    pytest.param("2 3\ncat 1 2 3\n 1 2 3\n", "line 3: expected a word and 3 values, got an empty word", id="no-word"),
    pytest.param("2 3\ncat 1 2 3\ndog 1 x 3\n", "line 3: a value is not a number", id="nan-text"),
    pytest.param("3 3\ncat 1 2 3\ndog 1 2 3\n", "header says 3 words, the file has 2", id="truncated"),
])
def test_read_vec_malformed(tmp_path, text, match):
    path = _write(tmp_path / "bad.vec", text)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=match) as info:
        lx.read_vec(path)
    assert str(info.value).startswith("path: ")
    assert _snapshot(tmp_path) == before


def test_read_vec_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        lx.read_vec(tmp_path / "nope.vec")
    path = _write(tmp_path / "ok.vec", VEC)
    with pytest.raises(ValueError, match="max_words: expected an integer >= 0, got -1"):
        lx.read_vec(path, max_words=-1)
    # rows beyond max_words are not read, so a malformed tail or a short header count goes unnoticed
    tail = _write(tmp_path / "tail.vec", "9 3\ncat 1 2 3\ndog oops\n")
    assert lx.read_vec(tail, max_words=1)[0] == ["cat"]


def test_induce_from_vec_files(tmp_path):
    src = _write(tmp_path / "en.vec", "3 2\ncat 1 0\ndog 0 1\nbird 1 1\n")
    tgt = _write(tmp_path / "sw.vec", "3 2\nmbwa 0 2\npaka 3 0.1\nndege 1 1.1\n")
    assert [(s, t) for s, t, _ in lx.induce_from_vec_files(src, tgt)] == [
        ("cat", "paka"), ("dog", "mbwa"), ("bird", "ndege")]
    assert [(s, t) for s, t, _ in lx.induce_from_vec_files(src, tgt, max_words=2, source_vocab=["DOG"])] == [
        ("dog", "mbwa")]
    with pytest.raises(FileNotFoundError, match="tgt_path"):
        lx.induce_from_vec_files(src, tmp_path / "missing.vec")
    with pytest.raises(ValueError, match="src_path: .* line 1"):
        lx.induce_from_vec_files(_write(tmp_path / "bad.vec", "x y\n"), tgt)


# ------------------------------------------------------------------------------------------------
# MUSE dictionaries


def test_read_muse(tmp_path):
    text = "water maji\nwater\tmaji\n\n  \nwater  majimaji \ncafé mgahawa\r\nthe\u00a0end mwisho\n"
    path = _write(tmp_path / "en-sw.txt", text)
    assert lx.read_muse(path) == [("water", "maji"), ("water", "majimaji"), ("café", "mgahawa"),
                                  ("the\u00a0end", "mwisho")]


@pytest.mark.parametrize("text,line,n", [
    pytest.param("water maji\nnew york nyuyoku\n", 2, 3, id="three-fields"),
    pytest.param("water maji\n\nwater\n", 3, 1, id="one-field"),
])
def test_read_muse_malformed(tmp_path, text, line, n):
    path = _write(tmp_path / "bad.txt", text)
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match=f"path: .* line {line}: expected 2 fields 'src tgt', got {n}"):
        lx.read_muse(path)
    assert _snapshot(tmp_path) == before
    with pytest.raises(FileNotFoundError, match="path: no such file"):
        lx.read_muse(tmp_path / "missing.txt")


# ------------------------------------------------------------------------------------------------
# Titles

TITLES = "\n".join([
    "Paris (city)\tParis (mji)",
    "New  York City\tJiji la New York",
    "United States of America\tMuungano wa Madola ya Amerika",
    "The Who\tThe Who (bendi)",
    "\"Heroes\" (TV series)\t« Heroes »",
    "Tom & Jerry\tTom na Jerry",
    "Paris, Texas\tParis, Texas",
    "Mercury (planet (astronomy))\tZebaki",
    "Tokyo（city）\t東京（都市）",
    "Foo\t(bar)",
    "Paris (France)\tParis",
    "  \tKitu",
    "\t",
    "",
    "Mr. Bean\tMr. Bean",
])


def test_title_entries(tmp_path):
    pairs = lx.read_title_pairs(_write(tmp_path / "titles.tsv", TITLES + "\n"))
    assert len(pairs) == 13 and pairs[0] == ("Paris (city)", "Paris (mji)") and pairs[11] == ("", "Kitu")
    assert lx.title_entries(pairs) == [
        ("paris", "paris"),
        ("new york city", "jiji la new york"),
        ("heroes", "heroes"),
        ("tom & jerry", "tom na jerry"),  # "&" is no word: 2 words
        ("paris, texas", "paris, texas"),
        ("mercury", "zebaki"),
        ("tokyo", "東京"),
        ("mr. bean", "mr. bean"),
    ]
    assert ("united states of america", "muungano wa madola ya amerika") in lx.title_entries(pairs, max_n=4)
    assert ("the who", "the who") in lx.title_entries(pairs, stopwords=["of"])
    assert lx.title_entries([("Of", "ya"), ("the the", "x"), ("(x)", "y")]) == []


def test_title_bad_input(tmp_path):
    bad = _write(tmp_path / "bad.tsv", "Paris\tParis\nNairobi Nairobi\n")
    before = _snapshot(tmp_path)
    with pytest.raises(ValueError, match="line 2: expected 2 tab-separated fields"):
        lx.read_title_pairs(bad)
    with pytest.raises(ValueError, match="line 1"):
        lx.read_title_pairs(_write(tmp_path / "bad2.tsv", "a\tb\tc\n"))
    assert _snapshot(tmp_path)["bad.tsv"] == before["bad.tsv"]
    with pytest.raises(FileNotFoundError, match="path"):
        lx.read_title_pairs(tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="max_n: expected an integer >= 1, got 0"):
        lx.title_entries([("a", "b")], max_n=0)
    with pytest.raises(ValueError, match="pairs"):
        lx.title_entries([("a", "b", "c")])


def test_english_stopwords():
    assert 120 <= len(lx.ENGLISH_STOPWORDS) <= 200
    assert {"the", "of", "and", "who", "it's"} <= lx.ENGLISH_STOPWORDS
    assert not {"water", "government", "city"} & lx.ENGLISH_STOPWORDS
    assert all(w == w.lower() for w in lx.ENGLISH_STOPWORDS)


# ------------------------------------------------------------------------------------------------
# MAFAND en-swa

KNOWN_SW = {"government": "serikali", "president": "rais", "police": "polisi", "water": "maji", "children": "watoto"}


@pytest.fixture(scope="module")
def mafand():
    if not os.path.isfile(os.path.join(DATA, "train.en")):
        pytest.skip(f"MAFAND en-swa not found at {os.path.normpath(DATA)}")
    return read_bitext(DATA, "swa")


def test_mafand_read(mafand):
    en, sw = mafand
    assert len(en) == len(sw) > 10000


@pytest.mark.parametrize("method,n", [("dice", 10000), ("ibm1", 5000)])
def test_mafand_known_translations(mafand, method, n):
    best = {s: t for s, t, _ in lx.induce_from_bitext(*mafand, method=method, max_sentences=n)}
    hits = [w for w, t in KNOWN_SW.items() if best.get(w) == t]
    assert len(hits) >= 4, {w: best.get(w) for w in KNOWN_SW}


# ------------------------------------------------------------------------------------------------
# The Lexicon builders on top: packed lexicons that switch, and coverage


def test_lexicon_builders_switch_and_report_coverage(tmp_path, minilm_tokenizer):
    import fastot  # noqa: PLC0415

    tok = minilm_tokenizer
    muse = fastot.Lexicon.from_muse(_write(tmp_path / "en-sw.txt", "river mto\nriver mito\nmarket soko\n"), tok, "sw")
    assert muse.n_keys == 2 and muse.stats["translations"] == 3
    titles = fastot.Lexicon.from_titles(
        _write(tmp_path / "t.tsv", "New York City\tJiji la New York\nThe River (film)\tMto\nOf the\tya\n"), tok, "sw")
    assert titles.max_key_words == 3 and titles.n_keys == 2  # "of the" is stop words only
    vec = "3 2\nriver 1 0\nmarket 0 1\nthe 0.7 0.7\n"
    emb = fastot.Lexicon.from_embeddings(_write(tmp_path / "en.vec", vec),
                                         _write(tmp_path / "sw.vec", "2 2\nmto 0.9 0.1\nsoko 0.1 0.9\n"), tok, "sw",
                                         source_vocab=["river", "market"])
    assert emb.n_keys == 2
    text = ["I live in new york city by the river.", "The market, the river and the market."]
    cov = muse.coverage(text, tok)
    # words: i live in new york city by the river . | the market , the river and the market .  = 10 + 9
    assert cov == {"words": 19, "covered": {"sw": 4 / 19}}
    assert titles.coverage(text, tok)["covered"]["sw"] == pytest.approx(7 / 19)  # the 3-gram + "the river" twice
    out = fastot.CodeSwitcher(titles, p=1.0)(**{k: v for k, v in tok(text, padding=True, return_tensors="pt").items()})
    assert "jiji la new york" in tok.decode(out.input_ids[0])


def test_lexicon_from_mafand_bitext(minilm_tokenizer):
    import fastot  # noqa: PLC0415

    if not os.path.isdir(DATA):
        pytest.skip("MAFAND en-swa is not in ../shared/data")
    lex = fastot.Lexicon.from_bitext(DATA, minilm_tokenizer, "swa", max_sentences=10000)
    assert lex.stats["sentences"] == 10000 and lex.n_keys > 1000
    with open(os.path.join(DATA, "dev.en"), encoding="utf-8") as fh:
        dev = [next(fh) for _ in range(200)]
    assert 0.3 < lex.coverage(dev, minilm_tokenizer)["covered"]["swa"] < 1.0
