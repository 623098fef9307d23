"""CodeSwitchCollator: shapes, labels, equality with the tokenizer + switcher called by hand, the tokenizer's own
output at p = 0, every translatable word switched at p = 1, statistics, steps across DataLoader workers, bad input."""

import copy
import os
import re

import numpy as np
import pytest
import torch
from conftest import backend_params
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

import fastot
from fastot.collate import CodeSwitchCollator as Collator


def CodeSwitchCollator(*args, stats="batch", **kw):  # noqa: N802
    """Most tests read each batch's statistics; the default ("collect") has tests of its own below."""
    return Collator(*args, stats=stats, **kw)


BACKENDS = backend_params("codeswitch")
DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mafand", "en-swa")

SENTENCES = [
    "The river flooded the quick market in Nairobi on Monday.",
    "Farmers say the rains came late this year, and the harvest is small.",
    "A doctor's report doesn't explain why the children were sick.",
    "Government officials met traders at the river bank to discuss prices.",
    "She bought bread, milk and rice at the market before noon.",
    "Résumé of the café meeting: water, schools and roads.",
    "Children walk to school along the river every morning.",
    "The market sells water, bread and milk at low prices.",
]
PAIRS_SW = [("river", "mto"), ("market", "soko"), ("quick", "haraka"), ("rains", "mvua"), ("children", "watoto"),
            ("doctor", "daktari"), ("bread", "mkate"), ("milk", "maziwa"), ("water", "maji"), ("schools", "shule"),
            ("government", "serikali"), ("year", "mwaka"), ("harvest", "mavuno"), ("prices", "bei"), ("the", "ile"),
            ("school", "shule"), ("morning", "asubuhi"), ("of", "ya"), ("and", "na")]
PAIRS_HA = [("river", "kogi"), ("market", "kasuwa"), ("water", "ruwa"), ("children", "yara"), ("bread", "burodi")]


def _sentences(n):
    """n real English sentences (MAFAND en-swa dev) or, without the data, the built-in ones repeated."""
    if os.path.isdir(DATA):
        with open(os.path.join(DATA, "dev.en"), encoding="utf-8") as fh:
            lines = [s for s in (line.strip() for line in fh) if s]
        return lines[:n]
    return [SENTENCES[i % len(SENTENCES)] for i in range(n)]


def _pairs(n):
    sents = _sentences(2 * n)
    return [(" ".join(sents[2 * i].split()[:10]), sents[2 * i + 1]) for i in range(n)]


@pytest.fixture(scope="module")
def lex_sw(minilm_tokenizer):
    return fastot.Lexicon.from_pairs(PAIRS_SW, minilm_tokenizer, languages="sw")


@pytest.fixture(scope="module")
def lex_ml(minilm_tokenizer):
    return fastot.Lexicon.from_pairs({"sw": PAIRS_SW, "ha": PAIRS_HA}, minilm_tokenizer)


def _assert_batches_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        if k == "cs_stats":
            _assert_batches_equal(a[k], b[k])
        else:
            assert torch.equal(a[k].cpu(), b[k].cpu()), k


@pytest.mark.parametrize("form", ["tuple", "tuple-label", "dict", "dict-label", "list-label"])
@pytest.mark.parametrize("label_dtype", [torch.float32, torch.long], ids=["fp32", "int64"])
def test_shapes_dtypes_and_labels(minilm_tokenizer, lex_ml, form, label_dtype):
    pairs = _pairs(7)
    labels = [1, 0, 1, 1, 0, 0, 1]
    with_label = form.endswith("label")
    if form.startswith("dict"):
        batch = [{"query": q, "passage": p, **({"label": y} if with_label else {})} for (q, p), y in zip(pairs, labels)]
    elif form.startswith("list"):
        batch = [[q, p, y] for (q, p), y in zip(pairs, labels)]
    else:
        batch = [(q, p, y) if with_label else (q, p) for (q, p), y in zip(pairs, labels)]
    cs = fastot.CodeSwitcher(lex_ml, p=0.5, seed=1, languages=["ha", "sw"])
    out = CodeSwitchCollator(minilm_tokenizer, cs, max_length=33, label_dtype=label_dtype)(batch)
    keys = {"input_ids", "attention_mask", "token_type_ids", "cs_stats"}
    assert set(out) == keys | ({"labels"} if with_label else set())
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert out[k].shape == (7, 33) and out[k].dtype == torch.int64, k
    if with_label:
        assert out["labels"].dtype == label_dtype and out["labels"].tolist() == labels
    st = out["cs_stats"]
    assert st["words"].shape == () and st["switched"].shape == () and st["switched_per_language"].shape == (2,)
    assert all(t.dtype == torch.int64 for t in st.values())


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("max_length,pre_max_length", [(256, None), (24, 48), (9, 9)],
                         ids=["L256", "L24-pre48", "L9-pre9"])
