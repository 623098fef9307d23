"""The debiased Sinkhorn divergence (Feydy et al., "Interpolating between Optimal Transport and MMD using Sinkhorn
Divergences", AISTATS 2019), batched over B pairs of point clouds:

    S(x, y) = OT_eps(a, b) - 1/2 OT_eps(a, a) - 1/2 OT_eps(b, b)

with OT_eps the entropic OT value of :func:`fastot.sinkhorn_embeddings`. For a cost whose Gibbs kernel
exp(-C / eps) is positive definite (``sqeuclidean``; ``cosine`` on the unit sphere) S is nonnegative and 0 exactly
when the two weighted clouds are equal, at convergence; it is geomloss's ``SamplesLoss("sinkhorn", debias=True)``
(whose cost is |x - y|^2 / 2: geomloss with ``blur`` equals S / 2 for ``cost="sqeuclidean"`` and ``eps = 2 blur^2``).

The cross problems run as :func:`fastot.sinkhorn_embeddings` (every backend, iteration scheme and eps schedule).
The self-problems (x, x) and (y, y), one batch of 2B padded to max(N, M) points with zero weights, run the
symmetric update h <- (T(h) + T(T(h))) / 2 (as geomloss): on cpp all steps inside one kernel call, elsewhere each
step one iteration of the same backend's solver warm-started from h; their value and gradient then come from the
same kernels at (h, h). Gradients reach x and y
through all three terms (envelope theorem).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._packed import Packing
from .reference import sinkhorn as ref
from .sinkhorn import (
    _COST_KIND,
    _FUSED,
    METHODS,
    _can_sync,
    _check_embeddings,
    _embedding_kernels,
    _embeddings_range,
    _kernels,
    _mask_weights,
    _packed_inputs,
    _packed_solve,
    _solver_args,
    _stages,
    _varlen_kernels,
    _weights,
    pairwise_cost,
    sinkhorn_embeddings,
)

__all__ = ["SinkhornDivergence", "sinkhorn_divergence"]


@dataclass
class SinkhornDivergence:
    """Result of :func:`sinkhorn_divergence`.

    ``value`` [B]: S = ot_xy - (ot_xx + ot_yy) / 2 (differentiable in x and y; 0 for a pair with an empty side).
    ``ot_xy``, ``ot_xx``, ``ot_yy`` [B]: the three entropic OT values. ``n_iter``, ``err`` [3, B]: iterations (a
    symmetric step counts as one) and final marginal error of the xy, xx and yy problems. ``status`` [B] int8: 0, or the first nonzero
    :data:`fastot.sinkhorn.STATUS` code of the pair's three problems (the pair's outputs are then NaN).
    """

    value: torch.Tensor
    ot_xy: torch.Tensor
    ot_xx: torch.Tensor
    ot_yy: torch.Tensor
    n_iter: torch.Tensor
    err: torch.Tensor
    status: torch.Tensor
    backend: str
    method: str


def _pad(t: torch.Tensor, length: int) -> torch.Tensor:
    """[B, n, ...] -> [B, length, ...] with zeros after the first n rows."""
    extra = length - t.shape[1]
    if extra == 0:
        return t
    return F.pad(t, (0, 0) * (t.dim() - 2) + (0, extra))


def sinkhorn_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    x_mask: torch.Tensor | None = None,
    y_mask: torch.Tensor | None = None,
    *,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    cost: str = "cosine",
    eps: float,
    max_iter: int = 100,
    tol: float | None = None,
    eps_schedule=None,
    backend: str | None = None,
    method: str = "auto",
    cu_seqlens_x: torch.Tensor | None = None,
    cu_seqlens_y: torch.Tensor | None = None,
) -> SinkhornDivergence:
    """Batched debiased Sinkhorn divergence between x [B, N, d] and y [B, M, d] (balanced, probability weights).

    Args:
        x, y, x_mask, y_mask, a, b, cost, eps, max_iter, tol, eps_schedule, backend, method, cu_seqlens_x,
            cu_seqlens_y: as :func:`fastot.sinkhorn_embeddings` (weights default to uniform over the unmasked
            tokens; ``a`` and ``b`` must have equal masses per pair; packed x [Tx, d], y [Ty, d] with cu_seqlens).
            ``max_iter`` and ``tol`` bound each of the three solves.

    Returns:
        :class:`SinkhornDivergence`; ``.value`` [B] is S.
    """
    if cu_seqlens_x is not None or cu_seqlens_y is not None:
        return _packed_divergence(x, y, x_mask, y_mask, a, b, cost, eps, max_iter, tol, eps_schedule, backend, method,
                                  cu_seqlens_x, cu_seqlens_y)
    _check_embeddings(x, y, cost, "sinkhorn_divergence")
    if method not in METHODS:
        raise ValueError(f"sinkhorn_divergence: method must be one of {METHODS}, got {method!r}")
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    like = x.new_empty(0, dtype=ref.compute_dtype(torch.promote_types(x.dtype, y.dtype)))
    a = _weights(_mask_weights(x_mask, a, N, like, "x_mask", "a", (B, N)), like, N, "a", (B, N))
    b = _weights(_mask_weights(y_mask, b, M, like, "y_mask", "b", (B, M)), like, M, "b", (B, M))
    if x.dtype != y.dtype:
        wide = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(wide), y.to(wide)
    eps_, tol_ = _solver_args(eps, max_iter, tol, None, None, "envelope", like.dtype)[:2]
    # the eps stages of all three problems, found once (a "geometric" schedule reads the cost range on the host)
    stages = _stages(eps_schedule, eps_, lambda: _embeddings_range(x, y, a, b, cost), "sinkhorn_divergence",
                     like.dtype)
    xy = sinkhorn_embeddings(x, y, a=a, b=b, cost=cost, eps=eps_, max_iter=max_iter, tol=tol_, eps_schedule=stages,
                             backend=backend, method=method)
    # the self-problems (x, x) and (y, y), one batch of 2B padded to L points: symmetric updates, then their value
    L = max(N, M)
    xs, ws = torch.cat([_pad(x, L), _pad(y, L)]), torch.cat([_pad(a, L), _pad(b, L)])
    h, n_sym = _symmetric_potentials(xs, ws, cost, eps_, max_iter, tol_, stages, xy.backend, xy.method)
    self_ = sinkhorn_embeddings(xs, xs, a=ws, b=ws, cost=cost, eps=eps_, max_iter=0, f0=h, g0=h, backend=xy.backend,
                                method=xy.method)
    return _result(xy, self_, n_sym, B)


def _packed_divergence(x, y, x_mask, y_mask, a, b, cost, eps, max_iter, tol, eps_schedule, backend, method, cu_x,
                       cu_y) -> SinkhornDivergence:
    """sinkhorn_divergence on packed input: the self-problems are one packed batch of 2B (x's problems, then y's),
    without padding."""
    fn = "sinkhorn_divergence"
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
    if (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.is_floating_point()
            and y.is_floating_point() and x.dtype != y.dtype):
        wide = torch.promote_types(x.dtype, y.dtype)
        x, y = x.to(wide), y.to(wide)
    prepared = _packed_inputs(x, y, x_mask, y_mask, a, b, cost, cu_x, cu_y, fn)
    px, py, _, _, a_, b_ = prepared
    like = x.new_empty(0, dtype=ref.compute_dtype(x.dtype))
    eps_, tol_ = _solver_args(eps, max_iter, tol, None, None, "envelope", like.dtype)[:2]
    stages = _stages(eps_schedule, eps_, lambda: _embeddings_range(x, y, a_, b_, cost), fn, like.dtype)
    xy = _packed_solve(x, y, prepared, cost, eps_, max_iter, tol_, None, None, "envelope", backend, method, None, None,
                       stages, fn)
    # the self-problems: x's B problems then y's, one packed batch (the packings built once, for all their calls)
    B, Tx = px.B, x.shape[0]
    xs, ws = torch.cat([x, y]), torch.cat([a_, b_])
    ps = Packing(torch.cat([px.cu, py.cu[1:] + Tx]), xs.shape[0], max(px.L, py.L))
    ws_pad = ps.pad(ws)
    h, n_sym = _symmetric_potentials(xs, ws, cost, eps_, max_iter, tol_, stages, xy.backend, xy.method, ps)
    self_ = _packed_solve(xs, xs, (ps, ps, ws_pad, ws_pad, ws, ws), cost, eps_, 0, None, None, None, "envelope",
                          xy.backend, xy.method, h, h, None, fn)
    return _result(xy, self_, n_sym, B)


def _result(xy, self_, n_sym, B: int) -> SinkhornDivergence:
    """The divergence from the cross result and the self-problems' (x's B problems, then y's). A pair with an empty
    side (total mass 0 on x or on y) that is not flagged has S = 0, as an empty problem's OT value is 0 (OT(b, b)
    alone would make it negative); a flagged pair stays NaN."""
    vs, st = self_.value.view(2, B), self_.status.view(2, B)
    status = torch.where(xy.status != 0, xy.status, torch.where(st[0] != 0, st[0], st[1]))
    n_iter = torch.stack([xy.n_iter, *n_sym.view(2, B)])
    err = torch.stack([xy.err, *self_.err.view(2, B)])
    empty = (xy._a.sum(1) == 0) | (xy._b.sum(1) == 0)
    value = torch.where((status == 0) & empty, 0, xy.value - 0.5 * (vs[0] + vs[1]))
    return SinkhornDivergence(value, xy.value, vs[0], vs[1], n_iter, err, status, xy.backend, xy.method)


def _symmetric_potentials(xs, ws, cost: str, eps: float, max_iter: int, tol, stages, backend: str, method: str,
                          packing=None):
    """The potential h [S, L] of the symmetric problems (xs, xs) with weights ws, by averaged symmetric updates
    h <- (T(h) + T(T(h))) / 2, T the c-transform (one solver iteration from the warm start g0 = h gives f = T(h)
    and g = T(T(h))): one iteration at each eps of ``stages``, then up to ``max_iter`` at eps; with ``tol`` a
    problem stops (its solver iteration count is then 0) once the state (h, h) meets it. Returns (h, iterations [S]).
    cpp runs the steps inside its kernel (``sinkhorn_embeddings_symmetric_fwd``: one call, the cost tile built once);
    the other backends call their solver once per step. With ``packing`` (a Packing of the S problems): packed
    xs [T, d], ws and h [T]; triton runs its packed kernel, torch and cuda the padded equivalent (padded once).
    Averaging cancels the oscillation that slows alternating updates on a symmetric problem (measured: cosine,
    eps 0.05, N 32: marginal error 4e-7 after 50 alternating iterations, 9e-16 after 5 averaged ones)."""
    if packing is not None and backend not in ("cpp", "triton"):
        h, n_iter = _symmetric_potentials(packing.pad(xs), packing.pad(ws), cost, eps, max_iter, tol, stages,
                                          backend, method)
        return packing.unpad(h), n_iter
    S = ws.shape[0] if packing is None else packing.B
    dt = ref.compute_dtype(xs.dtype)
    n_iter = torch.zeros(S, dtype=torch.int32, device=xs.device)
    h = torch.zeros(ws.shape, dtype=dt, device=xs.device)
    if S == 0 or ws.numel() == 0:
        return h, n_iter
    kind = _COST_KIND[cost]
    with torch.no_grad():
        xd, wd = xs.detach(), ws.detach().to(dt)
        if backend == "cpp":  # the stages and the averaged steps inside one kernel call (the cost tile built once)
            cu = None if packing is None else packing.cu
            h, n, _ = torch.ops.fastot.sinkhorn_embeddings_symmetric_fwd(xd, wd, kind, eps, max_iter, tol, h, cu,
                                                                         list(stages))  # n counts the stages
            return h, n
        if packing is not None:  # triton's packed kernel
            fwd = _varlen_kernels(backend, method, (packing, packing))[0]
            inputs = (xd, xd, packing.cu, packing.cu, wd, wd, kind)
        elif backend in _FUSED:
            fwd, inputs = _embedding_kernels(backend, method)[0], (xd, xd, wd, wd, kind)
        else:
            fwd, inputs = _kernels(backend, method).fwd, (pairwise_cost(xd, xd, cost), wd, wd)
        for k, e in enumerate((*stages, *([eps] * max_iter))):
            annealing = k < len(stages)
            f1, g1, n, _ = fwd(*inputs, e, 1, None if annealing else tol, None, None, f0=h, g0=h)[:4]
            moved = n[:, None] > 0 if packing is None else packing.per_point(n > 0)
            # a stopped problem (n = 0) returned the warm start (h, h) itself: its h stays
            h = torch.where((wd > 0) & moved, 0.5 * (f1 + g1), h)
            n_iter = n_iter + n
            if not annealing and tol is not None and _can_sync(n) and not bool(n.any()):
                break
    return h, n_iter
