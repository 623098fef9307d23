"""Run-folder plumbing shared by the training loops: precision, checkpoints, RNG state, the JSONL log, and the
resume / overwrite rules of an output folder (a run only ever deletes files a run of the same kind wrote)."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal

import torch

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def precision_of(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, whether a GradScaler is needed)."""
    p = precision
    if p == "auto":
        if device.type != "cuda":
            return None, False
        p = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if p == "fp32":
        return None, False
    if p == "fp16" and device.type != "cuda":
        raise ValueError("precision: fp16 autocast needs a CUDA device; use bf16 or fp32 on CPU")
    return (torch.bfloat16, False) if p == "bf16" else (torch.float16, True)


def checkpoint_steps(out: str, complete: bool = False) -> list[int]:
    """Steps of the ``checkpoint-<step>`` folders in ``out``, newest first (``complete``: with a trainer.pt)."""
    if not os.path.isdir(out):
        return []
    steps = [int(d.split("-", 1)[1]) for d in os.listdir(out)
             if d.startswith("checkpoint-") and d.split("-", 1)[1].isdigit()
             and (not complete or os.path.exists(os.path.join(out, d, "trainer.pt")))]
    return sorted(steps, reverse=True)


def latest_checkpoint(out: str) -> str | None:
    steps = checkpoint_steps(out, complete=True)
    return os.path.join(out, f"checkpoint-{steps[0]}") if steps else None


