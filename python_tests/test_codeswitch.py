"""Code-switching: bit-identical backends, a pure-Python per-row oracle, the tokenizer itself as an
independent peer, statistics, truncation, registered-op checks and bad input."""

import os
import random
import warnings

import numpy as np
import pytest
import torch
from conftest import backend_params

import fastot
from fastot.reference import codeswitch as ref

BACKENDS = backend_params("codeswitch")
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa")

SENTENCES = [
    "The river flooded the quick market in Nairobi on Monday.",
    "Farmers say the rains came late this year, and the harvest is small.",
    "A doctor's report doesn't explain why the children were sick.",
    "Government officials met traders at the river bank to discuss prices.",
    "She bought bread, milk and rice at the market before noon.",
    "Résumé of the café meeting: water, schools and roads.",
]
PAIRS_SW = [("river", "mto"), ("market", "soko"), ("quick", "haraka"), ("rains", "mvua"), ("children", "watoto"),
            ("doctor", "daktari"), ("bread", "mkate"), ("milk", "maziwa"), ("water", "maji"), ("schools", "shule"),
            ("government", "serikali"), ("year", "mwaka"), ("harvest", "mavuno"), ("cafe", "mgahawa"),
            ("prices", "bei"), ("the", "ile"), ("sick", "wagonjwa"), ("officials", "maafisa wa serikali"),
            # Multi-word keys, overlapping on purpose: "the river bank" is "the river" + "bank" (longest first).
            ("river bank", "ukingo wa mto"), ("the river", "mtoni"), ("doesn't", "haielezi"),
            ("at the market", "sokoni")]
PAIRS_HA = [("river", "kogi"), ("market", "kasuwa"), ("water", "ruwa"), ("children", "yara"), ("bread", "burodi")]


@pytest.fixture(scope="module")
def lexicon(minilm_tokenizer):
    return fastot.Lexicon.from_pairs({"sw": PAIRS_SW, "ha": PAIRS_HA}, minilm_tokenizer)


def _encode(tok, queries, passages=None, max_length=None):
    enc = tok(queries, passages, padding=True, return_tensors="pt", truncation=max_length is not None,
              max_length=max_length)
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def _rows(out):
    return [r[m.bool()].tolist() for r, m in zip(out.input_ids, out.attention_mask)]


# --------------------------------------------------------------------------- independent oracles
def python_oracle(lex, ids, mask, tt, seed, step, p, langs, max_length):
    """The contract, one row and one word at a time in plain Python (no tensors, no vectorisation)."""
    lex = lex.select(langs)  # a switcher matches the keys of its active languages only
    T = {k: v.tolist() for k, v in lex.tensors().items()}
    keys = {}
    for k in range(len(T["key_hash"])):
        keys[tuple(T["key_ids"][T["key_offsets"][k]:T["key_offsets"][k + 1]])] = k
    n_lang = len(lex.languages)
    thr = round(p * (1 << 24))
    lang_ids = [lex.languages.index(x) for x in langs]
    pre = [ref.rand_prefix(seed, step, s) for s in (ref.SALT_SWITCH, ref.SALT_LANG, ref.SALT_TRANS)]
    rows = []
    for r, (row, m, t) in enumerate(zip(ids.tolist(), mask.tolist(), tt.tolist())):
        toks, l, w = [], 0, 0  # toks: (id, segment, source, special)
        nsw = [0] * len(lang_ids)

        def word_end(q):
            e = q + 1
            while e < len(row) and m[e] and not T["special"][row[e]] and not T["word_start"][row[e]] and t[e] == t[q]:
                e += 1
            return e

        while l < len(row):
            if not m[l]:
                l += 1
                continue
            if T["special"][row[l]]:
                toks.append((row[l], t[l], l, True))
                l += 1
                continue
            # Longest run of adjacent words of this segment that is a key; else the one word.
            ends = [word_end(l)]
            while ends[-1] < len(row) and m[ends[-1]] and not T["special"][row[ends[-1]]] and t[ends[-1]] == t[l]:
                ends.append(word_end(ends[-1]))
            matches = [(n + 1, e) for n, e in enumerate(ends) if tuple(row[l:e]) in keys]
            n_unit, e = matches[-1] if matches else (1, ends[0])
            entry = keys.get(tuple(row[l:e]))
            choice = None
            if entry is not None and (ref.word_rand(pre[0], r, w) >> 8) < thr:
                a = 0 if len(lang_ids) == 1 else ref.rand_below(ref.word_rand(pre[1], r, w), len(lang_ids))
                lo, hi = T["entry_offsets"][entry * n_lang + lang_ids[a]], T["entry_offsets"][entry * n_lang + lang_ids[a] + 1]
                if hi > lo:
                    choice = lo + ref.rand_below(ref.word_rand(pre[2], r, w), hi - lo)
            if choice is not None:
                nsw[a] += n_unit
                for q in range(T["trans_offsets"][choice], T["trans_offsets"][choice + 1]):
                    toks.append((T["trans_ids"][q], t[l], l, False))
            else:
                toks.extend((row[q], t[q], q, False) for q in range(l, e))
            w += n_unit
            l = e
        if max_length is not None:  # tokenizers' (Rust) longest_first, written as its source reads
            seg0 = [i for i, x in enumerate(toks) if not x[3] and x[1] == 0]
            seg1 = [i for i, x in enumerate(toks) if not x[3] and x[1] != 0]
            budget = max_length - (len(toks) - len(seg0) - len(seg1))
            if len(seg0) + len(seg1) > budget:
                short, long_ = sorted((seg0, seg1), key=len) if len(seg0) != len(seg1) else (seg0, seg1)
                n1 = len(short)
                n2 = n1 if n1 > budget else max(n1, budget - n1)
                if n1 + n2 > budget:
                    n1, n2 = budget // 2, budget // 2 + budget % 2
                del short[n1:], long_[n2:]
            keep = set(seg0) | set(seg1) | {i for i, x in enumerate(toks) if x[3]}
            toks = [x for i, x in enumerate(toks) if i in keep]
        rows.append((toks, nsw, w))
    return rows