def test_equals_tokenizer_then_switcher_by_hand(minilm_tokenizer, lex_ml, backend, device, max_length, pre_max_length):
    tok = minilm_tokenizer
    pairs = _pairs(13)
    cs = fastot.CodeSwitcher(lex_ml, p=0.6, seed=7, backend=backend)
    col = CodeSwitchCollator(tok, cs, max_length=max_length, pre_max_length=pre_max_length, device=device)
    enc = tok([q for q, _ in pairs], [p for _, p in pairs], padding=True, truncation="longest_first",
              max_length=pre_max_length or 2 * max_length, return_tensors="pt")
    for step in range(3):
        got = col(pairs)
        ref = cs(enc["input_ids"].to(device), enc["attention_mask"].to(device), enc["token_type_ids"].to(device),
                 step=step, max_length=max_length)
        for k, v in ref.model_inputs().items():
            assert got[k].device.type == torch.device(device).type and torch.equal(got[k], v), k
        st = got["cs_stats"]
        assert torch.equal(st["words"], ref.n_words.sum()) and torch.equal(st["switched"], ref.n_switched.sum())
        assert torch.equal(st["switched_per_language"], ref.n_switched_lang.sum(0))  # needs n_switched_lang
        assert int(st["switched_per_language"].sum()) == int(st["switched"]) > 0
    assert col.calls == 3


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("max_length,pre_max_length,n", [(256, None, 32), (64, None, 32), (16, 32, 32), (17, 512, 32),
                                                         (8, 8, 8)], ids=["L256", "L64", "L16-pre32", "L17", "L8-pre8"])
def test_p0_is_the_tokenizers_own_output(minilm_tokenizer, lex_sw, backend, device, max_length, pre_max_length, n):
    """p = 0: exactly ``tokenizer(..., truncation="longest_first", max_length=..., padding="max_length")``,
    also when the rows are cut twice (before switching at pre_max_length, after it at an even max_length)."""
    tok = minilm_tokenizer
    pairs = _pairs(n)
    col = CodeSwitchCollator(tok, fastot.CodeSwitcher(lex_sw, p=0.0, backend=backend), max_length=max_length,
                             pre_max_length=pre_max_length, device=device)
    got = col(pairs)
    exp = tok([q for q, _ in pairs], [p for _, p in pairs], truncation="longest_first", max_length=max_length,
              padding="max_length", return_tensors="pt")
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(got[k].cpu(), exp[k]), k
    assert int(got["cs_stats"]["switched"]) == 0 and int(got["cs_stats"]["words"]) > 0


def test_default_pre_cut_then_cut_equals_one_cut(minilm_tokenizer, lex_sw):
    """Segment lengths around every tie, cut twice (default pre_max_length, then max_length) == cut once."""
    tok = minilm_tokenizer
    words = ["river", "market", "water", "bread", "milk", "rice", "noon", "road"]  # one WordPiece each
    text = lambda n: " ".join(words[i % len(words)] for i in range(n))  # noqa: E731
    pairs = [(text(a), text(b)) for a in range(0, 36, 3) for b in range(1, 36, 2)]
    cs = fastot.CodeSwitcher(lex_sw, p=0.0)
    for max_length in range(4, 16):
        col = CodeSwitchCollator(tok, cs, max_length=max_length)
        assert col.pre_max_length == 2 * max_length  # 3 special tokens: 2 * max_length - 3 is already odd
        exp = tok([q for q, _ in pairs], [p for _, p in pairs], truncation="longest_first", max_length=max_length,
                  padding="max_length", return_tensors="pt")
        assert torch.equal(col(pairs)["input_ids"], exp["input_ids"]), max_length


