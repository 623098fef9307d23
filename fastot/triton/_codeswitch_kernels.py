"""Triton kernel of the code-switch op: BLOCK_B rows per program, a whole row (BLOCK_L >= L positions) in
registers, every step vectorised over positions. The contract is ``fastot/reference/codeswitch.py``; this
kernel follows the same vectorised plan (word starts, prefix hashes, binary search, greedy units by a scan of
packed automaton transitions, counter-based randomness, per-segment ranks, longest_first, scatter).

Values that live one position away (the previous or next token) are reloaded from global memory (cached)
rather than shifted in registers, and so are the tokens at a multi-word span's end; word ends at data-dependent
positions use ``tl.gather``, and so do the running min / max / composition scans (log-step doubling).
All integer arithmetic is int64, exactly as in ``csrc/common/hash.h``.
"""

from __future__ import annotations

import triton
import triton.language as tl

MASK32 = 0xFFFFFFFF
KEY_MOD1, KEY_MOD2 = 2147483647, 2147483629
KEY_BASE1, KEY_BASE2 = 1000003, 999983


@triton.jit
def _mix32(x):
    x = x & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x = x ^ (x >> 12)
    x = (x * 0x297A2D39) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    return x


@triton.jit
def _word_rand(prefix, row, word):
    return _mix32(_mix32(prefix ^ (row & 0xFFFFFFFF)) ^ (word & 0xFFFFFFFF))


@triton.jit
def _rand_below(r, n):
    return ((r >> 8) * n) >> 24


@triton.jit
def _compose(a, b):
    """Packed transition functions (3 bits per state, 8 states): apply ``a`` first, then ``b``."""
    h = tl.zeros_like(a)
    for s in tl.static_range(8):
        a_s = (a >> (3 * s)) & 7
        h = h | (((b >> (3 * a_s)) & 7) << (3 * s))
    return h


# Scans along a row as log-step (Hillis-Steele) doubling over tl.gather: one code path on the GPU and in the
# interpreter, whose tl.associative_scan with a custom combine runs element by element in Python.
@triton.jit
def _scan_max(x, o_pos, LOG2_L: tl.constexpr):
    """Inclusive running maximum along axis 1."""
    for i in tl.static_range(LOG2_L):
        prev = tl.gather(x, tl.maximum(o_pos - (1 << i), 0).to(tl.int32), 1)
        x = tl.where(o_pos >= (1 << i), tl.maximum(x, prev), x)
    return x


@triton.jit
def _rscan_min(x, o_pos, BLOCK_L: tl.constexpr, LOG2_L: tl.constexpr):
    """Inclusive running minimum along axis 1, from the end of the row."""
    for i in tl.static_range(LOG2_L):
        nxt = tl.gather(x, tl.minimum(o_pos + (1 << i), BLOCK_L - 1).to(tl.int32), 1)
        x = tl.where(o_pos + (1 << i) < BLOCK_L, tl.minimum(x, nxt), x)
    return x


@triton.jit
def _scan_compose(f, o_pos, LOG2_L: tl.constexpr):
    """Inclusive scan of packed transition functions: position p gets f[p] o ... o f[0]."""
    for i in tl.static_range(LOG2_L):
        prev = tl.gather(f, tl.maximum(o_pos - (1 << i), 0).to(tl.int32), 1)
        f = tl.where(o_pos >= (1 << i), _compose(prev, f), f)
    return f


