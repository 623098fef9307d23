"""torch.distributed plumbing of the training loops: one process per device, launched by ``torchrun`` (or
``accelerate launch``), which sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous in the environment.

A loop calls :func:`setup` once: it joins the process group when the launcher started several processes (gloo on
CPU, NCCL on CUDA), picks this process's device, and returns a :class:`Dist`. With one process everything here is
a no-op, so the single-process numerics are exactly those of earlier runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

DISTRIBUTED = ("auto", "on", "off")


def launched_world() -> int:
    """WORLD_SIZE as set by torchrun (1 when not launched by it)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    created: bool = False  # this call joined the process group, so :meth:`close` leaves it

    @property
    def on(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.on:
            torch.distributed.barrier()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over the processes (in place; returned for chaining); identity with one process."""
        if self.on:
            torch.distributed.all_reduce(t)
        return t

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate each process's rows (the same shape [n, ...] on every process) in rank order, on every
        process."""
        if not self.on:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        torch.distributed.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def average_gradients(self, params) -> None:
        """Average the gradients over the processes by hand (micro-batches that ran under DDP's no_sync)."""
        if self.on:
            for p in params:
                if p.grad is not None:
                    self.all_sum(p.grad).div_(self.world)

    def close(self) -> None:
        if self.created and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self.created = False


def setup(distributed: str, device: str | None) -> tuple[Dist, torch.device]:
    """Join the process group when ``distributed`` allows it and torchrun started several processes.

    ``distributed``: "auto" (default: distributed exactly when WORLD_SIZE > 1), "on" (require it) or "off" (train
    alone even under torchrun: the sweep's workers, each training its own cells). ``device``: None picks
    ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU; an explicit "cuda" becomes ``cuda:LOCAL_RANK``.
    """
    if distributed not in DISTRIBUTED:
        raise ValueError(f"distributed: expected one of {DISTRIBUTED}, got {distributed!r}")
    world = launched_world() if distributed != "off" else 1
    if distributed == "on" and world == 1:
        raise ValueError("distributed: 'on' but WORLD_SIZE is not set above 1: launch with torchrun "
                         "--nproc-per-node N (or leave distributed='auto')")
    if world == 1:
        return Dist(), torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    created = False
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        created = True
    if torch.distributed.get_world_size() != world:
        raise RuntimeError(f"distributed: the process group has {torch.distributed.get_world_size()} processes but "
                           f"WORLD_SIZE is {world}")
    return Dist(torch.distributed.get_rank(), world, local, created), dev


def run_config(cfg, group: Dist, use_scaler: bool, unit: str, model: str) -> dict:
    """The checks of a run's world both loops share (a global micro-batch of at least one ``unit`` per process;
    FSDP only with several processes and without fp16's scaler); returns the contents of config.json: the options
    with ``world_size`` and ``per_process_batch_size``."""
    import dataclasses  # noqa: PLC0415
    import math  # noqa: PLC0415

    if cfg.batch_size < group.world:
        raise ValueError(f"batch_size: the global micro-batch ({cfg.batch_size} {unit}) must be at least the number "
                         f"of processes ({group.world})")
    if cfg.fsdp and not group.on:
        raise ValueError(f"fsdp: shards the {model} over the processes of torchrun; launch with torchrun "
                         "--nproc-per-node 2 or more, or drop fsdp")
    if cfg.fsdp and use_scaler:
        raise ValueError("fsdp: fp16 autocast needs a gradient scaler, which fastot does not run with FSDP; use "
                         "precision bf16 (or auto on a GPU with bf16)")
    return {**dataclasses.asdict(cfg), "world_size": group.world,
            "per_process_batch_size": math.ceil(cfg.batch_size / group.world)}


def shard(items: Sequence, rank: int, world: int) -> list:
    """This process's contiguous share of ``items``: sizes differ by at most one, the first ``len % world``
    processes take one more (as ``torch.tensor_split``); the shares concatenated in rank order are ``items``."""
    start = shard_start(len(items), rank, world)
    return list(items[start:shard_start(len(items), rank + 1, world)])


def shard_start(n: int, rank: int, world: int) -> int:
    """Index of the first item of :func:`shard`'s share of ``n`` items."""
    q, r = divmod(n, world)
    return rank * q + min(rank, r)


def ddp(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(module)`` that does not sync buffers every forward (an encoder's buffers, such
    as position ids, are constants; the weights are broadcast from rank 0 once, at construction)."""
    import inspect  # noqa: PLC0415

    from torch.nn.parallel import DistributedDataParallel  # noqa: PLC0415

    kw = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DistributedDataParallel)
          .parameters else {"broadcast_buffers": False})  # the keyword of torch >= 2.13; before it, the old one
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None, **kw)


def fsdp_shard(encoder: torch.nn.Module, *others: torch.nn.Module) -> None:
    """FSDP2 (``fully_shard``): each block of the encoder's layer lists, then the encoder, each an FSDP root of
    its own (so the evaluation can run it alone), and each of ``others`` that has parameters (a loss projection).
    Parameters become DTensors sharded over the processes: build the optimizer after this."""
    from torch.distributed.fsdp import fully_shard  # noqa: PLC0415

    for lst in [m for m in encoder.modules() if isinstance(m, torch.nn.ModuleList)]:
        for block in lst:
            fully_shard(block)
    fully_shard(encoder)
    for m in others:
        if any(True for _ in m.parameters()):
            fully_shard(m)


def full_state(model: torch.nn.Module, opt) -> tuple[dict, dict]:
    """The whole model's and optimizer's state of an FSDP-sharded ``model`` on rank 0, on the CPU (empty dicts
    elsewhere); a collective: every process calls it. The optimizer state is keyed by position, as
    ``opt.state_dict()`` of an unsharded run, so a checkpoint resumes with or without FSDP."""
    from torch.distributed.checkpoint.state_dict import (  # noqa: PLC0415
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, opt, options=opts)
    if not osd:
        return msd, osd
    order = [f for g in osd["param_groups"] for f in g["params"]]
    pos = {f: i for i, f in enumerate(order)}
    return msd, {"state": {pos[f]: v for f, v in osd["state"].items()},
                 "param_groups": [{**g, "params": [pos[f] for f in g["params"]]} for g in osd["param_groups"]]}


def load_full_optimizer(model: torch.nn.Module, opt, state: dict) -> None:
    """Load a position-keyed optimizer state (:func:`full_state`, or ``opt.state_dict()`` of an unsharded run)
    into the optimizer of an FSDP-sharded ``model``; every process calls it with the same state."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict  # noqa: PLC0415

    names = {id(p): n for n, p in model.named_parameters()}
    fqns = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    fqn_state = {"state": {fqns[int(i)]: v for i, v in state["state"].items()},
                 "param_groups": [{**g, "params": [fqns[int(i)] for i in g["params"]]} for g in state["param_groups"]]}
    set_optimizer_state_dict(model, opt, optim_state_dict=fqn_state, options=StateDictOptions(full_state_dict=True))


def strip(state: dict, prefix: str) -> dict:
    """The entries of ``state`` under ``prefix.``, without it."""
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}
