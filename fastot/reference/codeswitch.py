"""Plain PyTorch code-switch token substitution: the fallback and the test oracle.

Contract (every backend is bit-identical to this):

* Rows of ``input_ids`` [B, L] are scanned left to right over attended positions. A special token
  (``special[id]``) is copied. Any other token starts a *word* that extends over the following
  attended, non-special tokens of the same segment that are not word starts (``word_start[id]``,
  e.g. WordPiece pieces without ``##``, SentencePiece pieces with ``▁``). Words are numbered 0, 1, ...
  per row, counting every word.
* A word whose subword-id sequence is a lexicon key (a 62-bit polynomial hash, verified id by id)
  is switched when ``rand(prefix_switch, row, word) >> 8 < threshold`` (threshold = round(p·2^24)).
  The language is ``lang_ids[0]``, or with several active languages
  ``lang_ids[rand_below(rand(prefix_lang, row, word), n_active)]``. If the entry has n > 0
  translations in that language, translation ``rand_below(rand(prefix_trans, row, word), n)`` replaces
  the word's tokens; otherwise the word is kept (no fallback to another language).
* Output tokens keep the segment (token type) of their source; ``source_index`` is the input position a
  token came from (the word's first position for translation tokens), -1 on padding.
* With ``max_length >= 0`` rows are cut like the Hugging Face fast tokenizers' ``longest_first``
  (segments = token type 0 and the rest; only the longer one is cut while the shorter fits in half the
  budget, else the shorter keeps budget // 2 and the longer the rest, the second on a tie; tokens go
  from the end of a segment); special tokens are never dropped; the output is exactly ``max_length`` wide. Without it the output is as wide as its longest row.
* Padding (attention 0) in the input is dropped; outputs are right-padded with ``pad_id``.

All randomness is integer arithmetic on (seed, step, row, word): see ``csrc/common/hash.h``.
"""

from __future__ import annotations

import torch

__all__ = ["codeswitch", "mix32", "rand_prefix", "key_hash", "SALT_SWITCH", "SALT_LANG", "SALT_TRANS"]

MASK32 = 0xFFFFFFFF
KEY_MOD1, KEY_MOD2 = 2147483647, 2147483629
KEY_BASE1, KEY_BASE2 = 1000003, 999983
SALT_SWITCH, SALT_LANG, SALT_TRANS = 0x243F6A88, 0x85A308D3, 0x13198A2E


def mix32(x):
    """The 32-bit mixer of csrc/common/hash.h, for Python ints and int64 tensors alike."""
    x = x & MASK32
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & MASK32
    x = x ^ (x >> 12)
    x = (x * 0x297A2D39) & MASK32
    x = x ^ (x >> 15)
    return x


def rand_prefix(seed: int, step: int, salt: int) -> int:
    """Host-side part of the counter-based random stream: mixes seed (64-bit), step and salt."""
    return mix32(mix32(mix32((seed & MASK32) ^ salt) ^ ((seed >> 32) & MASK32)) ^ (step & MASK32))


def word_rand(prefix: int, row, word):
    return mix32(mix32(prefix ^ (row & MASK32)) ^ (word & MASK32))


def rand_below(r, n):
    return ((r >> 8) * n) >> 24


def key_hash(ids) -> int:
    """Hash of a subword-id sequence (Python ints)."""
    h1 = h2 = 0
    for t in ids:
        h1 = (h1 * KEY_BASE1 + t + 1) % KEY_MOD1
        h2 = (h2 * KEY_BASE2 + t + 1) % KEY_MOD2
    return (h1 << 31) | h2


