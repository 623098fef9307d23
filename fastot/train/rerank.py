"""Code-switched cross-encoder reranker training (Litschko et al. 2023) and cross-lingual reranking evaluation.

The reranker is an ``AutoModelForSequenceClassification`` with one logit, trained with BCE-with-logits on
English (query, passage) pairs, 1 positive : k negatives. Every batch is tokenized and code-switched on its
token ids by :class:`fastot.CodeSwitchCollator`: each word of query and passage is replaced, with probability
``p``, by its translation from a :class:`fastot.Lexicon` (one target language: bilingual code-switching;
several: a language drawn per word, multilingual). ``p = 0`` is the zero-shot baseline.

Training data: a triples TSV (``query<TAB>positive<TAB>negative``, MS MARCO style; the negatives of one
(query, positive) are grouped), or the English side of a bitext through
:func:`fastot.train.build_training_examples` (query = a sample of a sentence's content words, positive = the
sentence, BM25 hard negatives). The lexicon is a saved :class:`fastot.Lexicon` file or, by default, induced from
the training bitext (Dice, :meth:`fastot.Lexicon.from_bitext`).

Output folder::

    .fastot-rerank     marks the folder as a run's: ``overwrite`` deletes run files only where it exists
    config.json        the configuration
    lexicon.pt         the lexicon used for switching (:meth:`fastot.Lexicon.load`)
    log.jsonl          one line per optimizer step: loss, lr, pairs/s, switched-word ratio
    checkpoint-<step>/ reranker + trainer.pt (optimizer, scheduler, RNG, position); ``resume`` continues there
    reranker/          the final model and its tokenizer
    metrics.json       steps, final loss, switched-word ratio over the run

Evaluation (:func:`evaluate_reranking`): English keyword queries against the target-language side of a
held-out bitext split (:func:`bitext_eval_set`), a first stage (BM25, or a dense encoder such as the OT-distilled
student) gives the top ``depth`` candidates, the reranker reorders them; metrics from :mod:`fastot.ir.metrics`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..codeswitch import CodeSwitcher, Lexicon
from ..collate import CodeSwitchCollator
from ..ir import metrics as _metrics
from ..ir.data import _check_file, _read_lines, read_bitext
from ..lexicons import induce_from_bitext
from ._dist import (
    DISTRIBUTED,
    ddp,
    fsdp_shard,
    full_state,
    load_full_optimizer,
    run_config,
    setup,
    shard,
    shard_start,
)
from ._run import (
    apply_step,
    check_common,
    check_output,
    finish_run,
    init_output,
    latest_checkpoint,
    load_trainer_state,
    load_weights,
    log,
    partial_accumulation,
    precision_of,
    reseed,
    save_checkpoint,
)
from .distill import epoch_batches
from .models import MINILM, load_cross_encoder, load_tokenizer
from .pairs import TrainingExample, build_training_examples, spread_queries

RERANK_METRICS = ("mrr@10", "recall@50", "map", "ndcg@10")
_MARKER = ".fastot-rerank"
_RUN_FILES = {_MARKER, "config.json", "log.jsonl", "metrics.json", "reranker", "lexicon.pt"}
_RESUME_KEYS = ("bitext", "lang", "train_split", "triples", "queries", "collection", "qrels", "lexicon",
                "lexicon_bitext", "model", "p", "n_negatives", "negatives", "query_words", "max_train_queries",
                "max_length", "batch_size", "grad_accum", "lr", "weight_decay", "warmup_steps", "epochs", "max_steps",
                "seed", "max_grad_norm", "switch_warmup_steps", "head_bias")


@dataclass
class RerankConfig:
    """Options of :func:`train_reranker` (also the ``python -m fastot rerank`` flags, with - for _)."""

    bitext: str | None = None  # folder (MAFAND layout) or TSV: English side -> training pairs; lexicon induction
    lang: str = "swa"  # target language(s) of the switch: "swa" (bilingual) or "swa,hau" (multilingual)
    output_dir: str = "runs/rerank"
    train_split: str = "train"  # split(s) of ``bitext`` for the training pairs, comma-separated to join several
    triples: str | None = None  # a training triples TSV instead of pairs built from ``bitext``
    queries: str | None = None  # or IR files: queries TSV, collection TSV/JSONL and TREC qrels (BM25 negatives)
    collection: str | None = None
    qrels: str | None = None
    lexicon: str | None = None  # a saved fastot Lexicon file; default: induced from ``bitext`` (train split)
    lexicon_bitext: tuple[str, ...] = ()  # "lang=path" bitexts for the induction of other languages than ``bitext``'s
    lexicon_split: str = "train"  # split the lexicon is induced from
    model: str = MINILM  # "minilm" (embedded pretrained encoder + new head), "tiny" (random, tests) or a folder
    p: float = 0.5  # code-switching probability per word (0 = zero-shot English training)
    switch_warmup_steps: int = 0  # p ramps linearly from 0 to ``p`` over these optimizer steps (0 = ``p`` from the start)
    head_bias: str = "prior"  # a new run sets the output bias to the log-odds of the positive share; "keep": as loaded
    n_negatives: int = 4
    negatives: str = "bm25"  # hard negatives of the bitext builder: "bm25" or "random"
    query_words: tuple[int, int] = (3, 6)  # content words per built query (min, max)
    max_train_queries: int | None = None  # use only the first n training queries
    max_length: int = 128  # tokens per (query, passage) pair after switching
    batch_size: int = 8  # queries per micro-batch (each with 1 + n_negatives passages)
    # Forward each micro-batch as this many length-sorted chunks, each padded to its own longest row: the same
    # loss and gradient up to rounding (dropout draws differ), less padding: 4 made a CPU step 1.65x faster at
    # max_length 96 and 2.03x at 128 (bench.rerank_step). 1: one forward per micro-batch (earlier runs' numerics).
    length_chunks: int = 1
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 30
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; None = ``epochs`` full passes
    precision: str = "auto"  # auto: bf16 (fp16 without bf16) autocast on CUDA, fp32 on CPU
    seed: int = 0  # model head, data order and the switch's random stream
    max_grad_norm: float | None = 1.0
    save_every: int = 200  # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 1
    resume: bool = True
    overwrite: bool = False
    device: str | None = None
    backend: str | None = None  # code-switch backend (default: the fastest for the device)
    progress: bool = True
    # Under torchrun ("auto": when WORLD_SIZE > 1) each process trains on its share of every micro-batch's queries
    # with DistributedDataParallel; batch_size stays the global micro-batch, so steps and schedule are those of one
    # process, and each pair switches as it would in the whole batch. "off": train alone anyway (the sweep's cells).
    distributed: str = "auto"
    fsdp: bool = False  # under torchrun: shard the reranker with FSDP2 (fully_shard per layer) instead of DDP

    @property
    def languages(self) -> list[str]:
        return [s.strip() for s in self.lang.split(",") if s.strip()]

    def check(self, need_examples: bool = True, need_lexicon: bool = True) -> None:
        """Validate the options; ``need_examples`` / ``need_lexicon``: also that the sources of the training
        data / of the lexicon exist (not needed when they are passed in, or resumed)."""
        check_common(self, ints=("n_negatives", "max_length", "batch_size", "grad_accum", "epochs",
                                 "keep_checkpoints", "length_chunks"),
                     optional_ints=("max_steps", "max_train_queries"),
                     nonneg_ints=("warmup_steps", "save_every", "seed", "switch_warmup_steps"))
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0 <= self.p <= 1:
            raise ValueError(f"p: expected a probability in [0, 1], got {self.p!r}")
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed: expected one of {DISTRIBUTED}, got {self.distributed!r}")
        if self.head_bias not in ("keep", "prior"):
            raise ValueError(f"head_bias: expected 'keep' or 'prior', got {self.head_bias!r}")
        if self.negatives not in ("bm25", "random"):
            raise ValueError(f"negatives: expected 'bm25' or 'random', got {self.negatives!r}")
        langs = self.languages
        if not langs or len(set(langs)) != len(langs):
            raise ValueError(f"lang: expected one or more distinct comma-separated language codes, got {self.lang!r}")
        for name in ("bitext", "triples", "lexicon", "queries", "collection", "qrels"):
            path = getattr(self, name)
            if path is not None and not os.path.exists(path):
                raise FileNotFoundError(f"{name}: {path!r} does not exist")
        other = _lexicon_sources(self)  # raises on malformed entries
        ir = [self.queries, self.collection, self.qrels]
        if any(ir) and not all(ir):
            raise ValueError("queries, collection, qrels: give all three IR files or none")
        if need_examples and self.bitext is None and self.triples is None and not all(ir):
            raise ValueError("bitext: give a bitext (training pairs from its English side), triples, or "
                             "queries + collection + qrels")
        if need_lexicon and self.lexicon is None:
            for lang in langs:
                if lang in other:
                    continue
                if self.bitext is None:
                    raise ValueError(f"lexicon: no lexicon file and no bitext to induce one for {lang!r}; pass "
                                     "lexicon, bitext or lexicon_bitext 'lang=path'")
                if os.path.isdir(self.bitext) and not os.path.exists(
                        os.path.join(self.bitext, f"{self.lexicon_split}.{lang}")):
                    raise ValueError(f"lexicon_bitext: {self.bitext!r} has no {self.lexicon_split}.{lang} to induce "
                                     f"the {lang!r} lexicon from; pass lexicon_bitext '{lang}=path'")


def _lexicon_sources(cfg: RerankConfig) -> dict[str, str]:
    entries = (cfg.lexicon_bitext,) if isinstance(cfg.lexicon_bitext, str) else cfg.lexicon_bitext
    out = {}
    for e in entries:
        lang, sep, path = str(e).partition("=")
        if not sep or not lang.strip() or not path.strip():
            raise ValueError(f"lexicon_bitext: expected 'lang=path' entries, got {e!r}")
        if not os.path.exists(path.strip()):
            raise FileNotFoundError(f"lexicon_bitext: {path.strip()!r} does not exist")
        out[lang.strip()] = path.strip()
    return out


def build_lexicon(cfg: RerankConfig, tokenizer) -> Lexicon:
    """The switch's lexicon: ``cfg.lexicon`` loaded, or Dice translations induced per language from its bitext
    (``lexicon_bitext`` entries, else ``cfg.bitext``), packed into one lexicon of ``cfg.languages``."""
    if cfg.lexicon is not None:
        lex = Lexicon.load(cfg.lexicon, tokenizer)
        missing = [lang for lang in cfg.languages if lang not in lex.languages]
        if missing:
            raise ValueError(f"lang: {missing} not in the lexicon {cfg.lexicon!r} (languages {lex.languages})")
        return lex
    sources = _lexicon_sources(cfg)
    triples = []
    for lang in cfg.languages:
        en, tgt = read_bitext(sources.get(lang, cfg.bitext), lang, cfg.lexicon_split)
        triples += [(s, t, lang) for s, t, _ in induce_from_bitext(en, tgt)]
    return Lexicon.from_pairs(triples, tokenizer, languages=cfg.languages)


def training_examples(cfg: RerankConfig) -> list[TrainingExample]:
    """The training queries of ``cfg``: from ``triples`` (negatives of a (query, positive) grouped, at most
    ``n_negatives``); from IR files (each judged query with its first relevant document as the positive and
    ``n_negatives`` sampled from its BM25 top ``3 * n_negatives + 10`` unjudged-or-irrelevant documents); or built
    from the English side of ``bitext`` (``train_split``; comma-separated splits each build their own examples,
    BM25 negatives from within the split, and are interleaved one example from each in turn before the cut to
    ``max_train_queries``: equal shares per domain)."""
    if cfg.triples is None and cfg.queries is not None:
        from ..ir.bm25 import BM25  # noqa: PLC0415
        from ..ir.data import read_collection, read_qrels, read_queries  # noqa: PLC0415

        queries, coll, qrels = read_queries(cfg.queries), read_collection(cfg.collection), read_qrels(cfg.qrels)
        ids = list(coll)
        texts = [coll[d] for d in ids]
        judged = [(q, [d for d, g in qrels[q].items() if g > 0 and d in coll]) for q in qrels if q in queries]
        judged = [(q, rel) for q, rel in judged if rel][:cfg.max_train_queries]
        if not judged:
            raise ValueError(f"qrels: no query of {cfg.queries!r} has a relevant document in {cfg.collection!r}")
        top, _ = BM25().index(texts).search([queries[q] for q, _ in judged], k=min(len(ids), 3 * cfg.n_negatives + 10))
        out = []
        for i, ((q, rel), row) in enumerate(zip(judged, top.tolist())):
            rng = random.Random(f"fastot-ir-negatives-{cfg.seed}-{q}")
            pool = [j for j in row if qrels[q].get(ids[j], 0) <= 0]
            negs = rng.sample(pool, min(cfg.n_negatives, len(pool)))
            out.append(TrainingExample(queries[q], coll[rel[0]], tuple(texts[j] for j in negs), i))
        return out
    if cfg.triples is not None:
        from ..ir.data import read_triples  # noqa: PLC0415

        groups: dict[tuple[str, str], list[str]] = {}
        for q, pos, neg in read_triples(cfg.triples):
            negs = groups.setdefault((q, pos), [])
            if len(negs) < cfg.n_negatives and neg not in negs:
                negs.append(neg)
        out = [TrainingExample(q, pos, tuple(negs), i) for i, ((q, pos), negs) in enumerate(groups.items())]
        return out[:cfg.max_train_queries]
    per_split: list[list[TrainingExample]] = []
    for split in (s.strip() for s in cfg.train_split.split(",") if s.strip()):
        if os.path.isdir(cfg.bitext):  # only the English side is used
            en = [e for e in _read_lines(_check_file(os.path.join(cfg.bitext, f"{split}.en"), "train_split"))
                  if e.strip()]
        else:
            en = [e for e, _ in zip(*read_bitext(cfg.bitext, cfg.languages[0], split)) if e.strip()]
        per_split.append(build_training_examples(en, n_negatives=cfg.n_negatives, query_words=tuple(cfg.query_words),
                                                 negatives=cfg.negatives, seed=cfg.seed,
                                                 max_examples=cfg.max_train_queries))
    # several splits (domains): each its own negatives, taken in turn, so a capped or step-limited run sees the
    # domains in equal shares whatever their sizes
    mixed = [ex for group in itertools.zip_longest(*per_split) for ex in group if ex is not None]
    return mixed[:cfg.max_train_queries]


def train_reranker(config: RerankConfig | None = None, *, reranker=None, tokenizer=None, lexicon: Lexicon | None = None,
                   examples: Sequence[TrainingExample] | None = None, **overrides) -> dict:
    """Train a code-switched cross-encoder; returns the contents of metrics.json.

    Args:
        config: a :class:`RerankConfig` (or its fields as keyword arguments).
        reranker, tokenizer: a sequence-classification model with one logit and its tokenizer, instead of
            ``config.model`` (trained in place).
        lexicon: the switch's lexicon instead of ``config.lexicon`` / induction (built with ``tokenizer``).
        examples: training examples instead of ``config.triples`` / ``config.bitext``.
    """
    cfg = RerankConfig(**overrides) if config is None else dataclasses.replace(config, **overrides)
    resuming = cfg.resume and not cfg.overwrite and latest_checkpoint(cfg.output_dir) is not None
    cfg.check(need_examples=examples is None, need_lexicon=lexicon is None and not resuming)  # resumed: lexicon.pt
    group, device = setup(cfg.distributed, cfg.device)
    try:
        return _train(cfg, group, device, reranker, tokenizer, lexicon, examples)
    finally:
        group.close()


def _train(cfg, group, device, reranker, tokenizer, lexicon, examples) -> dict:
    from tqdm.auto import tqdm  # noqa: PLC0415
    from transformers import get_linear_schedule_with_warmup  # noqa: PLC0415

    out = cfg.output_dir
    amp_dtype, use_scaler = precision_of(cfg.precision, device)
    amp_name = str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32"
    saved_cfg = run_config(cfg, group, use_scaler, "queries", "reranker")
    ckpt, replace = check_output(out, _MARKER, "rerank", cfg.resume, cfg.overwrite, _RESUME_KEYS, saved_cfg)

    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    tok = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    model = reranker if reranker is not None else load_cross_encoder(cfg.model, seed=cfg.seed)
    if ckpt is not None:
        load_weights(model, os.path.join(ckpt, "reranker"))
        lexicon = Lexicon.load(os.path.join(out, "lexicon.pt")) if lexicon is None else lexicon
    examples = list(examples) if examples is not None else training_examples(cfg)
    if not examples:
        raise ValueError("training data: no training queries (check bitext/train_split or triples)")
    lexicon = lexicon if lexicon is not None else build_lexicon(cfg, tok)
    share = len(examples) / sum(1 + len(ex.negatives) for ex in examples)  # positives among all pairs
    if ckpt is None and cfg.head_bias == "prior":
        _set_output_bias(model, math.log(share / (1 - share)))
    switcher = CodeSwitcher(lexicon, p=cfg.p, seed=cfg.seed, languages=cfg.languages, backend=cfg.backend)
    collator = CodeSwitchCollator(tok, switcher, max_length=cfg.max_length, device=device, stats="batch")
    model.to(device).train()
    n_batches = math.ceil(len(examples) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * n_batches / cfg.grad_accum)

    group.barrier()  # every process has checked the folder before the first one changes it
    if group.main:
        init_output(out, _MARKER, _RUN_FILES, replace, saved_cfg, "rerank")
        if ckpt is None:
            lexicon.save(os.path.join(out, "lexicon.pt"))
    group.barrier()
    if cfg.fsdp:  # parameters become DTensor shards: the optimizer is built on them below
        fsdp_shard(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
                             {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, min(cfg.warmup_steps, total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    step, epoch, next_batch, micro = 0, 0, 0, 0
    result: dict = {"output_dir": out, "train_queries": len(examples), "lexicon_keys": lexicon.n_keys}
    if ckpt is not None:
        st = load_trainer_state(ckpt, out, amp_name, opt, sched, scaler, rank=group.rank, load_optimizer=(
            (lambda sd: load_full_optimizer(model, opt, sd)) if cfg.fsdp else None))
        step, epoch, next_batch, micro = st["step"], st["epoch"], st["next_batch"], st["micro"]
        result.update(st["result"])
    else:
        reseed(group.rank)
    net = ddp(model, device) if group.on and not cfg.fsdp else model

    def save() -> dict | None:
        """Write a checkpoint; returns the gathered weights under FSDP (else None)."""
        weights, opt_state = None, opt.state_dict()
        if cfg.fsdp:  # gathered to rank 0 (a collective): the checkpoint of a sharded run is a whole one
            weights, opt_state = full_state(model, opt)
        if group.main:
            save_checkpoint(out, step, model, tok, "reranker",
                            {"optimizer": opt_state, "scheduler": sched.state_dict(),
                             "scaler": scaler.state_dict(), "step": step, "epoch": epoch, "next_batch": next_batch,
                             "micro": micro, "result": result, "amp": amp_name, "world_size": group.world,
                             "run_stats": {k: v.cpu() for k, v in run_stats.items()}, "fsdp": cfg.fsdp},
                            cfg.keep_checkpoints, model_state=weights)
        group.barrier()
        return weights

    bce, bce_sum = torch.nn.BCEWithLogitsLoss(), torch.nn.BCEWithLogitsLoss(reduction="sum")
    zero = torch.zeros((), dtype=torch.long, device=device)
    stats = {"words": zero, "switched": zero, "switched_per_language": torch.zeros(len(cfg.languages), dtype=torch.long,
                                                                                   device=device)}
    run_stats = {k: v.clone() for k, v in stats.items()}  # switched words over the whole run
    if ckpt is not None:
        run_stats = {k: v.to(device) for k, v in st["run_stats"].items()}
    loss_acc, pairs, t0 = 0.0, 0, time.perf_counter()
    bar = tqdm(total=total_steps, initial=step, desc=f"rerank p={cfg.p:g}", unit="step",
               disable=not (cfg.progress and group.main))

    def optimizer_step() -> None:
        nonlocal step, loss_acc, pairs, t0, stats
        if group.on:  # the global batch's loss and switch counts, for the log (one reduction of 2 + n_lang numbers)
            flat = group.all_sum(torch.cat([torch.as_tensor(loss_acc, dtype=torch.float64, device=device).reshape(1),
                                            stats["words"].reshape(1), stats["switched"].reshape(1),
                                            stats["switched_per_language"]]).double())
            loss_acc = flat[0] / group.world
            stats = {"words": flat[1].long(), "switched": flat[2].long(), "switched_per_language": flat[3:].long()}
        loss_acc = float(loss_acc)  # the one host sync of a step
        apply_step(params, opt, sched, scaler, cfg.max_grad_norm)
        step += 1
        dt = time.perf_counter() - t0
        ratio = collator.switch_ratios(stats)
        for k in run_stats:
            run_stats[k] += stats[k]
        result["final_loss"] = loss_acc
        if group.main:
            log(out, {"step": step, "epoch": epoch, "loss": loss_acc, "lr": sched.get_last_lr()[0],
                      "pairs_per_s": pairs / dt if dt > 0 else None, "switched": ratio})
        bar.set_postfix(loss=f"{loss_acc:.4f}", switched=f"{ratio['overall']:.2f}", refresh=False)
        bar.update(1)
        loss_acc, pairs, stats = 0.0, 0, {k: torch.zeros_like(v) for k, v in stats.items()}
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            save()
        t0 = time.perf_counter()

    def items_of(idx) -> list:
        items = []
        for i in idx:
            ex = examples[i]
            items.append((ex.query, ex.positive, 1.0))
            items.extend((ex.query, neg, 0.0) for neg in ex.negatives)
        return items

    while step < total_steps and epoch < (cfg.epochs if cfg.max_steps is None else 1 << 30):
        batches = epoch_batches([0] * len(examples), cfg.batch_size, cfg.seed, epoch, group=False)
        while next_batch < len(batches) and step < total_steps:
            idx, weight, offset = batches[next_batch], 1.0, 0
            n_global = sum(1 + len(examples[i].negatives) for i in idx)  # pairs in the global micro-batch
            if group.on:  # this process's queries; its pairs switch as rows offset.. of the global batch
                mine = shard(idx, group.rank, group.world)
                offset = sum(1 + len(examples[i].negatives) for i in idx[:shard_start(len(idx), group.rank,
                                                                                       group.world)])
                idx, weight = (mine, 1.0) if mine else (idx[:1], 0.0)  # none left: one query with weight 0
            items = items_of(idx)
            next_batch += 1
            p_now = cfg.p * min(1.0, step / cfg.switch_warmup_steps) if cfg.switch_warmup_steps else None
            # the switch's stream: a pure function of (seed, micro-batch, row in the global micro-batch) and p
            batch = collator(items, step=micro, p=p_now, row_offset=offset)
            if weight:
                for k in stats:
                    stats[k] = stats[k] + batch["cs_stats"][k]
            sync = (micro + 1) % cfg.grad_accum == 0 or cfg.fsdp  # FSDP reduce-scatters every backward
            parts = _length_chunks(batch, cfg.length_chunks)
            for j, part in enumerate(parts):
                # DDP reduces the gradients once per optimizer step: at the last chunk of its last micro-batch
                last = sync and j == len(parts) - 1
                with contextlib.nullcontext() if last or not group.on or cfg.fsdp else net.no_sync():
                    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                        logits = net(input_ids=part["input_ids"], attention_mask=part["attention_mask"],
                                     token_type_ids=part.get("token_type_ids")).logits.squeeze(-1)
                    if group.on:  # this process's share of the global mean (DDP averages over the W processes)
                        loss = bce_sum(logits.float(), part["labels"]) * (weight * group.world / n_global)
                    else:  # the micro-batch's mean BCE (over its chunks: their sums over its pairs)
                        loss = (bce(logits.float(), part["labels"]) if cfg.length_chunks == 1 else
                                bce_sum(logits.float(), part["labels"]) / len(items))
                    scaler.scale(loss / cfg.grad_accum).backward()
                loss_acc = loss_acc + loss.detach() / cfg.grad_accum
            pairs += n_global  # the global micro-batch's pairs (pairs/s of the whole run)
            micro += 1
            if micro % cfg.grad_accum == 0:
                optimizer_step()
        if next_batch >= len(batches):
            epoch, next_batch = epoch + 1, 0
    if step < total_steps and (factor := partial_accumulation(params, micro, cfg.grad_accum)):
        loss_acc *= factor  # a last partial accumulation, applied as its mean
        if not cfg.fsdp:  # its micro-batches ran under DDP's no_sync: reduce their gradients now
            group.average_gradients(params)
        optimizer_step()
    bar.close()
    result["steps"] = step
    words, switched = int(run_stats["words"]), int(run_stats["switched"])
    result["switched_counts"] = {"words": words, "switched": switched}
    result["switched_ratio"] = switched / words if words else 0.0
    if group.main:  # the log is rank 0's
        result.update(prior_plateau(_logged_losses(out), share))
        if result["stuck_on_prior"]:
            warnings.warn(f"rerank p={cfg.p:g} seed={cfg.seed}: the training loss ended on the prior (mean "
                          f"{result['tail_loss']:.3f} over the last {result['tail_steps']} steps; always predicting "
                          f"the {share:.2f} positive share gives {result['prior_loss']:.3f}): the reranker learnt no "
                          f"ranking; see {out}/log.jsonl", RuntimeWarning, stacklevel=3)
    weights = save()  # the final checkpoint's weights are the final model's
    if group.main:
        finish_run(out, model, tok, "reranker", result, model_state=weights)
    group.barrier()
    return result


def _length_chunks(batch: dict, chunks: int) -> list[dict]:
    """``batch`` as ``chunks`` parts of rows of similar length (sorted by length), each cut to its own longest
    row; the batch itself when ``chunks`` is 1. The model sees fewer padding tokens: a code-switched batch's
    rows are far shorter on average than its longest (``python -m bench.rerank_step`` prints both)."""
    if chunks <= 1:
        return [batch]
    mask = batch["attention_mask"]
    used = mask.cumsum(1).argmax(1) + 1  # last real column of each row (rows need not be left-aligned)
    order = used.argsort(stable=True)
    widths = used[order].tolist()  # the one host sync; sorted, so a chunk's width is its last row's
    parts, start = [], 0
    for idx in order.tensor_split(min(chunks, mask.shape[0])):
        start += len(idx)
        parts.append({k: (v[idx, :widths[start - 1]] if v.dim() == 2 else v[idx]) for k, v in batch.items()
                      if k in ("input_ids", "attention_mask", "token_type_ids", "labels")})
    return parts


def _set_output_bias(model, value: float) -> None:
    """Set the bias of the model's one-logit output layer (the last ``Linear`` with one output)."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == 1 and m.bias is not None]
    if not last:
        raise ValueError("head_bias: the reranker has no one-output Linear layer with a bias to set")
    with torch.no_grad():
        last[-1].bias.fill_(value)


