"""A DataLoader collator for cross-encoder (query, passage) pairs that code-switches the tokenized batch.

    switcher = fastot.CodeSwitcher(fastot.Lexicon.from_pairs(pairs, tokenizer, languages="sw"), p=0.5, seed=0)
    collator = CodeSwitchCollator(tokenizer, switcher, max_length=256)
    loader = DataLoader(dataset, batch_size=32, collate_fn=collator)
    ...
    collator.switch_ratios(collator.pop_stats())  # {"overall": 0.21, "sw": 0.21}: switched words since last time

A batch holds only model inputs and labels, so it feeds ``model(**batch)`` and the Hugging Face ``Trainer`` as
is (``fastot.integrations.hf.CodeSwitchStatsCallback`` logs the statistics there); with DataLoader workers, which
run their own copies of the collator, ask for the statistics in each batch instead (``stats="batch"``).

The text is tokenized once, as usual; the switch runs on the token ids (:class:`fastot.CodeSwitcher`), which
then cuts each row ``longest_first`` to ``max_length`` and pads to exactly that width, as the tokenizer would
(or, with ``padding="longest"``, only to the batch's longest row: the same model output for less work).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch.utils.data import get_worker_info

from .codeswitch import CodeSwitcher, _is_integer, vocab_tables
from .losses import content_mask

__all__ = ["BitextCollator", "CodeSwitchCollator"]

_NAME = "CodeSwitchCollator"


def _positive_int(name: str, value) -> int:
    if not _is_integer(value) or value <= 0:
        raise ValueError(f"{_NAME}: {name} must be an integer > 0, got {value!r}")
    return int(value)


def _passage_after(tokenizer, pair_ids: list[int], lexicon) -> int:
    """How many template tokens come before the second text in ``tokenizer``'s pair ``pair_ids`` ("a", "b")."""
    special = lexicon.tensors()["special"]
    n_template, seen_text, seen_separator = 0, False, False
    for i in pair_ids:
        if 0 <= i < special.numel() and bool(special[i]):
            n_template += 1
            seen_separator |= seen_text
        elif seen_separator:
            return n_template
        else:
            seen_text = True
    raise ValueError(f"{_NAME}: tokenizer gives no token type 1 and no template token between the texts of a pair "
                     f"({type(tokenizer).__name__}: {pair_ids}), so query and passage cannot be told apart")