def _assert_matches_oracle(out, oracle, max_length):
    width = out.input_ids.shape[1]
    if max_length is not None:
        assert width == max_length
    for r, (toks, nsw, nw) in enumerate(oracle):
        n = len(toks)
        assert out.attention_mask[r, :n].eq(1).all() and out.attention_mask[r, n:].eq(0).all()
        assert out.input_ids[r, :n].tolist() == [x[0] for x in toks]
        assert out.token_type_ids[r, :n].tolist() == [x[1] for x in toks]
        assert out.source_index[r, :n].tolist() == [x[2] for x in toks]
        assert (out.source_index[r, n:] == -1).all()
        assert out.n_switched_lang[r].tolist() == nsw and out.n_switched[r] == sum(nsw) and out.n_words[r] == nw


def random_batch(tok, B, L, seed):
    """Random rows of real vocabulary: words of 1-3 pieces (some from the lexicon), [CLS] q [SEP] p [SEP], padding."""
    rng = random.Random(seed)
    vocab = tok.get_vocab()
    starts = [i for t, i in vocab.items() if t.isalpha() and not t.startswith("##")][:3000]
    conts = [i for t, i in vocab.items() if t.startswith("##")][:1000]
    lex_words = [tok(w, add_special_tokens=False)["input_ids"] for w, _ in PAIRS_SW + PAIRS_HA]
    ids = torch.full((B, L), tok.pad_token_id)
    mask = torch.zeros(B, L, dtype=torch.long)
    tt = torch.zeros(B, L, dtype=torch.long)
    for r in range(B):
        n = rng.randint(3, L)
        row, seg = [tok.cls_token_id], [0]
        split = rng.randint(1, n - 2)
        while len(row) < n - 1:
            word = rng.choice(lex_words) if rng.random() < 0.4 else [rng.choice(starts)] + [
                rng.choice(conts) for _ in range(rng.randint(0, 2))]
            for t in word:
                row.append(t)
                seg.append(0 if len(row) <= split else 1)
            if len(row) > split and tok.sep_token_id not in row and len(row) < n - 1:
                row.append(tok.sep_token_id)
                seg.append(0)
        row, seg = row[: n - 1] + [tok.sep_token_id], seg[: n - 1] + [seg[n - 2] if n > 1 else 0]
        off = rng.choice([0, L - n])  # some rows left-padded
        ids[r, off:off + n] = torch.tensor(row)
        mask[r, off:off + n] = 1
        tt[r, off:off + n] = torch.tensor(seg)
    return ids, mask, tt


CONFIGS = [
    pytest.param(0.0, ["sw"], None, id="p0-sw"),
    pytest.param(0.3, ["sw"], None, id="p0.3-sw"),
    pytest.param(1.0, ["sw", "ha"], None, id="p1-ml"),
    pytest.param(0.5, ["ha", "sw"], 17, id="p0.5-ml-trunc17"),
    pytest.param(0.7, ["sw"], 7, id="p0.7-sw-trunc7"),
]


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("p,langs,max_length", CONFIGS)
@pytest.mark.parametrize("B,L", [(1, 5), (7, 33), (33, 97), (200, 24)], ids=["B1-L5", "B7-L33", "B33-L97", "B200-L24"])
def test_matches_python_oracle_bit_for_bit(minilm_tokenizer, lexicon, backend, device, p, langs, max_length, B, L):
    ids, mask, tt = random_batch(minilm_tokenizer, B, L, seed=B * 1000 + L)
    cs = fastot.CodeSwitcher(lexicon, p=p, seed=11, languages=langs, backend=backend)
    out = cs(ids.to(device), mask.to(device), tt.to(device), step=5, max_length=max_length)
    oracle = python_oracle(lexicon, ids, mask, tt, 11, 5, p, langs, max_length)
    _assert_matches_oracle(type(out)(*(t.cpu() for t in vars(out).values())), oracle, max_length)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_backends_bit_identical_to_reference(minilm_tokenizer, lexicon, backend, device):
    ids, mask, tt = random_batch(minilm_tokenizer, 16, 40, seed=3)
    for step in range(3):
        a = fastot.CodeSwitcher(lexicon, p=0.6, seed=2**40 + 7, backend="torch")(ids, mask, tt, step=step)
        b = fastot.CodeSwitcher(lexicon, p=0.6, seed=2**40 + 7, backend=backend)(
            ids.to(device), mask.to(device), tt.to(device), step=step)
        for x, y in zip(vars(a).values(), vars(b).values()):
            assert torch.equal(x, y.cpu())