def _logged_losses(out: str) -> list[float]:
    path = os.path.join(out, "log.jsonl")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as fh:
        return [float(json.loads(line)["loss"]) for line in fh if line.strip()]


def prior_plateau(losses: Sequence[float], positive_share: float, *, tail: float = 0.2, min_steps: int = 10,
                  tolerance: float = 0.05) -> dict:
    """Whether a BCE training run ended on the prior: the mean loss of its last ``tail`` share of steps (at least
    ``min_steps``) is within ``tolerance`` (relative) of, or above, the loss of always predicting the positive
    share ``positive_share``, H(pi) = -pi log pi - (1 - pi) log(1 - pi) (0.500 for 1 positive : 4 negatives).

    Returns ``{"prior_loss", "tail_loss", "tail_steps", "stuck_on_prior"}``; with fewer than ``2 * min_steps``
    steps there is no verdict (``stuck_on_prior`` and ``tail_loss`` None).
    """
    if not 0 < positive_share < 1:
        raise ValueError(f"positive_share: expected a number in (0, 1), got {positive_share!r}")
    pi = float(positive_share)
    prior = -(pi * math.log(pi) + (1 - pi) * math.log(1 - pi))
    n = len(losses)
    if n < 2 * min_steps:
        return {"prior_loss": prior, "tail_loss": None, "tail_steps": 0, "stuck_on_prior": None}
    w = max(min_steps, round(tail * n))
    mean = sum(losses[-w:]) / w
    return {"prior_loss": prior, "tail_loss": mean, "tail_steps": w, "stuck_on_prior": bool(mean >= (1 - tolerance) * prior)}


