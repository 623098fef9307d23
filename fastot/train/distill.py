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

import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass

import torch

from ..lexicons import read_bitext
from ..losses import OTDistillationLoss, content_mask
from ..metrics import DEFAULT_METRICS, _parse
from ..retrieval import evaluate_bitext
from .models import MINILM, load_encoder, load_tokenizer, quiet_transformers

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Fields that fix the data order and the optimisation: a resumed run must agree on them.
_RESUME_KEYS = ("bitext", "lang", "train_split", "teacher", "student", "max_length", "batch_size", "grad_accum",
                "lr", "weight_decay", "warmup_steps", "epochs", "max_steps", "max_train_pairs", "eps", "max_iter",
                "cost", "objective", "include_special", "seed", "length_grouping", "max_grad_norm")


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
    device: str | None = None  # default: cuda when available, else cpu
    backend: str | None = None  # Sinkhorn backend of the loss (default: the fused one for the device)
    progress: bool = True
    metrics: tuple[str, ...] = DEFAULT_METRICS

    def check(self) -> None:
        def pos_int(name, allow_none=False, allow_zero=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
                raise ValueError(f"{name}: expected an integer >= {0 if allow_zero else 1}"
                                 f"{' or None' if allow_none else ''}, got {v!r}")

        for n in ("max_length", "batch_size", "grad_accum", "epochs", "max_iter", "eval_batch_size"):
            pos_int(n)
        for n in ("max_steps", "max_train_pairs", "eval_every", "eval_max_pairs"):
            pos_int(n, allow_none=True)
        pos_int("keep_checkpoints")
        for n in ("warmup_steps", "save_every", "seed"):
            pos_int(n, allow_zero=True)
        for n in ("lr", "eps"):
            v = getattr(self, n)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or not math.isfinite(v):
                raise ValueError(f"{n}: expected a positive number, got {v!r}")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            raise ValueError(f"weight_decay: expected a number >= 0, got {self.weight_decay!r}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"max_grad_norm: expected a positive number or None, got {self.max_grad_norm!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {self.precision!r}")
        if self.query_encoder not in ("student", "teacher"):
            raise ValueError(f"query_encoder: expected 'student' or 'teacher', got {self.query_encoder!r}")
        _parse(self.metrics)
        if not os.path.exists(self.bitext):
            raise FileNotFoundError(f"bitext: {self.bitext!r} does not exist")


def _precision(cfg: DistillConfig, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    p = cfg.precision
    if p == "auto":
        if device.type != "cuda":
            return None, False
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p == "fp32":
        return None, False
    if p == "fp16" and device.type != "cuda":
        raise ValueError("precision: fp16 autocast needs a CUDA device; use bf16 or fp32 on CPU")
    return (torch.bfloat16, False) if p == "bf16" else (torch.float16, True)


def read_pairs(path: str, lang: str, split: str, limit: int | None = None) -> tuple[list[str], list[str]]:
    """:func:`fastot.lexicons.read_bitext` without the pairs that have a blank side, the first ``limit``."""
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


def _checkpoint_steps(out: str, complete: bool = False) -> list[int]:
    """Steps of the ``checkpoint-<step>`` folders in ``out``, newest first (``complete``: with a trainer.pt)."""
    if not os.path.isdir(out):
        return []
    steps = [int(d.split("-", 1)[1]) for d in os.listdir(out)
             if d.startswith("checkpoint-") and d.split("-", 1)[1].isdigit()
             and (not complete or os.path.exists(os.path.join(out, d, "trainer.pt")))]
    return sorted(steps, reverse=True)


def _latest_checkpoint(out: str) -> str | None:
    steps = _checkpoint_steps(out, complete=True)
    return os.path.join(out, f"checkpoint-{steps[0]}") if steps else None


def _rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _load_weights(model, folder: str) -> None:
    """Load the ``save_pretrained`` weights in ``folder`` (one or several .safetensors shards) into ``model``."""
    from safetensors.torch import load_file  # noqa: PLC0415

    shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not shards:
        raise FileNotFoundError(f"resume: no .safetensors weights in {folder!r}")
    state = {}
    for f in shards:
        state.update(load_file(os.path.join(folder, f)))
    model.load_state_dict(state, strict=True)


_MARKER = ".fastot-distill"
_RUN_FILES = {_MARKER, "config.json", "log.jsonl", "metrics.json", "student"}


def _log_lines(out: str) -> int:
    path = os.path.join(out, "log.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as fh:
        return sum(1 for _ in fh)


def _truncate_log(out: str, n_lines: int | None) -> None:
    path = os.path.join(out, "log.jsonl")
    if n_lines is None or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()[:n_lines]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)


def _log(out: str, rec: dict) -> None:
    with open(os.path.join(out, "log.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")


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
    from tqdm.auto import tqdm  # noqa: PLC0415
    from transformers import get_linear_schedule_with_warmup  # noqa: PLC0415

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
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    amp_dtype, use_scaler = _precision(cfg, device)

    # --- the output folder: resume, refuse, or start clean (never silently overwrite a run) ----------------
    # Only checks here; nothing is written until the models and the data have loaded.
    ckpt = _latest_checkpoint(out) if cfg.resume and not cfg.overwrite else None
    replace = False
    if ckpt is None and os.path.isdir(out) and os.listdir(out):
        if not cfg.overwrite:
            raise FileExistsError(f"output_dir: {out!r} already holds a run"
                                  f"{'' if cfg.resume else ' and resume is off'}; pass overwrite=True "
                                  "(--overwrite) to replace it or choose another folder")
        if not os.path.exists(os.path.join(out, _MARKER)):  # only ever delete what a run of ours wrote
            raise FileExistsError(f"output_dir: {out!r} is not empty and holds no fastot distill run (no {_MARKER});"
                                  " overwrite only replaces a previous run: choose an empty or new folder")
        replace = True
    saved_cfg = dataclasses.asdict(cfg)
    if ckpt is not None:
        with open(os.path.join(out, "config.json"), encoding="utf-8") as fh:
            prev = json.load(fh)
        diff = [k for k in _RESUME_KEYS if prev.get(k) != saved_cfg.get(k)]
        if diff:
            raise ValueError(f"resume: {ckpt!r} was trained with other settings ("
                             + ", ".join(f"{k}: {prev.get(k)!r} -> {saved_cfg.get(k)!r}" for k in diff)
                             + "); pass overwrite=True to start again, or another output_dir")
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
        _load_weights(student, os.path.join(ckpt, "student"))
    teacher.to(device).eval().requires_grad_(False)
    student.to(device).train()
    if criterion is None:
        d_s, d_t = student.config.hidden_size, teacher.config.hidden_size
        # different widths: a linear map from the student's to the teacher's, trained with the student
        proj = torch.nn.Linear(d_s, d_t) if d_s != d_t else None
        criterion = OTDistillationLoss(eps=cfg.eps, max_iter=cfg.max_iter, cost=cfg.cost, objective=cfg.objective,
                                       projection=proj, backend=cfg.backend)
    criterion.to(device)
    lengths = [len(s) for s in tgt]
    n_batches = math.ceil(len(en) / cfg.batch_size)
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * n_batches / cfg.grad_accum)

    if replace:
        for name in os.listdir(out):  # the entries a run writes; anything else in the folder stays
            if name in _RUN_FILES or name.startswith("checkpoint-"):
                path = os.path.join(out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, _MARKER), "w", encoding="utf-8") as fh:
        fh.write("a fastot distill run: `overwrite` may delete this folder's run files\n")
    with open(os.path.join(out, "config.json"), "w", encoding="utf-8") as fh:
        json.dump(saved_cfg, fh, indent=2, default=list)

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
        st = torch.load(os.path.join(ckpt, "trainer.pt"), map_location="cpu", weights_only=False)
        if st.get("amp", amp_name) != amp_name:
            raise ValueError(f"precision: {ckpt!r} was trained with {st['amp']} but this run would use {amp_name} "
                             f"(precision={cfg.precision!r} on {device.type}); resume with the same precision")
        opt.load_state_dict(st["optimizer"])
        sched.load_state_dict(st["scheduler"])
        if st["scaler"]:
            scaler.load_state_dict(st["scaler"])
        _truncate_log(out, st.get("log_lines"))  # steps after the checkpoint are redone: drop their lines
        criterion.load_state_dict(st["criterion"])
        step, epoch, next_batch = st["step"], st["epoch"], st["next_batch"]
        result.update(st["result"])
        _set_rng_state(st["rng"])

    def evaluate(tag: str) -> dict:
        qm, qt = (teacher, t_tok) if cfg.query_encoder == "teacher" else (None, None)
        m = evaluate_bitext(student, s_tok, ev_en, ev_tgt, query_model=qm, query_tokenizer=qt,
                            metrics=cfg.metrics, batch_size=cfg.eval_batch_size, max_length=cfg.max_length,
                            device=device, progress=cfg.progress)
        _log(out, {"eval": tag, "step": step, **m})
        return m

    if ev_en is not None and "before" not in result:
        result["before"] = evaluate("before")

    def save(final: bool = False) -> None:
        path = os.path.join(out, f"checkpoint-{step}")
        tmp = path + ".tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        with quiet_transformers():
            student.save_pretrained(os.path.join(tmp, "student"))
            s_tok.save_pretrained(os.path.join(tmp, "student"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "scaler": scaler.state_dict(),
                    "criterion": criterion.state_dict(), "step": step, "epoch": epoch, "next_batch": next_batch,
                    "rng": _rng_state(), "result": result, "amp": amp_name, "log_lines": _log_lines(out)},
                   os.path.join(tmp, "trainer.pt"))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)  # a checkpoint exists whole or not at all
        for s in _checkpoint_steps(out)[cfg.keep_checkpoints:]:
            shutil.rmtree(os.path.join(out, f"checkpoint-{s}"), ignore_errors=True)

    def autocast():
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    def optimizer_step() -> None:
        nonlocal step, loss_acc, pairs, t0
        loss_acc = float(loss_acc)  # the one host sync of a step, for the log
        if cfg.max_grad_norm is not None:
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        dt = time.perf_counter() - t0
        result["final_loss"] = loss_acc
        _log(out, {"step": step, "epoch": epoch, "loss": loss_acc, "lr": sched.get_last_lr()[0],
                   "pairs_per_s": pairs / dt if dt > 0 else None})
        bar.set_postfix(loss=f"{loss_acc:.4f}", refresh=False)
        bar.update(1)
        loss_acc, pairs = 0.0, 0
        if ev_en is not None and cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
            result.setdefault("during", []).append({"step": step, **evaluate(f"step {step}")})
        if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
            save()
        t0 = time.perf_counter()  # pairs/s counts training only, not evaluation or saving

    bar = tqdm(total=total_steps, initial=step, desc=f"distill {cfg.lang}", unit="step", disable=not cfg.progress)
    micro, loss_acc, pairs, t0 = 0, 0.0, 0, time.perf_counter()
    special = t_tok.all_special_ids, s_tok.all_special_ids
    while step < total_steps and epoch < (cfg.epochs if cfg.max_steps is None else 1 << 30):
        batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.length_grouping)
        while next_batch < len(batches) and step < total_steps:
            idx = batches[next_batch]
            next_batch += 1
            te = t_tok([en[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length,
                       return_tensors="pt").to(device)
            se = s_tok([tgt[i] for i in idx], padding=True, truncation=True, max_length=cfg.max_length,
                       return_tensors="pt").to(device)
            t_mask, s_mask = te["attention_mask"].bool(), se["attention_mask"].bool()
            if not cfg.include_special:
                t_mask = content_mask(te["input_ids"], t_mask, special[0])
                s_mask = content_mask(se["input_ids"], s_mask, special[1])
            with autocast():
                with torch.no_grad():
                    ht = teacher(input_ids=te["input_ids"], attention_mask=te["attention_mask"]).last_hidden_state
                hs = student(input_ids=se["input_ids"], attention_mask=se["attention_mask"]).last_hidden_state
            loss = criterion(hs, s_mask, ht, t_mask)
            scaler.scale(loss / cfg.grad_accum).backward()
            loss_acc = loss_acc + loss.detach() / cfg.grad_accum  # on device: read once per optimizer step
            pairs += len(idx)
            micro += 1
            if micro % cfg.grad_accum == 0:
                optimizer_step()
        if next_batch >= len(batches):
            epoch, next_batch = epoch + 1, 0
    if micro % cfg.grad_accum and step < total_steps:  # the data ran out inside an accumulation: apply it,
        n = micro % cfg.grad_accum  # as the mean over the n micro-batches it holds
        for p in params:
            if p.grad is not None:
                p.grad.mul_(cfg.grad_accum / n)
        loss_acc *= cfg.grad_accum / n
        optimizer_step()
    bar.close()

    result["steps"] = step
    if ev_en is not None:
        result["after"] = evaluate("after")
    save(final=True)
    final = os.path.join(out, "student")
    with quiet_transformers():
        student.save_pretrained(final)
        s_tok.save_pretrained(final)
    with open(os.path.join(out, "metrics.json"), "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=2)
    return result
