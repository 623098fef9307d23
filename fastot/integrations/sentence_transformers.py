"""fastot in sentence-transformers (>= 6.3; extra ``fastot[st]``): OT distillation as a ``SentenceTransformerTrainer``
loss, code-switching for ``CrossEncoderTrainer``, a bitext retrieval evaluator, and fastot's batch order.

OT distillation (what ``fastot distill`` trains), on a dataset with an English and a target column::

    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from fastot.integrations.sentence_transformers import OTDistillLoss, bitext_evaluator

    teacher = SentenceTransformer(path)           # frozen English encoder
    student = SentenceTransformer(path)           # trained on the target language
    loss = OTDistillLoss(student, teacher)        # eps=0.05, 50 iterations, cosine cost, as `fastot distill`
    SentenceTransformerTrainer(model=student, train_dataset=pairs, loss=loss,   # pairs: Dataset(en=..., tgt=...)
                               evaluator=bitext_evaluator(dev_en, dev_tgt)).train()

Code-switched cross-encoder training (the reranker of ``fastot rerank``)::

    code_switch(cross_encoder, fastot.CodeSwitcher(lexicon, p=0.5))
    CrossEncoderTrainer(model=cross_encoder, train_dataset=triples, loss=BinaryCrossEntropyLoss(cross_encoder))

Why a hook and not a collator: ``CrossEncoderTrainer``'s collator hands raw strings to the loss, and every
cross-encoder loss of sentence-transformers tokenizes them itself through ``CrossEncoder.preprocess``. Switching
on the token ids therefore happens there, for every loss; evaluation and ``predict`` (the model in eval
mode) see the text unswitched.
"""

from __future__ import annotations

import collections
import types
from collections.abc import Sequence

import torch
from sentence_transformers import CrossEncoder, SentenceTransformer
from sentence_transformers.base.sampler import DefaultBatchSampler
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from torch import nn

from ..codeswitch import CodeSwitcher
from ..collate import CodeSwitchCollator
from ..losses import OTDistillationLoss, content_mask
from ..train.distill import epoch_batches
from .hf import average_across_processes

__all__ = ["CodeSwitchHook", "LengthGroupedBatchSampler", "OTDistillLoss", "bitext_evaluator", "code_switch"]


def _tokenizer(model):
    tok = getattr(model, "tokenizer", None)
    if tok is None or not hasattr(tok, "all_special_ids"):
        raise TypeError(f"{type(model).__name__} has no Hugging Face tokenizer (model.tokenizer)")
    return tok