# --- evaluation ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalSet:
    """English queries, target-language documents, and each query's one relevant document (an index)."""

    name: str
    queries: list[str]
    documents: list[str]
    relevant: list[int]


def bitext_eval_set(path: str, lang: str, split: str = "dev", *, name: str | None = None,
                    max_queries: int | None = None, query_words: tuple[int, int] = (3, 6), seed: int = 12345,
                    max_documents: int | None = None) -> EvalSet:
    """A cross-lingual reranking set from a held-out bitext split: the documents are all target-language
    sentences of the split (the first ``max_documents``), the queries keyword samples (:func:`sample_query`,
    its own seed) of the English sentences, at most ``max_queries`` of them spread evenly over the split; a
    query's one relevant document is its sentence's translation."""
    en, tgt = read_bitext(path, lang, split)
    keep = [i for i in range(len(en)) if en[i].strip() and tgt[i].strip()][:max_documents]
    docs = [tgt[i] for i in keep]
    cand = spread_queries([en[i] for i in keep], ids=keep, seed=seed, query_words=query_words,
                          max_queries=max_queries)
    if not cand:
        raise ValueError(f"{path!r} {split}: no sentence with enough content words for a query")
    return EvalSet(name or f"{os.path.basename(os.path.normpath(path))}-{split}", [q for _, q in cand], docs,
                   [j for j, _ in cand])


