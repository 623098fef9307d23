"""Plain PyTorch code-switch token substitution: the fallback and the test oracle.

Contract (every backend is bit-identical to this):

* Rows of ``input_ids`` [B, L] are scanned left to right over attended positions. A special token
  (``special[id]``) is copied. Any other token starts a *word* that extends over the following
  attended, non-special tokens of the same segment that are not word starts (``word_start[id]``,
  e.g. WordPiece pieces without ``##``, SentencePiece pieces with ``▁``). Words are numbered 0, 1, ...
  per row, counting every word.
* Lexicon keys are subword-id sequences of one or more adjacent words (a key's words are told by the
  same word-start rule; at most ``max_key_words`` words and ``max_key_len`` ids). Each key is a 62-bit
  polynomial hash, verified id by id. Rows are cut into *units* greedily from the left: at a unit's first
  word, the unit is the longest run of adjacent words of one segment (no special token or padding between)
  whose ids form a key, else that single word; the next unit begins after it ("longest match first").
* A unit that is a key is switched when ``rand(prefix_switch, row, w) >> 8 < threshold``
  (threshold = round(p·2^24), w = the number of its first word). The language is ``lang_ids[0]``, or with
  several active languages ``lang_ids[a]``, ``a = rand_below(rand(prefix_lang, row, w), n_active)``. If the
  entry has n > 0 translations in that language, translation ``rand_below(rand(prefix_trans, row, w), n)``
  replaces the unit's tokens; otherwise the unit is kept (no fallback to another language).
* ``n_switched[row, a]`` counts the words of the switched units whose drawn language is ``lang_ids[a]``;
  ``n_words[row]`` counts every word.
* Output tokens keep the segment (token type) of their source; ``source_index`` is the input position a
  token came from (the unit's first position for translation tokens), -1 on padding.
* With ``max_length >= 0`` rows are cut like the Hugging Face fast tokenizers' ``longest_first``
  (segments = token type 0 and the rest; only the longer one is cut while the shorter fits in half the
  budget, else the shorter keeps budget // 2 and the longer the rest, the second on a tie; tokens go
  from the end of a segment); special tokens are never dropped; the output is exactly ``max_length`` wide. Without it the output is as wide as its longest row.
* Padding (attention 0) in the input is dropped; outputs are right-padded with ``pad_id``.

All randomness is integer arithmetic on (seed, step, row, word): see ``csrc/common/hash.h``.
"""

from __future__ import annotations

import torch

__all__ = ["codeswitch", "codeswitch_fake", "MAX_KEY_WORDS", "mix32", "rand_prefix", "key_hash", "SALT_SWITCH", "SALT_LANG",
           "SALT_TRANS"]

MASK32 = 0xFFFFFFFF
KEY_MOD1, KEY_MOD2 = 2147483647, 2147483629
KEY_BASE1, KEY_BASE2 = 1000003, 999983
SALT_SWITCH, SALT_LANG, SALT_TRANS = 0x243F6A88, 0x85A308D3, 0x13198A2E
MAX_KEY_WORDS = 8  # the longest multi-word key ("longest match first" tracks it in 3 bits per state)


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


def _unit_starts(starts: torch.Tensor, span_words: torch.Tensor, max_key_words: int) -> torch.Tensor:
    """Greedy left-to-right units: a word starts a unit unless an earlier matched span covers it.

    The greedy walk is an automaton whose state is the number of words still covered by the current unit
    (0 .. max_key_words-1); each word start maps state 0 to ``span_words - 1`` and state s > 0 to s - 1.
    The per-position transition functions are packed 3 bits per state into one integer and composed with a
    log-step (Hillis-Steele) inclusive scan, so there is no loop over words.
    """
    B, L = starts.shape
    S = max_key_words
    state = torch.arange(S, device=starts.device)
    # f(s) for every position: identity off word starts.
    nxt = torch.where(starts[..., None], torch.where(state == 0, (span_words - 1)[..., None], state - 1), state)
    f = (nxt << (3 * state)).sum(-1)
    d = 1
    while d < L:  # inclusive scan: F[p] = f[p] o F[p-d]
        a, b = f[:, :-d], f[:, d:]
        comp = torch.zeros_like(b)
        for s_ in range(S):
            a_s = (a >> (3 * s_)) & 7
            comp |= ((b >> (3 * a_s)) & 7) << (3 * s_)
        f = torch.cat([f[:, :d], comp], 1)
        d *= 2
    before = torch.cat([torch.zeros(B, 1, dtype=f.dtype, device=f.device), f[:, :-1] & 7], 1)  # F[p-1](0)
    return starts & (before == 0)