@triton.jit
def _codeswitch_kernel(
    ids_ptr, att_ptr, tt_ptr,  # [B, L] int64 inputs
    word_start_ptr, special_ptr,  # [V] uint8 vocabulary tables
    key_hash_ptr, key_offsets_ptr, key_ids_ptr,  # lexicon keys: [K] sorted hashes, CSR ids
    entry_offsets_ptr, trans_offsets_ptr, trans_ids_ptr,  # translations per (key, language), CSR ids
    lang_ids_ptr,  # [n_active] int64 active languages
    out_ids_ptr, out_att_ptr, out_tt_ptr, out_src_ptr,  # [B, width] int64, pre-filled with padding (WRITE)
    n_switched_ptr, n_words_ptr,  # [B, n_active], [B] int64 (WRITE)
    row_len_ptr,  # [B] int64 output row lengths (not WRITE)
    B, L, K, n_lang, n_active, max_key_len, search_steps,  # sizes; search_steps = bit_length(K)
    prefix_switch, prefix_lang, prefix_trans, threshold, row_offset,  # randomness (see the reference)
    max_length, width,  # truncation budget (TRUNCATE) and output width
    BLOCK_B: tl.constexpr, BLOCK_L: tl.constexpr, LOG2_L: tl.constexpr,  # BLOCK_L = 2**LOG2_L >= L
    MAX_KEY_WORDS: tl.constexpr,  # most words a key spans; 1 skips the unit scan
    TRUNCATE: tl.constexpr, WRITE: tl.constexpr,
):
    i_b = tl.program_id(0)
    o_b = (i_b * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    o_l = tl.arange(0, BLOCK_L).to(tl.int64)
    m_b = o_b < B
    m_bl = m_b[:, None] & (o_l < L)[None, :]
    row0 = o_b[:, None] * L
    o_pos = o_l[None, :] + tl.zeros([BLOCK_B, BLOCK_L], tl.int64)

    # --- words -----------------------------------------------------------------------------------
    b_ids = tl.load(ids_ptr + row0 + o_pos, mask=m_bl, other=0)
    b_att = (tl.load(att_ptr + row0 + o_pos, mask=m_bl, other=0) != 0) & m_bl
    b_tt = tl.load(tt_ptr + row0 + o_pos, mask=m_bl, other=0)
    b_sp = (tl.load(special_ptr + b_ids, mask=m_bl, other=0) != 0) & b_att
    b_content = b_att & ~b_sp
    m_prev = m_bl & (o_pos > 0)
    p_ids = tl.load(ids_ptr + row0 + o_pos - 1, mask=m_prev, other=0)
    p_content = ((tl.load(att_ptr + row0 + o_pos - 1, mask=m_prev, other=0) != 0)
                 & (tl.load(special_ptr + p_ids, mask=m_prev, other=0) == 0) & m_prev)
    p_tt = tl.load(tt_ptr + row0 + o_pos - 1, mask=m_prev, other=0)
    b_ws = tl.load(word_start_ptr + b_ids, mask=m_bl, other=0) != 0
    starts = b_content & (b_ws | ~p_content | (b_tt != p_tt))
    # The next position starts a word or is no content: the end of the word holding this position is the
    # first such position after it (a reverse running minimum).
    m_next = m_bl & (o_pos + 1 < L)
    n_ids = tl.load(ids_ptr + row0 + o_pos + 1, mask=m_next, other=0)
    n_content = ((tl.load(att_ptr + row0 + o_pos + 1, mask=m_next, other=0) != 0)
                 & (tl.load(special_ptr + n_ids, mask=m_next, other=0) == 0) & m_next)
    n_tt = tl.load(tt_ptr + row0 + o_pos + 1, mask=m_next, other=0)
    n_start = n_content & ((tl.load(word_start_ptr + n_ids, mask=m_next, other=0) != 0) | ~b_content | (n_tt != b_tt))
    n_boundary = n_start | ~n_content
    word_end = _rscan_min(tl.where(n_boundary, o_pos + 1, L), o_pos, BLOCK_L, LOG2_L)
    word_no = tl.cumsum(starts.to(tl.int64), 1) - 1
    n_words = tl.sum(starts.to(tl.int64), 1)

    # --- longest lexicon match at each word start ---------------------------------------------------
    span_words = tl.full([BLOCK_B, BLOCK_L], 1, tl.int64)
    entry = tl.zeros([BLOCK_B, BLOCK_L], tl.int64)
    found = starts & (o_pos < 0)
    alive = starts
    span_end = word_end
    for n in tl.static_range(1, MAX_KEY_WORDS + 1):
        if n > 1:
            m_e = alive & (span_end < L)
            e_ids = tl.load(ids_ptr + row0 + span_end, mask=m_e, other=0)
            e_content = ((tl.load(att_ptr + row0 + span_end, mask=m_e, other=0) != 0)
                         & (tl.load(special_ptr + e_ids, mask=m_e, other=0) == 0))
            e_tt = tl.load(tt_ptr + row0 + span_end, mask=m_e, other=0)
            alive = m_e & e_content & (e_tt == b_tt)
            span_end = tl.where(alive, tl.gather(word_end, tl.minimum(span_end, L - 1).to(tl.int32), 1), span_end)
        span_len = span_end - o_pos
        ok = alive & (span_len <= max_key_len)
        h1 = tl.zeros([BLOCK_B, BLOCK_L], tl.int64)
        h2 = tl.zeros([BLOCK_B, BLOCK_L], tl.int64)
        for k in range(0, max_key_len):
            m_k = ok & (k < span_len)
            tok = tl.load(ids_ptr + row0 + o_pos + k, mask=m_k, other=0)
            h1 = tl.where(m_k, (h1 * 1000003 + tok + 1) % 2147483647, h1)
            h2 = tl.where(m_k, (h2 * 999983 + tok + 1) % 2147483629, h2)
        key = (h1 << 31) | h2
        lo = tl.zeros([BLOCK_B, BLOCK_L], tl.int64)
        hi = tl.where(ok, K, 0).to(tl.int64)
        for _ in range(0, search_steps):  # lower_bound of key in key_hash
            live = lo < hi
            mid = (lo + hi) >> 1
            v = tl.load(key_hash_ptr + mid, mask=live, other=0)
            right = live & (v < key)
            lo = tl.where(right, mid + 1, lo)
            hi = tl.where(live & ~right, mid, hi)
        hit = ok & (lo < K)
        hit = hit & (tl.load(key_hash_ptr + lo, mask=hit, other=-1) == key)
        k_start = tl.load(key_offsets_ptr + lo, mask=hit, other=0)
        hit = hit & ((tl.load(key_offsets_ptr + lo + 1, mask=hit, other=0) - k_start) == span_len)
        for k in range(0, max_key_len):
            m_k = hit & (k < span_len)
            kid = tl.load(key_ids_ptr + k_start + k, mask=m_k, other=0)
            tok = tl.load(ids_ptr + row0 + o_pos + k, mask=m_k, other=0)
            hit = hit & ((k >= span_len) | (kid == tok))
        span_words = tl.where(hit, n, span_words)
        entry = tl.where(hit, lo, entry)
        found = found | hit

    # --- units: greedy from the left, as a scan of packed automaton transitions ----------------------
    if MAX_KEY_WORDS > 1:
        f = tl.zeros([BLOCK_B, BLOCK_L], tl.int32)
        for s in tl.static_range(8):  # a word start maps state 0 to span_words - 1, state s > 0 to s - 1
            if s == 0:
                nxt = tl.where(starts, span_words.to(tl.int32) - 1, 0)
            else:
                nxt = tl.where(starts, s - 1, s)
            f = f | (nxt.to(tl.int32) << (3 * s))
        after = _scan_compose(f, o_pos, LOG2_L) & 7  # state after each position, from state 0
        before = tl.gather(after, tl.maximum(o_pos - 1, 0).to(tl.int32), 1)
        before = tl.where(o_pos == 0, 0, before)
        unit = starts & (before == 0)
    else:
        unit = starts

    # --- random decisions per unit ---------------------------------------------------------------------
    row = o_b[:, None] + row_offset + tl.zeros([BLOCK_B, BLOCK_L], tl.int64)
    w = tl.maximum(word_no, 0)
    switch = unit & found & ((_word_rand(prefix_switch, row, w) >> 8) < threshold)
    active = tl.where(n_active > 1, _rand_below(_word_rand(prefix_lang, row, w), n_active), 0)
    lang = tl.load(lang_ids_ptr + active, mask=switch, other=0)
    eo = entry * n_lang + lang
    t_lo = tl.load(entry_offsets_ptr + eo, mask=switch, other=0)
    n_t = tl.load(entry_offsets_ptr + eo + 1, mask=switch, other=0) - t_lo
    switch = switch & (n_t > 0)
    trans = t_lo + _rand_below(_word_rand(prefix_trans, row, w), tl.maximum(n_t, 1))
    tr_lo = tl.load(trans_offsets_ptr + trans, mask=switch, other=0)
    tr_len = tl.load(trans_offsets_ptr + trans + 1, mask=switch, other=0) - tr_lo

    # --- output tokens per input position, truncation, output positions ------------------------------
    unit_first = _scan_max(tl.where(unit, o_pos, -1), o_pos, LOG2_L)
    in_switched = b_content & (tl.gather(switch.to(tl.int32), tl.maximum(unit_first, 0).to(tl.int32), 1) != 0)
    count = tl.where(in_switched, tl.where(unit, tr_len, 0), tl.where(b_att, 1, 0))
    seg1 = b_tt != 0
    c0 = tl.where(b_content & ~seg1, count, 0)
    c1 = tl.where(b_content & seg1, count, 0)
    l0 = tl.sum(c0, 1)
    l1 = tl.sum(c1, 1)
    k0 = l0
    k1 = l1
    if TRUNCATE:  # longest_first, as csrc/common/codeswitch_row.h
        budget = tl.maximum(max_length - tl.sum(b_sp.to(tl.int64), 1), 0)
        swap = l0 > l1
        s1 = tl.minimum(l0, l1)
        s2 = tl.where(s1 > budget, s1, tl.maximum(s1, budget - s1))
        both = s1 + s2 > budget
        s1, s2 = tl.where(both, budget // 2, s1), tl.where(both, budget // 2 + budget % 2, s2)
        fits = l0 + l1 <= budget
        k0 = tl.where(fits, l0, tl.minimum(tl.where(swap, s2, s1), l0))
        k1 = tl.where(fits, l1, tl.minimum(tl.where(swap, s1, s2), l1))
    rank = tl.where(seg1, tl.cumsum(c1, 1) - c1, tl.cumsum(c0, 1) - c0)
    k_seg = tl.where(seg1, k1[:, None], k0[:, None])
    kept = tl.where(b_sp, 1, tl.where(b_content, tl.minimum(tl.maximum(k_seg - rank, 0), count), 0))
    out_start = tl.cumsum(kept, 1) - kept

    if WRITE:
        for j in range(0, tl.max(tl.max(kept, 1), 0)):  # the most tokens any position of the block writes
            m_j = m_bl & (j < kept) & (out_start + j < width)
            tok = tl.where(in_switched, tl.load(trans_ids_ptr + tr_lo + j, mask=m_j & in_switched, other=0), b_ids)
            o_out = o_b[:, None] * width + out_start + j
            tl.store(out_ids_ptr + o_out, tok, mask=m_j)
            tl.store(out_att_ptr + o_out, tl.full([BLOCK_B, BLOCK_L], 1, tl.int64), mask=m_j)
            tl.store(out_tt_ptr + o_out, b_tt, mask=m_j)
            tl.store(out_src_ptr + o_out, o_pos, mask=m_j)
        tl.store(n_words_ptr + o_b, n_words, mask=m_b)
        for a in range(0, n_active):
            n_sw = tl.sum(tl.where(switch & (active == a), span_words, 0), 1)
            tl.store(n_switched_ptr + o_b * n_active + a, n_sw, mask=m_b)
    else:
        tl.store(row_len_ptr + o_b, tl.sum(kept, 1), mask=m_b)