def first_stage(method, queries: Sequence[str], documents: Sequence[str], depth: int, *, tokenizer=None,
                batch_size: int = 128, max_length: int = 128, device=None, progress: bool = False) -> torch.Tensor:
    """Top-``depth`` candidates [Q, min(depth, D)] (document indices, best first). ``method``: "bm25" (on the
    raw text: cross-lingually it matches names, numbers and shared words), or a dense encoder (a model folder
    such as the OT-distilled student, or a loaded ``AutoModel``): cosine of mean-pooled embeddings."""
    k = min(depth, len(documents))
    if method == "bm25":
        from ..ir.bm25 import BM25  # noqa: PLC0415

        idx, _ = BM25().index(list(documents)).search(list(queries), k=k)
        return idx
    from ..ir.retrieval import encode  # noqa: PLC0415
    from .models import load_encoder  # noqa: PLC0415

    model = load_encoder(method) if isinstance(method, str) else method
    tok = tokenizer if tokenizer is not None else load_tokenizer(method if isinstance(method, str) else None)
    if device is not None:
        model.to(device)
    kw = dict(batch_size=batch_size, max_length=max_length, device=device, progress=progress)
    q = encode(model, tok, list(queries), desc="queries", **kw)
    d = encode(model, tok, list(documents), desc="documents", **kw)
    return (q @ d.T).topk(k, dim=1).indices