def longest_first(l0, l1, budget):
    """Kept lengths (k0, k1) of two segments cut to ``budget`` tokens, like the fast tokenizers'
    ``longest_first``: only the longer segment is cut while the shorter fits in half the budget;
    otherwise the shorter keeps budget // 2 and the longer the rest (the second segment on a tie)."""
    budget = budget.clamp_min(0)
    swap = l0 > l1
    n1 = torch.minimum(l0, l1)
    n2 = torch.where(n1 > budget, n1, torch.maximum(n1, budget - n1))
    both = n1 + n2 > budget
    n1, n2 = torch.where(both, budget // 2, n1), torch.where(both, budget // 2 + budget % 2, n2)
    k0, k1 = torch.where(swap, n2, n1), torch.where(swap, n1, n2)
    fits = l0 + l1 <= budget
    return torch.where(fits, l0, torch.minimum(k0, l0)), torch.where(fits, l1, torch.minimum(k1, l1))


def codeswitch(
    input_ids: torch.Tensor,  # [B, L] int
    attention_mask: torch.Tensor,  # [B, L] 0/1
    token_type_ids: torch.Tensor,  # [B, L] int
    word_start: torch.Tensor,  # [V] bool
    special: torch.Tensor,  # [V] bool
    key_hash_: torch.Tensor,  # [K] int64 sorted
    key_offsets: torch.Tensor,  # [K+1] int64
    key_ids: torch.Tensor,  # int64
    entry_offsets: torch.Tensor,  # [K*n_lang+1] int64
    trans_offsets: torch.Tensor,  # [T+1] int64
    trans_ids: torch.Tensor,  # int64
    lang_ids: torch.Tensor,  # [n_active] int64
    max_key_len: int,
    prefix_switch: int,
    prefix_lang: int,
    prefix_trans: int,
    threshold: int,
    max_length: int,
    pad_id: int,
):
    """Returns (input_ids, attention_mask, token_type_ids, source_index) [B, L'] int64 and
    (n_switched, n_words) [B] int64. See the module docstring for the contract."""
    dev = input_ids.device
    ids = input_ids.long()
    att = attention_mask.long() != 0
    tt = token_type_ids.long()
    B, L = ids.shape
    K = key_hash_.numel()
    n_lang = (entry_offsets.numel() - 1) // max(K, 1)
    pos = torch.arange(L, device=dev).expand(B, L)

    # --- words -----------------------------------------------------------------------------------
    sp = special[ids] & att
    content = att & ~sp
    prev_content = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=dev), content[:, :-1]], 1)
    prev_tt = torch.cat([tt[:, :1], tt[:, :-1]], 1)
    starts = content & (word_start[ids] | ~prev_content | (tt != prev_tt))
    word_idx = torch.cumsum(starts.long(), 1) - 1
    n_words = starts.sum(1)
    # End (exclusive) of the word starting at each position: the next start or non-content position.
    boundary = starts | ~content
    nxt = torch.where(boundary, pos, torch.full_like(pos, L))
    nxt = torch.cat([nxt[:, 1:], torch.full((B, 1), L, device=dev, dtype=torch.long)], 1)
    word_end = torch.flip(torch.cummin(torch.flip(nxt, [1]), 1).values, [1])
    word_len = word_end - pos

    # --- lexicon lookup at word starts ---------------------------------------------------------------
    h1 = torch.zeros(B, L, dtype=torch.long, device=dev)
    h2 = torch.zeros(B, L, dtype=torch.long, device=dev)
    for k in range(max_key_len):
        tok = torch.gather(ids, 1, (pos + k).clamp_max(L - 1))
        inside = k < word_len
        h1 = torch.where(inside, (h1 * KEY_BASE1 + tok + 1) % KEY_MOD1, h1)
        h2 = torch.where(inside, (h2 * KEY_BASE2 + tok + 1) % KEY_MOD2, h2)
    key = (h1 << 31) | h2
    candidate = starts & (word_len <= max_key_len) & (K > 0)
    if K > 0:
        entry = torch.searchsorted(key_hash_, key).clamp_max(K - 1)
        found = candidate & (key_hash_[entry] == key)
        k_start = key_offsets[entry]
        found &= (key_offsets[entry + 1] - k_start) == word_len
        for k in range(max_key_len):
            tok = torch.gather(ids, 1, (pos + k).clamp_max(L - 1))
            kid = key_ids[(k_start + k).clamp(0, key_ids.numel() - 1)]
            found &= (k >= word_len) | (kid == tok)
    else:
        entry = torch.zeros_like(ids)
        found = candidate

    # --- random decisions ------------------------------------------------------------------------------
    row = torch.arange(B, device=dev)[:, None].expand(B, L)
    wsafe = word_idx.clamp_min(0)
    switch = found & ((word_rand(prefix_switch, row, wsafe) >> 8) < threshold)
    n_active = lang_ids.numel()
    if n_active > 1:
        lang = lang_ids[rand_below(word_rand(prefix_lang, row, wsafe), n_active)]
    else:
        lang = lang_ids[0].expand(B, L)
    eo = entry * n_lang + lang
    t_lo = entry_offsets[eo]
    n_t = entry_offsets[eo + 1] - t_lo
    switch &= n_t > 0
    trans = t_lo + rand_below(word_rand(prefix_trans, row, wsafe), n_t.clamp_min(1))
    trans = torch.where(switch, trans, torch.zeros_like(trans))
    tr_lo = trans_offsets[trans]
    tr_len = trans_offsets[trans + 1] - tr_lo
    n_switched = switch.sum(1)

    # --- output token counts per input position ---------------------------------------------------
    word_first = torch.cummax(torch.where(starts, pos, torch.full_like(pos, -1)), 1).values
    in_switched = content & torch.gather(switch, 1, word_first.clamp_min(0))
    count = torch.where(att, torch.ones_like(ids), torch.zeros_like(ids))
    count = torch.where(in_switched, torch.where(starts, tr_len, torch.zeros_like(ids)), count)

    # --- truncation ----------------------------------------------------------------------------------
    seg1 = tt != 0
    c0 = torch.where(content & ~seg1, count, torch.zeros_like(count))
    c1 = torch.where(content & seg1, count, torch.zeros_like(count))
    l0, l1, n_sp = c0.sum(1), c1.sum(1), sp.sum(1)
    if max_length >= 0:
        k0, k1 = longest_first(l0, l1, max_length - n_sp)
    else:
        k0, k1 = l0, l1
    rank0 = torch.cumsum(c0, 1) - c0  # segment rank of this position's first output token
    rank1 = torch.cumsum(c1, 1) - c1

    # --- expand and scatter --------------------------------------------------------------------------
    flat_count = count.flatten()
    total = int(flat_count.sum())
    src = torch.repeat_interleave(torch.arange(B * L, device=dev), flat_count, output_size=total)
    first = torch.cumsum(flat_count, 0) - flat_count
    j = torch.arange(total, device=dev) - first[src]
    r, l = src // L, src % L
    tok = torch.where(in_switched[r, l], trans_ids[(tr_lo[r, l] + j).clamp(0, trans_ids.numel() - 1)], ids[r, l])
    is_sp = sp[r, l]
    s1 = seg1[r, l]
    rank = torch.where(s1, rank1[r, l], rank0[r, l]) + j
    keep = is_sp | (rank < torch.where(s1, k1[r], k0[r]))
    r, l, tok, keep = r[keep], l[keep], tok[keep], keep
    out_pos = torch.cumsum(torch.ones_like(r), 0) - 1
    row_first = torch.zeros(B, dtype=torch.long, device=dev)
    row_len = torch.bincount(r, minlength=B)
    row_first[1:] = torch.cumsum(row_len, 0)[:-1]
    out_pos = out_pos - row_first[r]
    width = max_length if max_length >= 0 else int(row_len.max()) if B > 0 else 0
    in_range = out_pos < width
    r, l, tok, out_pos = r[in_range], l[in_range], tok[in_range], out_pos[in_range]

    out_ids = torch.full((B, width), pad_id, dtype=torch.long, device=dev)
    out_mask = torch.zeros(B, width, dtype=torch.long, device=dev)
    out_tt = torch.zeros(B, width, dtype=torch.long, device=dev)
    out_src = torch.full((B, width), -1, dtype=torch.long, device=dev)
    out_ids[r, out_pos] = tok
    out_mask[r, out_pos] = 1
    out_tt[r, out_pos] = tt[r, l]
    out_src[r, out_pos] = l
    return out_ids, out_mask, out_tt, out_src, n_switched, n_words