def test_p0_cuts_unknown_tokens_like_the_tokenizer(minilm_tokenizer, lex_sw):
    tok = minilm_tokenizer
    pairs = [("the river \U0001F600 flows " * 3, "a short passage")]
    got = CodeSwitchCollator(tok, fastot.CodeSwitcher(lex_sw, p=0.0), max_length=10)(pairs)
    exp = tok(*pairs[0], truncation="longest_first", max_length=10, padding="max_length", return_tensors="pt")
    assert tok.unk_token_id in exp["input_ids"][0].tolist()
    assert got["input_ids"].tolist() == exp["input_ids"].tolist()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_p0_cuts_special_tokens_of_the_text_like_the_tokenizer(minilm_tokenizer, lex_sw, backend, device):
    """A [MASK] or [UNK] written in the text is a text token for the tokenizer's truncation: the switch cuts it
    too, so p = 0 still equals the tokenizer (a [MASK] used to be kept as a template token; found by review)."""
    tok = minilm_tokenizer
    pairs = [("the [MASK] river [MASK] " * 4, "a [MASK] market"), ("[MASK] " * 9, "bread [UNK] milk " * 3),
             ("water", "[MASK][MASK] the river")]
    for max_length in (6, 9, 14):
        got = CodeSwitchCollator(tok, fastot.CodeSwitcher(lex_sw, p=0.0, backend=backend), max_length=max_length,
                                 device=device)(pairs)
        exp = tok([q for q, _ in pairs], [p for _, p in pairs], truncation="longest_first", max_length=max_length,
                  padding="max_length", return_tensors="pt")
        assert tok.mask_token_id in exp["input_ids"].tolist()[0]
        for k in ("input_ids", "attention_mask", "token_type_ids"):
            assert torch.equal(got[k].cpu(), exp[k]), (max_length, k)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_p1_switches_every_word_with_a_translation(minilm_tokenizer, lex_sw, backend, device):
    tok = minilm_tokenizer
    table = dict(PAIRS_SW)
    pairs = [(SENTENCES[i], SENTENCES[-1 - i]) for i in range(len(SENTENCES))]
    col = CodeSwitchCollator(tok, fastot.CodeSwitcher(lex_sw, p=1.0, backend=backend), max_length=128, device=device)
    out = col(pairs)
    # Words as the tokenizer itself splits them (independent of fastot), and how many have a translation.
    norm, pre = tok.backend_tokenizer.normalizer, tok.backend_tokenizer.pre_tokenizer
    split = lambda text: [w for w, _ in pre.pre_tokenize_str(norm.normalize_str(text))]  # noqa: E731
    words = [w for q, p in pairs for text in (q, p) for w in split(text)]
    translatable = sum(w in table for w in words)
    st = out["cs_stats"]
    assert int(st["words"]) == len(words) and int(st["switched"]) == translatable > 0
    assert col.switch_ratios(st)["overall"] == pytest.approx(translatable / len(words))
    text = set(split(" ".join(tok.batch_decode(out["input_ids"], skip_special_tokens=True))))
    assert not text & set(table) and {"mto", "soko", "maji"} <= text
    # Text made only of lexicon words: every word is switched, the ratio is exactly 1.
    only = [("river market water", "bread milk the river"), ("children of the market", "rains and harvest")]
    ratios = col.switch_ratios(col(only)["cs_stats"])
    assert ratios == {"overall": 1.0, "sw": 1.0}


