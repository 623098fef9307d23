"""OT distillation training loop (OPTICAL): a frozen English teacher, a student trained on bitext.

For each parallel pair (English e, target-language s) the teacher encodes e, the student encodes s, and the
loss is :class:`fastot.OTDistillationLoss` between their token representations. Before and after training
(and every ``eval_every`` steps) the student is evaluated on cross-lingual retrieval over the held-out split.

Output folder::

    .fastot-distill    marks the folder as a run's: ``overwrite`` deletes run files only where it exists
    config.json        the configuration of the run
    log.jsonl          one line per optimizer step (loss, lr, pairs/s) and per evaluation
    checkpoint-<step>/ student (save_pretrained + tokenizer) and trainer.pt (optimizer, scheduler, scaler,
                       projection, RNG states, data position): ``resume`` continues from the newest one
    student/           the final student and its tokenizer
    metrics.json       retrieval metrics before and after, the final loss and the step count
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from dataclasses import dataclass

import torch

from ..collate import BitextCollator
from ..ir.data import read_bitext
from ..ir.metrics import DEFAULT_METRICS, _parse
from ..ir.retrieval import evaluate_bitext
from ..losses import COSTS, OBJECTIVES, OTDistillationLoss
from ._dist import DISTRIBUTED, ddp, fsdp_shard, full_state, load_full_optimizer, run_config, setup, shard, strip
from ._run import (
    apply_step,
    check_common,
    check_output,
    finish_run,
    init_output,
    load_trainer_state,
    load_weights,
    log,
    partial_accumulation,
    precision_of,
    read_trainer_state,
    reseed,
    save_checkpoint,
)
from .models import MINILM, load_encoder, load_tokenizer

_MARKER = ".fastot-distill"
_RUN_FILES = {_MARKER, "config.json", "log.jsonl", "metrics.json", "student"}
# Fields that fix the data order and the optimisation: a resumed run must agree on them.
_RESUME_KEYS = ("bitext", "lang", "train_split", "teacher", "student", "max_length", "batch_size", "grad_accum",
                "lr", "weight_decay", "warmup_steps", "epochs", "max_steps", "max_train_pairs", "eps", "max_iter",
                "cost", "objective", "debias", "include_special", "seed", "length_grouping", "max_grad_norm")


@dataclass
class DistillConfig:
    """Options of :func:`distill` (also the ``python -m fastot distill`` flags, with - for _)."""

    bitext: str  # folder with <split>.en / <split>.<lang> (MAFAND layout) or a TSV file "en<TAB>tgt"
    lang: str = "swa"
    output_dir: str = "runs/distill"
    train_split: str = "train"
    eval_split: str | None = "dev"  # None: no retrieval evaluation (a TSV bitext has no splits)
    eval_bitext: str | None = None  # a separate folder/TSV for the evaluation (default: ``bitext``)
    teacher: str = MINILM  # "minilm" (embedded pretrained), "tiny" (random, tests) or a local model folder
    student: str | None = None  # initialisation of the student; None = the teacher's
    max_length: int = 128  # tokens per sentence, both sides
    batch_size: int = 32  # pairs per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 50
    epochs: int = 1
    max_steps: int | None = None  # optimizer steps; None = ``epochs`` full passes
    max_train_pairs: int | None = None  # use only the first n pairs of the training split
    eps: float = 0.05  # OT loss: entropic regularisation (cosine cost)
    max_iter: int = 50  # OT loss: Sinkhorn iterations
    cost: str = "cosine"
    objective: str = "transport_cost"
    # the debiased Sinkhorn divergence of the entropic values (OTDistillationLoss(debias=True); objective unused)
    debias: bool = False
    include_special: bool = False  # give [CLS]/[SEP] mass in the OT marginals
    precision: str = "auto"  # auto: bf16 (fp16 without bf16) autocast on CUDA, fp32 on CPU
    seed: int = 0
    length_grouping: bool = True  # batches of similar length (less padding), in a seeded random order
    max_grad_norm: float | None = 1.0
    save_every: int = 200  # optimizer steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2  # the newest n checkpoints are kept (>= 1)
    eval_every: int | None = None  # optimizer steps between evaluations (None = before and after only)
    eval_max_pairs: int | None = None  # evaluate on the first n pairs of the split
    eval_batch_size: int = 128
    query_encoder: str = "student"  # who encodes the English queries at evaluation: "student" or "teacher"
    resume: bool = True  # continue from the newest checkpoint in output_dir when there is one
    overwrite: bool = False  # start again: delete the previous run's files in output_dir (resume is ignored)
    device: str | None = None  # default: cuda when available (cuda:LOCAL_RANK under torchrun), else cpu
    backend: str | None = None  # Sinkhorn backend of the loss (default: the fused one for the device)
    progress: bool = True
    metrics: tuple[str, ...] = DEFAULT_METRICS
    # Under torchrun ("auto": when WORLD_SIZE > 1) each process trains on its share of every micro-batch with
    # DistributedDataParallel: batch_size stays the global micro-batch (batch_size / world per process), so the
    # optimizer steps and the learning-rate schedule are those of one process. "off": train alone anyway.
    distributed: str = "auto"
    # With distributed processes: shard the student (and the loss's projection) with FSDP2 (fully_shard, one unit
    # per encoder layer) instead of replicating it with DDP: weights, gradients and optimizer state take 1/world
    # of the memory each. The frozen teacher stays replicated (see the README's multi-GPU section).
    fsdp: bool = False

    def check(self) -> None:
        check_common(self, ints=("max_length", "batch_size", "grad_accum", "epochs", "max_iter", "eval_batch_size",
                                 "keep_checkpoints"),
                     optional_ints=("max_steps", "max_train_pairs", "eval_every", "eval_max_pairs"),
                     nonneg_ints=("warmup_steps", "save_every", "seed"), positive_numbers=("lr", "eps"))
        if self.distributed not in DISTRIBUTED:
            raise ValueError(f"distributed: expected one of {DISTRIBUTED}, got {self.distributed!r}")
        if self.query_encoder not in ("student", "teacher"):
            raise ValueError(f"query_encoder: expected 'student' or 'teacher', got {self.query_encoder!r}")
        _parse(self.metrics)
        if self.cost not in COSTS:
            raise ValueError(f"cost: expected one of {COSTS}, got {self.cost!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective: expected one of {OBJECTIVES}, got {self.objective!r}")
        if not os.path.exists(self.bitext):
            raise FileNotFoundError(f"bitext: {self.bitext!r} does not exist")


def read_pairs(path: str, lang: str, split: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    """:func:`fastot.ir.read_bitext` without the pairs that have a blank side, the first ``limit``."""
    en, tgt = read_bitext(path, lang, split)
    keep = [i for i in range(len(en)) if en[i].strip() and tgt[i].strip()]  # a blank side has nothing to align
    if limit is not None:
        keep = keep[:limit]
    return [en[i] for i in keep], [tgt[i] for i in keep]


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, group: bool) -> list[list[int]]:
    """The micro-batches of one epoch, a pure function of (seed, epoch): a seeded permutation, cut into chunks
    of 64 batches sorted by length when ``group`` (so each batch pads little), then the batches shuffled."""
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group:
        chunk = 64 * batch_size
        order = [i for c in range(0, len(order), chunk)
                 for i in sorted(order[c:c + chunk], key=lambda i: lengths[i])]
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if group:
        rng.shuffle(batches)
    return batches


def distill(config: DistillConfig | None = None, *, teacher_model=None, student_model=None, teacher_tokenizer=None,
            student_tokenizer=None, criterion: OTDistillationLoss | None = None, **overrides) -> dict:
    """Train the student by OT distillation from the frozen teacher; returns the contents of metrics.json.

    Args:
        config: a :class:`DistillConfig` (or give its fields as keyword arguments).
        teacher_model, student_model: ``transformers`` encoders to use instead of loading ``config.teacher`` /
            ``config.student`` (the student is trained in place).
        teacher_tokenizer, student_tokenizer: their tokenizers (default: loaded for the models named in config).
        criterion: the loss (default ``OTDistillationLoss(eps, max_iter, cost, objective=...)`` from config);
            its parameters (a projection) are trained with the student.

    Returns:
        ``{"before": {metric: value}, "after": {...}, "steps": n, "final_loss": x, "output_dir": ...}``
        (no "before"/"after" when ``eval_split`` is None).
    """
    if teacher_model is not None and teacher_model is student_model:
        raise ValueError("teacher_model and student_model are the same object; the teacher is frozen, so pass a "
                         "copy (copy.deepcopy) as the student")
    if config is None:
        config = DistillConfig(**overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    cfg = config
    cfg.check()
    out = cfg.output_dir
    group, device = setup(cfg.distributed, cfg.device)
    try:
        return _distill(cfg, out, group, device, teacher_model, student_model, teacher_tokenizer, student_tokenizer,
                        criterion)
    finally:
        group.close()


class _StudentLoss(torch.nn.Module):
    """The student and the loss as one module (what DistributedDataParallel wraps: the projection's gradients
    are reduced with the student's)."""

    def __init__(self, student, criterion):
        super().__init__()
        self.student, self.criterion = student, criterion

    def forward(self, input_ids, attention_mask, s_mask, ht, t_mask, autocast):
        with autocast():
            hs = self.student(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.criterion(hs, s_mask, ht, t_mask)


def _distill(cfg, out, group, device, teacher_model, student_model, teacher_tokenizer, student_tokenizer, criterion):
    from tqdm.auto import tqdm  # noqa: PLC0415
    from transformers import get_linear_schedule_with_warmup  # noqa: PLC0415

    amp_dtype, use_scaler = precision_of(cfg.precision, device)

    # --- the output folder: resume, refuse, or start clean (never silently overwrite a run) ----------------
    # Only checks here; nothing is written until the models and the data have loaded.
    saved_cfg = run_config(cfg, group, use_scaler, "pairs", "student")
    ckpt, replace = check_output(out, _MARKER, "distill", cfg.resume, cfg.overwrite, _RESUME_KEYS, saved_cfg)
    if cfg.eval_split is not None and cfg.eval_bitext is None and os.path.isfile(cfg.bitext):
        raise ValueError("eval_bitext: a TSV bitext has no splits, so evaluating on it would test on the training "
                         "pairs; pass eval_bitext (a held-out folder or TSV) or eval_split=None")

    # --- models, data ---------------------------------------------------------------------------------------
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    en, tgt = read_pairs(cfg.bitext, cfg.lang, cfg.train_split, cfg.max_train_pairs)
    if not en:
        raise ValueError(f"bitext: no training pairs in {cfg.bitext!r} ({cfg.train_split}.{cfg.lang})")
    ev_en = ev_tgt = None
    if cfg.eval_split is not None:
        ev_en, ev_tgt = read_pairs(cfg.eval_bitext or cfg.bitext, cfg.lang, cfg.eval_split, cfg.eval_max_pairs)
    t_tok = teacher_tokenizer or load_tokenizer(cfg.teacher)
    s_tok = student_tokenizer or load_tokenizer(cfg.student or cfg.teacher)
    teacher = teacher_model if teacher_model is not None else load_encoder(cfg.teacher, seed=cfg.seed)
    student = student_model if student_model is not None else load_encoder(cfg.student or cfg.teacher,
                                                                            seed=cfg.seed)
    if ckpt is not None:  # the same architecture as at the start, with the checkpoint's weights
        load_weights(student, os.path.join(ckpt, "student"))
    # The frozen teacher is replicated: each process runs it forward on its own pairs (no gradient, no
    # optimizer state: its weights alone, 1.1 GB in bf16 for XLM-R large).
    teacher.to(device).eval().requires_grad_(False)
    student.to(device).train()
    if criterion is None:
        d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
        # different widths: a linear map from the student's to the teacher's, trained with the student
        proj = torch.nn.Linear(d_s, d_t) if d_s != d_t else None
        criterion = OTDistillationLoss(eps=cfg.eps, max_iter=cfg.max_iter, cost=cfg.cost,
                                       objective="sinkhorn" if cfg.debias else cfg.objective, debias=cfg.debias,
                                       projection=proj, backend=cfg.backend)
    criterion.to(device)
    st = read_trainer_state(ckpt) if ckpt is not None else None
    if st is not None:  # before any sharding: the projection's full weights
        criterion.load_state_dict(st["criterion"])
    step_module = _StudentLoss(student, criterion)
    if cfg.fsdp:  # parameters become DTensor shards: the optimizer is built on them below
        fsdp_shard(student, criterion)
    lengths = [len(s) for s in tgt]
    n_batches = math.ceil(len(en) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * n_batches / cfg.grad_accum)

    group.barrier()  # every process has checked the folder before the first one changes it
    if group.main:
        init_output(out, _MARKER, _RUN_FILES, replace, saved_cfg, "distill")
    group.barrier()

    params = [p for p in list(student.parameters()) + list(criterion.parameters()) if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # biases and LayerNorm weights
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    sched = get_linear_schedule_with_warmup(opt, min(cfg.warmup_steps, total_steps), total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    step, epoch, next_batch, result = 0, 0, 0, {"output_dir": out}
    amp_name = str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32"
    if ckpt is not None:
        load_trainer_state(ckpt, out, amp_name, opt, sched, scaler, rank=group.rank, st=st, load_optimizer=(
            (lambda sd: load_full_optimizer(step_module, opt, sd)) if cfg.fsdp else None))
        step, epoch, next_batch = st["step"], st["epoch"], st["next_batch"]
        result.update(st["result"])
    else:
        reseed(group.rank)
    model = step_module
    if group.on and not cfg.fsdp:
        # the encoder's pooler is never used (the loss reads the token states): DDP must not wait for its gradient
        ignore = [n for n, _ in step_module.named_parameters() if n.startswith("student.pooler.")]
        torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(step_module, ignore)
        model = ddp(step_module, device)

    def write_log(rec: dict) -> None:
        if group.main:
            log(out, rec)

    def evaluate(tag: str) -> dict:
        qm, qt = (teacher, t_tok) if cfg.query_encoder == "teacher" else (None, None)
        m = evaluate_bitext(student, s_tok, ev_en, ev_tgt, query_model=qm, query_tokenizer=qt,
                            metrics=cfg.metrics, batch_size=cfg.eval_batch_size, max_length=cfg.max_length,
                            device=device, progress=cfg.progress and group.main, distributed=group.on)
        write_log({"eval": tag, "step": step, **m})
        return m

    if ev_en is not None and "before" not in result:
        result["before"] = evaluate("before")

    def save() -> dict | None:
        """Write a checkpoint; returns the student's gathered weights under FSDP (else None)."""
        weights, opt_state, crit_state = None, opt.state_dict(), criterion.state_dict()
        if cfg.fsdp:  # gathered to rank 0 (a collective): the checkpoint of a sharded run is a whole one
            full, opt_state = full_state(step_module, opt)
            weights, crit_state = strip(full, "student"), strip(full, "criterion")
        if group.main:
            save_checkpoint(out, step, student, s_tok, "student",
                            {"optimizer": opt_state, "scheduler": sched.state_dict(),
                             "scaler": scaler.state_dict(), "criterion": crit_state, "step": step,
                             "epoch": epoch, "next_batch": next_batch, "result": result, "amp": amp_name,
                             "world_size": group.world, "fsdp": cfg.fsdp}, cfg.keep_checkpoints, model_state=weights)
        group.barrier()  # no process runs ahead of a checkpoint that is not complete
        return weights

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def optimizer_step() -> None:
        nonlocal step, loss_acc, pairs, t0
        # the one host sync of a step, for the log: the global batch's mean (process r holds W times its share)
        loss_acc = float(group.all_sum(torch.as_tensor(loss_acc, dtype=torch.float32, device=device))) / group.world
        apply_step(params, opt, sched, scaler, cfg.max_grad_norm)
        step += 1
        dt = time.perf_counter() - t0
        result["final_loss"] = loss_acc
        write_log({"step": step, "epoch": epoch, "loss": loss_acc, "lr": sched.get_last_lr()[0],
                   "pairs_per_s": pairs / dt if dt > 0 else None})
        bar.set_postfix(loss=f"{loss_acc:.4f}", refresh=False)
        bar.update(1)
        loss_acc, pairs = 0.0, 0
        if ev_en is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            result.setdefault("during", []).append({"step": step, **evaluate(f"step {step}")})
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            save()
        t0 = time.perf_counter()  # pairs/s counts training only, not evaluation or saving

    bar = tqdm(total=total_steps, initial=step, desc=f"distill {cfg.lang}", unit="step",
               disable=not (cfg.progress and group.main))
    micro, loss_acc, pairs, t0 = 0, 0.0, 0, time.perf_counter()
    collate = BitextCollator(s_tok, t_tok, max_length=cfg.max_length, include_special=cfg.include_special)
    while step < total_steps and epoch < (cfg.epochs if cfg.max_steps is None else 1 << 30):
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.length_grouping)
        while next_batch < len(batches) and step < total_steps:
            idx, weight = batches[next_batch], 1.0
            pairs += len(idx)  # the global micro-batch's pairs (pairs/s of the whole run)
            if group.on:  # this process's contiguous share of the global micro-batch
                idx = shard(idx, group.rank, group.world)
                if not idx:  # a last batch smaller than the world: run one pair with weight 0 (DDP needs a step)
                    idx, weight = batches[next_batch][:1], 0.0
            next_batch += 1
            batch = {k: v.to(device) for k, v in collate([(en[i], tgt[i]) for i in idx]).items()}
            t_mask, s_mask = batch["teacher_token_mask"], batch["token_mask"]
            with autocast(), torch.no_grad():
                ht = teacher(input_ids=batch["teacher_input_ids"],
                             attention_mask=batch["teacher_attention_mask"]).last_hidden_state
            # DDP reduces once per optimizer step; FSDP reduce-scatters every micro-batch (its gradients are shards)
            sync = (micro + 1) % cfg.grad_accum == 0 or not group.on or cfg.fsdp
            with contextlib.nullcontext() if sync else model.no_sync():
                loss = model(batch["input_ids"], batch["attention_mask"], s_mask, ht, t_mask, autocast)
                if group.on:
                    loss = loss * _share(criterion, s_mask, t_mask, weight, group)
                scaler.scale(loss / cfg.grad_accum).backward()
            loss_acc = loss_acc + loss.detach() / cfg.grad_accum  # on device: read once per optimizer step
            micro += 1
            if micro % cfg.grad_accum == 0:
                optimizer_step()
        if next_batch >= len(batches):
            epoch, next_batch = epoch + 1, 0
    if step < total_steps and (factor := partial_accumulation(params, micro, cfg.grad_accum)):
        loss_acc *= factor  # the data ran out inside an accumulation: applied as the mean of what it holds
        if not cfg.fsdp:  # the pending micro-batches ran under DDP's no_sync: reduce their gradients now
            group.average_gradients(params)
        optimizer_step()
    bar.close()

    result["steps"] = step
    if ev_en is not None:
        result["after"] = evaluate("after")
    weights = save()  # the final checkpoint's weights are the final model's
    if group.main:
        finish_run(out, student, s_tok, "student", result, model_state=weights)
    group.barrier()
    return result


def _share(criterion, s_mask, t_mask, weight: float, group) -> torch.Tensor:
    """The factor that makes this process's loss its share of the global micro-batch's: DDP averages the
    gradients over the W processes, so a local mean over n_r of the global N pairs is scaled by W n_r / N, and a
    sum-reduced loss by W. The pair count is all-reduced on the device (no host sync)."""
    if getattr(criterion, "reduction", "mean") != "mean":
        return torch.tensor(float(group.world) * weight, device=s_mask.device)
    n = ((s_mask.any(1) & t_mask.any(1)).sum() * weight).to(torch.float32)  # pairs with tokens on both sides
    total = group.all_sum(n.clone())
    return group.world * n / total.clamp_min(1)
