"""Multi-domain bitext for the domain-shift experiments: training parts and evaluation sets per domain.

The shared data (``../shared/data``, or ``$FASTOT_DATA``) holds English–Swahili and English–Hausa bitext from
three sources; each file is one domain:

============================  ============================================  ====================================
domain                        source                                        role in :func:`prepare_domains`
============================  ============================================  ====================================
``news``                      MAFAND-MT ``train`` / ``dev``                 train = MAFAND train, eval = MAFAND dev
``tico-<d>``, d in pubmed,    TICO-19 (dev + test), one file per source     split into train / eval when listed in
wikipedia, wikivoyage,                                                      ``split_domains``; otherwise eval only
dialogue, wikisource,
wikinews
``flores-<d>``, d in          FLORES-200 devtest, with each sentence's      eval only
wikinews, wikijunior,         source article (``.url``)
wikivoyage
============================  ============================================  ====================================

The recipe (``RECIPE``, recorded in ``domains.json``) is fixed and seeded:

- **Split of a training domain.** Lines with a blank side are dropped. Lines are grouped by their English text
  (lower-cased, spaces collapsed), so duplicates stay together; the groups are shuffled with a random stream
  of (``seed``, domain) and the first ``round(eval_fraction * groups)`` form the evaluation part, the rest the
  training part. A line of the evaluation part whose target text also occurs in the training part is dropped.
- **MAFAND.** ``train`` is news' training part and ``dev`` its evaluation part; a dev line whose English or
  target text occurs in ``train`` is dropped from the evaluation part.
- So no line, and no English or target sentence, is ever in both parts of a domain.
- **Evaluation sets** (:func:`domain_eval_sets`), per evaluation part: the documents are its target-language
  sentences; the queries are English and come in two kinds, ``keyword`` (3–6 content words of the sentence,
  :func:`fastot.train.sample_query` with seed 12345) and ``sentence`` (the English sentence itself); a query's
  one relevant document is its sentence's translation. For FLORES also ``article``: the documents are articles
  (the target sentences that share a ``.url``, joined in order) and a keyword query's relevant document is the
  article holding its translation. ``max_queries`` keeps that many queries spread evenly over the part (the
  same lines for every kind).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

from ..ir.data import _read_lines

__all__ = ["RECIPE", "TICO_DOMAINS", "FLORES_DOMAINS", "QUERY_KINDS", "TICO19_EMBEDDED", "data_root",
           "domain_sources", "prepare_domains", "domain_eval_sets", "write_embedded_tico19", "pack_tico19"]

TICO_DOMAINS = ("pubmed", "wikipedia", "wikivoyage", "dialogue", "wikisource", "wikinews")
FLORES_DOMAINS = ("wikinews", "wikijunior", "wikivoyage")
QUERY_KINDS = ("keyword", "sentence", "article")
# TICO-19 (CC0 1.0, public domain) ships inside the package: both languages, all six domains, as the shared
# data has them (dev + test per domain). Built by pack_tico19 from ../shared/data/tico19.
TICO19_EMBEDDED = os.path.join(os.path.dirname(__file__), "data", "tico19.json.xz")
RECIPE = "fastot-domains-1"  # bump when the split or query recipe changes: prepared folders record it
QUERY_SEED = 12345  # the keyword queries' seed, as in fastot.train.rerank.bitext_eval_set


def data_root(path: str | None = None) -> str:
    """The shared data folder: ``path``, else ``$FASTOT_DATA``, else the first of ``../shared/data`` and
    ``../../shared/data`` (from the working directory) that exists; raises ``FileNotFoundError`` naming them."""
    tried = [path] if path is not None else ([os.environ["FASTOT_DATA"]] if os.environ.get("FASTOT_DATA") else
                                             [os.path.join("..", "shared", "data"),
                                              os.path.join("..", "..", "shared", "data")])
    for p in tried:
        if os.path.isdir(os.path.join(p, "mafand")) or os.path.isdir(os.path.join(p, "tico19")):
            return p
    raise FileNotFoundError(f"data: no shared data folder (mafand/, tico19/, flores200/) at {tried}; pass --data "
                            "or set FASTOT_DATA")


def pack_tico19(root: str, path: str = TICO19_EMBEDDED) -> dict:
    """Pack ``root``/tico19 (en-swa, en-hau; the six domains) into the package's xz-compressed JSON
    ``{lang: {domain: {"en": [...], "tgt": [...]}}}``; returns the line counts."""
    import lzma  # noqa: PLC0415

    out: dict = {}
    for lang in ("swa", "hau"):
        for d in TICO_DOMAINS:
            base = os.path.join(root, "tico19", f"en-{lang}", d)
            en, tgt = _read_lines(base + ".en"), _read_lines(f"{base}.{lang}")
            if len(en) != len(tgt):
                raise ValueError(f"root: {base} has {len(en)} English and {len(tgt)} {lang} lines")
            out.setdefault(lang, {})[d] = {"en": en, "tgt": tgt}
    tmp = path + ".tmp"
    with lzma.open(tmp, "wt", encoding="utf-8", preset=9) as fh:
        json.dump(out, fh, ensure_ascii=False, sort_keys=True)
    os.replace(tmp, path)
    return {lang: {d: len(v["en"]) for d, v in doms.items()} for lang, doms in out.items()}


def write_embedded_tico19(root: str) -> str:
    """Write the embedded TICO-19 as a shared-data folder (``root``/tico19/en-<lang>/<domain>.{en,<lang>}, the
    layout :func:`prepare_domains` reads); returns ``root``. Files already there with the same text are kept."""
    import lzma  # noqa: PLC0415

    with lzma.open(TICO19_EMBEDDED, "rt", encoding="utf-8") as fh:
        packed = json.load(fh)
    for lang, doms in packed.items():
        folder = os.path.join(root, "tico19", f"en-{lang}")
        os.makedirs(folder, exist_ok=True)
        for d, sides in doms.items():
            for ext, lines in (("en", sides["en"]), (lang, sides["tgt"])):
                path = os.path.join(folder, f"{d}.{ext}")
                text = "".join(line + "\n" for line in lines)
                if os.path.isfile(path):
                    with open(path, encoding="utf-8", newline="\n") as fh:
                        if fh.read() == text:
                            continue
                tmp = f"{path}.{os.getpid()}.tmp"  # sweep workers may write the same file at once
                with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                    fh.write(text)
                os.replace(tmp, path)
    return root


def domain_sources(root: str, lang: str) -> dict[str, dict]:
    """The domains found under ``root`` for ``lang``: ``{name: {"source", "files": {split: (en, tgt[, url])}}}``."""
    out: dict[str, dict] = {}
    maf = os.path.join(root, "mafand", f"en-{lang}")
    if all(os.path.isfile(os.path.join(maf, f"{s}.{x}")) for s in ("train", "dev") for x in ("en", lang)):
        out["news"] = {"source": "mafand", "files": {s: (os.path.join(maf, f"{s}.en"), os.path.join(maf, f"{s}.{lang}"))
                                                     for s in ("train", "dev")}}
    for d in TICO_DOMAINS:
        base = os.path.join(root, "tico19", f"en-{lang}", d)
        if os.path.isfile(base + ".en") and os.path.isfile(f"{base}.{lang}"):
            out[f"tico-{d}"] = {"source": "tico19", "files": {"all": (base + ".en", f"{base}.{lang}")}}
    for d in FLORES_DOMAINS:
        base = os.path.join(root, "flores200", f"en-{lang}", f"devtest-{d}")
        if all(os.path.isfile(f"{base}.{x}") for x in ("en", lang, "url")):
            out[f"flores-{d}"] = {"source": "flores200",
                                  "files": {"all": (base + ".en", f"{base}.{lang}", base + ".url")}}
    return out


def _norm(s: str) -> str:
    return " ".join(s.lower().split())


def _read_aligned(files: tuple[str, ...]) -> list[tuple[str, ...]]:
    cols = [_read_lines(f) for f in files]
    if len({len(c) for c in cols}) != 1:
        raise ValueError(f"data: {files} have different line counts {[len(c) for c in cols]}")
    return [row for row in zip(*cols) if row[0].strip() and row[1].strip()]


def _split(rows: list[tuple[str, ...]], eval_fraction: float, seed: int, name: str):
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(_norm(r[0]), []).append(i)
    keys = list(groups)
    random.Random(f"fastot-domain-split-{seed}-{name}").shuffle(keys)
    n_eval = round(eval_fraction * len(keys))
    ev = sorted(i for k in keys[:n_eval] for i in groups[k])
    tr = sorted(i for k in keys[n_eval:] for i in groups[k])
    train_tgt = {_norm(rows[i][1]) for i in tr}
    ev = [i for i in ev if _norm(rows[i][1]) not in train_tgt]
    return [rows[i] for i in tr], [rows[i] for i in ev]


def _write(out_dir: str, split: str, lang: str, rows: list[tuple[str, ...]]) -> None:
    exts = ("en", lang, "url")[:len(rows[0]) if rows else 2]
    for j, ext in enumerate(exts):
        tmp = os.path.join(out_dir, f".{split}.{ext}.{os.getpid()}.tmp")  # workers may write it at once
        with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
            fh.writelines(r[j].replace("\n", " ") + "\n" for r in rows)
        os.replace(tmp, os.path.join(out_dir, f"{split}.{ext}"))


def prepare_domains(out_dir: str, lang: str, *, data: str | None = None,
                    split_domains: Sequence[str] = ("tico-pubmed", "tico-wikipedia"), eval_fraction: float = 0.5,
                    seed: int = 0, max_news_train: int | None = None) -> dict:
    """Write every domain of ``lang`` as a bitext folder (MAFAND layout) with ``<domain>-train`` and
    ``<domain>-eval`` splits, by the module's recipe; returns (and writes as ``domains.json``) the manifest.

    Args:
        out_dir: the folder written (created; files in it are replaced, nothing else is touched).
        lang: "swa" or "hau" (the file extension of the target side).
        data: the shared data folder (default :func:`data_root`).
        split_domains: TICO-19 domains that get a training part (news always has one); the others are
            evaluation only.
        eval_fraction: share of a split domain's distinct English sentences that go to its evaluation part.
        seed: the split's seed (the queries have their own fixed seed).
        max_news_train: keep only the first n MAFAND training lines (smaller runs).

    Splits written: ``news-train``, ``news-eval`` (where MAFAND is there), ``<d>-train`` and ``<d>-eval`` for
    each split domain, ``<d>-eval`` for every other domain (FLORES with a ``.url`` file), and ``all-train``,
    every training part joined (the bitext of a lexicon or a distillation that must not see an evaluation part).
    """
    if not isinstance(lang, str) or not lang or os.sep in lang:
        raise ValueError(f"lang: expected a language code such as 'swa', got {lang!r}")
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction: expected a number in (0, 1), got {eval_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed: expected an integer >= 0, got {seed!r}")
    if max_news_train is not None and (isinstance(max_news_train, bool) or not isinstance(max_news_train, int)
                                       or max_news_train < 1):
        raise ValueError(f"max_news_train: expected an integer >= 1 or None, got {max_news_train!r}")
    root = data_root(data)
    sources = domain_sources(root, lang)
    if not sources:
        raise FileNotFoundError(f"data: {root!r} has no domain for {lang!r} (mafand/en-{lang}, tico19/en-{lang}, "
                                f"flores200/en-{lang})")
    split_domains = [split_domains] if isinstance(split_domains, str) else list(split_domains)
    bad = [d for d in split_domains if d not in sources or sources[d]["source"] != "tico19"]
    if bad:
        raise ValueError(f"split_domains: {bad} are not TICO-19 domains of {root!r} "
                         f"(have {[d for d, s in sources.items() if s['source'] == 'tico19']})")
    os.makedirs(out_dir, exist_ok=True)
    manifest = {"recipe": RECIPE, "lang": lang, "data": os.path.abspath(root), "seed": seed,
                "eval_fraction": eval_fraction, "split_domains": split_domains, "max_news_train": max_news_train,
                "domains": {}}
    parts = {}
    if "news" in sources:
        news_tr = _read_aligned(sources["news"]["files"]["train"])[:max_news_train]
        seen_en, seen_tgt = {_norm(r[0]) for r in news_tr}, {_norm(r[1]) for r in news_tr}
        parts["news"] = (news_tr, [r for r in _read_aligned(sources["news"]["files"]["dev"])
                                   if _norm(r[0]) not in seen_en and _norm(r[1]) not in seen_tgt])
    for name, src in sources.items():
        if name == "news":
            continue
        rows = _read_aligned(src["files"]["all"])
        parts[name] = _split(rows, eval_fraction, seed, name) if name in split_domains else (None, rows)
    for name, (tr, ev) in parts.items():
        entry = {"source": sources[name]["source"], "eval": len(ev), "train": None if tr is None else len(tr)}
        if tr is not None:
            _write(out_dir, f"{name}-train", lang, tr)
        _write(out_dir, f"{name}-eval", lang, ev)
        if name.startswith("flores-"):
            entry["articles"] = len({r[2] for r in ev})
        manifest["domains"][name] = entry
    _write(out_dir, "all-train", lang, [r[:2] for tr, _ in parts.values() if tr is not None for r in tr])
    tmp = os.path.join(out_dir, f".domains.json.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2)
    os.replace(tmp, os.path.join(out_dir, "domains.json"))
    return manifest


def domain_eval_sets(folder: str, lang: str, *, domains: Sequence[str] | None = None,
                     kinds: Sequence[str] = ("keyword",), max_queries: int | None = None,
                     query_words: tuple[int, int] = (3, 6)) -> list:
    """The evaluation sets of a folder written by :func:`prepare_domains`, one per (domain, kind), named
    ``"<domain>/<kind>"`` (:class:`fastot.train.rerank.EvalSet`); ``article`` only where the domain has
    ``.url`` (FLORES). ``domains``: which (default: every ``<d>-eval`` split of the manifest, in its order)."""
    from ..train.pairs import spread_queries  # noqa: PLC0415
    from ..train.rerank import EvalSet  # noqa: PLC0415

    kinds = [kinds] if isinstance(kinds, str) else list(kinds)
    if not kinds or any(k not in QUERY_KINDS for k in kinds):
        raise ValueError(f"kinds: expected some of {QUERY_KINDS}, got {kinds}")
    if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int)
                                    or max_queries < 1):
        raise ValueError(f"max_queries: expected an integer >= 1 or None, got {max_queries!r}")
    man_path = os.path.join(folder, "domains.json")
    if not os.path.isfile(man_path):
        raise FileNotFoundError(f"folder: {folder!r} has no domains.json; write it with prepare_domains")
    with open(man_path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    if manifest.get("recipe") != RECIPE or manifest.get("lang") != lang:
        raise ValueError(f"folder: {folder!r} holds recipe {manifest.get('recipe')!r} for {manifest.get('lang')!r}, "
                         f"not {RECIPE!r} for {lang!r}: prepare it again")
    names = list(manifest["domains"]) if domains is None else list(domains)
    unknown = [d for d in names if d not in manifest["domains"]]
    if unknown:
        raise ValueError(f"domains: {unknown} not in {folder!r} (have {list(manifest['domains'])})")
    out = []
    for d in names:
        base = os.path.join(folder, f"{d}-eval")
        en, tgt = _read_lines(base + ".en"), _read_lines(f"{base}.{lang}")
        urls = _read_lines(base + ".url") if os.path.isfile(base + ".url") else None
        lines = spread_queries(en, seed=QUERY_SEED, query_words=query_words, max_queries=max_queries)
        if not lines:
            raise ValueError(f"{base!r}: no sentence with enough content words for a query")
        for kind in kinds:
            if kind == "keyword":
                out.append(EvalSet(f"{d}/keyword", [q for _, q in lines], list(tgt), [i for i, _ in lines]))
            elif kind == "sentence":
                out.append(EvalSet(f"{d}/sentence", [en[i].strip() for i, _ in lines], list(tgt),
                                   [i for i, _ in lines]))
            elif urls is not None:  # article: consecutive sentences of one .url form a document
                art: dict[str, int] = {}
                docs: list[list[str]] = []
                for u, t in zip(urls, tgt):
                    if u not in art:
                        art[u] = len(docs)
                        docs.append([])
                    docs[art[u]].append(t.strip())
                out.append(EvalSet(f"{d}/article", [q for _, q in lines], [" ".join(x) for x in docs],
                                   [art[urls[i]] for i, _ in lines]))
    return out