def test_stats_match_output_and_ratios(minilm_tokenizer, lex_ml):
    pairs = [(SENTENCES[i % 8], SENTENCES[(3 * i + 1) % 8]) for i in range(40)]
    cs = fastot.CodeSwitcher(lex_ml, p=0.5, seed=3, languages=["sw", "ha"])
    col = CodeSwitchCollator(minilm_tokenizer, cs, max_length=64)
    out = col(pairs, step=9)
    st = out["cs_stats"]
    assert int(st["switched"]) == int(st["switched_per_language"].sum())  # needs n_switched_lang
    assert 0 < int(st["switched_per_language"][1]) < int(st["switched_per_language"][0])  # ha has fewer words
    r = col.switch_ratios(st)
    assert set(r) == {"overall", "sw", "ha"}
    assert r["overall"] == pytest.approx(r["sw"] + r["ha"]) and 0 < r["overall"] < 1
    total = {k: st[k] + col(pairs, step=10)["cs_stats"][k] for k in st}  # stats add up across batches
    assert 0 < col.switch_ratios(total)["overall"] < 1
    zero = {"words": torch.tensor(0), "switched": torch.tensor(0),
            "switched_per_language": torch.zeros(2, dtype=torch.long)}
    assert col.switch_ratios(zero) == {"overall": 0.0, "sw": 0.0, "ha": 0.0}
    with pytest.raises(ValueError, match="switched_per_language"):
        col.switch_ratios({**zero, "switched_per_language": torch.zeros(3, dtype=torch.long)})


def test_step_counter_and_explicit_step(minilm_tokenizer, lex_sw):
    pairs = _pairs(16)
    cs = fastot.CodeSwitcher(lex_sw, p=0.5, seed=5)
    col, fresh = CodeSwitchCollator(minilm_tokenizer, cs), CodeSwitchCollator(minilm_tokenizer, cs)
    first = col(pairs)
    _assert_batches_equal(col(pairs, step=0), first)  # an explicit step leaves the counter alone...
    second = col(pairs)
    _assert_batches_equal(second, fresh(pairs, step=1))  # ...so the next call is step 1
    assert not torch.equal(first["input_ids"], second["input_ids"]) and col.calls == 2


def test_dataloader_workers_take_distinct_steps_and_repeat_exactly(minilm_tokenizer, lex_sw):
    """Every item is the same pair, so batches differ only by their step; with 2 workers batch i has step i."""
    pair = ("the river market water bread milk", "Children of the market: the river, water, bread and milk " * 3)
    dataset = [pair] * 32
    cs = fastot.CodeSwitcher(lex_sw, p=0.5, seed=11)
    col = CodeSwitchCollator(minilm_tokenizer, cs, max_length=64)

    def run():
        return list(DataLoader(dataset, batch_size=4, collate_fn=col, num_workers=2))

    a, b = run(), run()
    assert len(a) == len(b) == 8
    for x, y in zip(a, b):
        _assert_batches_equal(x, y)
    ids = [x["input_ids"] for x in a]
    assert all(not torch.equal(ids[i], ids[j]) for i in range(8) for j in range(i))  # no repeated stream
    fresh = CodeSwitchCollator(minilm_tokenizer, cs, max_length=64)
    for i, x in enumerate(a):
        _assert_batches_equal(x, fresh(dataset[:4], step=i))
    assert col.calls == 0  # the workers counted on their copies


def test_query_and_passage_words_draw_independently(minilm_tokenizer, lex_sw):
    """The same words in the query and the passage are not switched in lockstep (randomness is per row and word)."""
    text = " ".join(["river market water bread milk"] * 8)
    out = CodeSwitchCollator(minilm_tokenizer, fastot.CodeSwitcher(lex_sw, p=0.5, seed=2))([(text, text)] * 4)
    for ids, tt, m in zip(out["input_ids"], out["token_type_ids"], out["attention_mask"]):
        q, p = ids[(tt == 0) & (m == 1)][1:-1].tolist(), ids[(tt == 1) & (m == 1)][:-1].tolist()
        assert q != p


