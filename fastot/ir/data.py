"""Data readers: line-aligned bitext (:func:`read_bitext`, what every loop trains and evaluates on) and the
standard IR files, so MS MARCO-style data plugs in: queries TSV, collection TSV/JSONL, TREC qrels and runs,
training triples TSV. Every reader names the file and the line of a malformed record."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping


def _check_file(path, name: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a path (str or os.PathLike), got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file: {path!r}")
    return path


def _read_lines(path: str) -> list[str]:
    """Lines split at ``\\n`` only (a stray ``\\r`` or U+2028 inside a line does not break alignment),
    without the line ending."""
    with open(path, encoding="utf-8", newline="\n") as f:
        return [line.rstrip("\r\n") for line in f]


def _tsv_pairs(path, layout: str) -> list[tuple[str, str]]:
    """The two fields of every non-blank line of a TSV file; a line without exactly one tab raises ValueError
    with its number (``layout`` names the fields in the message)."""
    path = _check_file(path, "path")
    pairs = []
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2:
            raise ValueError(f"path: {path!r} line {lineno}: expected 2 tab-separated fields '{layout}', "
                             f"got {len(fields)}: {line[:80]!r}")
        pairs.append((fields[0], fields[1]))
    return pairs


def read_bitext(path: str | os.PathLike, lang: str, split: str = "train") -> tuple[list[str], list[str]]:
    """Read line-aligned parallel sentences, English and ``lang``.

    - ``path`` a directory (MAFAND layout): ``<split>.en`` and ``<split>.<lang>`` in it, line i of
      one the translation of line i of the other; every line is kept (blank ones too, to stay
      aligned) and the two files must have the same number of lines.
    - ``path`` a file: TSV, one ``en<TAB>tgt`` per line; blank lines are skipped and a line without
      exactly one tab raises ``ValueError`` with its line number (``lang``, ``split`` unused).

    Lines are split at ``\\n`` only and returned without the line ending.

    Returns:
        ``(en_sentences, tgt_sentences)``, two lists of the same length.
    """
    if not isinstance(lang, str) or not lang or os.sep in lang:
        raise ValueError(f"lang: expected a language code such as 'swa', got {lang!r}")
    if not isinstance(split, str) or not split or os.sep in split:
        raise ValueError(f"split: expected a split name such as 'train', got {split!r}")
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path):
        en_path = _check_file(os.path.join(path, f"{split}.en"), "path")
        tgt_path = _check_file(os.path.join(path, f"{split}.{lang}"), "path")
        en, tgt = _read_lines(en_path), _read_lines(tgt_path)
        if len(en) != len(tgt):
            raise ValueError(f"path: {en_path!r} has {len(en)} lines but {tgt_path!r} has {len(tgt)}")
        return en, tgt
    pairs = _tsv_pairs(path, "en<TAB>tgt")
    return [a for a, _ in pairs], [b for _, b in pairs]


def _lines(path: str | os.PathLike, name: str):
    if not isinstance(path, (str, os.PathLike)) or not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file {path!r}")
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                yield lineno, line


def read_queries(path: str | os.PathLike) -> dict[str, str]:
    """``qid<TAB>text`` per line -> ``{qid: text}``."""
    out: dict[str, str] = {}
    for lineno, line in _lines(path, "queries"):
        qid, sep, text = line.partition("\t")
        if not sep or not qid.strip():
            raise ValueError(f"queries: {path!r} line {lineno}: expected 'qid<TAB>text'")
        out[qid.strip()] = text
    return out


def read_collection(path: str | os.PathLike) -> dict[str, str]:
    """Documents -> ``{docid: text}``.

    - ``.jsonl``: one JSON object per line with an id (``_id``, ``id`` or ``docid``) and ``text``; a non-empty
      ``title`` is prepended ("title. text"), the BEIR convention.
    - otherwise TSV: ``docid<TAB>text`` or ``docid<TAB>title<TAB>text`` (MS MARCO collection.tsv is the first).
    """
    out: dict[str, str] = {}
    jsonl = str(path).endswith((".jsonl", ".json"))
    for lineno, line in _lines(path, "collection"):
        if jsonl:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"collection: {path!r} line {lineno}: invalid JSON ({exc.msg})") from None
            did = next((rec[k] for k in ("_id", "id", "docid") if k in rec), None)
            if did is None or not isinstance(rec.get("text"), str):
                raise ValueError(f"collection: {path!r} line {lineno}: expected an '_id'/'id'/'docid' and a 'text'")
            title = rec.get("title") or ""
            out[str(did)] = f"{title}. {rec['text']}" if title else rec["text"]
        else:
            fields = line.split("\t")
            if len(fields) not in (2, 3) or not fields[0].strip():
                raise ValueError(f"collection: {path!r} line {lineno}: expected 'docid<TAB>text' or "
                                 f"'docid<TAB>title<TAB>text', got {len(fields)} fields")
            out[fields[0].strip()] = fields[1] if len(fields) == 2 else (
                f"{fields[1]}. {fields[2]}" if fields[1] else fields[2])
    return out


def read_qrels(path: str | os.PathLike) -> dict[str, dict[str, int]]:
    """TREC qrels ``qid 0 docid grade`` (whitespace-separated), or BEIR's ``query-id<TAB>corpus-id<TAB>score``
    (a header line is skipped) -> ``{qid: {docid: grade}}``."""
    out: dict[str, dict[str, int]] = {}
    for lineno, line in _lines(path, "qrels"):
        f = line.split()
        if len(f) == 4:
            qid, did, grade = f[0], f[2], f[3]
        elif len(f) == 3:
            qid, did, grade = f
        else:
            raise ValueError(f"qrels: {path!r} line {lineno}: expected 'qid 0 docid grade' or "
                             f"'qid docid grade', got {len(f)} fields")
        try:
            g = int(grade)
        except ValueError:
            if lineno == 1:  # a header such as "query-id corpus-id score"
                continue
            raise ValueError(f"qrels: {path!r} line {lineno}: grade {grade!r} is not an integer") from None
        out.setdefault(qid, {})[did] = g
    return out


def read_triples(path: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Training triples ``query<TAB>positive<TAB>negative`` (texts, MS MARCO triples.train.small) -> list."""
    out = []
    for lineno, line in _lines(path, "triples"):
        f = line.split("\t")
        if len(f) != 3:
            raise ValueError(f"triples: {path!r} line {lineno}: expected 'query<TAB>positive<TAB>negative', "
                             f"got {len(f)} fields")
        out.append((f[0], f[1], f[2]))
    return out


def write_run(path: str | os.PathLike, run: Mapping[str, Mapping[str, float]], tag: str = "fastot") -> None:
    """Write ``{qid: {docid: score}}`` as a TREC run (``qid Q0 docid rank score tag``, best first per query)."""
    if not tag or any(c.isspace() for c in tag):
        raise ValueError(f"tag: expected a non-empty word without spaces, got {tag!r}")
    with open(path, "w", encoding="utf-8") as fh:
        for qid in run:
            docs = sorted(run[qid].items(), key=lambda kv: (-float(kv[1]), kv[0]))
            for rank, (did, score) in enumerate(docs, 1):
                fh.write(f"{qid} Q0 {did} {rank} {float(score):.6f} {tag}\n")