class OTDistillLoss(nn.Module):
    """OPTICAL's token-level OT distillation as a sentence-transformers loss.

    The dataset has two text columns, in this order: the English sentence (teacher side) and its translation
    (student side); any label column is ignored. The teacher encodes the English column without gradients, the
    student the target column; the loss is :class:`fastot.OTDistillationLoss` between their token embeddings
    (the Transformer module's ``token_embeddings``), the special tokens left out of the marginals unless
    ``include_special``. On the same pairs, batches, seed and optimizer settings it computes what
    ``fastot distill`` computes (checked step by step in ``python_tests/test_integrations.py``).

    Args:
        model: the student :class:`~sentence_transformers.SentenceTransformer` (trained).
        teacher: the English :class:`~sentence_transformers.SentenceTransformer`; it is frozen here
            (``requires_grad_(False)``, eval mode), so the trainer's optimizer, which collects the loss module's
            trainable parameters, leaves it alone. With another tokenizer than the student's, the English column
            (tokenized by the trainer with the student's tokenizer) is decoded and re-tokenized by the teacher,
            as sentence-transformers' GISTEmbedLoss does: an uncased student tokenizer then loses the case.
        eps, max_iter, cost, objective, backend: as :class:`fastot.OTDistillationLoss` (``fastot distill``'s
            defaults).
        projection: a module from the student's width to the teacher's; default: a trained ``nn.Linear`` when
            the widths differ (its parameters are this loss's, which the trainer optimizes; save them with
            ``torch.save(loss.criterion.state_dict(), ...)``: the trainer saves only the model).
        include_special: give [CLS]/[SEP] mass in the OT marginals.
    """

    def __init__(self, model: SentenceTransformer, teacher: SentenceTransformer, *, eps: float = 0.05,
                 max_iter: int = 50, cost: str = "cosine", objective: str = "transport_cost",
                 projection: nn.Module | None = None, include_special: bool = False, backend: str | None = None):
        super().__init__()
        if not isinstance(model, SentenceTransformer):
            raise TypeError(f"model: expected a SentenceTransformer, got {type(model).__name__}")
        if not isinstance(teacher, SentenceTransformer):
            raise TypeError(f"teacher: expected a SentenceTransformer, got {type(teacher).__name__}")
        if teacher is model:
            raise ValueError("teacher: the teacher is frozen, so it cannot be the student; load a second copy")
        self.model = model
        self.teacher = teacher.eval().requires_grad_(False)
        s_tok, t_tok = _tokenizer(model), _tokenizer(teacher)
        self._same_tokens = s_tok.get_vocab() == t_tok.get_vocab()
        d_s, d_t = model.get_embedding_dimension(), teacher.get_embedding_dimension()
        if projection is None and d_s != d_t:
            projection = nn.Linear(d_s, d_t)
        self.criterion = OTDistillationLoss(eps=eps, max_iter=max_iter, cost=cost, objective=objective,
                                            projection=projection, backend=backend)
        self.include_special = bool(include_special)
        self._special = (s_tok.all_special_ids, t_tok.all_special_ids)
        # kept here: under DDP the trainer puts its wrapper in self.model, which has no tokenizer
        self._student_tokenizer = s_tok

    def forward(self, sentence_features: Sequence[dict[str, torch.Tensor]], labels: torch.Tensor | None = None):
        if len(sentence_features) != 2:
            raise ValueError(f"OTDistillLoss: the dataset must have two text columns (English, target), got "
                             f"{len(sentence_features)}")
        en, tgt = sentence_features
        self.teacher.eval()  # the trainer switches only the student between train and eval
        with torch.no_grad():
            if self._same_tokens:
                t_in = dict(en)  # the model's forward adds to the dict it is given: the trainer's stays as it was
            else:
                texts = self._student_tokenizer.batch_decode(en["input_ids"], skip_special_tokens=True)
                t_in = {k: v.to(self.teacher.device) if isinstance(v, torch.Tensor) else v
                        for k, v in self.teacher.preprocess(texts).items()}
            ht = self.teacher(t_in)["token_embeddings"]
        average_across_processes(self.criterion)
        hs = self.model(dict(tgt))["token_embeddings"]
        s_mask, t_mask = tgt["attention_mask"].bool(), t_in["attention_mask"].bool()
        if not self.include_special:
            s_mask = content_mask(tgt["input_ids"], s_mask, self._special[0])
            t_mask = content_mask(t_in["input_ids"], t_mask, self._special[1])
        return self.criterion(hs, s_mask, ht, t_mask)

    @property
    def citation(self) -> str:
        return ("@inproceedings{huang2023optical,\n  title={Improving Cross-lingual Information Retrieval on "
                "Low-Resource Languages via Optimal Transport Distillation},\n  author={Huang, Zhiqi and Yu, Puxuan "
                "and Allan, James},\n  booktitle={WSDM},\n  year={2023}\n}")


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """``fastot distill``'s batch order for a sentence-transformers trainer: each epoch a seeded permutation cut
    into chunks of 64 batches sorted by the length of ``length_column`` (less padding), then the batches
    shuffled; a pure function of (seed, epoch), the trainer's ``seed``.

    Pass the class as ``SentenceTransformerTrainingArguments(batch_sampler=LengthGroupedBatchSampler)``; the
    lengths are those of the last text column, or of another with
    ``functools.partial(LengthGroupedBatchSampler, length_column="tgt")``. The trainer's ``generator`` is not
    used: the order is fastot's, a function of ``seed`` and the epoch.
    """

    def __init__(self, dataset, batch_size: int, drop_last: bool, valid_label_columns=None, generator=None,
                 seed: int = 0, length_column: str | None = None):
        super().__init__(range(len(dataset)), batch_size=batch_size, drop_last=drop_last,
                         valid_label_columns=valid_label_columns, generator=generator, seed=seed)
        labels = set(valid_label_columns or ())
        texts = [c for c in dataset.column_names if c not in labels]
        column = length_column or (texts[-1] if texts else None)
        if column not in dataset.column_names:
            raise ValueError(f"length_column: {column!r} is not a column of the dataset ({dataset.column_names})")
        self.lengths = [len(t) for t in dataset[column]]

    def _batches(self) -> list[list[int]]:
        batches = epoch_batches(self.lengths, self.batch_size, self.seed, getattr(self, "epoch", 0), True)
        if self.drop_last:  # the short batch is anywhere once the batches are shuffled
            batches = [b for b in batches if len(b) == self.batch_size]
        return batches

    def __iter__(self):
        yield from self._batches()

    def __len__(self) -> int:
        n = len(self.lengths)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


