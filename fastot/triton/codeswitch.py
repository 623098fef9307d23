"""Triton backend of the code-switch op: host side of ``_codeswitch_kernels.py``.

``codeswitch`` has the signature of ``fastot.reference.codeswitch.codeswitch`` and is bit-identical to it.
It is registered as the opaque op ``fastot::triton_codeswitch`` (integer outputs, no autograd) with a fake
implementation, so ``torch.compile`` traces around it. With ``max_length`` the output width is static and a
call is one launch with no host synchronisation; without it a counting launch sizes the output (one sync).
"""

from __future__ import annotations

import os

import torch
import triton

from ..reference.codeswitch import check_values, codeswitch_fake
from . import _codeswitch_kernels as K

__all__ = ["codeswitch"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Positions per program: a whole row, and as many rows as fit in this many positions. Chosen from
# `python -m fastot.triton.aot codeswitch-...` (sm_90, 8 warps): 4096 positions spill 784-1576 B, 1024 spill
# 0-112 B (230-255 registers). Rows longer than the tile run one per program; those shapes (L > 512) compile
# slowly and are untimed. Not timed on a GPU yet (none was lent). The interpreter prefers fewer, larger programs.
_TILE = 16384 if INTERPRET else 1024
_NUM_WARPS = 8


@torch.library.custom_op("fastot::triton_codeswitch", mutates_args=())
def _triton_codeswitch(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor, word_start: torch.Tensor,
    special: torch.Tensor, key_hash: torch.Tensor, key_offsets: torch.Tensor, key_ids: torch.Tensor,
    entry_offsets: torch.Tensor, trans_offsets: torch.Tensor, trans_ids: torch.Tensor, lang_ids: torch.Tensor,
    max_key_len: int, max_key_words: int, prefix_switch: int, prefix_lang: int, prefix_trans: int, threshold: int,
    max_length: int, pad_id: int, row_offset: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    check_values(input_ids, attention_mask, word_start, key_hash, entry_offsets, lang_ids, max_key_words)
    ids = input_ids.long().contiguous()
    att = attention_mask.long().contiguous()
    tt = token_type_ids.long().contiguous()
    B, L = ids.shape
    n_keys = key_hash.numel()
    n_active = lang_ids.numel()
    dev = ids.device
    BLOCK_L = max(16, triton.next_power_of_2(max(L, 1)))
    BLOCK_B = max(1, min(triton.next_power_of_2(max(B, 1)), _TILE // BLOCK_L))
    grid = (max(1, triton.cdiv(B, BLOCK_B)),)
    tables = (word_start.contiguous().view(torch.uint8), special.contiguous().view(torch.uint8),
              key_hash.contiguous(), key_offsets.contiguous(), key_ids.contiguous(), entry_offsets.contiguous(),
              trans_offsets.contiguous(), trans_ids.contiguous(), lang_ids.long().contiguous())
    sizes = (B, L, n_keys, (entry_offsets.numel() - 1) // max(n_keys, 1), n_active, max_key_len,
             n_keys.bit_length(), prefix_switch, prefix_lang, prefix_trans, threshold, row_offset, max_length)
    meta = dict(BLOCK_B=BLOCK_B, BLOCK_L=BLOCK_L, LOG2_L=BLOCK_L.bit_length() - 1, MAX_KEY_WORDS=max(1, max_key_words), TRUNCATE=max_length >= 0,
                num_warps=_NUM_WARPS)
    n_switched = torch.zeros(B, n_active, dtype=torch.long, device=dev)
    n_words = torch.zeros(B, dtype=torch.long, device=dev)
    if max_length >= 0:
        width = max_length
    else:  # a counting launch sizes the output: the one host synchronisation
        row_len = torch.zeros(B, dtype=torch.long, device=dev)
        if B and L:
            K._codeswitch_kernel[grid](ids, att, tt, *tables, ids, ids, ids, ids, n_switched, n_words, row_len,
                                       *sizes, 0, WRITE=False, **meta)
        width = int(row_len.max()) if B else 0
    out_ids = torch.full((B, width), pad_id, dtype=torch.long, device=dev)
    out_att = torch.zeros(B, width, dtype=torch.long, device=dev)
    out_tt = torch.zeros(B, width, dtype=torch.long, device=dev)
    out_src = torch.full((B, width), -1, dtype=torch.long, device=dev)
    if B and L:
        K._codeswitch_kernel[grid](ids, att, tt, *tables, out_ids, out_att, out_tt, out_src, n_switched, n_words,
                                   n_words, *sizes, width, WRITE=True, **meta)
    return out_ids, out_att, out_tt, out_src, n_switched, n_words


_triton_codeswitch.register_fake(codeswitch_fake)


def codeswitch(*args):
    """``fastot.reference.codeswitch.codeswitch`` on the Triton kernel (same arguments, same outputs)."""
    return torch.ops.fastot.triton_codeswitch(*args)