def _words(tok, text):
    norm = tok.backend_tokenizer.normalizer.normalize_str(text)
    return tuple(w for w, _ in tok.backend_tokenizer.pre_tokenizer.pre_tokenize_str(norm))


def _text_switch(tok, text, table):
    """Word-level code-switching of the text, longest n-gram first, words as the tokenizer's own normalizer
    and pre-tokenizer see them; ``table`` maps word tuples to translations."""
    words, out, i = _words(tok, text), [], 0
    longest = max(map(len, table))
    while i < len(words):
        n = next((n for n in range(longest, 0, -1) if words[i:i + n] in table and i + n <= len(words)), 0)
        out.append(table[words[i:i + n]] if n else words[i])
        i += max(n, 1)
    return " ".join(out)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_equals_tokenizing_code_switched_text(minilm_tokenizer, backend, device):
    """p = 1, one language: substitution on ids == tokenizing the word-level code-switched text."""
    tok = minilm_tokenizer
    sentences = list(SENTENCES)
    if os.path.isdir(DATA):
        with open(os.path.join(DATA, "dev.en"), encoding="utf-8") as fh:
            sentences += [next(fh).strip() for _ in range(40)]
    lex = fastot.Lexicon.from_pairs(PAIRS_SW, tok, languages="sw")
    table = {_words(tok, s): t for s, t in PAIRS_SW}
    queries, passages = sentences[::2], sentences[1::2][: len(sentences[::2])]
    queries = queries[: len(passages)]
    ids, mask, tt = _encode(tok, queries, passages)
    out = fastot.CodeSwitcher(lex, p=1.0, seed=0, backend=backend)(ids.to(device), mask.to(device), tt.to(device))
    exp_ids, exp_mask, exp_tt = _encode(tok, [_text_switch(tok, q, table) for q in queries],
                                        [_text_switch(tok, s, table) for s in passages])
    assert _rows(out) == [r[m.bool()].tolist() for r, m in zip(exp_ids, exp_mask)]
    for r in range(len(queries)):
        n = int(exp_mask[r].sum())
        assert out.token_type_ids[r, :n].tolist() == exp_tt[r, :n].tolist()
    assert (out.n_switched > 0).any()
    # With truncation, it also equals the tokenizer's own longest_first truncation of that text.
    out = fastot.CodeSwitcher(lex, p=1.0, seed=0, backend=backend)(ids.to(device), mask.to(device), tt.to(device),
                                                                   max_length=24)
    exp_ids, exp_mask, _ = _encode(tok, [_text_switch(tok, q, table) for q in queries],
                                   [_text_switch(tok, s, table) for s in passages], max_length=24)
    assert _rows(out) == [r[m.bool()].tolist() for r, m in zip(exp_ids, exp_mask)]


def test_switch_rate_matches_p_and_randomness_is_counter_based(minilm_tokenizer):
    tok = minilm_tokenizer
    words = [w for w, _ in PAIRS_SW if " " not in w]
    lex = fastot.Lexicon.from_pairs(PAIRS_SW, tok, languages="sw")
    rng = random.Random(0)
    text = [" ".join(rng.choice(words) for _ in range(30)) for _ in range(64)]
    ids, mask, tt = _encode(tok, text)
    for p in (0.25, 0.5, 0.75):
        cs = fastot.CodeSwitcher(lex, p=p, seed=3)
        out = cs(ids, mask, tt, step=1)
        n = int(out.n_words.sum())
        rate = out.n_switched.sum().item() / n
        sd = (p * (1 - p) / n) ** 0.5
        assert abs(rate - p) < 5 * sd, (p, rate)
        again = cs(ids, mask, tt, step=1)
        assert torch.equal(out.input_ids, again.input_ids)
        other = cs(ids, mask, tt, step=2)
        assert not torch.equal(out.input_ids, other.input_ids)
        # The row index is part of the counter: a prefix of the batch switches exactly as in the full batch.
        assert _rows(cs(ids[:5], mask[:5], tt[:5], step=1)) == _rows(out)[:5]