def check_values(input_ids, attention_mask, word_start, key_hash, entry_offsets, lang_ids, max_key_words) -> None:
    """The values the kernels index with (the checks of csrc/checks.h ``check_codeswitch_values``, same messages):
    input ids in [0, V), attention masks 0/1, active languages in [0, n_lang). Raised on CPU in eager mode; on an
    accelerator or under torch.compile checked on the device (``torch._assert_async``, no host synchronisation)."""
    V, n_lang = word_start.numel(), (entry_offsets.numel() - 1) // max(key_hash.numel(), 1)
    if not 1 <= max_key_words <= 8:
        raise ValueError(f"codeswitch: max_key_words must be in [1, 8], got {max_key_words}")
    checks = [(((lang_ids >= 0) & (lang_ids < n_lang)).all(),
               f"codeswitch: lang_ids must be in [0, {n_lang}) (the lexicon's languages)")]
    if input_ids.numel():
        checks.append((((input_ids >= 0) & (input_ids < V)).all(),
                       f"codeswitch: input_ids must be in [0, {V}) (the lexicon's vocabulary: was it built for "
                       f"another tokenizer?)"))
        checks.append((((attention_mask == 0) | (attention_mask == 1)).all(), "codeswitch: attention_mask must be 0 or 1"))
    eager_cpu = input_ids.device.type == "cpu" and not torch.compiler.is_compiling()
    for ok, msg in checks:
        if eager_cpu:
            if not bool(ok):
                raise ValueError(msg)
        else:
            torch._assert_async(ok, msg)


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
    max_key_words: int,
    prefix_switch: int,
    prefix_lang: int,
    prefix_trans: int,
    threshold: int,
    max_length: int,
    pad_id: int,
    row_offset: int = 0,  # row r draws as row r + row_offset (its index in a global batch)
):
    """Returns (input_ids, attention_mask, token_type_ids, source_index) [B, L'] int64, n_switched
    [B, n_active] int64 (switched words per active language) and n_words [B] int64. See the module
    docstring for the contract."""
    check_values(input_ids, attention_mask, word_start, key_hash_, entry_offsets, lang_ids, max_key_words)
    dev = input_ids.device
    ids = input_ids.long()
    att = attention_mask.long() != 0
    tt = token_type_ids.long()
    B, L = ids.shape
    K = key_hash_.numel()
    n_lang = (entry_offsets.numel() - 1) // max(K, 1)
    n_active = lang_ids.numel()
    pos = torch.arange(L, device=dev).expand(B, L)
    gather = lambda t, i: torch.gather(t, 1, i.clamp(0, max(L - 1, 0)))  # noqa: E731

    # --- words -----------------------------------------------------------------------------------
    sp = special[ids] & att
    content = att & ~sp
    prev_content = torch.cat([torch.zeros(B, 1, dtype=torch.bool, device=dev), content[:, :-1]], 1)
    prev_tt = torch.cat([tt[:, :1], tt[:, :-1]], 1)
    starts = content & (word_start[ids] | ~prev_content | (tt != prev_tt))
    n_words = starts.sum(1)
    word_no = torch.cumsum(starts.long(), 1) - 1
    # End (exclusive) of the word starting at each position: the next start or non-content position.
    boundary = starts | ~content
    nxt = torch.where(boundary, pos, torch.full_like(pos, L))
    nxt = torch.cat([nxt[:, 1:], torch.full((B, 1), L, device=dev, dtype=torch.long)], 1)
    word_end = torch.flip(torch.cummin(torch.flip(nxt, [1]), 1).values, [1])

    # --- longest lexicon match at each word start: spans of 1..max_key_words adjacent words ----------
    # Prefix hashes of ids[p : p+k] for k = 1..max_key_len, at every position.
    h1 = torch.zeros(B, L, dtype=torch.long, device=dev)
    h2 = torch.zeros(B, L, dtype=torch.long, device=dev)
    prefix_keys = torch.empty(max_key_len, B, L, dtype=torch.long, device=dev)
    for k in range(max_key_len):
        tok = gather(ids, pos + k)
        h1 = (h1 * KEY_BASE1 + tok + 1) % KEY_MOD1
        h2 = (h2 * KEY_BASE2 + tok + 1) % KEY_MOD2
        prefix_keys[k] = (h1 << 31) | h2
    span_words = torch.ones_like(ids)  # words in the unit that starts here (1 when nothing matches)
    entry = torch.zeros_like(ids)  # its lexicon entry
    found = torch.zeros_like(starts)
    span_end = word_end
    alive = starts.clone()  # the span of n words exists (adjacent words, one segment)
    for n in range(1, max_key_words + 1):
        if n > 1:
            alive &= (span_end < L) & gather(content, span_end) & (gather(tt, span_end) == tt)
            span_end = torch.where(alive, gather(word_end, span_end), span_end)
        span_len = span_end - pos
        ok = alive & (span_len <= max_key_len)
        if not bool(ok.any()) or K == 0:
            continue
        key = prefix_keys.gather(0, (span_len - 1).clamp(0, max_key_len - 1)[None])[0]
        e = torch.searchsorted(key_hash_, key).clamp_max(K - 1)
        hit = ok & (key_hash_[e] == key)
        k_start = key_offsets[e]
        hit &= (key_offsets[e + 1] - k_start) == span_len
        for k in range(max_key_len):
            kid = key_ids[(k_start + k).clamp(0, key_ids.numel() - 1)]
            hit &= (k >= span_len) | (kid == gather(ids, pos + k))
        span_words = torch.where(hit, n, span_words)
        entry = torch.where(hit, e, entry)
        found |= hit
    unit = _unit_starts(starts, span_words, max_key_words) if max_key_words > 1 else starts

    # --- random decisions per unit, counted by the word number of its first word -----------------------
    row = (torch.arange(B, device=dev) + row_offset)[:, None].expand(B, L)
    wsafe = word_no.clamp_min(0)
    switch = unit & found & ((word_rand(prefix_switch, row, wsafe) >> 8) < threshold)
    if n_active > 1:
        active = rand_below(word_rand(prefix_lang, row, wsafe), n_active)
    else:
        active = torch.zeros_like(ids)
    eo = entry * n_lang + lang_ids[active]
    t_lo = entry_offsets[eo]
    n_t = entry_offsets[eo + 1] - t_lo
    switch &= n_t > 0
    trans = t_lo + rand_below(word_rand(prefix_trans, row, wsafe), n_t.clamp_min(1))
    trans = torch.where(switch, trans, torch.zeros_like(trans))
    last = trans_offsets.numel() - 1  # a lexicon may hold no translation at all (then nothing switches)
    tr_lo = trans_offsets[trans.clamp_max(last)]
    tr_len = trans_offsets[(trans + 1).clamp_max(last)] - tr_lo
    n_switched = torch.zeros(B, n_active, dtype=torch.long, device=dev)
    n_switched.scatter_add_(1, active, torch.where(switch, span_words, torch.zeros_like(span_words)))

    # --- output token counts per input position ---------------------------------------------------
    unit_first = torch.cummax(torch.where(unit, pos, torch.full_like(pos, -1)), 1).values
    in_switched = content & gather(switch, unit_first)
    count = torch.where(att, torch.ones_like(ids), torch.zeros_like(ids))
    count = torch.where(in_switched, torch.where(unit, tr_len, torch.zeros_like(ids)), count)

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
    if trans_ids.numel():
        tok = torch.where(in_switched[r, l], trans_ids[(tr_lo[r, l] + j).clamp(0, trans_ids.numel() - 1)], ids[r, l])
    else:  # no translations: nothing was switched
        tok = ids[r, l]
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


def codeswitch_fake(input_ids, attention_mask, token_type_ids, word_start, special, key_hash, key_offsets, key_ids,
                    entry_offsets, trans_offsets, trans_ids, lang_ids, max_key_len, max_key_words, prefix_switch,
                    prefix_lang, prefix_trans, threshold, max_length, pad_id, row_offset=0):
    """Meta implementation of every registered code-switch op (dynamic width unless max_length is given)."""
    B = input_ids.shape[0]
    width = max_length if max_length >= 0 else torch.library.get_ctx().new_dynamic_size()
    mk = lambda: input_ids.new_empty((B, width), dtype=torch.long)  # noqa: E731
    return (mk(), mk(), mk(), mk(), input_ids.new_empty((B, lang_ids.shape[0]), dtype=torch.long),
            input_ids.new_empty((B,), dtype=torch.long))
