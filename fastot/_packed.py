"""Packed (varlen) layout of ``sinkhorn_embeddings``: flash-attention's ``cu_seqlens`` convention.

Problem k owns the points ``cu[k] .. cu[k + 1] - 1`` of a side's concatenation (rows of x [T, d], entries of the
weights and potentials [T]). The kernels read that layout in place; the Python layer only moves per-point vectors
([T] <-> [B, L], L the longest problem) between it and the padded one, never token states.
"""

from __future__ import annotations

import torch


class Packing:
    """The index maps of one side: ``seg`` [T] (the problem of each point) and ``flat`` [T] (its position in a
    [B, L] layout), built without a host read once ``max_len`` is known."""

    def __init__(self, cu: torch.Tensor, total: int, max_len: int):
        self.cu = cu
        self.B = cu.numel() - 1
        self.L = max_len
        self.T = total
        lengths = cu[1:] - cu[:-1]
        self.lengths = lengths
        self.seg = torch.repeat_interleave(torch.arange(self.B, device=cu.device), lengths, output_size=total)
        self.flat = self.seg * max_len + (torch.arange(total, device=cu.device) - cu[:-1][self.seg])
        self.valid = torch.arange(max_len, device=cu.device) < lengths[:, None]  # [B, L]

    def pad(self, v: torch.Tensor) -> torch.Tensor:
        """[T, ...] -> [B, L, ...], zeros on padding (differentiable)."""
        out = v.new_zeros((self.B * self.L,) + tuple(v.shape[1:]))
        return out.index_copy(0, self.flat, v).view((self.B, self.L) + tuple(v.shape[1:]))

    def unpad(self, v: torch.Tensor) -> torch.Tensor:
        """[B, L, ...] -> [T, ...] (differentiable)."""
        return v.reshape((self.B * self.L,) + tuple(v.shape[2:])).index_select(0, self.flat)

    def per_point(self, v: torch.Tensor) -> torch.Tensor:
        """A per-problem [B] tensor repeated over each problem's points: [T]."""
        return v.index_select(0, self.seg)


def check_cu(cu, name: str, total: int, like: torch.Tensor, fn: str) -> tuple[torch.Tensor, int]:
    """(cu_seqlens as int64 on ``like``'s device, the longest problem), after the checks that name it: a 1-D integer
    tensor [B + 1] from 0 to ``total``, nondecreasing. Its values are read on the host: free on the CPU, one small
    read (a synchronisation) on an accelerator."""
    if not isinstance(cu, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor, got {type(cu).__name__}")
    if cu.dim() != 1 or cu.numel() < 1:
        raise ValueError(f"{fn}: {name} must be a 1-D [B + 1] tensor, got shape {list(cu.shape)}")
    if cu.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{fn}: {name} must be int32 or int64, got {cu.dtype}")
    if cu.device != like.device:
        raise ValueError(f"{fn}: {name} is on {cu.device} but x is on {like.device}")
    host = cu.detach().cpu().tolist()
    if host[0] != 0:
        raise ValueError(f"{fn}: {name}[0] must be 0, got {host[0]}")
    if any(b < a for a, b in zip(host, host[1:])):
        raise ValueError(f"{fn}: {name} must be nondecreasing, got {host[:16]}{' ...' if len(host) > 16 else ''}")
    if host[-1] != total:
        raise ValueError(f"{fn}: {name}[-1] must be the number of packed rows {total}, got {host[-1]}")
    return cu.to(torch.int64), max((b - a for a, b in zip(host, host[1:])), default=0)


def pack_tokens(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(packed [T, d], cu_seqlens [B + 1] int64): the rows of ``hidden`` [B, L, d] where ``mask`` [B, L] is nonzero
    (e.g. :func:`fastot.content_mask`), problem after problem, for the packed input of
    :func:`fastot.sinkhorn_embeddings` and the OT loss. Differentiable in ``hidden``; one gather (``index_select``,
    whose backward is an ``index_add``: cheaper than ``hidden[mask]``'s), one host read of the mask's count on an
    accelerator."""
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3:
        raise ValueError(f"pack_tokens: hidden must be a [B, L, d] tensor, got "
                         f"{list(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"pack_tokens: mask must be a [B, L] tensor matching hidden {list(hidden.shape[:2])}, got "
                         f"{list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if mask.device != hidden.device:
        raise ValueError(f"pack_tokens: mask is on {mask.device} but hidden is on {hidden.device}")
    keep = mask != 0
    idx = keep.reshape(-1).nonzero().squeeze(1)
    cu = torch.nn.functional.pad(keep.sum(1).cumsum(0), (1, 0))
    return hidden.reshape(-1, hidden.shape[-1]).index_select(0, idx), cu