def rng_state() -> dict:
    st = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    random.setstate(st["python"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def load_weights(model, folder: str) -> None:
    """Load the ``save_pretrained`` weights in ``folder`` (one or several .safetensors shards) into ``model``."""
    from safetensors.torch import load_file  # noqa: PLC0415

    shards = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    if not shards:
        raise FileNotFoundError(f"resume: no .safetensors weights in {folder!r}")
    state = {}
    for f in shards:
        path = os.path.join(folder, f)
        try:
            state.update(load_file(path))
        except Exception as exc:  # safetensors raises its own error types on a truncated or corrupt file
            raise ValueError(_corrupt(path, exc)) from exc
    model.load_state_dict(state, strict=True)


def check_checkpoint(ckpt: str) -> None:
    """Before a resume writes anything: trainer.pt's zip members pass their CRC check and every .safetensors file is
    as long as its header says. A truncated or corrupt file is a ValueError naming it (never a silent restart)."""
    import zipfile  # noqa: PLC0415

    path = os.path.join(ckpt, "trainer.pt")
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
        if bad is not None:
            raise ValueError(f"member {bad!r} fails its CRC check")
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as exc:
        raise ValueError(_corrupt(path, exc)) from exc
    for root, _dirs, files in os.walk(ckpt):
        for f in files:
            if f.endswith(".safetensors"):
                _check_safetensors(os.path.join(root, f))


def _check_safetensors(path: str) -> None:
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            if not 0 < n <= size - 8:
                raise ValueError(f"header length {n} does not fit a {size}-byte file")
            header = json.loads(fh.read(n))
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
        if 8 + n + end != size:
            raise ValueError(f"the header describes {8 + n + end} bytes, the file has {size}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ValueError(_corrupt(path, exc)) from exc


def _corrupt(path: str, exc: Exception) -> str:
    ckpt = os.path.dirname(path) if os.path.basename(path) == "trainer.pt" else os.path.dirname(os.path.dirname(path))
    return (f"resume: {path!r} is truncated or corrupt ({type(exc).__name__}: {exc}); nothing was changed. Delete "
            f"{ckpt!r} to resume from the checkpoint before it, or pass overwrite=True (--overwrite) to start again")


def log_lines(out: str) -> int:
    path = os.path.join(out, "log.jsonl")
    if not os.path.exists(path):
        return 0
    with open(path, encoding="utf-8") as fh:
        return sum(1 for _ in fh)


def truncate_log(out: str, n_lines: int | None) -> None:
    path = os.path.join(out, "log.jsonl")
    if n_lines is None or not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as fh:
        lines = fh.readlines()[:n_lines]
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(lines)


def log(out: str, rec: dict) -> None:
    with open(os.path.join(out, "log.jsonl"), "a", encoding="utf-8") as fh:
        fh.write(json.dumps(rec) + "\n")
    if "loss" in rec:
        fault_point("step", rec.get("step"))


def fault_point(where: str, step) -> None:
    """A test hook for the fault-tolerance tests: ``FASTOT_FAULT_AT=<where>:<step>`` kills this process with SIGKILL
    (no cleanup, as a machine failure would) when the run reaches that point: ``step`` (training step logged),
    ``save`` (inside a checkpoint save, the model written and trainer.pt not yet) or ``replace`` (the checkpoint
    complete in its .tmp folder, not yet renamed into place). Unset, it costs one environment lookup."""
    at = os.environ.get("FASTOT_FAULT_AT")
    if at and at == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


def read_json(path: str, what: str) -> dict:
    """json.load that names the file and what to do when it is truncated or corrupt."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what}: {path!r} is corrupt or truncated ({exc}); nothing was changed. Restore it, or "
                         "pass overwrite=True (--overwrite) to start the run again") from exc


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: a crash leaves the old file or the new one."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def check_output(out: str, marker: str, kind: str, resume: bool, overwrite: bool, resume_keys, saved_cfg: dict):
    """Decide what to do with ``out`` before anything is written: returns (checkpoint to resume or None,
    whether the previous run's files must be deleted). Refuses a non-empty folder without ``overwrite``,
    a folder that no run of this kind wrote, and a resume whose ``resume_keys`` settings changed."""
    ckpt = latest_checkpoint(out) if resume and not overwrite else None
    replace = False
    if ckpt is None and os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise FileExistsError(f"output_dir: {out!r} already holds a run"
                                  f"{'' if resume else ' and resume is off'}; pass overwrite=True "
                                  "(--overwrite) to replace it or choose another folder")
        if not os.path.exists(os.path.join(out, marker)):  # only ever delete what a run of ours wrote
            raise FileExistsError(f"output_dir: {out!r} is not empty and holds no fastot {kind} run (no {marker});"
                                  " overwrite only replaces a previous run: choose an empty or new folder")
        replace = True
    if ckpt is not None:
        prev = read_json(os.path.join(out, "config.json"), "resume")
        check_checkpoint(ckpt)
        now = json.loads(json.dumps(saved_cfg, default=list))  # as config.json holds it: tuples are lists
        diff = [k for k in resume_keys if prev.get(k) != now.get(k)]
        if diff:
            raise ValueError(f"resume: {ckpt!r} was trained with other settings ("
                             + ", ".join(f"{k}: {prev.get(k)!r} -> {now.get(k)!r}" for k in diff)
                             + "); pass overwrite=True to start again, or another output_dir")
    return ckpt, replace


def init_output(out: str, marker: str, run_files, replace: bool, saved_cfg: dict, kind: str) -> None:
    """Delete the previous run's files when ``replace`` (only names in ``run_files`` and checkpoints), then
    write the marker and config.json."""
    if replace:
        for name in os.listdir(out):  # the entries a run writes; anything else in the folder stays
            if name in run_files or name.startswith("checkpoint-"):
                path = os.path.join(out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, marker), "w", encoding="utf-8") as fh:
        fh.write(f"a fastot {kind} run: `overwrite` may delete this folder's run files\n")
    write_atomic(os.path.join(out, "config.json"), json.dumps(saved_cfg, indent=2, default=list))


def check_common(cfg, ints=(), optional_ints=(), nonneg_ints=(), positive_numbers=("lr",)) -> None:
    """The option checks both loops share: integer fields (>= 1, or None, or >= 0), positive numbers,
    weight_decay, max_grad_norm and precision; each error names the field."""
    def pos_int(name, allow_none=False, allow_zero=False):
        v = getattr(cfg, name)
        if v is None and allow_none:
            return
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if allow_zero else 1):
            raise ValueError(f"{name}: expected an integer >= {0 if allow_zero else 1}"
                             f"{' or None' if allow_none else ''}, got {v!r}")

    for n in ints:
        pos_int(n)
    for n in optional_ints:
        pos_int(n, allow_none=True)
    for n in nonneg_ints:
        pos_int(n, allow_zero=True)
    for n in positive_numbers:
        v = getattr(cfg, n)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or not math.isfinite(v):
            raise ValueError(f"{n}: expected a positive number, got {v!r}")
    if not isinstance(cfg.weight_decay, (int, float)) or cfg.weight_decay < 0:
        raise ValueError(f"weight_decay: expected a number >= 0, got {cfg.weight_decay!r}")
    if cfg.max_grad_norm is not None and not cfg.max_grad_norm > 0:
        raise ValueError(f"max_grad_norm: expected a positive number or None, got {cfg.max_grad_norm!r}")
    if cfg.precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {cfg.precision!r}")


def save_checkpoint(out: str, step: int, model, tokenizer, name: str, state: dict, keep: int,
                    model_state: dict | None = None) -> None:
    """Write ``checkpoint-<step>/`` (``model`` and ``tokenizer`` under ``name``/, ``state`` as trainer.pt)
    atomically, then delete all but the newest ``keep`` checkpoints. ``model_state``: the weights to write
    instead of the model's own (an FSDP-sharded model's gathered state)."""
    from .models import quiet_transformers  # noqa: PLC0415

    path = os.path.join(out, f"checkpoint-{step}")
    tmp = path + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_transformers():
        # a copy: save_pretrained empties the dict it writes, and the caller may write it again (finish_run)
        model.save_pretrained(os.path.join(tmp, name), state_dict=None if model_state is None else dict(model_state))
        tokenizer.save_pretrained(os.path.join(tmp, name))
    fault_point("save", step)
    torch.save({**state, "rng": rng_state(), "log_lines": log_lines(out)}, os.path.join(tmp, "trainer.pt"))
    fault_point("replace", step)
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)  # a checkpoint exists whole or not at all
    for s in checkpoint_steps(out)[keep:]:
        shutil.rmtree(os.path.join(out, f"checkpoint-{s}"), ignore_errors=True)


def read_trainer_state(ckpt: str) -> dict:
    """``ckpt``/trainer.pt, loaded on the CPU (a truncated or corrupt file is a ValueError naming it)."""
    path = os.path.join(ckpt, "trainer.pt")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated or corrupt: torch raises several types
        raise ValueError(_corrupt(path, exc)) from exc


def load_trainer_state(ckpt: str, out: str, amp_name: str, opt, sched, scaler, rank: int = 0, st: dict | None = None,
                       load_optimizer=None) -> dict:
    """Restore optimizer, scheduler, scaler and RNG from ``ckpt``/trainer.pt, drop the log lines written after
    it (those steps are redone; only ``rank`` 0 touches the log), and return the whole state; refuses another
    precision. Under torchrun every process restores rank 0's RNG state and then, off rank 0, reseeds from
    (RNG draw, rank), so processes never share a dropout stream whatever the world size of the saved run.
    ``st``: the state already read (:func:`read_trainer_state`); ``load_optimizer``: loads the optimizer state
    instead of ``opt.load_state_dict`` (an FSDP-sharded optimizer)."""
    st = read_trainer_state(ckpt) if st is None else st
    if st.get("amp", amp_name) != amp_name:
        raise ValueError(f"precision: {ckpt!r} was trained with {st['amp']} but this run would use {amp_name}; "
                         "resume with the same precision")
    (load_optimizer or opt.load_state_dict)(st["optimizer"])
    sched.load_state_dict(st["scheduler"])
    if st["scaler"]:
        scaler.load_state_dict(st["scaler"])
    if rank == 0:
        truncate_log(out, st.get("log_lines"))
    set_rng_state(st["rng"])
    reseed(rank)
    return st


def reseed(rank: int) -> None:
    """Off rank 0: a torch RNG stream of its own, drawn from the current (shared) state and the rank."""
    if rank:
        base = int(torch.randint(0, 2**31 - 1, (1,)))
        torch.manual_seed(base * 1_000_003 + rank)
        random.seed(base * 1_000_003 + rank)


def apply_step(params, opt, sched, scaler, max_grad_norm) -> None:
    """Clip (after unscaling), step the optimizer and the schedule, clear the gradients."""
    if max_grad_norm is not None:
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    scaler.step(opt)
    scaler.update()
    sched.step()
    opt.zero_grad(set_to_none=True)


def partial_accumulation(params, micro: int, grad_accum: int) -> float:
    """The data ran out inside an accumulation of ``micro % grad_accum`` micro-batches: rescale the gradients
    to their mean and return the factor (for the accumulated loss); 0 when there is nothing pending."""
    n = micro % grad_accum
    if not n:
        return 0.0
    for p in params:
        if p.grad is not None:
            p.grad.mul_(grad_accum / n)
    return grad_accum / n


def finish_run(out: str, model, tokenizer, name: str, result: dict, model_state: dict | None = None) -> dict:
    """Save the final model (``model_state`` instead of its own weights, if given) and tokenizer as
    ``out/<name>/`` and ``result`` as metrics.json; return it."""
    from .models import quiet_transformers  # noqa: PLC0415

    with quiet_transformers():
        model.save_pretrained(os.path.join(out, name), state_dict=model_state)
        tokenizer.save_pretrained(os.path.join(out, name))
    write_atomic(os.path.join(out, "metrics.json"), json.dumps(result, indent=2))
    return result