def bitext_evaluator(english: Sequence[str], target: Sequence[str], *, name: str = "bitext",
                     batch_size: int = 64, **kwargs) -> InformationRetrievalEvaluator:
    """sentence-transformers' ``InformationRetrievalEvaluator`` for cross-lingual retrieval on a bitext split:
    English sentence i is the query, its translation i the one relevant document among all of ``target``,
    the metrics ``fastot.ir.evaluate_bitext`` reports (MRR@10, Recall@1/10/50, nDCG@10; MAP@100). Document ids
    sort as their line numbers, so tied scores rank in fastot's order (the lower line first)."""
    if len(english) != len(target):
        raise ValueError(f"english and target must be aligned: {len(english)} and {len(target)} sentences")
    width = len(str(max(len(english) - 1, 0)))
    queries = {f"q{i:0{width}d}": t for i, t in enumerate(english)}
    corpus = {f"d{i:0{width}d}": t for i, t in enumerate(target)}
    relevant = {f"q{i:0{width}d}": {f"d{i:0{width}d}"} for i in range(len(english))}
    opts = dict(mrr_at_k=[10], ndcg_at_k=[10], accuracy_at_k=[1, 10], precision_recall_at_k=[1, 10, 50],
                map_at_k=[100], batch_size=batch_size, name=name, write_csv=False)
    opts.update(kwargs)
    return InformationRetrievalEvaluator(queries, corpus, relevant, **opts)


