"""Fake (meta) implementations of the compiled ops, so they trace under torch.compile and FakeTensorMode.

Imported by ``fastot/__init__.py`` once the extension is loaded. The library names this module
(``set_python_module`` in csrc/fastot.cpp), so with ``fastot._C`` loaded alone (``torch.ops.load_library``) a fake
tensor call says to import it, and importing it is enough. A module runs once, so each fake is registered once.
"""

from __future__ import annotations

import torch

from .reference import sinkhorn as ref
from .reference.codeswitch import codeswitch_fake


@torch.library.register_fake("fastot::sinkhorn_fwd")
def _(cost, a, b, eps, max_iter, tol, tau_a, tau_b, f0=None, g0=None):
    B, N, M = cost.shape
    dt = ref.compute_dtype(cost.dtype)
    return (cost.new_empty((B, N), dtype=dt), cost.new_empty((B, M), dtype=dt),
            cost.new_empty((B,), dtype=torch.int32), cost.new_empty((B,), dtype=dt))


@torch.library.register_fake("fastot::sinkhorn_fwd_scaling")
def _(cost, a, b, eps, max_iter, tol, tau_a, tau_b, absorb=20.0, f0=None, g0=None, eps_stages=None):
    B = cost.shape[0]
    stats = cost.new_empty((B,), dtype=torch.int32), cost.new_empty((B,), dtype=torch.bool)
    return (*torch.ops.fastot.sinkhorn_fwd.default(cost, a, b, eps, max_iter, tol, tau_a, tau_b), *stats)


@torch.library.register_fake("fastot::sinkhorn_plan")
def _(cost, a, b, f, g, eps):
    return cost.new_empty(cost.shape, dtype=ref.compute_dtype(cost.dtype))


@torch.library.register_fake("fastot::sinkhorn_plan_sums")
def _(cost, a, b, f, g, eps):
    dt = ref.compute_dtype(cost.dtype)
    return cost.new_empty((cost.shape[0],), dtype=dt), cost.new_empty((cost.shape[0],), dtype=dt)


@torch.library.register_fake("fastot::sinkhorn_embeddings_fwd")
def _(x, y, a, b, cost, eps, max_iter, tol, tau_a, tau_b, f0=None, g0=None):
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    dt = ref.compute_dtype(x.dtype)
    e = lambda *s: x.new_empty(s, dtype=dt)  # noqa: E731
    return e(B, N), e(B, M), x.new_empty((B,), dtype=torch.int32), e(B), e(B), e(B)


@torch.library.register_fake("fastot::sinkhorn_embeddings_fwd_scaling")
def _(x, y, a, b, cost, eps, max_iter, tol, tau_a, tau_b, absorb=20.0, f0=None, g0=None, eps_stages=None):
    B = x.shape[0]
    stats = x.new_empty((B,), dtype=torch.int32), x.new_empty((B,), dtype=torch.bool)
    return (*torch.ops.fastot.sinkhorn_embeddings_fwd.default(x, y, a, b, cost, eps, max_iter, tol, tau_a, tau_b),
            *stats)


@torch.library.register_fake("fastot::sinkhorn_embeddings_symmetric_fwd")
def _(x, a, cost, eps, max_iter, tol, h0=None, cu_seqlens=None, eps_stages=None):
    B = x.shape[0] if cu_seqlens is None else cu_seqlens.shape[0] - 1
    dt = ref.compute_dtype(x.dtype)
    return a.new_empty(a.shape, dtype=dt), x.new_empty((B,), dtype=torch.int32), x.new_empty((B,), dtype=dt)


@torch.library.register_fake("fastot::sinkhorn_embeddings_bwd")
def _(x, y, a, b, f, g, scale, cost, eps, need_dx=True, need_dy=True):
    dt = ref.compute_dtype(x.dtype)
    return x.new_empty(x.shape, dtype=dt), y.new_empty(y.shape, dtype=dt)


@torch.library.register_fake("fastot::sinkhorn_embeddings_varlen_fwd")
def _(x, y, cu_seqlens_x, cu_seqlens_y, a, b, cost, eps, max_iter, tol, tau_a, tau_b, absorb=None, f0=None, g0=None,
      eps_stages=None):
    B = cu_seqlens_x.shape[0] - 1
    dt = ref.compute_dtype(x.dtype)
    e = lambda *s: x.new_empty(s, dtype=dt)  # noqa: E731
    return (e(x.shape[0]), e(y.shape[0]), x.new_empty((B,), dtype=torch.int32), e(B), e(B), e(B),
            x.new_empty((B,), dtype=torch.int32), x.new_empty((B,), dtype=torch.bool))


@torch.library.register_fake("fastot::sinkhorn_embeddings_varlen_bwd")
def _(x, y, cu_seqlens_x, cu_seqlens_y, a, b, f, g, scale, cost, eps, need_dx=True, need_dy=True):
    dt = ref.compute_dtype(x.dtype)
    return x.new_empty(x.shape, dtype=dt), y.new_empty(y.shape, dtype=dt)


@torch.library.register_fake("fastot::codeswitch")
def _(input_ids, attention_mask, token_type_ids, word_start, special, key_hash, key_offsets, key_ids, entry_offsets,
      trans_offsets, trans_ids, lang_ids, max_key_len, max_key_words, prefix_switch, prefix_lang, prefix_trans,
      threshold, max_length, pad_id, row_offset=0):
    return codeswitch_fake(input_ids, attention_mask, token_type_ids, word_start, special, key_hash, key_offsets,
                           key_ids, entry_offsets, trans_offsets, trans_ids, lang_ids, max_key_len, max_key_words,
                           prefix_switch, prefix_lang, prefix_trans, threshold, max_length, pad_id)
