"""Public code-switch API: :class:`Lexicon` (word -> translations, packed as token-id tensors) and
:class:`CodeSwitcher` (rewrites a tokenized batch on the device where it lives).

The contract is in ``fastot/reference/codeswitch.py``; every backend is bit-identical to it.
"""

from __future__ import annotations

import numbers
import os
import unicodedata
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from . import _backend
from .reference import codeswitch as ref
from .reference.codeswitch import MAX_KEY_WORDS

__all__ = ["Lexicon", "CodeSwitcher", "CodeSwitchOutput", "vocab_tables"]

FORMAT = 3  # the file format of Lexicon.save (see Lexicon.load)
_PACKED = ("key_hash", "key_offsets", "key_ids", "entry_offsets", "trans_offsets", "trans_ids")


def vocab_tables(tokenizer) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Word-start and special-token tables [V] (bool) for a Hugging Face tokenizer, and the scheme.

    Special tokens (never switched, never cut by truncation) are the ones the tokenizer itself puts around a
    text or a pair ([CLS], [SEP], <s>, </s>, language codes, ...) and its pad token. Every other special
    token ([UNK], [MASK], added special tokens) can only come from the text, where the tokenizer's
    truncation cuts it like any text token: here it is a one-token word that is never translated. (A
    template token typed into the text, such as a literal "[SEP]", has the template token's id and is kept.)

    WordPiece: a piece starts a word unless it begins with the continuation prefix (``##``).
    SentencePiece / metaspace: a piece starts a word when it begins with ``▁`` or is punctuation only, so
    punctuation after a word ("river,", "market.") is a word of its own, as the WordPiece pre-tokenizer makes
    it. A word glued to punctuation before it ("(river") has no ``▁`` piece and is not matched.
    """
    vocab = tokenizer.get_vocab()
    V = max(len(tokenizer), max(vocab.values()) + 1)
    prefix = None
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        prefix = getattr(backend.model, "continuing_subword_prefix", None)
    if prefix is None and sum(tok.startswith("##") for tok in vocab) > len(vocab) // 20:
        prefix = "##"
    word_start = torch.ones(V, dtype=torch.bool)
    if prefix:
        scheme = "wordpiece"
        for tok, i in vocab.items():
            if tok.startswith(prefix):
                word_start[i] = False
    elif sum(tok.startswith("\u2581") for tok in vocab) > len(vocab) // 20:
        scheme = "sentencepiece"
        for tok, i in vocab.items():  # "river," is "▁river" ","; the comma is a word of its own, as in WordPiece
            word_start[i] = tok.startswith("\u2581") or _is_punctuation(tok)
    else:
        raise ValueError("tokenizer: cannot tell word starts (neither WordPiece '##' nor SentencePiece '\u2581' pieces)")
    every = special_ids(tokenizer)
    special = torch.zeros(V, dtype=torch.bool)
    for i in template_ids(tokenizer, every):
        if 0 <= i < V:
            special[i] = True
    # Special tokens the template never adds stand for a word of the text (see above): one-token words.
    for i in every:
        if 0 <= i < V and not special[i]:
            word_start[i] = True
    word_start |= special
    return word_start, special, scheme


def _is_punctuation(piece: str) -> bool:
    """A piece made only of Unicode punctuation and symbols (",", ".", ")", "»", "%")."""
    return bool(piece) and all(unicodedata.category(c)[0] in "PS" for c in piece)


def special_ids(tokenizer) -> set[int]:
    """Every special token id of ``tokenizer`` (its named special tokens and its added special tokens)."""
    ids = set(tokenizer.all_special_ids)
    for i, added in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).items():
        if getattr(added, "special", False):
            ids.add(int(i))
    if tokenizer.unk_token_id is not None:
        ids.add(tokenizer.unk_token_id)
    return ids


def template_ids(tokenizer, special: set[int] | None = None) -> set[int]:
    """The special token ids that ``tokenizer`` adds around a text or a pair, and its pad token id
    (``special``: :func:`special_ids` of the tokenizer, when the caller has it already)."""
    special = special_ids(tokenizer) if special is None else special
    ids = set()
    encodings = [tokenizer("a", add_special_tokens=True)["input_ids"]]
    try:
        encodings.append(tokenizer("a", "b", add_special_tokens=True)["input_ids"])
    except (TypeError, ValueError, NotImplementedError):  # a tokenizer without pairs
        pass
    for enc in encodings:
        ids.update(i for i in enc if i in special)
    if tokenizer.pad_token_id is not None:
        ids.add(tokenizer.pad_token_id)
    return ids


class Lexicon:
    """Source words -> translations per language, keyed by the source word's subword ids.

    Build with :meth:`from_pairs`. Tensors (see ``fastot/reference/codeswitch.py``): ``key_hash`` [K]
    sorted, ``key_offsets`` [K+1] / ``key_ids`` (CSR source ids), ``entry_offsets`` [K*n_lang+1]
    (translation range per key and language), ``trans_offsets`` [T+1] / ``trans_ids`` (CSR target ids);
    plus the vocabulary's ``word_start`` and ``special`` tables [V].
    """

    def __init__(self, tensors: Mapping[str, torch.Tensor], languages: list[str], max_key_len: int, pad_id: int,
                 scheme: str, stats: dict | None = None):
        self.languages = list(languages)
        self.max_key_len = int(max_key_len)
        self.pad_id = int(pad_id)
        self.scheme = scheme
        self.stats = dict(stats or {})
        self._tensors = {k: v.cpu() for k, v in tensors.items()}
        self._by_device: dict[torch.device, dict[str, torch.Tensor]] = {}
        self._validate()

    def _validate(self) -> None:
        """Every kernel indexes through these tensors without bounds checks: check them once, here."""
        T = self._tensors
        missing = [k for k in _PACKED + ("word_start", "special") if k not in T]
        if missing:
            raise ValueError(f"lexicon: missing tensors {missing}")
        for k in _PACKED:
            if T[k].dtype != torch.long or T[k].dim() != 1:
                raise ValueError(f"lexicon: {k} must be a 1-D int64 tensor, got {T[k].dtype} {list(T[k].shape)}")
        for k in ("word_start", "special"):
            if T[k].dtype != torch.bool or T[k].dim() != 1:
                raise ValueError(f"lexicon: {k} must be a 1-D bool tensor, got {T[k].dtype} {list(T[k].shape)}")
        V, K, L = T["word_start"].numel(), T["key_hash"].numel(), len(self.languages)
        if T["special"].numel() != V:
            raise ValueError(f"lexicon: special has {T['special'].numel()} entries, word_start {V}")
        if K == 0:
            raise ValueError("lexicon: no usable entries (empty lexicon)")
        if L == 0:
            raise ValueError("lexicon: no languages")

        def csr(name, offsets, n, ids):
            o = T[offsets]
            if o.numel() != n + 1 or o[0] != 0 or bool((o[1:] < o[:-1]).any()) or o[-1] != T[ids].numel():
                raise ValueError(f"lexicon: {offsets} must be {n + 1} non-decreasing offsets from 0 to "
                                 f"len({ids}) = {T[ids].numel()}")
            if name and bool((o[1:] == o[:-1]).any()):
                raise ValueError(f"lexicon: every {name} needs at least one token id")

        csr("key", "key_offsets", K, "key_ids")
        eo = T["entry_offsets"]
        if eo.numel() != K * L + 1 or eo[0] != 0 or bool((eo[1:] < eo[:-1]).any()):
            raise ValueError(f"lexicon: entry_offsets must be {K * L + 1} non-decreasing offsets "
                             f"({K} keys x {L} languages + 1)")
        csr("translation", "trans_offsets", int(eo[-1]), "trans_ids")
        for k in ("key_ids", "trans_ids"):
            if T[k].numel() and (int(T[k].min()) < 0 or int(T[k].max()) >= V):
                raise ValueError(f"lexicon: {k} must be token ids in [0, {V})")
        if bool((T["key_hash"][1:] <= T["key_hash"][:-1]).any()):
            raise ValueError("lexicon: key_hash must be strictly increasing")
        lens = T["key_offsets"][1:] - T["key_offsets"][:-1]
        if int(lens.max()) != self.max_key_len:
            raise ValueError(f"lexicon: max_key_len={self.max_key_len} but the longest key has {int(lens.max())} ids")
        # Words per key: its first id plus every later id that starts a word.
        starts = T["word_start"][T["key_ids"]].long()
        starts[T["key_offsets"][:-1]] = 1
        key_of = torch.repeat_interleave(torch.arange(K), lens)
        self.max_key_words = int(torch.zeros(K, dtype=torch.long).index_add_(0, key_of, starts).max())
        if self.max_key_words > MAX_KEY_WORDS:
            raise ValueError(f"lexicon: keys span at most {MAX_KEY_WORDS} words, one spans {self.max_key_words}")

    @property
    def n_keys(self) -> int:
        return self._tensors["key_hash"].numel()

    @property
    def vocab_size(self) -> int:
        return self._tensors["word_start"].numel()

    def __len__(self) -> int:
        return self.n_keys

    def _language_counts(self) -> torch.Tensor:
        """Translations per language [n_lang]."""
        eo = self._tensors["entry_offsets"]
        return (eo[1:] - eo[:-1]).view(-1, len(self.languages)).sum(0)

    def select(self, languages: Iterable[str]) -> Lexicon:
        """This lexicon restricted to ``languages`` (in that order): their translations only, and only the keys
        that have a translation in one of them. ``self`` when that is every language in the lexicon's order.

        A :class:`CodeSwitcher` switches with the selection of its active languages, so a multi-word key of
        another language never takes the place of the words it spans (longest match first is over the keys
        that can be switched). Raises ValueError when no key has a translation in ``languages``.
        """
        langs = list(languages)
        if langs == self.languages:
            return self
        unknown = [lang for lang in langs if lang not in self.languages]
        if not langs or unknown or len(set(langs)) != len(langs):
            raise ValueError(f"Lexicon.select: languages must be a non-empty subset of {self.languages} without "
                             f"repeats, got {langs}")
        T, L = self._tensors, len(self.languages)
        li = torch.tensor([self.languages.index(lang) for lang in langs], dtype=torch.long)
        eo = T["entry_offsets"]
        starts = eo[:-1].view(-1, L)[:, li]  # [K, n] translation ranges of the selected languages
        counts = eo[1:].view(-1, L)[:, li] - starts
        keep = (counts.sum(1) > 0).nonzero().squeeze(1)
        if keep.numel() == 0:
            raise ValueError(f"Lexicon.select: no key has a translation in languages {langs}")
        key_offsets, key_ids = _csr_take(T["key_offsets"], T["key_ids"], keep)
        # The kept (key, language) ranges of translations, in order, then the translations themselves.
        first, count = starts[keep].reshape(-1), counts[keep].reshape(-1)
        entry_offsets = torch.cat([torch.zeros(1, dtype=torch.long), count.cumsum(0)])
        trans = torch.repeat_interleave(first, count) + torch.arange(int(count.sum())) - torch.repeat_interleave(
            entry_offsets[:-1], count)
        trans_offsets, trans_ids = _csr_take(T["trans_offsets"], T["trans_ids"], trans)
        tensors = {"key_hash": T["key_hash"][keep], "key_offsets": key_offsets, "key_ids": key_ids,
                   "entry_offsets": entry_offsets, "trans_offsets": trans_offsets, "trans_ids": trans_ids,
                   "word_start": T["word_start"], "special": T["special"]}
        lens = key_offsets[1:] - key_offsets[:-1]
        stats = dict(self.stats, keys=keep.numel(), translations=trans.numel(), selected_from=self.languages)
        return Lexicon(tensors, langs, int(lens.max()), self.pad_id, self.scheme, stats)

    def tensors(self, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """The packed tensors on ``device`` (copied once per device, then cached)."""
        device = torch.device(device)
        if device not in self._by_device:
            self._by_device[device] = {k: v.to(device) for k, v in self._tensors.items()}
        return self._by_device[device]

    @classmethod
    def from_pairs(cls, pairs, tokenizer, languages: str | Iterable[str] | None = None) -> Lexicon:
        """Build from word pairs.

        Args:
            pairs: ``{lang: [(src, tgt), ...]}``, or ``[(src, tgt), ...]`` with ``languages`` one name,
                or ``[(src, tgt, lang), ...]``. A source word may have several translations.
            tokenizer: Hugging Face tokenizer of the model whose ids will be switched.
            languages: language order of the packed lexicon (default: order of first appearance).

        Source words are matched lower-cased: each is keyed by the ids of its lower-case,
        capitalised, title-case and upper-case forms. A source that the tokenizer splits into several
        words ("new york", "don't") is a multi-word key, matched longest first at switching time;
        sources of more than 8 words, and sources or translations with special or unknown tokens, are
        skipped and counted in ``stats['skipped']`` (pairs not used).
        """
        triples: list[tuple[str, str, str]] = []
        if isinstance(pairs, Mapping):
            for lang, lst in pairs.items():
                triples.extend((s, t, str(lang)) for s, t in lst)
        else:
            default = languages if isinstance(languages, str) else None
            for item in pairs:
                if len(item) == 3:
                    triples.append((item[0], item[1], str(item[2])))
                elif len(item) == 2:
                    if default is None:
                        raise ValueError("lexicon: pairs without a language need languages='<name>'")
                    triples.append((item[0], item[1], default))
                else:
                    raise ValueError(f"lexicon: each pair must be (src, tgt) or (src, tgt, lang), got {item!r}")
        order: list[str] = [] if languages is None or isinstance(languages, str) else list(languages)
        for _, _, lang in triples:
            if lang not in order:
                if languages is not None and not isinstance(languages, str):
                    raise ValueError(f"lexicon: language {lang!r} is not in languages={order}")
                order.append(lang)
        word_start, special, scheme = vocab_tables(tokenizer)
        clean = []
        for src, tgt, lang in triples:
            if not isinstance(src, str) or not isinstance(tgt, str):
                raise TypeError(f"lexicon: words must be strings, got {src!r} -> {tgt!r}")
            src, tgt = src.strip(), tgt.strip()
            if src and tgt:
                low = src.lower()
                clean.append((tuple(dict.fromkeys((low, low.capitalize(), low.title(), src.upper()))), tgt, lang))
        # One batched tokenizer call for every distinct string (the fast tokenizers encode batches in parallel).
        strings = list(dict.fromkeys([f for forms, _, _ in clean for f in forms] + [t for _, t, _ in clean]))
        encoded = dict(zip(strings, map(tuple, tokenizer(strings, add_special_tokens=False)["input_ids"]))) if strings else {}
        entries: dict[tuple[int, ...], dict[int, list[tuple[int, ...]]]] = {}
        skipped = 0
        never = special_ids(tokenizer)  # [MASK] and the like match no source word
        for forms, tgt, lang in clean:
            t_ids = encoded[tgt]
            if not t_ids or any(i in never for i in t_ids):  # not spelt by the vocabulary
                skipped += 1
                continue
            li = order.index(lang)
            usable = 0
            for form in forms:
                key = encoded[form]
                if (not key or 1 + sum(bool(word_start[i]) for i in key[1:]) > MAX_KEY_WORDS
                        or any(i in never for i in key)):  # [UNK] would match any unknown word
                    continue
                usable += 1
                lst = entries.setdefault(key, {}).setdefault(li, [])
                if t_ids not in lst:
                    lst.append(t_ids)
            skipped += usable == 0
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        return cls.pack(entries, order, word_start, special, pad_id, scheme,
                        stats={"pairs": len(triples), "skipped": skipped})

    @classmethod
    def from_muse(cls, path, tokenizer, language: str) -> Lexicon:
        """Build from a MUSE bilingual dictionary file (``src tgt`` per line, several lines per source
        allowed); see :func:`fastot.lexicons.read_muse`. For several languages, read each file with
        ``read_muse`` and pass ``{lang: pairs}`` to :meth:`from_pairs`."""
        from . import lexicons  # noqa: PLC0415

        return cls.from_pairs(lexicons.read_muse(path), tokenizer, languages=language)

    @classmethod
    def from_embeddings(cls, src_vec, tgt_vec, tokenizer, language: str, *, method: str = "nn", csls_k: int = 10,
                        source_vocab=None, max_words: int | None = 200000) -> Lexicon:
        """Build from aligned cross-lingual word embeddings (two fastText ``.vec`` files): each source word
        (restricted to ``source_vocab`` if given) translates to its top-1 target by dot product of unit
        vectors (``method="nn"``, the published method) or by CSLS (``method="csls"``); the first
        ``max_words`` rows of each file are read. See :func:`fastot.lexicons.induce_from_embeddings`."""
        from . import lexicons  # noqa: PLC0415

        triples = lexicons.induce_from_vec_files(src_vec, tgt_vec, max_words=max_words, method=method,
                                                 csls_k=csls_k, source_vocab=source_vocab)
        return cls.from_pairs([(s, t) for s, t, _ in triples], tokenizer, languages=language)

    @classmethod
    def from_titles(cls, titles, tokenizer, language: str, *, max_n: int = 3, stopwords=None) -> Lexicon:
        """Build from parallel titles: a TSV file (``en<TAB>tgt`` per line) or ``[(en, tgt), ...]``.
        Lower-cased 1..``max_n``-word entries, stop-word-only sources skipped
        (:func:`fastot.lexicons.title_entries`); multi-word entries are matched longest first."""
        from . import lexicons  # noqa: PLC0415

        pairs = lexicons.read_title_pairs(titles) if isinstance(titles, (str, os.PathLike)) else titles
        return cls.from_pairs(lexicons.title_entries(pairs, max_n=max_n, stopwords=stopwords), tokenizer,
                              languages=language)

    @classmethod
    def from_bitext(cls, path, tokenizer, language: str, *, split: str = "train", method: str = "dice",
                    min_count: int = 3, min_score: float = 0.1, top_k: int = 1,
                    max_sentences: int | None = None) -> Lexicon:
        """Induce word translations from parallel sentences: a directory with line-aligned
        ``<split>.en`` / ``<split>.<language>`` (the MAFAND layout) or a TSV file. Dice or IBM Model 1
        scores, the ``top_k`` targets per source word with score >= ``min_score``
        (:func:`fastot.lexicons.induce_from_bitext`)."""
        from . import lexicons  # noqa: PLC0415
        from .ir.data import read_bitext  # noqa: PLC0415

        src, tgt = read_bitext(path, language, split=split)
        triples = lexicons.induce_from_bitext(src, tgt, method=method, min_count=min_count, min_score=min_score,
                                              top_k=top_k, max_sentences=max_sentences)
        lex = cls.from_pairs([(s, t) for s, t, _ in triples], tokenizer, languages=language)
        lex.stats.update(method=method, sentences=len(src) if max_sentences is None else min(len(src), max_sentences))
        return lex

    def coverage(self, texts, tokenizer, *, batch_size: int = 256, backend: str | None = None) -> dict:
        """Share of the words of ``texts`` (strings) that have a translation, per language.

        Words are counted as the switcher counts them (the tokenizer's words; a multi-word entry covers all
        of its words). Returns ``{"words": n, "covered": {lang: share}}``; computed with the switcher itself at
        p = 1, one language at a time, so it is exactly the switched-word ratio that p = 1 would give.
        """
        texts = list(texts)
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("coverage: texts must be strings")
        words, covered = 0, dict.fromkeys(self.languages, 0)
        counts = self._language_counts().tolist()
        switchers = {lang: CodeSwitcher(self, p=1.0, languages=[lang], backend=backend)  # no translations: 0
                     for lang, n in zip(self.languages, counts) if n}
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(texts[i:i + batch_size], padding=True, return_tensors="pt")
            tt = enc.get("token_type_ids")
            for lang, cs in switchers.items():
                out = cs(enc["input_ids"], enc["attention_mask"], tt)
                covered[lang] += int(out.n_switched.sum())
            words += int(out.n_words.sum())  # the same for every language
        return {"words": words, "covered": {k: (v / words if words else 0.0) for k, v in covered.items()}}

    @classmethod
    def pack(cls, entries, languages, word_start, special, pad_id, scheme, stats=None) -> Lexicon:
        """Pack ``{key ids: {lang index: [translation ids, ...]}}`` into CSR tensors sorted by key hash."""
        hashed = sorted((ref.key_hash(k), k) for k in entries)
        for (h0, k0), (h1, k1) in zip(hashed, hashed[1:]):
            if h0 == h1:
                raise ValueError(f"lexicon: hash collision between keys {k0} and {k1}")
        n_lang = len(languages)
        key_offsets, key_ids, entry_offsets, trans_offsets, trans_ids = [0], [], [0], [0], []
        for _, key in hashed:
            key_ids.extend(key)
            key_offsets.append(len(key_ids))
            for li in range(n_lang):
                for t in entries[key].get(li, []):
                    trans_ids.extend(t)
                    trans_offsets.append(len(trans_ids))
                entry_offsets.append(len(trans_offsets) - 1)
        as_long = lambda x: torch.tensor(x, dtype=torch.long)  # noqa: E731
        tensors = {
            "key_hash": as_long([h for h, _ in hashed]),
            "key_offsets": as_long(key_offsets),
            "key_ids": as_long(key_ids),
            "entry_offsets": as_long(entry_offsets),
            "trans_offsets": as_long(trans_offsets),
            "trans_ids": as_long(trans_ids),
            "word_start": word_start.clone(),
            "special": special.clone(),
        }
        max_key_len = max((len(k) for k in entries), default=0)
        stats = dict(stats or {}, keys=len(hashed), translations=len(trans_offsets) - 1)
        return cls(tensors, languages, max_key_len, pad_id, scheme, stats)

    def save(self, path: str | os.PathLike) -> None:
        """Write the packed lexicon to one file (``torch.save`` of tensors and metadata), atomically: a
        failed save leaves an existing file as it was."""
        path = os.fspath(path)
        meta = {"languages": self.languages, "max_key_len": self.max_key_len, "pad_id": self.pad_id,
                "scheme": self.scheme, "stats": self.stats, "format": FORMAT}
        tmp = f"{path}.tmp{os.getpid()}"
        try:
            torch.save({"meta": meta, "tensors": self._tensors}, tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    @classmethod
    def load(cls, path: str | os.PathLike, tokenizer=None) -> Lexicon:
        """Read a file written by :meth:`save`.

        Args:
            path: the file.
            tokenizer: optional, the tokenizer the lexicon was built with. Its vocabulary tables
                (:func:`vocab_tables`) are checked against the file's; a file of an older format takes the
                tokenizer's tables instead (save it again to keep them). Without it, an older file is used as
                it is, with a warning.

        Formats: 3 (current) also starts a word at every punctuation piece of a SentencePiece vocabulary;
        2 marks as special only the tokens the tokenizer's template adds (as 3 does); 1 marked every special
        token but [UNK] (and before that [UNK] too), so a [MASK] in a text was never cut by ``max_length``.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Lexicon.load: path {path!r} is not a file")
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same thing here
            raise ValueError(f"Lexicon.load: {path!r} is not a fastot lexicon file ({type(exc).__name__}: {exc})") from exc
        need = ("languages", "max_key_len", "pad_id", "scheme", "stats")
        if (not isinstance(blob, dict) or not isinstance(blob.get("meta"), dict) or not isinstance(blob.get("tensors"), dict)
                or any(k not in blob["meta"] for k in need)):
            raise ValueError(f"Lexicon.load: {path!r} is not a fastot lexicon file (no meta {list(need)} and tensors)")
        m = blob["meta"]
        fmt = m.get("format", 1)
        if fmt not in (1, 2, FORMAT):
            raise ValueError(f"Lexicon.load: {path!r} has lexicon format {fmt!r}; this fastot reads formats 1 to "
                             f"{FORMAT} (a newer fastot wrote it?)")
        tensors = dict(blob["tensors"])
        if tokenizer is not None:
            word_start, special, scheme = vocab_tables(tokenizer)
            stored = tensors.get("word_start")
            if stored is None or stored.numel() != word_start.numel() or scheme != m["scheme"]:
                raise ValueError(f"Lexicon.load: tokenizer has a {scheme} vocabulary of {word_start.numel()} tokens; "
                                 f"{path!r} was built for a {m['scheme']} vocabulary of "
                                 f"{None if stored is None else stored.numel()} tokens")
            if fmt == FORMAT and not (torch.equal(stored, word_start) and torch.equal(tensors["special"], special)):
                raise ValueError(f"Lexicon.load: tokenizer's word starts or special tokens differ from those "
                                 f"{path!r} was built with: not the same tokenizer")
            tensors["word_start"], tensors["special"] = word_start, special
        elif fmt == 1:
            warnings.warn(f"Lexicon.load: {path!r} has lexicon format 1, whose special-token table keeps "
                          "special tokens of the text (such as [MASK]) from ever being cut by max_length; pass "
                          "tokenizer= to take the current tables, then save it again", stacklevel=2)
        elif fmt == 2 and m["scheme"] == "sentencepiece":
            warnings.warn(f"Lexicon.load: {path!r} has lexicon format 2, whose SentencePiece word starts join "
                          "punctuation to the word before it (\"river,\" is never matched); pass tokenizer= to "
                          "take the current tables, then save it again", stacklevel=2)
        return cls(tensors, m["languages"], m["max_key_len"], m["pad_id"], m["scheme"], m["stats"])

    def __repr__(self) -> str:
        return (f"Lexicon(keys={self.n_keys}, languages={self.languages}, scheme={self.scheme!r}, "
                f"vocab_size={self.vocab_size})")


def _csr_take(offsets: torch.Tensor, values: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``idx`` of a CSR array (``offsets`` [n+1], ``values``), as new offsets and values."""
    lens = offsets[idx + 1] - offsets[idx]
    new = torch.cat([torch.zeros(1, dtype=torch.long), lens.cumsum(0)])
    at = torch.repeat_interleave(offsets[idx], lens) + torch.arange(int(new[-1])) - torch.repeat_interleave(new[:-1], lens)
    return new, values[at]


def _is_real(x) -> bool:
    """A real number, numpy scalars included; not a bool."""
    return not isinstance(x, (bool, np.bool_)) and isinstance(x, numbers.Real)


def _is_integer(x) -> bool:
    """An integer, numpy integers included; not a bool."""
    return not isinstance(x, (bool, np.bool_)) and isinstance(x, numbers.Integral)


@dataclass
class CodeSwitchOutput:
    """input_ids, attention_mask, token_type_ids, source_index: [B, L'] int64; n_switched, n_words: [B]
    int64 (switched words, words per row); n_switched_lang: [B, n_active] int64 (switched words per active
    language, in the order of ``CodeSwitcher.languages``). Words are counted on the input, before any cut to
    ``max_length``; every word start of the vocabulary's table counts, punctuation included."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    token_type_ids: torch.Tensor
    source_index: torch.Tensor
    n_switched: torch.Tensor
    n_words: torch.Tensor
    n_switched_lang: torch.Tensor

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """The three tensors a Hugging Face encoder takes."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "token_type_ids": self.token_type_ids}


class CodeSwitcher:
    """Randomly replaces lexicon words in a tokenized batch by their translations.

    Args:
        lexicon: a :class:`Lexicon` built with the tokenizer that produced the ids.
        p: probability in [0, 1] that a word with a translation is switched.
        seed: nonnegative integer; randomness is a pure function of (seed, step, row, word).
        languages: active target languages (default: all of the lexicon's). One language is
            bilingual code-switching; several draw a language uniformly per switched word (ML-CS). Words are
            matched (longest first) against the keys with a translation in an active language; under ML-CS a
            matched word whose drawn language has no translation of it is kept, as in the published method.
        backend: "auto" | "torch" | "cpp" | "cuda" | "triton"; default from ``FASTOT_BACKEND``.
    """

    def __init__(self, lexicon: Lexicon, p: float = 0.5, seed: int = 0, languages: Iterable[str] | None = None,
                 backend: str | None = None):
        if not isinstance(lexicon, Lexicon):
            raise TypeError(f"CodeSwitcher: lexicon must be a fastot.Lexicon, got {type(lexicon).__name__}")
        if not _is_real(p) or not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"CodeSwitcher: p must be in [0, 1], got {p!r}")
        if not _is_integer(seed) or not 0 <= int(seed) < 2**64:
            raise ValueError(f"CodeSwitcher: seed must be an integer in [0, 2^64), got {seed!r}")
        seed = int(seed)
        langs = list(lexicon.languages if languages is None else ([languages] if isinstance(languages, str) else languages))
        unknown = [lang for lang in langs if lang not in lexicon.languages]
        if not langs or unknown or len(set(langs)) != len(langs):
            raise ValueError(f"CodeSwitcher: languages must be a non-empty subset of {lexicon.languages} without "
                             f"repeats, got {langs}")
        self.lexicon, self.p, self.seed, self.languages, self.backend = lexicon, float(p), seed, langs, backend
        self._threshold = round(self.p * (1 << 24))
        self._lex = lexicon.select(langs)  # the keys that can be switched into the active languages
        self._lang_ids = torch.arange(len(langs))
        self._lang_ids_on: dict[torch.device, torch.Tensor] = {}

    def _lang_ids_for(self, device: torch.device) -> torch.Tensor:
        if device not in self._lang_ids_on:  # copied once per device, not on every call
            self._lang_ids_on[device] = self._lang_ids.to(device)
        return self._lang_ids_on[device]

    def __repr__(self) -> str:
        return f"CodeSwitcher(p={self.p}, seed={self.seed}, languages={self.languages}, backend={self.backend!r})"

    def _check(self, input_ids, attention_mask, token_type_ids, step, max_length):
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"codeswitch: input_ids must be a [B, L] tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool or input_ids.is_complex():
            raise TypeError(f"codeswitch: input_ids must be integer, got {input_ids.dtype}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.shape != input_ids.shape):
                raise ValueError(f"codeswitch: {name} must have the shape of input_ids {list(input_ids.shape)}, "
                                 f"got {list(getattr(t, 'shape', []))}")
            if t is not None and t.device != input_ids.device:
                raise ValueError(f"codeswitch: {name} is on {t.device}, input_ids on {input_ids.device}")
        if token_type_ids is not None and (token_type_ids.dtype.is_floating_point or token_type_ids.is_complex()):
            raise TypeError(f"codeswitch: token_type_ids must be integer or bool, got {token_type_ids.dtype}")
        if attention_mask is not None and attention_mask.is_complex():
            raise TypeError(f"codeswitch: attention_mask must be real, got {attention_mask.dtype}")
        if not _is_integer(step) or step < 0:
            raise ValueError(f"codeswitch: step must be an integer >= 0, got {step!r}")
        if max_length is not None and (not _is_integer(max_length) or max_length < 0):
            raise ValueError(f"codeswitch: max_length must be None or an integer >= 0, got {max_length!r}")
        V = self.lexicon.vocab_size
        bad = (input_ids < 0) | (input_ids >= V)
        bad_mask = None if attention_mask is None else (attention_mask != 0) & (attention_mask != 1)
        if input_ids.device.type == "cpu" and not torch.compiler.is_compiling():
            if input_ids.numel() and bool(bad.any()):
                raise ValueError(f"codeswitch: input_ids must be in [0, {V}) (the lexicon's vocabulary: was it built "
                                 f"for another tokenizer?); found {input_ids[bad][:3].tolist()}")
            if bad_mask is not None and bool(bad_mask.any()):
                raise ValueError(f"codeswitch: attention_mask must be 0 or 1; found {attention_mask[bad_mask][:3].tolist()}")
        else:  # raised on the device (or by the compiled graph), without a host synchronisation
            torch._assert_async(~bad.any(), f"codeswitch: input_ids must be in [0, {V})")
            if bad_mask is not None:
                torch._assert_async(~bad_mask.any(), "codeswitch: attention_mask must be 0 or 1")

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 token_type_ids: torch.Tensor | None = None, *, step: int = 0,
                 max_length: int | None = None, p: float | None = None, row_offset: int = 0) -> CodeSwitchOutput:
        """Code-switch a batch.

        Args:
            input_ids: [B, L] integer token ids.
            attention_mask: [B, L] of 0/1 (0 = padding, dropped; any other value is an error), default all ones.
            token_type_ids: [B, L] segment ids (0 query, 1 passage), default zeros.
            step: training step; with the seed it fixes every random decision.
            max_length: cut rows longest_first to this many tokens and pad to exactly this width. Without
                it the width is the longest switched row, which a GPU backend reads back to the host (one
                synchronisation); pass it for a call without one (CUDA graphs, static shapes).
            p: this call's switching probability instead of the switcher's ``p`` (a schedule); the draws are
                the same, so a word switched at a smaller p is also switched at a larger one.
            row_offset: row r draws as row ``r + row_offset``: a process holding rows [s, s + B) of a global batch
                passes s, and its rows switch as they would in the whole batch (under torchrun).
        Returns:
            :class:`CodeSwitchOutput`.
        """
        self._check(input_ids, attention_mask, token_type_ids, step, max_length)
        if p is not None and (not _is_real(p) or not 0.0 <= float(p) <= 1.0):
            raise ValueError(f"codeswitch: p must be None or in [0, 1], got {p!r}")
        if not _is_integer(row_offset) or not 0 <= row_offset < 2**31:
            raise ValueError(f"codeswitch: row_offset must be an integer in [0, 2^31), got {row_offset!r}")
        threshold = self._threshold if p is None else round(float(p) * (1 << 24))
        step, max_length = int(step), None if max_length is None else int(max_length)
        dev = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        elif attention_mask.dtype.is_floating_point:  # 0.0 / 1.0 (checked above)
            attention_mask = attention_mask != 0
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        lex = self._lex.tensors(dev)
        if max_length is not None and input_ids.numel():
            n_special = (lex["special"][input_ids.long().clamp(0, self.lexicon.vocab_size - 1)]
                         & (attention_mask != 0)).sum(1).max()
            msg = f"codeswitch: max_length={max_length} is shorter than the special tokens of a row, which are never dropped"
            if dev.type == "cpu" and not torch.compiler.is_compiling():
                if int(n_special) > max_length:
                    raise ValueError(f"{msg} ({int(n_special)})")
            else:  # checked on the device, without a host synchronisation
                torch._assert_async(n_special <= max_length, msg)
        be = _backend.resolve("codeswitch", dev, self.backend)
        args = self._op_args(input_ids, attention_mask, token_type_ids, step, max_length, threshold, int(row_offset))
        if be == "torch":
            out = ref.codeswitch(*args)
        elif be in ("cpp", "cuda"):
            out = torch.ops.fastot.codeswitch(*args)
        else:
            from .triton import codeswitch as tcs  # noqa: PLC0415

            out = tcs.codeswitch(*args)
        ids_, mask_, tt_, src_, per_lang, n_words = out
        return CodeSwitchOutput(ids_, mask_, tt_, src_, per_lang.sum(1), n_words, per_lang)


    def _op_args(self, input_ids, attention_mask, token_type_ids, step: int, max_length: int | None,
                 threshold: int | None = None, row_offset: int = 0) -> tuple:
        """The arguments of the registered op (``torch.ops.fastot.codeswitch``, the Triton op and the reference
        share them) for this switcher's lexicon and languages; no checks beyond the op's own."""
        dev = input_ids.device
        lex = self._lex.tensors(dev)
        return (
            input_ids.long(), attention_mask.long(), token_type_ids.long(), lex["word_start"], lex["special"],
            *(lex[k] for k in _PACKED), self._lang_ids_for(dev), self._lex.max_key_len, self._lex.max_key_words,
            ref.rand_prefix(self.seed, step, ref.SALT_SWITCH), ref.rand_prefix(self.seed, step, ref.SALT_LANG),
            ref.rand_prefix(self.seed, step, ref.SALT_TRANS), self._threshold if threshold is None else threshold,
            -1 if max_length is None else max_length, self.lexicon.pad_id, row_offset,
        )