class CodeSwitchHook:
    """The code-switching installed on a :class:`~sentence_transformers.CrossEncoder` by :func:`code_switch`.

    ``collator`` is the :class:`fastot.CodeSwitchCollator` that switches each training batch; its
    ``pop_stats()`` / ``switch_ratios()`` give the statistics (and ``fastot.integrations.hf.CodeSwitchStatsCallback``
    logs them). :meth:`remove` restores the model's own ``preprocess``.
    """

    def __init__(self, model: CrossEncoder, collator: CodeSwitchCollator):
        self.model, self.collator = model, collator
        self._original = model.preprocess
        # A cached loss (CachedMultipleNegativesRankingLoss) tokenizes each mini-batch twice: once to embed it
        # without gradients, then again in the backward pass to replay it with them. The replay must see the same
        # switch, so the step each batch of pairs was switched at is remembered (the last 4,096 batches) and a
        # batch seen again is switched at its step again, without being counted twice.
        self._steps: collections.OrderedDict[int, int] = collections.OrderedDict()

        def preprocess(model_self, inputs, *args, **kwargs):
            enc = self._original(inputs, *args, **kwargs)
            # training batches of (query, passage) pairs only: not evaluation, and not the single texts that the
            # trainer's model card tokenizes for its statistics
            pairs = isinstance(inputs, (list, tuple)) and len(inputs) > 0 and all(
                isinstance(x, (list, tuple)) and len(x) == 2 for x in inputs)
            if not (model_self.training and pairs) or "input_ids" not in enc:
                return enc
            key = hash((tuple(map(tuple, inputs)), repr(args), repr(sorted(kwargs.items()))))
            step = self._steps.get(key)
            if step is None:  # a new batch: the collator's next step (its call count), remembered
                self._steps[key] = self.collator.calls
                if len(self._steps) > 4096:
                    self._steps.popitem(last=False)
                switched = self.collator.switch_encoded(enc)
            else:
                switched = self.collator.switch_encoded(enc, step=step, count=False)
            enc = dict(enc)
            for k in ("input_ids", "attention_mask", "token_type_ids"):
                if k in switched:
                    enc[k] = switched[k]
            if "token_type_ids" in enc and "token_type_ids" not in switched:
                enc["token_type_ids"] = torch.zeros_like(switched["input_ids"])
            return enc

        model.preprocess = types.MethodType(preprocess, model)

    # the statistics, so the hook itself can be given to CodeSwitchStatsCallback
    @property
    def calls(self) -> int:
        return self.collator.calls

    def pop_stats(self) -> dict[str, torch.Tensor]:
        return self.collator.pop_stats()

    def switch_ratios(self, stats) -> dict[str, float]:
        return self.collator.switch_ratios(stats)

    def remove(self) -> None:
        """Give the model its own ``preprocess`` back."""
        if self.model.__dict__.get("preprocess") is not None:
            del self.model.preprocess


def code_switch(model: CrossEncoder, switcher: CodeSwitcher, *, max_length: int | None = None,
                padding: str = "longest") -> CodeSwitchHook:
    """Code-switch the (query, passage) pairs a :class:`~sentence_transformers.CrossEncoder` trains on.

    Every sentence-transformers cross-encoder loss tokenizes its pairs through ``model.preprocess``; this wraps
    it so that, while the model is in training mode, tokenized (query, passage) pairs go through a
    :class:`fastot.CodeSwitchCollator` (its ``switch_encoded``): words switched on their token ids, draws a
    pure function of (``switcher.seed``, call number, row, word), each row cut ``longest_first`` to
    ``max_length`` after the switch (translations can be longer than their words). In eval mode (evaluators,
    ``predict``) the pairs pass unswitched. A loss that tokenizes a batch in several mini-batches switches each
    as its own call; the same pairs tokenized again (a cached loss's replay of a mini-batch in the backward pass)
    get the same switch, counted once. Under torchrun
    each process's rows are switched as its own rows of the global batch (``row_offset = rank * B``). The switch
    runs on the CPU, where sentence-transformers tokenizes; the loss moves the batch to the model's device.

    Args:
        model: the cross-encoder; its tokenizer must be the one ``switcher.lexicon`` was built with.
        switcher: a :class:`fastot.CodeSwitcher` (``p``, ``seed``, languages, backend).
        max_length: the cut after switching (default: the model's ``max_seq_length``, at most 512).
        padding: as :class:`fastot.CodeSwitchCollator` (default ``"longest"``: the batch as wide as its
            longest row, as sentence-transformers pads).

    Returns:
        a :class:`CodeSwitchHook` (statistics, ``remove()``).
    """
    if not isinstance(model, CrossEncoder):
        raise TypeError(f"model: expected a sentence_transformers CrossEncoder, got {type(model).__name__}")
    if isinstance(model.__dict__.get("preprocess"), types.MethodType):
        raise ValueError("model: code-switching is already installed on this cross-encoder (remove() it first)")
    tok = _tokenizer(model)
    if max_length is None:
        max_length = min(int(getattr(model, "max_seq_length", None) or getattr(tok, "model_max_length", 512)), 512)
    collator = CodeSwitchCollator(tok, switcher, max_length=max_length, padding=padding)
    return CodeSwitchHook(model, collator)