def test_constructor_rejects_bad_arguments(minilm_tokenizer, lex_sw):
    tok = minilm_tokenizer
    cs = fastot.CodeSwitcher(lex_sw)
    cases = [
        (dict(switcher=lex_sw), TypeError, "switcher must be a fastot.CodeSwitcher, got Lexicon"),
        (dict(tokenizer="bert"), TypeError, "tokenizer must be a Hugging Face tokenizer, got str"),
        (dict(max_length=0), ValueError, "max_length must be an integer > 0, got 0"),
        (dict(max_length=True), ValueError, "max_length must be an integer > 0, got True"),
        (dict(max_length=256.0), ValueError, "max_length must be an integer > 0, got 256.0"),
        (dict(pre_max_length=-1), ValueError, "pre_max_length must be an integer > 0, got -1"),
        (dict(max_length=64, pre_max_length=32), ValueError, "pre_max_length must be >= max_length=64, got 32"),
        (dict(device="gpu0"), ValueError, "device must name a torch device, got 'gpu0'"),
        (dict(device=0.5), TypeError, "device must be None, a str or a torch.device, got 0.5"),
        (dict(label_dtype="float"), TypeError, "label_dtype must be a torch.dtype, got 'float'"),
        (dict(padding="dynamic"), ValueError, "padding must be 'max_length' or 'longest', got 'dynamic'"),
        (dict(padding=True), ValueError, "padding must be 'max_length' or 'longest', got True"),
        (dict(padding="longest", pad_to_multiple_of=0), ValueError, "pad_to_multiple_of must be an integer > 0, got 0"),
    ]
    for kw, exc, msg in cases:
        args = {"tokenizer": tok, "switcher": cs, **kw}
        with pytest.raises(exc, match=msg.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
            CodeSwitchCollator(args.pop("tokenizer"), args.pop("switcher"), **args)
    bigger = copy.deepcopy(tok)
    bigger.add_tokens(["zzqxw"])
    with pytest.raises(ValueError, match=r"vocabulary \(30523 tokens\).*built with \(30522 tokens\)"):
        CodeSwitchCollator(bigger, cs)
    class UnmarkedPairs:  # both segments of a pair type 0, and no template token between them
        pad_token_id, num_special_tokens_to_add, __len__ = tok.pad_token_id, tok.num_special_tokens_to_add, tok.__len__

        def __call__(self, *args, **kwargs):
            enc = tok(*args, **{**kwargs, "add_special_tokens": False})
            return {**enc, "token_type_ids": [0] * len(enc["token_type_ids"])}

    with pytest.raises(ValueError, match="no token type 1 and no template token between the texts .*UnmarkedPairs"):
        CodeSwitchCollator(UnmarkedPairs(), cs)
    nopad = copy.deepcopy(tok)
    nopad.pad_token = None
    with pytest.raises(ValueError, match="tokenizer must have a pad token, got pad_token_id=None"):
        CodeSwitchCollator(nopad, cs)


def test_call_rejects_bad_input_and_changes_nothing(minilm_tokenizer, lex_sw):
    col = CodeSwitchCollator(minilm_tokenizer, fastot.CodeSwitcher(lex_sw, p=0.5), max_length=32)
    good = ("a river", "the market")
    cases = [
        ([], ValueError, r"batch must be a non-empty list .* got list \[\]"),
        ("river", ValueError, "batch must be a non-empty list .* got str 'river'"),
        ({"query": "q", "passage": "p"}, ValueError, "batch must be a non-empty list .* got dict"),
        ([good, ("only one",)], ValueError, r"batch\[1\] must be a \(query, passage\[, label\]\) tuple or a dict, got tup"),
        ([good, "text"], ValueError, r"batch\[1\] must be .* got str 'text'"),
        ([good, (1, "p")], TypeError, r"batch\[1\] query must be a str, got int"),
        ([good, ("q", None)], TypeError, r"batch\[1\] passage must be a str, got NoneType"),
        ([{"query": "q"}], ValueError, r"batch\[0\] must have keys 'query' and 'passage' .* got keys \['query'\]"),
        ([good, ("q", "p", 1.0)], ValueError, r"batch\[1\] has a label and batch\[0\] does not"),
        ([("q", "p", 1.0), good], ValueError, r"batch\[1\] lacks a label and batch\[0\] does"),
        ([("q", "p", "yes")], ValueError, "labels must be numbers convertible to torch.float32, got \\['yes'\\]"),
        ([("q", "p", [1, 2])], ValueError, r"each label must be a scalar, got labels of shape \[1, 2\]"),
    ]
    for batch, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            col(batch)
    for step in (-1, 1.0, True, np.int64(-2), np.float32(1)):
        with pytest.raises(ValueError, match=re.escape(f"step must be None or an integer >= 0, got {step!r}")):
            col([good], step=step)
    assert col.calls == 0
    _assert_batches_equal(col([good], step=np.int32(3)), col([good], step=3))  # numpy integers are integers
    fresh = CodeSwitchCollator(minilm_tokenizer, col.switcher, max_length=32)
    _assert_batches_equal(col([good]), fresh([good], step=0))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(n=st.integers(1, 12), start=st.integers(0, 40), max_length=st.integers(4, 96),
       multiple=st.sampled_from([None, 1, 8, 64]), p=st.sampled_from([0.0, 0.5, 1.0]), step=st.integers(0, 5))
def test_longest_padding_drops_only_padding_columns(minilm_tokenizer, lex_sw, n, start, max_length, multiple, p,
                                                    step):
    """padding="longest": the max_length batch of the same step without its trailing all-padding columns,
    kept to the longest row rounded up to pad_to_multiple_of (at most max_length); same statistics."""
    pairs = _pairs(60)[start:start + n]
    sw = fastot.CodeSwitcher(lex_sw, p=p, seed=3)
    full = CodeSwitchCollator(minilm_tokenizer, sw, max_length=max_length)(pairs, step=step)
    short = CodeSwitchCollator(minilm_tokenizer, sw, max_length=max_length, padding="longest",
                               pad_to_multiple_of=multiple)(pairs, step=step)
    longest = int(full["attention_mask"].sum(1).max())
    width = min(max_length, -(-longest // multiple) * multiple if multiple else longest)
    assert short["input_ids"].shape == (n, width)
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(short[k], full[k][:, :width]), k
        assert short[k].is_contiguous()
    rest = slice(width, None)
    assert not full["attention_mask"][:, rest].any() and not full["token_type_ids"][:, rest].any()
    assert (full["input_ids"][:, rest] == minilm_tokenizer.pad_token_id).all()
    _assert_batches_equal(short["cs_stats"], full["cs_stats"])


def test_longest_padding_gives_a_cross_encoder_the_same_logits(minilm_tokenizer, lex_sw):
    """What the option is for: a BERT cross-encoder (tiny, random) scores the narrower batch as the full one."""
    from fastot.train.models import load_cross_encoder

    model = load_cross_encoder("tiny", seed=0).eval()
    pairs = _pairs(16)
    sw = fastot.CodeSwitcher(lex_sw, p=0.5, seed=1)
    full = CodeSwitchCollator(minilm_tokenizer, sw, max_length=128)(pairs, step=2)
    short = CodeSwitchCollator(minilm_tokenizer, sw, max_length=128, padding="longest")(pairs, step=2)
    assert short["input_ids"].shape[1] < 128
    with torch.no_grad():
        a, b = (model(input_ids=x["input_ids"], attention_mask=x["attention_mask"],
                      token_type_ids=x["token_type_ids"]).logits for x in (full, short))
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_sentencepiece_pairs_without_token_types(sentencepiece_tokenizer, backend, device):
    """XLM-R-style pairs (``<s> q </s></s> p </s>``, every type 0): segments come from the template tokens, so
    p = 0 is the tokenizer's own output at every cut, and p = 1 equals tokenizing the switched text, punctuation
    after a word included ("river," is "▁river" ",")."""
    tok = sentencepiece_tokenizer
    lex = fastot.Lexicon.from_pairs(PAIRS_SW, tok, languages="sw")
    pairs = _pairs(12)
    for max_length in (7, 12, 23, 64):
        col = CodeSwitchCollator(tok, fastot.CodeSwitcher(lex, p=0.0, backend=backend), max_length=max_length,
                                 device=device)
        got = col(pairs)
        exp = tok([q for q, _ in pairs], [p for _, p in pairs], truncation="longest_first", max_length=max_length,
                  padding="max_length", return_tensors="pt")
        assert "token_type_ids" not in got and "token_type_ids" not in exp
        for k in ("input_ids", "attention_mask"):
            assert torch.equal(got[k].cpu(), exp[k]), (max_length, k)
    col = CodeSwitchCollator(tok, fastot.CodeSwitcher(lex, p=1.0, backend=backend), max_length=40, device=device)
    got = col([("The river, the market.", "bread, milk and water!")])
    exp = tok("ile mto, ile soko.", "mkate, maziwa na water!", padding="max_length", max_length=40, return_tensors="pt")
    assert torch.equal(got["input_ids"].cpu(), exp["input_ids"])
    assert int(got["cs_stats"]["switched"]) == 7  # "maji" has a "j", which this vocabulary lacks: skipped


def test_sentencepiece_tokenizer_tables(sentencepiece_tokenizer):
    tok = sentencepiece_tokenizer
    ws, sp, scheme = fastot.codeswitch.vocab_tables(tok)
    assert scheme == "sentencepiece"
    assert sorted(sp.nonzero().flatten().tolist()) == sorted({tok.bos_token_id, tok.eos_token_id, tok.pad_token_id})
    starts = {t: bool(ws[tok.convert_tokens_to_ids(t)]) for t in ("▁river", ",", ".", "!", "(", "▁", "iver")}
    assert starts == {"▁river": True, ",": True, ".": True, "!": True, "(": True, "▁": True, "iver": False}


def test_collected_stats_equal_the_batches_and_keep_the_batch_a_model_input(minilm_tokenizer, lex_ml):
    """The default batch holds model inputs only (it goes into model(**batch) and the HF Trainer as is); the
    collector's sums equal the per-batch statistics of a stats="batch" twin at the same steps, and pop resets."""
    cs = fastot.CodeSwitcher(lex_ml, p=0.5, seed=4, languages=["ha", "sw"])
    col, twin = Collator(minilm_tokenizer, cs, max_length=40), CodeSwitchCollator(minilm_tokenizer, cs, max_length=40)
    zero = col.pop_stats()
    assert [int(zero["words"]), int(zero["switched"]), zero["switched_per_language"].tolist()] == [0, 0, [0, 0]]
    pairs = [(q, p, 1.0) for q, p in _pairs(6)]
    sums = None
    for step in range(3):
        out, ref = col(pairs[2 * step:], step=step), twin(pairs[2 * step:], step=step)
        assert set(out) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
        _assert_batches_equal(out, {k: v for k, v in ref.items() if k != "cs_stats"})
        sums = ref["cs_stats"] if sums is None else {k: sums[k] + ref["cs_stats"][k] for k in sums}
    got = col.pop_stats()
    assert int(sums["switched"]) > 0
    _assert_batches_equal(got, sums)
    assert int(col.pop_stats()["words"]) == 0
    with pytest.raises(RuntimeError, match="stats='collect'"):
        twin.pop_stats()
    with pytest.raises(ValueError, match="stats must be"):
        Collator(minilm_tokenizer, cs, stats="log")


def test_switch_encoded_without_token_types_and_the_distributed_offset(minilm_tokenizer, lex_ml, monkeypatch):
    """An encoding without token_type_ids (sentence-transformers asks for none with DistilBERT-style models)
    gets its segments from the template, as the typed one does; inside a process group of several processes a
    batch is switched as this rank's rows of the global batch (row_offset = rank * B) unless told otherwise."""
    cs = fastot.CodeSwitcher(lex_ml, p=0.5, seed=6, languages=["ha", "sw"])
    col = CodeSwitchCollator(minilm_tokenizer, cs, max_length=24)
    q, p = zip(*_pairs(6))
    enc = minilm_tokenizer(list(q), list(p), padding=True, truncation=True, max_length=64, return_tensors="pt")
    typed = col.switch_encoded(enc, step=3)
    untyped = col.switch_encoded({k: v for k, v in enc.items() if k != "token_type_ids"}, step=3)
    _assert_batches_equal(typed, untyped)
    pairs = _pairs(6)
    plain = col(pairs, step=1)
    dist = torch.distributed
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    _assert_batches_equal(col(pairs, step=1), col(pairs, step=1, row_offset=6))
    _assert_batches_equal(col(pairs, step=1, row_offset=0), plain)
    assert not torch.equal(col(pairs, step=1)["input_ids"], plain["input_ids"])