def _distributed_offset(rows: int) -> int:
    """rank * rows inside an initialised process group of several processes, else 0."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank() * rows
    return 0


class CodeSwitchCollator:
    """Tokenizes (query, passage[, label]) items as pairs and code-switches the batch on its token ids.

    Args:
        tokenizer: Hugging Face tokenizer with a pad token; the one ``switcher.lexicon`` was built with
            (checked by vocabulary size). The switch and the cut to ``max_length`` tell query and passage apart
            by token type when the tokenizer gives passages type 1 (BERT-style pairs); otherwise (XLM-R,
            RoBERTa: ``<s> q </s></s> p </s>``, every type 0) by the template tokens before each token, and
            the batch then has the tokenizer's own types (zeros). ``token_type_ids`` is returned only when the
            tokenizer's ``model_input_names`` has it. A template token spelt out in the text (a literal
            "[SEP]" or "</s>") has the template's id and is never cut, unlike in the tokenizer; with an untyped
            template it also starts the passage early.
        switcher: a :class:`fastot.CodeSwitcher`.
        max_length: every row is cut ``longest_first`` to it after switching.
        pre_max_length: ``longest_first`` cut when tokenizing, before switching; it only bounds the tokenizing
            work. Rows longer than it are cut twice, which equals one cut to ``max_length`` (so ``p = 0`` gives
            the tokenizer's own output) when it is at least ``max_length`` and, after the special tokens of a
            pair, leaves an odd budget: then the first cut leaves no tie between the segments for the second
            to break differently. Default: ``2 * max_length``, plus one where needed for that.
        padding: ``"max_length"`` (default): every batch is ``max_length`` wide, as the tokenizer's
            ``padding="max_length"``; ``"longest"``: as wide as the batch's longest row after the switch and the
            cut (rounded up to ``pad_to_multiple_of``, at most ``max_length``). The columns left out hold only
            padding, so a model that masks padding computes the same outputs from fewer tokens (with dropout
            on, not the same random masks as the wider batch). It pays when most batches' longest row is well
            under ``max_length``: on MAFAND en-swa training groups (40 rows), the longest row has a median of 78
            tokens at p = 0 but 104 at p = 0.5 (switched rows are longer), so at ``max_length=128`` it saved 5% of
            a training step and 3% at 96 (``python -m bench.rerank_step``; for training,
            ``RerankConfig.length_chunks`` saves more).
        pad_to_multiple_of: with ``padding="longest"``, round the width up to a multiple of this (8 suits
            tensor cores); default: no rounding.
        device: where the switch runs and the batch is returned (e.g. ``"cuda"`` in the main process);
            default: stay on the CPU, which is what DataLoader workers should do.
        label_dtype: dtype of ``labels``.
        stats: where the switch statistics go. ``"collect"`` (default): summed in this collator, read with
            :meth:`pop_stats`; the batch holds only model inputs and labels. ``"batch"``: each batch also has
            ``cs_stats`` (see :meth:`__call__`), which is what DataLoader workers need: their copies of the
            collator are not this one.

    Randomness: a pure function of (``switcher.seed``, step, row, word), so query and passage words each get
    their own independent draw, and a batch is reproducible from its step. The step is ``calls * num_workers
    + worker_id``, where ``calls`` counts this collator's earlier calls without an explicit ``step`` (in this
    process) and the worker comes from :func:`torch.utils.data.get_worker_info`: the workers of one
    DataLoader take batches in turn, so the step is the batch's index in the loader and no two workers
    repeat a random stream. A DataLoader without ``persistent_workers=True`` copies the collator into fresh
    workers every epoch, so every epoch then repeats the same steps; keep the workers, or pass ``step=``.
    """

    def __init__(self, tokenizer, switcher: CodeSwitcher, *, max_length: int = 256,
                 pre_max_length: int | None = None, padding: str = "max_length",
                 pad_to_multiple_of: int | None = None, device: torch.device | str | None = None,
                 label_dtype: torch.dtype = torch.float32, stats: str = "collect"):
        if not isinstance(switcher, CodeSwitcher):
            raise TypeError(f"{_NAME}: switcher must be a fastot.CodeSwitcher, got {type(switcher).__name__}")
        if not callable(tokenizer) or not hasattr(tokenizer, "num_special_tokens_to_add"):
            raise TypeError(f"{_NAME}: tokenizer must be a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{_NAME}: tokenizer must have a pad token, got pad_token_id=None")
        if len(tokenizer) != switcher.lexicon.vocab_size:
            raise ValueError(f"{_NAME}: the tokenizer's vocabulary ({len(tokenizer)} tokens) must be the one "
                             f"switcher.lexicon was built with ({switcher.lexicon.vocab_size} tokens)")
        lex_t = switcher.lexicon.tensors()
        # same size, another tokenizer: its tables differ (a tokenizer without get_vocab cannot be compared)
        tables = vocab_tables(tokenizer) if hasattr(tokenizer, "get_vocab") else (lex_t["word_start"], lex_t["special"])
        if not (torch.equal(tables[0], lex_t["word_start"]) and torch.equal(tables[1], lex_t["special"])):
            raise ValueError(f"{_NAME}: the tokenizer's word starts or special tokens differ from those "
                             f"switcher.lexicon was built with: build the lexicon with this tokenizer")
        max_length = _positive_int("max_length", max_length)
        if pre_max_length is None:  # odd budget after the pair's special tokens (see the class docstring)
            pre_max_length = 2 * max_length + (2 * max_length - tokenizer.num_special_tokens_to_add(pair=True) + 1) % 2
        pre_max_length = _positive_int("pre_max_length", pre_max_length)
        if pre_max_length < max_length:
            raise ValueError(f"{_NAME}: pre_max_length must be >= max_length={max_length}, got {pre_max_length}")
        if padding not in ("max_length", "longest"):
            raise ValueError(f"{_NAME}: padding must be 'max_length' or 'longest', got {padding!r}")
        if pad_to_multiple_of is not None:
            pad_to_multiple_of = _positive_int("pad_to_multiple_of", pad_to_multiple_of)
        if device is not None:
            if not isinstance(device, (str, torch.device)):
                raise TypeError(f"{_NAME}: device must be None, a str or a torch.device, got {device!r}")
            try:
                device = torch.device(device)
            except RuntimeError as exc:
                raise ValueError(f"{_NAME}: device must name a torch device, got {device!r}") from exc
        if stats not in ("collect", "batch"):
            raise ValueError(f"{_NAME}: stats must be 'collect' or 'batch', got {stats!r}")
        if not isinstance(label_dtype, torch.dtype):
            raise TypeError(f"{_NAME}: label_dtype must be a torch.dtype, got {label_dtype!r}")
        pair = tokenizer("a", "b", return_token_type_ids=True)
        # Untyped pairs: the passage starts after this many template tokens (BERT-style pairs: None).
        self._passage_after = None if 1 in pair["token_type_ids"] else _passage_after(tokenizer, pair["input_ids"],
                                                                                     switcher.lexicon)
        # Typed pairs given without token types (an encoding made without return_token_type_ids, as
        # sentence-transformers makes them for DistilBERT-style models): the template tells the segments there too.
        self._template_after = self._passage_after
        if self._template_after is None:
            try:
                self._template_after = _passage_after(tokenizer, pair["input_ids"], switcher.lexicon)
            except ValueError:
                self._template_after = None
        self._typed_output = "token_type_ids" in getattr(tokenizer, "model_input_names", ["token_type_ids"])
        self.tokenizer, self.switcher, self.device, self.label_dtype = tokenizer, switcher, device, label_dtype
        self.max_length, self.pre_max_length = max_length, pre_max_length
        self.padding, self.pad_to_multiple_of = padding, pad_to_multiple_of
        self.calls = 0
        self.stats = stats
        # False: batches are only tokenized, cut and padded (p = 0), and counted neither in ``calls`` nor in the
        # statistics (CodeSwitchStatsCallback.attach gives the Trainer's evaluation such a copy of the collator)
        self.enabled = True
        self._collected: dict[str, torch.Tensor] | None = None

    @property
    def languages(self) -> list[str]:
        """The active languages, in the order of ``cs_stats["switched_per_language"]``."""
        return self.switcher.languages

    def __repr__(self) -> str:
        return (f"{_NAME}({self.switcher!r}, max_length={self.max_length}, pre_max_length={self.pre_max_length}, "
                f"padding={self.padding!r}, pad_to_multiple_of={self.pad_to_multiple_of}, device={self.device}, "
                f"stats={self.stats!r}, calls={self.calls})")

    @staticmethod
    def _split(batch) -> tuple[list[str], list[str], list | None]:
        if isinstance(batch, (str, bytes, Mapping)) or not isinstance(batch, Sequence) or len(batch) == 0:
            raise ValueError(f"{_NAME}: batch must be a non-empty list of (query, passage[, label]) items, "
                             f"got {type(batch).__name__} {batch!r:.80}")
        queries, passages, labels = [], [], []
        for i, item in enumerate(batch):
            if isinstance(item, Mapping):
                if "query" not in item or "passage" not in item:
                    raise ValueError(f"{_NAME}: batch[{i}] must have keys 'query' and 'passage' "
                                     f"(and optionally 'label'), got keys {sorted(item)}"
                                     + (" (the Hugging Face Trainer drops the text columns unless "
                                        "TrainingArguments(remove_unused_columns=False))" if not
                                        {"query", "passage"} & set(item) else ""))
                fields = (item["query"], item["passage"]) + ((item["label"],) if "label" in item else ())
            elif isinstance(item, (tuple, list)) and len(item) in (2, 3):
                fields = tuple(item)
            else:
                raise ValueError(f"{_NAME}: batch[{i}] must be a (query, passage[, label]) tuple or a dict, "
                                 f"got {type(item).__name__} {item!r:.80}")
            for name, text in zip(("query", "passage"), fields):
                if not isinstance(text, str):
                    raise TypeError(f"{_NAME}: batch[{i}] {name} must be a str, got {type(text).__name__}")
            if i and (len(fields) == 3) != bool(labels):
                raise ValueError(f"{_NAME}: batch[{i}] {'has' if len(fields) == 3 else 'lacks'} a label "
                                 f"and batch[0] {'does not' if len(fields) == 3 else 'does'}: label all items or none")
            queries.append(fields[0])
            passages.append(fields[1])
            labels.extend(fields[2:])
        return queries, passages, labels or None

    def __call__(self, batch: Sequence, *, step: int | None = None, p: float | None = None,
                 row_offset: int | None = None) -> dict:
        """Tokenize, switch and pad a batch of B items.

        Args:
            batch: items ``(query, passage)``, ``(query, passage, label)`` or dicts with keys ``"query"``,
                ``"passage"`` and optionally ``"label"`` (labels for all items or none).
            step: the switch's step; default ``calls * num_workers + worker_id`` (see the class docstring).
            p: this batch's switching probability instead of ``switcher.p`` (e.g. a warm-up schedule).
            row_offset: the index of ``batch[0]`` in a global batch that several processes share (under
                torchrun): item i then switches as item ``row_offset + i`` of the whole batch at the same step.
                Default: ``rank * B`` inside an initialised ``torch.distributed`` group of several processes
                (each process's batch its own rows of a global one, as with a distributed sampler), else 0.
        Returns:
            ``input_ids``, ``attention_mask``, ``token_type_ids`` (if the tokenizer's model inputs have them):
            [B, max_length] int64 (``padding="longest"``: [B, width], see the class docstring), as the tokenizer
            would encode the switched pairs cut to max_length; ``labels``: [B]
            label_dtype (only when the items have labels); with ``stats="batch"``, ``cs_stats``: ``{"words": []
            int64, "switched": [] int64, "switched_per_language": [n_active] int64}`` summed over the batch
            (tensors on the output's device: no host synchronisation; see :meth:`switch_ratios`); with
            ``stats="collect"`` the same sums are added to the collator's (:meth:`pop_stats`).
        """
        queries, passages, labels = self._split(batch)
        if labels is not None:
            try:
                labels = torch.tensor(labels, dtype=self.label_dtype)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise ValueError(f"{_NAME}: labels must be numbers convertible to {self.label_dtype}, "
                                 f"got {labels[:3]!r}...: {exc}") from exc
            if labels.shape != (len(queries),):
                raise ValueError(f"{_NAME}: each label must be a scalar, got labels of shape {list(labels.shape)}")
        enc = self.tokenizer(queries, passages, padding=True, truncation="longest_first",
                             max_length=self.pre_max_length, return_tensors="pt", return_token_type_ids=True,
                             return_attention_mask=True)
        result = self.switch_encoded(enc, step=step, p=p, row_offset=row_offset)
        if labels is not None:
            result["labels"] = labels if self.device is None else labels.to(self.device)
        return result

    def switch_encoded(self, encoding: Mapping[str, torch.Tensor], *, step: int | None = None,
                       p: float | None = None, row_offset: int | None = None, count: bool = True) -> dict:
        """Switch a batch of (query, passage) pairs that the tokenizer has already encoded (what
        :meth:`__call__` does after tokenizing; the sentence-transformers cross-encoder hook calls it).

        Args:
            encoding: ``input_ids`` and ``attention_mask`` [B, L] (and ``token_type_ids`` when the tokenizer
                gives them), as the tokenizer returns for text pairs.
            step, p, row_offset: as in :meth:`__call__`.
            count: add the batch to the collected statistics (False for a batch switched again at a step that was
                already counted).
        Returns:
            the model inputs of :meth:`__call__` (without labels), with the statistics as ``stats`` says.
        """
        if step is not None and (not _is_integer(step) or step < 0):
            raise ValueError(f"{_NAME}: step must be None or an integer >= 0, got {step!r}")
        ids, mask = encoding["input_ids"], encoding["attention_mask"]
        tt = encoding.get("token_type_ids")
        after = self._passage_after if tt is not None else self._template_after
        if tt is None:
            tt = torch.zeros_like(ids)
        if self.device is not None:
            ids, mask, tt = ids.to(self.device), mask.to(self.device), tt.to(self.device)
        if after is not None:  # segments from the template tokens before each token
            special = self.switcher.lexicon.tensors(ids.device)["special"][ids] & (mask != 0)
            tt = ((special.cumsum(1) - special.long()) >= after).long()
        if row_offset is None:
            row_offset = _distributed_offset(ids.shape[0])
        gated = not self.enabled
        if gated:  # not training: cut and pad as usual, nothing switched or counted
            p, step = 0.0, 0 if step is None else step
        counted = step is None
        if counted:
            info = get_worker_info()
            step = self.calls if info is None else self.calls * info.num_workers + info.id
        out = self.switcher(ids, mask, tt, step=step, max_length=self.max_length, p=p, row_offset=row_offset)
        if counted:
            self.calls += 1
        ids, mask, tt = out.input_ids, out.attention_mask, out.token_type_ids
        if self.padding == "longest":  # drop the trailing columns that are padding in every row
            used = mask.any(0).nonzero()
            width = int(used[-1]) + 1 if used.numel() else 0  # one host sync per batch
            if self.pad_to_multiple_of is not None:
                width = -(-width // self.pad_to_multiple_of) * self.pad_to_multiple_of
            width = min(width, mask.shape[1])
            ids, mask, tt = (t[:, :width].contiguous() for t in (ids, mask, tt))
        result = {"input_ids": ids, "attention_mask": mask}
        if self._typed_output:
            result["token_type_ids"] = tt if self._passage_after is None else torch.zeros_like(tt)
        batch_stats = {"words": out.n_words.sum(), "switched": out.n_switched.sum(),
                       "switched_per_language": out.n_switched_lang.sum(0)}
        if self.stats == "batch":
            result["cs_stats"] = batch_stats
        elif gated or not count:
            pass
        elif self._collected is None:
            self._collected = batch_stats
        else:  # on the device, no host synchronisation
            dev = batch_stats["words"].device
            self._collected = {k: v.to(dev) + batch_stats[k] for k, v in self._collected.items()}
        return result

    def pop_stats(self) -> dict[str, torch.Tensor]:
        """The switch statistics summed over this collator's batches since the last call (``stats="collect"``),
        as ``cs_stats`` (see :meth:`__call__`), and start a new sum; zeros when no batch was switched since."""
        if self.stats != "collect":
            raise RuntimeError(f"{_NAME}: pop_stats needs stats='collect'; with stats='batch' each batch carries "
                               "its own cs_stats")
        got, self._collected = self._collected, None
        if got is None:
            zero = torch.zeros((), dtype=torch.long)
            got = {"words": zero, "switched": zero.clone(),
                   "switched_per_language": torch.zeros(len(self.languages), dtype=torch.long)}
        return got

    def switch_ratios(self, stats: Mapping[str, torch.Tensor]) -> dict[str, float]:
        """Code-switching frequency: switched words / words, ``"overall"`` and per active language.

        ``stats`` is a ``cs_stats`` dict, or several summed key by key. A language's ratio is the share of all
        words switched into it (the ratios of the languages add up to the overall one); 0 when there are no
        words. Words are the switcher's words (:class:`fastot.CodeSwitchOutput`): punctuation counts as a word,
        and both counts are taken before the cut to ``max_length``. Reads the tensors on the host (one
        synchronisation): call it when logging, not every step.
        """
        words = int(stats["words"])
        per_lang = stats["switched_per_language"].tolist()
        if len(per_lang) != len(self.languages):
            raise ValueError(f"switch_ratios: stats['switched_per_language'] must have {len(self.languages)} entries "
                             f"(languages {self.languages}), got {len(per_lang)}")
        ratio = (lambda n: n / words) if words else (lambda n: 0.0)
        return {"overall": ratio(int(stats["switched"])), **dict(zip(self.languages, map(ratio, per_lang)))}


class BitextCollator:
    """Tokenizes (English, target) pairs for OT distillation: ``fastot distill``'s batches, and those of
    ``fastot.integrations.hf.OTDistillationTrainer``.

    Items: ``(english, target)`` tuples or dicts with ``source_key`` and ``target_key``. Returns the student's
    inputs (``input_ids``, ``attention_mask`` of the target sentences), the teacher's (``teacher_input_ids``,
    ``teacher_attention_mask`` of the English ones), and the OT marginals' masks ``token_mask`` /
    ``teacher_token_mask`` (real tokens, the special ones left out unless ``include_special``).

    Args:
        tokenizer: the student's tokenizer.
        teacher_tokenizer: the teacher's (default: the student's).
        max_length: tokens per sentence, both sides (default 128, as ``fastot distill``).
    """

    def __init__(self, tokenizer, teacher_tokenizer=None, *, max_length: int = 128, source_key: str = "en",
                 target_key: str = "tgt", include_special: bool = False):
        if not callable(tokenizer) or not hasattr(tokenizer, "all_special_ids"):
            raise TypeError(f"tokenizer: expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
        if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"max_length: expected an integer >= 1, got {max_length!r}")
        self.tokenizer, self.teacher_tokenizer = tokenizer, teacher_tokenizer or tokenizer
        self.max_length, self.source_key, self.target_key = max_length, source_key, target_key
        self.include_special = bool(include_special)

    def _split(self, items: Sequence) -> tuple[list[str], list[str]]:
        en, tgt = [], []
        for i, item in enumerate(items):
            if isinstance(item, Mapping):
                if self.source_key not in item or self.target_key not in item:
                    raise ValueError(f"BitextCollator: items[{i}] must have keys {self.source_key!r} and "
                                     f"{self.target_key!r}, got {sorted(item)}")
                pair = item[self.source_key], item[self.target_key]
            elif isinstance(item, (tuple, list)) and len(item) == 2:
                pair = tuple(item)
            else:
                raise ValueError(f"BitextCollator: items[{i}] must be an (english, target) pair or a dict, "
                                 f"got {type(item).__name__}")
            if not all(isinstance(t, str) for t in pair):
                raise TypeError(f"BitextCollator: items[{i}] must hold two strings")
            en.append(pair[0])
            tgt.append(pair[1])
        if not en:
            raise ValueError("BitextCollator: empty batch")
        return en, tgt

    def __call__(self, items: Sequence) -> dict[str, torch.Tensor]:
        en, tgt = self._split(items)
        kw = dict(padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        se, te = self.tokenizer(tgt, **kw), self.teacher_tokenizer(en, **kw)
        s_mask, t_mask = se["attention_mask"].bool(), te["attention_mask"].bool()
        if not self.include_special:
            s_mask = content_mask(se["input_ids"], s_mask, self.tokenizer.all_special_ids)
            t_mask = content_mask(te["input_ids"], t_mask, self.teacher_tokenizer.all_special_ids)
        return {"input_ids": se["input_ids"], "attention_mask": se["attention_mask"], "token_mask": s_mask,
                "teacher_input_ids": te["input_ids"], "teacher_attention_mask": te["attention_mask"],
                "teacher_token_mask": t_mask}