@torch.inference_mode()
def score_pairs(model, tokenizer, pairs: Sequence[tuple[str, str]], *, batch_size: int = 64, max_length: int = 128,
                device=None, progress: bool = False, desc: str = "rerank") -> torch.Tensor:
    """The reranker's logit for each (query, document) pair, float32 [n] on the CPU; pairs are batched by
    length (less padding), the output keeps the input order."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    out = torch.empty(len(pairs), dtype=torch.float32)
    starts = range(0, len(pairs), batch_size)
    if progress:
        from tqdm.auto import tqdm  # noqa: PLC0415

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    amp = precision_of("auto", device)[0]  # bf16 (fp16 without bf16) on CUDA, fp32 on CPU
    try:
        for s in starts:
            idx = order[s:s + batch_size]
            enc = tokenizer([pairs[i][0] for i in idx], [pairs[i][1] for i in idx], padding=True,
                            truncation="longest_first", max_length=max_length, return_tensors="pt").to(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                out[idx] = model(**enc).logits[:, 0].float().cpu()
    finally:
        model.train(was_training)
    return out


def evaluate_reranking(model, tokenizer, eval_set: EvalSet, candidates: torch.Tensor, *,
                       metrics: Sequence[str] = RERANK_METRICS, batch_size: int = 64, max_length: int = 128,
                       device=None, progress: bool = False, per_query: bool = False) -> dict[str, dict]:
    """Metrics of the first-stage ranking ``candidates`` [Q, K] and of the reranker's reordering of it.

    A relevant document outside the candidates is not retrieved (it adds 0 to every metric). Reranker ties keep
    the first-stage order. Returns ``{"first_stage": {metric: mean}, "reranked": {...}}``; with ``per_query``
    also ``"per_query": {"first_stage": {metric: [Q] list}, "reranked": {...}}`` (for paired tests).
    """
    Q, K = candidates.shape
    if Q != len(eval_set.queries):
        raise ValueError(f"candidates: expected {len(eval_set.queries)} rows (one per query), got {Q}")
    cand = candidates.tolist()
    pairs = [(eval_set.queries[q], eval_set.documents[d]) for q in range(Q) for d in cand[q]]
    scores = score_pairs(model, tokenizer, pairs, batch_size=batch_size, max_length=max_length, device=device,
                         progress=progress, desc=f"rerank {eval_set.name}").view(Q, K)
    order = scores.argsort(dim=1, descending=True, stable=True)
    reranked = candidates.gather(1, order)
    rel = torch.tensor(eval_set.relevant, dtype=torch.long)[:, None]
    out: dict[str, dict] = {}
    each: dict[str, dict[str, list[float]]] = {}
    for name, ranking in (("first_stage", candidates), ("reranked", reranked)):
        hit = ranking == rel
        ranks = torch.where(hit.any(1), hit.float().argmax(1).double() + 1, torch.full((Q,), math.inf,
                                                                                      dtype=torch.float64))
        per_q = _metrics.from_ranks(ranks[:, None], torch.ones(Q, 1), metrics)
        out[name] = {k: float(v.mean()) for k, v in per_q.items()}
        each[name] = {k: v.tolist() for k, v in per_q.items()}
    if per_query:
        out["per_query"] = each
    return out