@pytest.mark.parametrize("backend,device", backend_params("codeswitch"))
def test_per_call_p_is_the_switcher_built_with_that_p_and_nests(minilm_tokenizer, backend, device):
    tok = minilm_tokenizer
    words = [w for w, _ in PAIRS_SW if " " not in w]
    lex = fastot.Lexicon.from_pairs(PAIRS_SW, tok, languages="sw")
    rng = random.Random(1)
    ids, mask, tt = (t.to(device) for t in _encode(tok, [" ".join(rng.choice(words) for _ in range(12))
                                                         for _ in range(6)]))
    cs = fastot.CodeSwitcher(lex, p=0.9, seed=4, backend=backend)
    switched = []
    for p in (0.0, 0.3, 0.6, 1.0):
        out = cs(ids, mask, tt, step=2, p=p)
        built = fastot.CodeSwitcher(lex, p=p, seed=4, backend=backend)(ids, mask, tt, step=2)
        assert _rows(out) == _rows(built) and torch.equal(out.n_switched, built.n_switched)
        switched.append(out.n_switched.sum().item())
    assert switched[0] == 0 and switched == sorted(switched) and switched[-1] == cs(ids, mask, tt, step=2, p=1.0).n_words.sum()
    assert _rows(cs(ids, mask, tt, step=2, p=None)) == _rows(cs(ids, mask, tt, step=2))
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="p must be"):
            cs(ids, mask, tt, step=2, p=bad)


def test_multilingual_draws_language_per_word_and_never_falls_back(minilm_tokenizer):
    tok = minilm_tokenizer
    lex = fastot.Lexicon.from_pairs({"sw": [("bread", "mkate"), ("milk", "maziwa")], "ha": [("bread", "burodi")]}, tok)
    ids, mask, tt = _encode(tok, ["bread milk " * 40])
    out = fastot.CodeSwitcher(lex, p=1.0, seed=1)(ids, mask, tt)
    text = tok.decode(out.input_ids[0], skip_special_tokens=True).split()
    assert {"mkate", "burodi", "maziwa", "milk"} <= set(text)  # milk has no ha translation: kept, no fallback
    assert "bread" not in text


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_active_languages_choose_the_keys(minilm_tokenizer, backend, device):
    """A multi-word key of an inactive language never hides the words it spans from an active one."""
    tok = minilm_tokenizer
    ha = [("river", "kogi"), ("bank", "gaba")]
    both = fastot.Lexicon.from_pairs({"sw": [("river bank", "ukingo wa mto"), ("milk", "maziwa")], "ha": ha}, tok)
    alone = fastot.Lexicon.from_pairs({"ha": ha}, tok)
    ids, mask, tt = _encode(tok, ["the river bank", "milk at the river"], ["a bank", "river bank milk"])
    args = (ids.to(device), mask.to(device), tt.to(device))
    got = fastot.CodeSwitcher(both, p=1.0, languages="ha", backend=backend)(*args, step=3, max_length=20)
    want = fastot.CodeSwitcher(alone, p=1.0, backend=backend)(*args, step=3, max_length=20)
    for x, y in zip(vars(got).values(), vars(want).values()):
        assert torch.equal(x.cpu(), y.cpu())
    assert tok.decode(got.input_ids[0].cpu(), skip_special_tokens=True) == "the kogi gaba a gaba"
    # Both languages active: "river bank" is one unit again, switched into sw or kept (ML-CS).
    sel = both.select(["ha", "sw"])
    assert sel.languages == ["ha", "sw"] and sel.n_keys == both.n_keys and both.select(["sw", "ha"]) is both
    assert both.select(["sw"]).n_keys == 2 and both.select(["sw"]).max_key_words == 2
    assert both.select(["ha"]).max_key_words == 1
    cov = both.coverage(["the river bank"], tok)
    assert cov["words"] == 3 and cov["covered"] == pytest.approx({"sw": 2 / 3, "ha": 2 / 3})


def test_a_language_without_translations(minilm_tokenizer):
    tok = minilm_tokenizer
    lex = fastot.Lexicon.from_pairs({"sw": [("milk", "maziwa")], "ha": [("milk", "[MASK]")]}, tok)
    assert lex.languages == ["sw", "ha"] and lex.stats["skipped"] == 1
    with pytest.raises(ValueError, match=r"no key has a translation in languages \['ha'\]"):
        fastot.CodeSwitcher(lex, languages=["ha"])
    with pytest.raises(ValueError, match="subset of"):
        lex.select(["xx"])
    assert lex.coverage(["milk and milk"], tok)["covered"] == {"sw": 2 / 3, "ha": 0.0}


def test_special_tokens_never_switched_or_dropped(minilm_tokenizer, lexicon):
    ids, mask, tt = random_batch(minilm_tokenizer, 20, 30, seed=9)
    out = fastot.CodeSwitcher(lexicon, p=1.0, seed=0)(ids, mask, tt, max_length=12)
    special = lexicon.tensors()["special"]
    for r in range(20):
        src = ids[r][mask[r].bool()]
        assert src[special[src]].tolist() == [t for t in _rows(out)[r] if special[t]]


def test_lexicon_save_load_roundtrip(tmp_path, minilm_tokenizer, lexicon):
    lexicon.save(tmp_path / "lex.pt")
    back = fastot.Lexicon.load(tmp_path / "lex.pt")
    assert back.languages == lexicon.languages and back.max_key_len == lexicon.max_key_len
    ids, mask, tt = random_batch(minilm_tokenizer, 4, 20, seed=1)
    a = fastot.CodeSwitcher(lexicon, p=0.5)(ids, mask, tt)
    b = fastot.CodeSwitcher(back, p=0.5)(ids, mask, tt)
    assert torch.equal(a.input_ids, b.input_ids)


def test_lexicon_save_is_atomic_and_load_rejects_other_files(tmp_path, monkeypatch, minilm_tokenizer, lexicon):
    path = tmp_path / "lex.pt"
    lexicon.save(path)
    before = path.read_bytes()

    def broken_save(obj, f):
        with open(f, "wb") as fh:
            fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        lexicon.save(path)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["lex.pt"]

    with pytest.raises(FileNotFoundError, match="missing.pt"):
        fastot.Lexicon.load(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a lexicon")
    with pytest.raises(ValueError, match="junk.pt' is not a fastot lexicon file"):
        fastot.Lexicon.load(tmp_path / "junk.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt' is not a fastot lexicon file"):
        fastot.Lexicon.load(tmp_path / "other.pt")
    blob = torch.load(path, weights_only=True)
    blob["meta"]["format"] = 99
    torch.save(blob, tmp_path / "future.pt")
    with pytest.raises(ValueError, match="format 99; this fastot reads formats 1 to 3"):
        fastot.Lexicon.load(tmp_path / "future.pt")


def test_lexicon_load_format_1_and_the_tokenizer_check(tmp_path, minilm_tokenizer, lexicon):
    """Format 1 marked [MASK] special, so a [MASK] of the text was never cut: loading one warns, or takes the
    tokenizer's tables when given it; a format-2 file refuses a tokenizer with other tables."""
    tok = minilm_tokenizer
    T = lexicon.tensors()
    old_special = T["special"].clone()
    old_special[tok.mask_token_id] = True
    blob = {"meta": {"languages": lexicon.languages, "max_key_len": lexicon.max_key_len, "pad_id": lexicon.pad_id,
                     "scheme": lexicon.scheme, "stats": lexicon.stats},  # format 1 files had "format": 1 or none
            "tensors": {**T, "special": old_special}}
    torch.save(blob, tmp_path / "v1.pt")
    with pytest.warns(UserWarning, match="format 1.*pass tokenizer="):
        stale = fastot.Lexicon.load(tmp_path / "v1.pt")
    assert bool(stale.tensors()["special"][tok.mask_token_id])
    fresh = fastot.Lexicon.load(tmp_path / "v1.pt", tok)
    assert torch.equal(fresh.tensors()["special"], T["special"]) and not fresh.tensors()["special"][tok.mask_token_id]
    fresh.save(tmp_path / "v2.pt")
    assert torch.load(tmp_path / "v2.pt", weights_only=True)["meta"]["format"] == fastot.codeswitch.FORMAT
    assert torch.equal(fastot.Lexicon.load(tmp_path / "v2.pt", tok).tensors()["key_hash"], T["key_hash"])

    class OtherTables:  # the same vocabulary with [MASK] made a template token
        def __getattr__(self, name):
            return getattr(tok, name)

        def __call__(self, *a, **k):
            return tok(*a, **k)

        def __len__(self):
            return len(tok)

    other = OtherTables()
    other.__dict__["pad_token_id"] = tok.mask_token_id
    with pytest.raises(ValueError, match="differ from those .*v2.pt' was built with"):
        fastot.Lexicon.load(tmp_path / "v2.pt", other)


def test_vocab_tables_special_means_template(minilm_tokenizer):
    """Only [CLS], [SEP] and [PAD] are kept whole; [MASK] and [UNK] are one-token words of the text."""
    tok = minilm_tokenizer
    ws, sp, scheme = fastot.codeswitch.vocab_tables(tok)
    assert scheme == "wordpiece"
    assert sorted(sp.nonzero().flatten().tolist()) == sorted({tok.cls_token_id, tok.sep_token_id, tok.pad_token_id})
    for i in (tok.mask_token_id, tok.unk_token_id):
        assert bool(ws[i]) and not bool(sp[i])
    lex = fastot.Lexicon.from_pairs([("river", "[MASK]"), ("[MASK]", "mto"), ("water", "maji")], tok, languages="sw")
    T = lex.tensors()  # a special token is no translation, and no part of a key ("[mask]" is 3 plain pieces)
    assert lex.stats["skipped"] == 1 and tok.mask_token_id not in T["key_ids"].tolist() + T["trans_ids"].tolist()


def test_numpy_scalars_and_float_masks(minilm_tokenizer, lexicon):
    ids, mask, tt = random_batch(minilm_tokenizer, 5, 24, seed=4)
    a = fastot.CodeSwitcher(lexicon, p=0.5, seed=3)(ids, mask, tt, step=2, max_length=20)
    b = fastot.CodeSwitcher(lexicon, p=np.float32(0.5), seed=np.uint64(3))(ids, mask, tt, step=np.int64(2),
                                                                            max_length=np.int32(20))
    _assert_same(a, b)
    _assert_same(a, fastot.CodeSwitcher(lexicon, p=0.5, seed=3)(ids, mask.float(), tt, step=2, max_length=20))
    with pytest.raises(ValueError, match=r"attention_mask must be 0 or 1; found \[0.5"):  # not a half token
        fastot.CodeSwitcher(lexicon, p=0.5, seed=3)(ids, mask.float() * 0.5, tt, step=2, max_length=20)
    with pytest.raises(TypeError, match="token_type_ids must be integer or bool, got torch.float32"):
        fastot.CodeSwitcher(lexicon)(ids, mask, tt.float())
    for bad in (np.bool_(True), "0.5", np.float64("nan")):
        with pytest.raises(ValueError, match="p must be in"):
            fastot.CodeSwitcher(lexicon, p=bad)
    with pytest.raises(ValueError, match="seed must be an integer"):
        fastot.CodeSwitcher(lexicon, seed=np.float64(1))


def test_lexicon_keys_case_variants_and_skips_multiword(minilm_tokenizer):
    lex = fastot.Lexicon.from_pairs([("New York", "Nyu Yoki"), ("Water", "maji"), ("a b c d e f g h i", "x"),
                                     ("\U0001F600", "tabasamu"), ("smile", "\U0001F600")],
                                    minilm_tokenizer, languages="sw")
    # skipped: a 9-word source, a source and a translation that are [UNK] (it would match any unknown word)
    assert lex.n_keys == 2 and lex.max_key_words == 2 and lex.stats["skipped"] == 3


# --------------------------------------------------------------------------- registered op, compile
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("max_length", [None, 20], ids=["width-longest", "trunc20"])
def test_row_offset_switches_a_share_as_the_whole_batch(minilm_tokenizer, lexicon, backend, device, max_length):
    """torchrun: a process holding rows [s, s + n) of a global batch passes row_offset=s and switches them as the
    whole batch would at the same step, on every backend; without the offset its draws are another row's."""
    ids, mask, tt = (t.to(device) for t in random_batch(minilm_tokenizer, 12, 30, seed=9))
    cs = fastot.CodeSwitcher(lexicon, p=0.5, seed=5, languages=["sw", "ha"], backend=backend)
    whole = cs(ids, mask, tt, step=3, max_length=max_length)
    shifted = 0
    for s, e in ((0, 5), (5, 12), (7, 8)):
        part = cs(ids[s:e], mask[s:e], tt[s:e], step=3, max_length=max_length, row_offset=s)
        width = part.input_ids.shape[1]
        assert torch.equal(part.n_switched_lang, whole.n_switched_lang[s:e])
        assert torch.equal(part.input_ids, whole.input_ids[s:e, :width])
        assert torch.equal(part.source_index, whole.source_index[s:e, :width])
        if s:
            plain = cs(ids[s:e], mask[s:e], tt[s:e], step=3, max_length=max_length)
            shifted += not torch.equal(plain.n_switched_lang, part.n_switched_lang)
    assert shifted  # the offset is not a no-op
    with pytest.raises(ValueError, match="row_offset"):
        cs(ids, mask, tt, row_offset=-1)


def _cs_args(lexicon, ids, mask, tt, max_length):
    T = lexicon.tensors()
    return (ids, mask, tt, T["word_start"], T["special"], T["key_hash"], T["key_offsets"], T["key_ids"],
            T["entry_offsets"], T["trans_offsets"], T["trans_ids"], torch.tensor([0, 1]), lexicon.max_key_len, lexicon.max_key_words,
            ref.rand_prefix(1, 2, ref.SALT_SWITCH), ref.rand_prefix(1, 2, ref.SALT_LANG),
            ref.rand_prefix(1, 2, ref.SALT_TRANS), 1 << 23, max_length, 0)


@pytest.mark.parametrize("op,backend", [("codeswitch", "cpp"), ("triton_codeswitch", "triton")], ids=["cpp", "triton"])
@pytest.mark.parametrize("max_length", [16, -1], ids=["static-width", "dynamic-width"])
def test_opcheck_registered_codeswitch_ops(minilm_tokenizer, lexicon, op, backend, max_length):
    if backend not in fastot.available_backends("codeswitch"):
        pytest.skip(f"the {backend} backend cannot run here")
    if backend == "triton":
        from fastot.triton import codeswitch as _registers_the_op  # noqa: F401, PLC0415
    ids, mask, tt = random_batch(minilm_tokenizer, 5, 24, seed=4)
    args = _cs_args(lexicon, ids, mask, tt, max_length)
    # Integer outputs only, so no autograd; the dynamic width cannot be traced by AOT dispatch with static shapes.
    tests = ("test_schema", "test_faketensor") + (("test_aot_dispatch_dynamic",) if max_length >= 0 else ())
    torch.library.opcheck(getattr(torch.ops.fastot, op).default, args, test_utils=tests)


def test_compile_fullgraph_smoke(minilm_tokenizer, lexicon):
    """The registered op traces (fake impl, static width with max_length); the torch reference sizes its
    expansion from data (repeat_interleave), so it is not a fullgraph target."""
    if "cpp" not in fastot.available_backends("codeswitch"):
        pytest.skip("the compiled extension is not loaded")
    ids, mask, tt = random_batch(minilm_tokenizer, 6, 20, seed=5)
    cs = fastot.CodeSwitcher(lexicon, p=0.5, seed=1, backend="cpp")

    def run(i, m, t):
        return cs(i, m, t, step=3, max_length=20).input_ids

    compiled = torch.compile(run, fullgraph=True, backend="aot_eager")
    assert torch.equal(compiled(ids, mask, tt), run(ids, mask, tt))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_segments_beyond_two_and_negative_token_types(minilm_tokenizer, lexicon, backend, device):
    ids, mask, tt = random_batch(minilm_tokenizer, 9, 30, seed=12)
    tt = tt * 2 - (torch.arange(30) % 7 == 0).long()  # token types in {-1, 0, 1, 2}
    cs = fastot.CodeSwitcher(lexicon, p=0.5, seed=4, backend=backend)
    out = cs(ids.to(device), mask.to(device), tt.to(device), max_length=20)
    _assert_matches_oracle(type(out)(*(t.cpu() for t in vars(out).values())),
                           python_oracle(lexicon, ids, mask, tt, 4, 0, 0.5, lexicon.languages, 20), 20)


def test_malformed_lexicon_tensors_are_rejected(lexicon):
    good = {k: v.clone() for k, v in lexicon.tensors().items()}

    def build(**change):
        t = dict(good, **change)
        return fastot.Lexicon(t, lexicon.languages, lexicon.max_key_len, 0, "wordpiece")

    build()  # the untouched tensors are fine
    bad_cases = {
        "entry_offsets": good["entry_offsets"][:-1],
        "trans_offsets": torch.cat([good["trans_offsets"][:-1], good["trans_offsets"][-1:] + 4]),
        "key_hash": good["key_hash"].int(),
        "trans_ids": good["trans_ids"].clone().fill_(10**6),
        "key_offsets": good["key_offsets"].flip(0),
        "special": good["special"][:-1],
    }
    for name, value in bad_cases.items():
        with pytest.raises(ValueError, match="lexicon"):
            build(**{name: value})
    with pytest.raises(ValueError, match="entry_offsets"):
        fastot.Lexicon(good, lexicon.languages + ["extra"], lexicon.max_key_len, 0, "wordpiece")


# --------------------------------------------------------------------------- bad input
def test_bad_input_raises_and_changes_nothing(minilm_tokenizer, lexicon):
    ids, mask, tt = random_batch(minilm_tokenizer, 3, 12, seed=2)
    keep = (ids.clone(), mask.clone(), tt.clone())
    cs = fastot.CodeSwitcher(lexicon, p=0.5)
    bad = ids.clone()
    bad[0, 1] = lexicon.vocab_size
    with pytest.raises(ValueError, match=r"input_ids must be in \[0, 30522\)"):
        cs(bad, mask, tt)
    with pytest.raises(ValueError, match="attention_mask must have the shape"):
        cs(ids, mask[:, :5], tt)
    with pytest.raises(ValueError, match=r"input_ids must be a \[B, L\]"):
        cs(ids[0], mask[0])
    with pytest.raises(TypeError, match="input_ids must be integer"):
        cs(ids.float(), mask)
    with pytest.raises(ValueError, match="max_length=1 is shorter"):
        cs(ids, mask, tt, max_length=1)
    with pytest.raises(ValueError, match="step"):
        cs(ids, mask, tt, step=-1)
    for p in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
            fastot.CodeSwitcher(lexicon, p=p)
    with pytest.raises(ValueError, match="languages"):
        fastot.CodeSwitcher(lexicon, languages=["xx"])
    with pytest.raises(ValueError, match="empty lexicon"):
        fastot.Lexicon.from_pairs([], minilm_tokenizer, languages="sw")
    with pytest.raises(fastot.BackendUnavailable, match="cuda"):
        fastot.CodeSwitcher(lexicon, backend="cuda")(ids, mask, tt)
    for x, y in zip((ids, mask, tt), keep):
        assert torch.equal(x, y)


# --------------------------------------------------------------------------- every backend vs the reference
def _assert_same(a, b):
    for name, x in vars(a).items():
        y = getattr(b, name).cpu()
        assert x.shape == y.shape and torch.equal(x, y), name


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_single_word_lexicon_and_edge_shapes(minilm_tokenizer, backend, device):
    """Single-word keys (no unit scan), one language, and shapes at the edges: B=0, L=0, L=1, all padding."""
    lex = fastot.Lexicon.from_pairs([(s, t) for s, t in PAIRS_SW if " " not in s and "'" not in s],
                                    minilm_tokenizer, languages="sw")
    assert lex.max_key_words == 1
    ids, mask, tt = random_batch(minilm_tokenizer, 13, 29, seed=21)
    mask[3] = 0  # a row of padding only
    cases = [(ids, mask, tt), (ids[:0], mask[:0], tt[:0]), (ids[:, :0], mask[:, :0], tt[:, :0]),
             (ids[:, :1], mask[:, :1], tt[:, :1])]
    for max_length in (None, 9, 0):
        for i, m, t in cases:
            if max_length == 0 and i.shape[1]:
                m = torch.zeros_like(m)  # no specials to keep in a zero budget
            ref_out = fastot.CodeSwitcher(lex, p=0.6, seed=5, backend="torch")(i, m, t, step=2, max_length=max_length)
            out = fastot.CodeSwitcher(lex, p=0.6, seed=5, backend=backend)(
                i.to(device), m.to(device), t.to(device), step=2, max_length=max_length)
            _assert_same(ref_out, out)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_long_rows_with_chained_multiword_keys(minilm_tokenizer, lexicon, backend, device):
    """Rows longer than 256 tokens full of overlapping multi-word keys ("at the market the river bank ...")."""
    rng = random.Random(7)
    phrases = ["at the market", "the river bank", "the river", "river bank", "doesn't", "bread", "at the", "x"]
    text = [" ".join(rng.choice(phrases) for _ in range(120)) for _ in range(3)]
    enc = minilm_tokenizer(text, text[::-1], padding=True, return_tensors="pt")
    args = (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])
    assert args[0].shape[1] > 256
    for p, max_length in ((1.0, None), (0.5, 300)):
        ref_out = fastot.CodeSwitcher(lexicon, p=p, seed=9, backend="torch")(*args, step=4, max_length=max_length)
        out = fastot.CodeSwitcher(lexicon, p=p, seed=9, backend=backend)(*(a.to(device) for a in args), step=4,
                                                                         max_length=max_length)
        _assert_same(ref_out, out)
    out = fastot.CodeSwitcher(lexicon, p=1.0, seed=9, backend=backend)(*(a.to(device) for a in args), step=4)
    _assert_matches_oracle(type(out)(*(t.cpu() for t in vars(out).values())),
                           python_oracle(lexicon, *args, 9, 4, 1.0, lexicon.languages, None), None)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_lexicons_in_turn_and_a_lexicon_without_translations(minilm_tokenizer, backend, device):
    """Several lexicons one after another (nothing cached from an earlier one), and one whose only key has no
    translation (nothing switches), each equal to the reference (found by review)."""
    tok = minilm_tokenizer
    ids, mask, tt = random_batch(tok, 6, 30, seed=31)
    ws, sp, _ = fastot.codeswitch.vocab_tables(tok)
    river = tuple(tok("river", add_special_tokens=False)["input_ids"])
    lexicons = [fastot.Lexicon.pack({river: {0: []}}, ["sw"], ws, sp, 0, "wordpiece")]
    for n in (1, 4, 2):  # translations of n ids, so a stale length would cut them
        lexicons.append(fastot.Lexicon.from_pairs([(w, " ".join(["maji"] * n)) for w, _ in PAIRS_SW], tok,
                                                  languages="sw"))
    for lex in lexicons:
        a = fastot.CodeSwitcher(lex, p=1.0, backend="torch")(ids, mask, tt)
        b = fastot.CodeSwitcher(lex, p=1.0, backend=backend)(ids.to(device), mask.to(device), tt.to(device))
        _assert_same(a, b)
    assert a.n_switched.sum() > 0


def test_repeated_languages_are_rejected(lexicon):
    with pytest.raises(ValueError, match="without repeats"):
        fastot.CodeSwitcher(lexicon, languages=["sw", "sw"])


def test_lexicon_load_format_2_sentencepiece(tmp_path, sentencepiece_tokenizer, minilm_tokenizer, lexicon):
    """Format 2 joined punctuation to the word before it in SentencePiece vocabularies: such a file warns, or
    takes the tokenizer's tables; a WordPiece format-2 file (the same tables as format 3) loads silently."""
    sp = fastot.Lexicon.from_pairs([("river", "mto")], sentencepiece_tokenizer, languages="sw")
    for lex, name in ((sp, "sp.pt"), (lexicon, "wp.pt")):
        lex.save(tmp_path / name)
        blob = torch.load(tmp_path / name, weights_only=True)
        blob["meta"]["format"] = 2
        torch.save(blob, tmp_path / name)
    with pytest.warns(UserWarning, match="format 2, whose SentencePiece word starts"):
        fastot.Lexicon.load(tmp_path / "sp.pt")
    assert torch.equal(fastot.Lexicon.load(tmp_path / "sp.pt", sentencepiece_tokenizer).tensors()["word_start"],
                       sp.tensors()["word_start"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fastot.Lexicon.load(tmp_path / "wp.pt")
