"""Public batched Sinkhorn: ``fastot.sinkhorn`` and ``fastot.sinkhorn_embeddings``.

Path: public function -> backend choice (``fastot._backend.resolve``) -> kernel set of that backend
(``torch.ops.fastot.*`` for cpp/cuda, the reference for torch, ``fastot.triton`` for triton) ->
one autograd rule (envelope) shared by all backends. See ``fastot/reference/sinkhorn.py`` for the
exact convention.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from . import _backend
from .reference import sinkhorn as ref

__all__ = ["SinkhornResult", "sinkhorn", "sinkhorn_embeddings", "pairwise_cost", "geometric_eps_schedule", "COSTS",
           "STATUS", "METHODS"]

COSTS = ("cosine", "sqeuclidean", "dot")
# Iteration schemes (same iterates, n_iter, stopping rule, err and gradients; only the arithmetic and the speed
# differ): "log" = log-domain iterations (an exp per cost entry, twice per iteration); "scaling" = stabilized
# scaling iterations with absorption (two matrix-vector products per iteration; exps only when the scalings are
# absorbed; see fastot/reference/sinkhorn_scaling.py); "auto" = the faster one the backend has (see _method).
METHODS = ("auto", "log", "scaling")
# backends with scaling kernels (triton: on chip; its streaming path is log-domain); cuda runs log-domain for now
_SCALING_BACKENDS = ("cpp", "torch", "triton")

# SinkhornResult.status codes. A problem with a nonzero status is flagged, never solved: its f, g, value,
# transport_cost and err are NaN, n_iter is 0, and every gradient that flows through it is NaN. Other problems of
# the batch are unaffected. The checks are tensor ops on the inputs' device (no host synchronisation), identical
# on every backend, eager or compiled; ``SinkhornResult.check()`` raises on them (one synchronisation).
STATUS = {
    0: "ok",
    1: "bad weights: a NaN, infinite or negative entry in a or b",
    2: "bad cost: NaN or -inf between two real points (sinkhorn_embeddings: a non-finite entry in a real token)",
    3: "cost / eps overflows the compute dtype (max |C| / eps must be below its largest value / 16)",
    4: "infeasible: a real point of a balanced side has every pair forbidden (+inf cost)",
    5: "unequal total masses of a and b in a balanced problem (relative difference above 1e-4, or above the "
       "weights' dtype eps for half-precision weights)",
    6: "bad warm start: a NaN or infinite f0 / g0 entry on a real point",
}
MASS_RTOL = 1e-4


class _Kernels(NamedTuple):
    fwd: Callable  # (cost, a, b, eps, max_iter, tol, tau_a, tau_b, f0=None, g0=None) -> (f, g, n_iter, err)
    plan: Callable  # (cost, a, b, f, g, eps) -> P [B,N,M]
    plan_sums: Callable  # (cost, a, b, f, g, eps) -> (<P, C> [B], sum P [B])


def _scaling_fwd(op):
    """A scaling forward with the log forward's outputs (f, g, n_iter, err; its statistics dropped)."""
    return lambda *args, **warm: op(*args, **warm)[:4]


def _kernels(backend: str, method: str = "log") -> _Kernels:
    if backend == "torch":
        from .reference.sinkhorn_scaling import sinkhorn_fwd_scaling  # noqa: PLC0415 - only when asked for

        fwd = sinkhorn_fwd_scaling if method == "scaling" else ref.sinkhorn_fwd
        return _Kernels(fwd, ref.sinkhorn_plan, ref.sinkhorn_plan_sums)
    if backend in ("cpp", "cuda"):  # one registered op each; the dispatcher picks CPU or CUDA from the device
        fwd = _scaling_fwd(torch.ops.fastot.sinkhorn_fwd_scaling) if method == "scaling" else torch.ops.fastot.sinkhorn_fwd
        return _Kernels(fwd, torch.ops.fastot.sinkhorn_plan, torch.ops.fastot.sinkhorn_plan_sums)
    from .triton import sinkhorn as tsk  # noqa: PLC0415 - imported only when the backend is chosen

    fwd = _scaling_fwd(tsk.sinkhorn_fwd_scaling) if method == "scaling" else tsk.sinkhorn_fwd
    return _Kernels(fwd, tsk.sinkhorn_plan, tsk.sinkhorn_plan_sums)


_warned_log_only: set[str] = set()


def _method(method: str, backend: str, max_iter: int) -> str:
    """The iteration scheme that runs: "log" or "scaling".

    ``auto`` (after ``FASTOT_SINKHORN_METHOD``, which replaces it when set) is "scaling" on cpp, where it was
    measured faster than the log-domain kernel on every bench cell (bench/RESULTS.md), once there are at least 3
    iterations: its log-domain first iteration and kernel build cost about two log-domain iterations (kernels alone,
    B 64, N 64: scaling / log time 1.30 at 2 iterations, 1.03 at 3, 0.86 at 4, 0.66 at 6); "log" elsewhere: the torch backend is the oracle and stays log-domain unless asked, triton's
    scaling kernel has not run on a GPU (so nothing says it is faster there), and cuda has none. Asking cuda for
    "scaling" runs its log-domain kernels (same results) with a one-time warning."""
    if method not in METHODS:
        raise ValueError(f"sinkhorn: method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = os.environ.get("FASTOT_SINKHORN_METHOD", "auto") or "auto"
        if method not in METHODS:
            raise ValueError(f"sinkhorn: FASTOT_SINKHORN_METHOD must be one of {METHODS}, got {method!r}")
    if method == "auto":
        return "scaling" if backend == "cpp" and max_iter >= 3 else "log"
    if method == "scaling" and backend not in _SCALING_BACKENDS:
        if backend not in _warned_log_only:
            _warned_log_only.add(backend)
            warnings.warn(f"sinkhorn: method='scaling' has no {backend} kernel yet; running the {backend} "
                          "log-domain kernel (same results, only the speed differs)", stacklevel=3)
        return "log"
    return method


def _phi(x: torch.Tensor, tau: float | None) -> torch.Tensor:
    """The conjugate of the marginal penalty: x (balanced) or tau (1 - exp(-x/tau)) (KL-relaxed)."""
    return x if tau is None else tau * (1 - torch.exp(-x / tau))


def _target(x: torch.Tensor, tau: float | None) -> torch.Tensor:
    return torch.ones_like(x) if tau is None else torch.exp(-x / tau)


def _dual_value(a, b, f, g, mass_p, eps, tau_a, tau_b) -> torch.Tensor:
    """Dual objective at (f, g): <a, phi_a(f)> + <b, phi_b(g)> - eps (mass(P) - mass(a) mass(b)).

    For probability weights and a converged balanced problem this is <a, f> + <b, g>.
    """
    a, b = a.to(f.dtype), b.to(f.dtype)
    return (a * _phi(f, tau_a)).sum(1) + (b * _phi(g, tau_b)).sum(1) - eps * (mass_p - a.sum(1) * b.sum(1))


def _weight_grads(a, b, f, g, eps, tau_a, tau_b):
    """d value / d a and d value / d b: the partial derivatives of the dual objective, with the row and
    column marginals of P replaced by their values at the optimum (a_i target_a(f_i), b_j target_b(g_j)).

    Zero on zero-weight (padded) points, which are outside the problem.
    """
    a_, b_ = a.to(f.dtype), b.to(f.dtype)
    ga = _phi(f, tau_a) - eps * (_target(f, tau_a) - b_.sum(1, keepdim=True))
    gb = _phi(g, tau_b) - eps * (_target(g, tau_b) - a_.sum(1, keepdim=True))
    return torch.where(a_ > 0, ga, torch.zeros_like(ga)), torch.where(b_ > 0, gb, torch.zeros_like(gb))


def _weight_vjp(ctx, a, b, f, g, g_value, i_a: int, i_b: int, eps, tau_a, tau_b, status):
    """(d_a, d_b) of the backward: g_value times d value/da, d value/db, each only where its input needs it
    (NaN throughout a flagged problem)."""
    need_a, need_b = ctx.needs_input_grad[i_a], ctx.needs_input_grad[i_b]
    if not (need_a or need_b):
        return None, None
    ga, gb = _flag(status, *_weight_grads(a, b, f, g, eps, tau_a, tau_b))
    return ((ga * g_value[:, None]).to(a.dtype) if need_a else None,
            (gb * g_value[:, None]).to(b.dtype) if need_b else None)


def _weight_status(a: torch.Tensor, b: torch.Tensor, tau_a, tau_b) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(status from the weights alone [B] int8, real rows [B,N], real columns [B,M]).

    Codes 1 (bad weights) and 5 (balanced with unequal masses); a problem with an empty side (total mass 0 on
    either side, N = 0 or M = 0) is not flagged: it is solved as empty (potentials 0, value 0)."""
    bad = ((a < 0) | ~torch.isfinite(a)).any(1) | ((b < 0) | ~torch.isfinite(b)).any(1)
    status = torch.where(bad, 1, 0).to(torch.int8)
    va, vb = a > 0, b > 0
    if tau_a is None and tau_b is None:
        sa, sb = a.double().sum(1), b.double().sum(1)
        # half-precision weights are rounded to their own eps (bf16: 2^-7), so their masses may differ by that much
        rtol = max(MASS_RTOL, torch.finfo(a.dtype).eps, torch.finfo(b.dtype).eps)
        uneq = (sa > 0) & (sb > 0) & ((sa - sb).abs() > rtol * torch.maximum(sa, sb))
        status = torch.where((status == 0) & uneq, 5, status).to(torch.int8)
    return status, va, vb


def _can_sync(t: torch.Tensor) -> bool:
    """Whether reading a value on the host is free here (CPU, eager): then the status checks take a fast path
    when the whole input is clean. Its outcome is the same as the full, sync-free path's."""
    return t.device.type == "cpu" and not torch.compiler.is_compiling()


def _cost_status(cost, a, b, eps, tau_a, tau_b) -> torch.Tensor:
    """[B] int8 status of sinkhorn problems (see STATUS), from the weights and the cost's real entries."""
    status, va, vb = _weight_status(a, b, tau_a, tau_b)
    B, N, M = cost.shape
    if B == 0 or N == 0 or M == 0:
        return status
    limit = torch.finfo(ref.compute_dtype(cost.dtype)).max / 16 * eps
    if _can_sync(cost) and float(cost.amin()) > -limit and float(cost.amax()) < limit:
        return status  # every entry finite and small (NaN compares False): codes 2, 3 and 4 cannot occur
    inf = float("inf")
    t = torch.where(va[:, :, None] & vb[:, None, :], cost, inf)  # padded entries may hold anything: never read
    rmin, cmin = t.amin(2), t.amin(1)  # NaN propagates; +inf: a real point with every pair forbidden (or padding)
    bad_cost = ~(rmin > -inf).all(1)  # NaN or -inf on a real pair
    top = t.masked_fill(t == inf, -inf).amax((1, 2))  # the largest finite real entry (-inf if none)
    low = rmin.amin(1)  # the smallest real entry (+inf if none; NaN is code 2 anyway)
    big = torch.maximum(torch.where(top > -inf, top.abs(), 0), torch.where(low < inf, low.abs(), 0))
    overflow = big.double() / eps > torch.finfo(ref.compute_dtype(cost.dtype)).max / 16
    blocked = torch.zeros_like(bad_cost)
    has_mass = va.any(1) & vb.any(1)
    if tau_a is None:
        blocked = blocked | (va & (rmin == inf)).any(1)
    if tau_b is None:
        blocked = blocked | (vb & (cmin == inf)).any(1)
    for code, cond in ((2, bad_cost), (3, overflow), (4, blocked & has_mass)):  # the first that applies wins
        status = torch.where(((status == 0) | (status == 5)) & cond, code, status)
    return status.to(torch.int8)


def _embeddings_status(x, y, a, b, kind: int, eps, tau_a, tau_b, packing=None) -> torch.Tensor:
    """[B] int8 status of sinkhorn_embeddings problems: non-finite real tokens (2) and a cost bound that
    overflows (3): cosine <= 2, sqeuclidean <= (|x| + |y|)^2, dot <= |x| |y|, with |v| <= sqrt(d) max |v_k|.
    a [B, N], b [B, M]; x, y padded [B, N, d], [B, M, d], or packed [Tx, d], [Ty, d] with ``packing`` (the two
    sides' Packing)."""
    status, va, vb = _weight_status(a, b, tau_a, tau_b)
    B, N, M, d = a.shape[0], a.shape[1], b.shape[1], x.shape[-1]
    if B == 0 or N == 0 or M == 0 or d == 0:
        return status
    limit = torch.finfo(ref.compute_dtype(x.dtype)).max / 16
    if _can_sync(x):  # every entry finite and the bound small (NaN compares False): codes 2 and 3 cannot occur
        ends = [abs(float(v)) for t in (x, y) for v in torch.aminmax(t)]  # no |x| temporary
        big = max(ends) * d ** 0.5
        if all(e < float("inf") for e in ends) and (4 * big * big if kind != 0 else 2.0) / eps < limit:
            return status

    def absmax(t, valid, pk):  # max |t| over the real rows of each problem, one pass without a |t| temporary
        lo, hi = torch.aminmax(t, dim=-1)  # NaN propagates
        r = torch.maximum(lo.abs(), hi.abs())
        return torch.where(valid, r if pk is None else pk.pad(r), 0).amax(1).double()

    px, py = packing if packing is not None else (None, None)
    xr, yr = absmax(x, va, px), absmax(y, vb, py)
    bad = ~(torch.isfinite(xr) & torch.isfinite(yr))
    nx, ny = xr * d ** 0.5, yr * d ** 0.5
    bound = {0: torch.full_like(nx, 2.0), 1: (nx + ny) ** 2, 2: nx * ny}[kind]
    overflow = bound / eps > limit
    for code, cond in ((2, bad), (3, overflow)):  # the first that applies wins
        status = torch.where(((status == 0) | (status == 5)) & cond, code, status)
    return status.to(torch.int8)


def _flag(status: torch.Tensor, *tensors: torch.Tensor, packing=None) -> list[torch.Tensor]:
    """NaN in every entry of a flagged problem (status != 0); leading dim B, or with ``packing`` (a side's Packing)
    the packed points of that side [T, ...]. Where reading the status is free (CPU, eager) and nothing is flagged,
    the tensors come back as they are: the masking pass over a [B, N, d] gradient cost more than the fused backward
    kernel itself (measured: 11 of 18 ms at B 64, N 64, d 384)."""
    if _can_sync(status) and not bool((status != 0).any()):
        return list(tensors)
    bad = status != 0 if packing is None else packing.per_point(status != 0)
    return [torch.where(bad.view((-1,) + (1,) * (t.dim() - 1)), float("nan"), t) for t in tensors]


class _FlagGrad(torch.autograd.Function):
    """Identity whose gradient is NaN in every entry of a flagged problem (the unrolled path's counterpart of
    the envelope backward's _flag)."""

    @staticmethod
    def forward(ctx, t, status):
        ctx.save_for_backward(status)
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        (status,) = ctx.saved_tensors
        return _flag(status, grad)[0], None


class _SinkhornEnvelope(torch.autograd.Function):
    """The solve is never recorded by autograd.

    value: d/dC = P* (envelope theorem), d/da, d/db from the potentials (see _weight_grads).
    transport_cost: P* is treated as a constant (the OPTICAL loss convention): d/dC = P*, d/da = d/db = 0.
    That is not the full derivative of <P*(C), C>; use grad="unrolled" for that.
    """

    @staticmethod
    def forward(ctx, cost, a, b, status, backend, method, eps, max_iter, tol, tau_a, tau_b, f0, g0, stages):
        k = _kernels(backend, method)
        f, g, n_iter, err = _staged(k.fwd, (cost, a, b), eps, max_iter, tol, tau_a, tau_b, f0, g0, stages,
                                    fused=_fused_stages(backend, method))
        f, g, err = _flag(status, f, g, err)
        n_iter = torch.where(status != 0, torch.zeros_like(n_iter), n_iter)
        tc, mass = k.plan_sums(cost, a, b, f, g, eps)
        value = _dual_value(a, b, f, g, mass, eps, tau_a, tau_b)
        value, tc = _flag(status, value, tc)
        ctx.save_for_backward(cost, a, b, f, g, status)
        ctx.cfg = (backend, eps, tau_a, tau_b)
        ctx.mark_non_differentiable(f, g, n_iter, err)
        return f, g, value, tc, n_iter, err

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _gf, _gg, g_value, g_tc, _gn, _ge):
        cost, a, b, f, g, status = ctx.saved_tensors
        backend, eps, tau_a, tau_b = ctx.cfg
        d_cost = None
        if ctx.needs_input_grad[0]:
            plan = _kernels(backend).plan(cost, a, b, f, g, eps)
            d_cost = (plan * (g_value + g_tc).to(plan.dtype)[:, None, None]).to(cost.dtype)
            (d_cost,) = _flag(status, d_cost)
        d_a, d_b = _weight_vjp(ctx, a, b, f, g, g_value, 1, 2, eps, tau_a, tau_b, status)
        return d_cost, d_a, d_b, None, None, None, None, None, None, None, None, None, None, None


def _staged(fwd, inputs: tuple, eps, max_iter, tol, tau_a, tau_b, f0, g0, stages: tuple, fused: bool = False) -> tuple:
    """fwd(*inputs, eps, max_iter, tol, tau_a, tau_b, f0=, g0=) after an eps schedule: one iteration at each eps of
    ``stages``, each warm-started from the one before (from f0, g0 first), then the solve at ``eps`` from there.
    ``n_iter`` counts the stages' iterations too. Without stages and warm start: fwd as it always was called.
    ``fused``: fwd takes ``eps_stages=`` and runs the stages itself, in one call (the cpp kernels: the cost tile is
    rescaled per stage, not rebuilt); otherwise one call per stage."""
    if stages and fused:
        warm = {} if f0 is None and g0 is None else {"f0": f0, "g0": g0}
        return fwd(*inputs, eps, max_iter, tol, tau_a, tau_b, eps_stages=list(stages), **warm)
    for e in stages:
        f0, g0 = fwd(*inputs, e, 1, None, tau_a, tau_b, f0=f0, g0=g0)[:2]
    warm = {} if f0 is None and g0 is None else {"f0": f0, "g0": g0}
    out = fwd(*inputs, eps, max_iter, tol, tau_a, tau_b, **warm)
    if not stages:
        return out
    return (*out[:2], out[2] + len(stages), *out[3:])


_COST_KIND = {"cosine": 0, "sqeuclidean": 1, "dot": 2}
_FUSED = ("cpp", "cuda", "triton")  # backends whose kernels build the cost from x and y themselves


def _fused_stages(backend: str, method: str, packed: bool = False) -> bool:
    """Whether the forward runs an eps schedule inside one call (``eps_stages=``): the cpp scaling kernels and the
    cpp packed kernel (log or scaling); the other kernels take one call per stage."""
    return backend == "cpp" and (method == "scaling" or packed)


def _embedding_kernels(backend: str, method: str = "log"):
    """(forward, backward) of the fused embeddings path of ``backend`` (one of _FUSED)."""
    if backend in ("cpp", "cuda"):  # one registered op each; the dispatcher picks CPU or CUDA from the device
        if method == "scaling":
            op = torch.ops.fastot.sinkhorn_embeddings_fwd_scaling
            return (lambda *args, **warm: op(*args, **warm)[:6]), torch.ops.fastot.sinkhorn_embeddings_bwd
        return torch.ops.fastot.sinkhorn_embeddings_fwd, torch.ops.fastot.sinkhorn_embeddings_bwd
    from .triton import sinkhorn as tsk  # noqa: PLC0415 - imported only when the backend is chosen

    if method == "scaling":
        return (lambda *args, **warm: tsk.sinkhorn_embeddings_fwd_scaling(*args, **warm)[:6]), tsk.sinkhorn_embeddings_bwd
    return tsk.sinkhorn_embeddings_fwd, tsk.sinkhorn_embeddings_bwd


def _varlen_kernels(backend: str, method: str, packing):
    """(forward, backward) of the packed (varlen) embeddings path of ``backend`` (cpp or triton). The forward takes
    (x, y, cu_x, cu_y, a, b, kind, eps, max_iter, tol, tau_a, tau_b, f0=, g0=) and returns (f, g, n_iter, err,
    <P,C>, sum P), as the padded kernels' forward."""
    absorb = 20.0 if method == "scaling" else None
    if backend == "cpp":
        op, bwd = torch.ops.fastot.sinkhorn_embeddings_varlen_fwd, torch.ops.fastot.sinkhorn_embeddings_varlen_bwd
        lens = {}
    else:
        from .triton import sinkhorn as tsk  # noqa: PLC0415 - imported only when the backend is chosen

        op, bwd = tsk.sinkhorn_embeddings_varlen_fwd, tsk.sinkhorn_embeddings_varlen_bwd
        lens = {"max_seqlen_x": packing[0].L, "max_seqlen_y": packing[1].L}

    def fwd(x, y, cu_x, cu_y, a, b, kind, eps, max_iter, tol, tau_a, tau_b, f0=None, g0=None, **stages):
        return op(x, y, cu_x, cu_y, a, b, kind, eps, max_iter, tol, tau_a, tau_b, absorb, f0, g0, **lens, **stages)[:6]

    def backward(*args):
        return bwd(*args, **lens)

    return fwd, backward


def _padded(packing, a, b, f, g):
    """a, b, f, g in the [B, N] / [B, M] layout the per-problem sums take: as they are, or padded from packed."""
    if packing is None:
        return a, b, f, g
    px, py = packing
    return px.pad(a), py.pad(b), px.pad(f), py.pad(g)


def _flag_sides(status, packing, u, v):
    """_flag of one tensor per side (potentials, gradients), padded or packed."""
    if packing is None:
        return _flag(status, u, v)
    return _flag(status, u, packing=packing[0]) + _flag(status, v, packing=packing[1])


class _SinkhornEmbeddingsEnvelope(torch.autograd.Function):
    """Fused sinkhorn_embeddings (cpp, cuda, triton): the cost is built per problem from x and y inside the kernel,
    forward and backward, so no [B,N,M] tensor exists. Same gradient rules as _SinkhornEnvelope; dx, dy come
    from the kernel as <P*, dC/dx> with P* recomputed from the potentials.

    ``packing`` None: padded x [B, N, d], a [B, N], f [B, N]; or the two sides' Packing: packed x [Tx, d], a [Tx],
    f [Tx] (cpp, triton), read in place by the kernels; the per-problem sums (value, the weights' gradients) then go
    through the padded layout of the per-point vectors only."""

    @staticmethod
    def forward(ctx, x, y, a, b, status, packing, backend, method, cost, eps, max_iter, tol, tau_a, tau_b, f0, g0,
                stages):
        kind = _COST_KIND[cost]
        if packing is None:
            fwd, inputs = _embedding_kernels(backend, method)[0], (x, y, a, b, kind)
        else:
            fwd, inputs = _varlen_kernels(backend, method, packing)[0], (x, y, packing[0].cu, packing[1].cu, a, b, kind)
        f, g, n_iter, err, tc, mass = _staged(fwd, inputs, eps, max_iter, tol, tau_a, tau_b, f0, g0, stages,
                                              fused=_fused_stages(backend, method, packing is not None))
        value = _dual_value(*_padded(packing, a, b, f, g), mass, eps, tau_a, tau_b)
        err, value, tc = _flag(status, err, value, tc)
        f, g = _flag_sides(status, packing, f, g)
        n_iter = torch.where(status != 0, torch.zeros_like(n_iter), n_iter)
        ctx.save_for_backward(x, y, a, b, f, g, status)
        ctx.packing = packing
        ctx.cfg = (backend, kind, eps, tau_a, tau_b)
        ctx.mark_non_differentiable(f, g, n_iter, err)
        return f, g, value, tc, n_iter, err

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _gf, _gg, g_value, g_tc, _gn, _ge):
        x, y, a, b, f, g, status = ctx.saved_tensors
        packing = ctx.packing
        backend, kind, eps, tau_a, tau_b = ctx.cfg
        dx = dy = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            if packing is None:
                bwd, inputs = _embedding_kernels(backend)[1], (x, y, a, b)
            else:
                bwd, inputs = _varlen_kernels(backend, "log", packing)[1], (x, y, packing[0].cu, packing[1].cu, a, b)
            # the side nobody asked for (the frozen teacher's) is not computed
            dx, dy = bwd(*inputs, f, g, (g_value + g_tc).to(f.dtype), kind, eps, ctx.needs_input_grad[0],
                         ctx.needs_input_grad[1])
            dx, dy = _flag_sides(status, packing, dx, dy)
            dx = dx.to(x.dtype) if ctx.needs_input_grad[0] else None
            dy = dy.to(y.dtype) if ctx.needs_input_grad[1] else None
        da, db = _weight_vjp(ctx, *_padded(packing, a, b, f, g), g_value, 2, 3, eps, tau_a, tau_b, status)
        if packing is not None:
            da = None if da is None else packing[0].unpad(da)
            db = None if db is None else packing[1].unpad(db)
        return (dx, dy, da, db) + (None,) * 13


@dataclass
class SinkhornResult:
    """Result of :func:`sinkhorn`. Shapes: f [B,N], g [B,M] (packed input: f [Tx], g [Ty]),
    value/transport_cost/n_iter/err/status [B].

    ``status`` [B] int8 is 0 for a problem that was solved and one of the :data:`STATUS` codes for a problem
    whose input is unusable (NaN weights, a NaN cost, unequal masses, ...): such a problem's outputs are NaN.
    :meth:`check` raises a ValueError naming the flagged problems.

    ``value`` is the entropic OT value (the dual objective at (f, g)); with ``grad="envelope"`` its
    gradient is the envelope-theorem one (d/dC = P*). ``transport_cost`` is <P*, C>; with
    ``grad="envelope"`` its gradient treats P* as a constant (d/dC = P*, none for the weights), the
    OPTICAL distillation loss convention. ``f``/``g`` are constants for autograd. ``plan()``
    recomputes P* [B,N,M] from the potentials on demand (no gradient).
    """

    f: torch.Tensor
    g: torch.Tensor
    value: torch.Tensor
    transport_cost: torch.Tensor
    n_iter: torch.Tensor
    err: torch.Tensor
    status: torch.Tensor
    backend: str
    eps: float
    _cost: torch.Tensor | Callable[[], torch.Tensor] = field(repr=False)
    _a: torch.Tensor = field(repr=False)
    _b: torch.Tensor = field(repr=False)
    method: str = "log"  # the iteration scheme that ran: "log" or "scaling" (see METHODS)
    _packing: tuple | None = field(default=None, repr=False)  # packed input: the two sides' Packing

    def check(self) -> SinkhornResult:
        """Raise ValueError if any problem was flagged (``status != 0``), naming them and why; else return self.

        Reads ``status`` on the host: one synchronisation on an accelerator."""
        st = self.status.detach().cpu()
        bad = torch.nonzero(st).flatten().tolist()
        if bad:
            parts = []
            for code in sorted(set(st[bad].tolist())):
                idx = [i for i in bad if int(st[i]) == code]
                parts.append(f"{STATUS[code]} in problem{'s' if len(idx) > 1 else ''} "
                             f"{idx[:8]}{' ...' if len(idx) > 8 else ''}")
            raise ValueError(f"sinkhorn: {len(bad)} of {st.numel()} problems flagged: " + "; ".join(parts))
        return self

    def plan(self) -> torch.Tensor:
        with torch.no_grad():
            k = _kernels(self.backend)
            cost = self._cost() if callable(self._cost) else self._cost  # fused path: the cost is built on demand
            f, g = self.f.detach(), self.g.detach()
            if self._packing is not None:  # packed potentials [Tx], [Ty]: the plan is padded [B, N, M]
                f, g = self._packing[0].pad(f), self._packing[1].pad(g)
            return k.plan(cost.detach(), self._a.detach(), self._b.detach(), f, g, self.eps)


def _check_positive(name: str, value, allow_none: bool = True, finite: bool = True) -> None:
    if value is None and allow_none:
        return
    if (not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or value != value
            or (finite and value == float("inf"))):
        raise ValueError(f"sinkhorn: {name} must be a positive{' finite' if finite else ''} number"
                         f"{' or None' if allow_none else ''}, got {value!r}")


def _solver_args(eps, max_iter, tol, tau_a, tau_b, grad, dtype: torch.dtype | None = None):
    """Checks the scalar arguments shared by sinkhorn and sinkhorn_embeddings; returns them as floats.

    ``dtype``: the compute dtype; eps must be a normal number of it (a subnormal eps loses its digits and
    1/eps overflows)."""
    _check_positive("eps", eps, allow_none=False)
    _check_positive("tol", tol, finite=False)
    _check_positive("tau_a", tau_a)
    _check_positive("tau_b", tau_b)
    if dtype is not None and eps < torch.finfo(dtype).tiny:
        raise ValueError(f"sinkhorn: eps={eps!r} is below the smallest normal {dtype} number "
                         f"({torch.finfo(dtype).tiny:.3g}); rescale the cost instead (C / s with eps / s)")
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 0:
        raise ValueError(f"sinkhorn: max_iter must be an integer >= 0, got {max_iter!r}")
    if grad not in ("envelope", "unrolled"):
        raise ValueError(f"sinkhorn: grad must be 'envelope' or 'unrolled', got {grad!r}")
    as_float = lambda v: None if v is None else float(v)  # noqa: E731
    return float(eps), as_float(tol), as_float(tau_a), as_float(tau_b)


def _warm(w, like: torch.Tensor, name: str, shape: tuple[int, int], fn: str = "sinkhorn") -> torch.Tensor | None:
    """A warm start f0 / g0 as given (checked as a weight vector is), detached; None stays None."""
    return None if w is None else _checked(w, like, name, shape, fn).detach()


def _warm_status(status: torch.Tensor, f0, g0, a, b) -> torch.Tensor:
    """status with code 6 where a warm start has a non-finite entry on a real point (other codes come first)."""
    for w, wt in ((f0, a), (g0, b)):
        if w is not None:
            bad = ((wt > 0) & ~torch.isfinite(w)).any(1)
            status = torch.where((status == 0) & bad, 6, status).to(torch.int8)
    return status


def geometric_eps_schedule(start: float, eps: float, ratio: float = 0.5) -> list[float]:
    """The eps values above ``eps`` of the geometric sequence start, start * ratio, start * ratio^2, ... (as
    geomloss's eps-scaling: a large eps first, then down to the target). ``[]`` when start <= eps."""
    _check_positive("start", start, allow_none=False)
    _check_positive("eps", eps, allow_none=False)
    if not (isinstance(ratio, (int, float)) and 0 < ratio < 1):
        raise ValueError(f"sinkhorn: ratio must be in (0, 1), got {ratio!r}")
    out, e = [], float(start)
    while e > eps and len(out) < 1000:
        out.append(e)
        e *= ratio
    return out


def _stages(eps_schedule, eps: float, cost_range: Callable[[], float], fn: str = "sinkhorn",
            dtype: torch.dtype = torch.float32) -> tuple[float, ...]:
    """The eps values run (one iteration each) before the solve at eps: eps_schedule None -> none, "geometric" ->
    geometric_eps_schedule(cost range, eps, 0.5), a sequence -> its values (finite, at least the compute dtype's
    smallest normal number, as eps)."""
    if eps_schedule is None:
        return ()
    if isinstance(eps_schedule, str):
        if eps_schedule != "geometric":
            raise ValueError(f"{fn}: eps_schedule must be None, 'geometric' or a sequence of eps values, got "
                             f"{eps_schedule!r}")
        return tuple(geometric_eps_schedule(max(cost_range(), eps), eps))
    try:
        vals = tuple(eps_schedule)
    except TypeError:
        raise TypeError(f"{fn}: eps_schedule must be None, 'geometric' or a sequence of eps values, got "
                        f"{type(eps_schedule).__name__}") from None
    for v in vals:
        if (not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0 or v == float("inf")):
            raise ValueError(f"{fn}: every eps_schedule value must be a positive finite number, got {v!r}")
        if v < torch.finfo(dtype).tiny:
            raise ValueError(f"{fn}: eps_schedule value {v!r} is below the smallest normal {dtype} number "
                             f"({torch.finfo(dtype).tiny:.3g})")
    return tuple(float(v) for v in vals)


def _checked(w, like: torch.Tensor, name: str, shape: tuple[int, int], fn: str = "sinkhorn") -> torch.Tensor:
    """w itself, once it is a floating tensor of ``shape`` on ``like``'s device (else TypeError / ValueError naming
    it); its values are not read."""
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a tensor or None, got {type(w).__name__}")
    if tuple(w.shape) != shape:
        raise ValueError(f"{fn}: {name} must have shape {list(shape)}, got {list(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"{fn}: {name} must be floating point, got {w.dtype}")
    if w.device != like.device:
        raise ValueError(f"{fn}: {name} is on {w.device} but the inputs are on {like.device}")
    return w


def _weights(w, like: torch.Tensor, n: int, name: str, shape: tuple[int, int]) -> torch.Tensor:
    if w is None:
        return torch.full(shape, 1.0 / max(n, 1), dtype=ref.compute_dtype(like.dtype), device=like.device)
    # Values (NaN, inf, negative) are checked on the device, per problem: see STATUS and _weight_status.
    return _checked(w, like, name, shape)


def sinkhorn(
    cost: torch.Tensor,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    *,
    eps: float,
    max_iter: int = 100,
    tol: float | None = None,
    tau_a: float | None = None,
    tau_b: float | None = None,
    grad: str = "envelope",
    backend: str | None = None,
    method: str = "auto",
    f0: torch.Tensor | None = None,
    g0: torch.Tensor | None = None,
    eps_schedule=None,
) -> SinkhornResult:
    """Batched Sinkhorn for B entropic OT problems (log-domain iterates, by either iteration scheme).

    Args:
        cost: [B, N, M] float32/float64 (bfloat16/float16 are solved in float32).
        a: [B, N] nonnegative weights, None = uniform 1/N. Zero = padded point (no mass, potential 0).
        b: [B, M] nonnegative weights, None = uniform 1/M.
        eps: entropic regularisation (> 0), in the units of ``cost``.
        max_iter: iterations (one f- and one g-update each). With ``tol=None`` exactly this many run.
        tol: per-problem stop when the L1 row-marginal violation drops below it (no host sync).
        tau_a, tau_b: KL marginal relaxation (unbalanced OT); None = balanced on that side.
        grad: "envelope" (default; the solve is not recorded: d value/dC = P*, and transport_cost holds
            P* constant, so d transport_cost/dC = P* with no weight gradient) or "unrolled" (autograd
            through every iteration; torch backend only).
        backend: "auto" | "torch" | "cpp" | "cuda" | "triton"; default from ``FASTOT_BACKEND``.
        method: "auto" (default) | "log" | "scaling": the iteration scheme. Both give the log-domain iterates
            (f, g, n_iter, err, the stopping rule and the gradients agree to rounding); "scaling" replaces the
            exps of each iteration by two matrix-vector products, with absorption into the potentials and a
            per-problem fall-back to log-domain iterations on underflow. "auto" picks "scaling" on cpp (for
            ``max_iter >= 3``) and "log" elsewhere; cuda and triton have no scaling kernels yet and run
            log-domain (a one-time warning when "scaling" is asked for). ``result.method`` says which ran.
        f0, g0: warm start [B, N], [B, M] (e.g. the potentials of the previous training step on the same pairs):
            the potentials before the first iteration, on the real points (positive weight) of problems with mass on
            both sides; 0 elsewhere and at a point with every pair forbidden. The stopping rule checks this state
            first, so a warm start that already meets ``tol`` returns with ``n_iter`` 0. Never differentiated. A
            NaN or infinite entry on a real point flags its problem (status 6).
        eps_schedule: eps-scaling (annealing). None (default): the solve runs at ``eps``. "geometric": first one
            iteration at each eps of ``geometric_eps_schedule(max |C|, eps, 0.5)`` (max over the real, finite
            entries: one host read on an accelerator), each warm-started from the one before, then the solve at
            ``eps`` from there (as geomloss's eps-scaling). A sequence of eps values: those stages instead.
            ``n_iter`` counts the stages' iterations too; gradients are those of the final solve (envelope).

    Returns:
        :class:`SinkhornResult` with f [B,N], g [B,M], value [B], transport_cost [B], n_iter [B] int32,
        err [B], status [B] int8 (0, or a :data:`STATUS` code: that problem's input is unusable and its
        outputs are NaN; ``check()`` raises on it), and ``plan()`` -> [B,N,M].

    Argument errors (shapes, dtypes, devices, eps/tau/tol/max_iter values) raise ValueError/TypeError before any
    work; problems in the values (NaN, unequal masses, ...) are flagged per problem without a host sync. The
    README's "Errors and edge cases" table lists every case.
    """
    return _sinkhorn(cost, a, b, eps, max_iter, tol, tau_a, tau_b, grad, backend, method=method, f0=f0, g0=g0,
                     eps_schedule=eps_schedule)


def _sinkhorn(cost, a, b, eps, max_iter, tol, tau_a, tau_b, grad, backend, status=None, method="auto", f0=None,
              g0=None, eps_schedule=None, stages=None) -> SinkhornResult:
    """:func:`sinkhorn`; ``status`` [B] replaces the one computed from the cost (sinkhorn_embeddings passes the
    status of its x and y, so every backend flags the same problems, and its eps ``stages``)."""
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"sinkhorn: cost must be a tensor, got {type(cost).__name__}")
    if cost.dim() != 3:
        raise ValueError(f"sinkhorn: cost must be [B, N, M], got shape {list(cost.shape)}")
    if not cost.is_floating_point():
        raise TypeError(f"sinkhorn: cost must be floating point, got {cost.dtype}")
    eps, tol, tau_a, tau_b = _solver_args(eps, max_iter, tol, tau_a, tau_b, grad, ref.compute_dtype(cost.dtype))
    if method not in METHODS:
        raise ValueError(f"sinkhorn: method must be one of {METHODS}, got {method!r}")
    B, N, M = cost.shape
    a = _weights(a, cost, N, "a", (B, N))
    b = _weights(b, cost, M, "b", (B, M))
    f0, g0 = _warm(f0, cost, "f0", (B, N)), _warm(g0, cost, "g0", (B, M))
    if stages is None:
        stages = _stages(eps_schedule, eps, lambda: _cost_range(cost, a, b), dtype=ref.compute_dtype(cost.dtype))
    if status is None:  # (a status passed in already has the warm start's code 6)
        with torch.no_grad():
            status = _warm_status(_cost_status(cost.detach(), a.detach(), b.detach(), eps, tau_a, tau_b), f0, g0,
                                  a.detach(), b.detach())
    if f0 is not None or g0 is not None:
        with torch.no_grad():
            f0, g0 = _allowed_warm(cost.detach(), a.detach(), b.detach(), f0, g0)

    if grad == "unrolled":  # autograd through the log-domain reference's iterations, whatever `method` says
        _unrolled_backend(backend)
        cost, a, b = (_FlagGrad.apply(t, status) if t.requires_grad else t for t in (cost, a, b))
        with torch.no_grad():  # the eps stages (if any) give the warm start; autograd sees the final solve only
            for e in stages:
                f0, g0 = ref.sinkhorn_fwd(cost.detach(), a.detach(), b.detach(), e, 1, None, tau_a, tau_b, f0, g0)[:2]
        f, g, n_iter, err = ref.sinkhorn_fwd(cost, a, b, eps, max_iter, tol, tau_a, tau_b, f0, g0)
        n_iter = n_iter + len(stages)
        tc, mass = ref.sinkhorn_plan_sums(cost, a, b, f, g, eps)
        value = _dual_value(a, b, f, g, mass, eps, tau_a, tau_b)
        # NaN times the outputs: a flagged problem's gradients are NaN too, as on the envelope path
        nan1 = torch.where(status != 0, float("nan"), 1.0).to(f.dtype)
        f, g, value, tc = f * nan1[:, None], g * nan1[:, None], value * nan1, tc * nan1
        n_iter = torch.where(status != 0, torch.zeros_like(n_iter), n_iter)
        return SinkhornResult(f, g, value, tc, n_iter, (err * nan1).detach(), status, "torch", eps, cost, a, b)

    be = _backend.resolve("sinkhorn", cost.device, backend)
    how = _method(method, be, max_iter)
    f, g, value, tc, n_iter, err = _SinkhornEnvelope.apply(cost, a, b, status, be, how, eps, max_iter, tol, tau_a,
                                                           tau_b, f0, g0, tuple(stages))
    return SinkhornResult(f, g, value, tc, n_iter, err, status, be, eps, cost, a, b, how)


def _cost_range(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> float:
    """max |C| over the real, finite entries (0 if none): the first eps of eps_schedule="geometric"."""
    with torch.no_grad():
        c = cost.detach()
        keep = (a.detach() > 0)[:, :, None] & (b.detach() > 0)[:, None, :] & torch.isfinite(c)
        return float(torch.where(keep, c.abs(), 0).amax()) if c.numel() else 0.0


def _allowed_warm(cost, a, b, f0, g0):
    """The warm start with 0 at points every pair of which is forbidden (+inf cost): their potential is 0."""
    if _can_sync(cost) and not bool(torch.isinf(cost).any()):
        return f0, g0
    allowed = (a > 0)[:, :, None] & (b > 0)[:, None, :] & (cost < float("inf"))
    f0 = None if f0 is None else torch.where(allowed.any(2), f0, 0)
    g0 = None if g0 is None else torch.where(allowed.any(1), g0, 0)
    return f0, g0


def _unrolled_backend(backend: str | None) -> None:
    """grad="unrolled" autograds through the torch reference: another backend, named by argument or by
    FASTOT_BACKEND (the same rule as ``_backend.resolve``), is an error rather than silently ignored."""
    requested, source = _backend.requested(backend)
    if requested not in ("auto", "torch"):
        if requested not in _backend.BACKENDS:
            raise _backend.BackendUnavailable(f"sinkhorn: {source}{requested!r} is unavailable: unknown backend")
        raise _backend.BackendUnavailable(f"sinkhorn: grad='unrolled' runs on the torch backend only, got "
                                          f"{source}{requested!r}")


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, cost: str = "cosine") -> torch.Tensor:
    """[B,N,d] x [B,M,d] -> [B,N,M] cost in float32/float64 (half inputs are promoted).

    cosine: 1 - <x/|x|, y/|y|> (zero vectors count as orthogonal); sqeuclidean: |x - y|^2;
    dot: -<x, y>.
    """
    if cost not in COSTS:
        raise ValueError(f"cost must be one of {COSTS}, got {cost!r}")
    dt = ref.compute_dtype(x.dtype)
    x, y = x.to(dt), y.to(dt)
    if cost == "cosine":
        xn = x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        yn = y / y.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return 1 - xn @ yn.transpose(1, 2)
    if cost == "dot":
        return -(x @ y.transpose(1, 2))
    sq = (x * x).sum(-1)[:, :, None] + (y * y).sum(-1)[:, None, :] - 2 * (x @ y.transpose(1, 2))
    return sq.clamp_min(0)


def _mask_weights(mask, w, n, like, name, w_name, shape):
    if w is not None:  # the weights' own checks first, so w * mask never broadcasts a wrong shape
        w = _weights(w, like, n, w_name, shape)
    if mask is None:
        return w
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"sinkhorn_embeddings: {name} must be a tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"sinkhorn_embeddings: {name} must have shape {list(shape)}, got {list(mask.shape)}")
    if mask.device != like.device:
        raise ValueError(f"sinkhorn_embeddings: {name} is on {mask.device} but x is on {like.device}")
    if mask.is_complex():
        raise TypeError(f"sinkhorn_embeddings: {name} must be bool or real, got {mask.dtype}")
    # A mask is 0/1: any nonzero entry is a real token (a float mask of 0.5 is not a half weight; use a=/b=).
    m = (mask != 0).to(ref.compute_dtype(like.dtype))
    if w is None:
        return m / m.sum(1, keepdim=True).clamp_min(1)
    return w * m.to(w.dtype)  # in the weights' own dtype (their mass check allows for it: STATUS 5)


def _check_embeddings(x, y, cost: str, fn: str) -> None:
    """The argument checks of x [B, N, d], y [B, M, d] and the cost name shared by the embedding entry points."""
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{fn}: x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(f"{fn}: x and y must be [B, N, d] and [B, M, d], got {list(x.shape)} and {list(y.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"{fn}: x {list(x.shape)} and y {list(y.shape)} must agree on B and d")
    if not x.is_floating_point() or not y.is_floating_point():
        raise TypeError(f"{fn}: x and y must be floating point, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"{fn}: x is on {x.device} but y is on {y.device}")
    if cost not in COSTS:
        raise ValueError(f"{fn}: cost must be one of {COSTS}, got {cost!r}")


def sinkhorn_embeddings(
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
    tau_a: float | None = None,
    tau_b: float | None = None,
    grad: str = "envelope",
    backend: str | None = None,
    method: str = "auto",
    f0: torch.Tensor | None = None,
    g0: torch.Tensor | None = None,
    eps_schedule=None,
    cu_seqlens_x: torch.Tensor | None = None,
    cu_seqlens_y: torch.Tensor | None = None,
) -> SinkhornResult:
    """Sinkhorn between token embeddings, cost computed from x and y.

    Args:
        x: [B, N, d], y: [B, M, d] (fp32/fp64; bf16/fp16 promoted to fp32 for the cost).
        x_mask: [B, N] bool/0-1, True = real token (padding gets zero weight). y_mask: [B, M].
        a, b: optional weights; default uniform over the unmasked tokens.
        cu_seqlens_x, cu_seqlens_y: packed (varlen) input, flash-attention's layout: x [Tx, d] and y [Ty, d] hold
            the B problems' tokens back to back, problem k's at rows cu_seqlens_x[k] .. cu_seqlens_x[k+1]-1 (an
            int32/int64 [B + 1] tensor from 0 to Tx, nondecreasing; an empty problem is allowed), y's likewise.
            x_mask, a, f0 are then [Tx] and y_mask, b, g0 [Ty]; the result's f [Tx], g [Ty] are packed too (value,
            n_iter, ... stay [B]). The same solve as on the padded equivalent, without padding: the cpp and triton
            kernels read the packed rows in place, so no [B, N, d] tensor is built (cpp's tiles never held padding
            anyway; triton's on-chip blocks are sized by the longest problem, as on padded input). The torch and
            cuda backends and ``grad="unrolled"`` solve the padded equivalent (built from
            the packed rows, gradients included). cu_seqlens is read on the host (one small read on a GPU; under
            ``torch.compile`` a graph break, so ``fullgraph=True`` does not take packed input).
        cost: "cosine" (default), "sqeuclidean" or "dot".
        Other arguments (``f0``, ``g0`` and ``eps_schedule`` included) as :func:`sinkhorn`. Gradients reach x and y
        through the cost. ``eps_schedule="geometric"`` starts from a bound on the cost: 2 (cosine),
        (max |x| + max |y|)^2 (sqeuclidean), max |x| max |y| (dot), over the real tokens.

    On the cpp, cuda and triton backends the cost is computed per problem inside the kernels (forward and
    backward), so no [B,N,M] tensor is stored: memory is O(B (N + M) d) plus, on cpp, the current problem's N x M
    cost tile per thread; on cuda one tile per thread block in shared memory (the dot products on tensor cores:
    bf16/fp16 natively, fp32 as 3xTF32, so at fp32 accuracy), and for problems too large for shared memory
    (beyond 192 x 192 tokens in fp32; a bf16/fp16 forward stays fused up to 208 x 208, its backward is chunked from
    193; fp64 up to 165 x 165; sizes for an H100) the cost of a chunk of problems in a workspace of at most 256 MiB
    (its products go through cuBLAS and so follow torch's TF32 setting, as the torch backend's do); on triton one
    tile per program in registers. The torch backend materialises the cost. On CUDA devices ``auto`` tries triton
    before cuda here (see ``fastot._backend``).
    """
    if cu_seqlens_x is not None or cu_seqlens_y is not None:
        return _packed_embeddings(x, y, x_mask, y_mask, a, b, cost, eps, max_iter, tol, tau_a, tau_b, grad, backend,
                                  method, f0, g0, eps_schedule, cu_seqlens_x, cu_seqlens_y)
    _check_embeddings(x, y, cost, "sinkhorn_embeddings")
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    like = x.new_empty(0, dtype=ref.compute_dtype(x.dtype))
    a = _mask_weights(x_mask, a, N, like, "x_mask", "a", (B, N))
    b = _mask_weights(y_mask, b, M, like, "y_mask", "b", (B, M))
    be = None if grad == "unrolled" else _backend.resolve("sinkhorn", x.device, backend, _backend.AUTO_ORDER_FUSED)
    eps_, tol_, tau_a_, tau_b_ = _solver_args(eps, max_iter, tol, tau_a, tau_b, grad, like.dtype)
    if method not in METHODS:
        raise ValueError(f"sinkhorn_embeddings: method must be one of {METHODS}, got {method!r}")
    a = _weights(a, like, N, "a", (B, N))
    b = _weights(b, like, M, "b", (B, M))
    f0 = _warm(f0, like, "f0", (B, N), "sinkhorn_embeddings")
    g0 = _warm(g0, like, "g0", (B, M), "sinkhorn_embeddings")
    stages = _stages(eps_schedule, eps_, lambda: _embeddings_range(x, y, a, b, cost), "sinkhorn_embeddings",
                     like.dtype)
    with torch.no_grad():  # from x and y, so that every backend (fused or not) flags the same problems
        status = _embeddings_status(x.detach(), y.detach(), a.detach(), b.detach(), _COST_KIND[cost], eps_,
                                    tau_a_, tau_b_)
        status = _warm_status(status, f0, g0, a.detach(), b.detach())
    if be in _FUSED:  # the cost is built per problem inside the kernel
        how = _method(method, be, max_iter)
        f, g, value, tc, n_iter, err = _SinkhornEmbeddingsEnvelope.apply(x, y, a, b, status, None, be, how, cost, eps_,
                                                                         max_iter, tol_, tau_a_, tau_b_, f0, g0,
                                                                         stages)
        return SinkhornResult(f, g, value, tc, n_iter, err, status, be, eps_,
                              lambda: pairwise_cost(x.detach(), y.detach(), cost), a, b, how)
    C = pairwise_cost(x, y, cost)
    return _sinkhorn(C, a, b, eps, max_iter, tol, tau_a, tau_b, grad, backend, status, method, f0, g0,
                     stages=stages)


def _packed_side(mask, w, pk, like, T: int, name: str, w_name: str, fn: str) -> torch.Tensor:
    """The padded [B, L] weights of one packed side from its mask and weights [T] (checked in that shape; default
    uniform over each problem's real tokens)."""
    if w is not None:
        w = pk.pad(_checked(w, like, w_name, (T,), fn))
    if mask is None:
        m = pk.valid
    else:
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"{fn}: {name} must be a tensor or None, got {type(mask).__name__}")
        if tuple(mask.shape) != (T,):
            raise ValueError(f"{fn}: {name} must have shape [{T}] (packed), got {list(mask.shape)}")
        if mask.device != like.device:
            raise ValueError(f"{fn}: {name} is on {mask.device} but x is on {like.device}")
        if mask.is_complex():
            raise TypeError(f"{fn}: {name} must be bool or real, got {mask.dtype}")
        m = pk.pad(mask != 0)
    return _mask_weights(m, w, pk.L, like, name, w_name, (pk.B, pk.L))


def _packed_inputs(x, y, x_mask, y_mask, a, b, cost, cu_x, cu_y, fn: str = "sinkhorn_embeddings"):
    """The checked packed inputs: (Packing of x, of y, padded weights a [B, N], b [B, M], packed weights a [Tx],
    b [Ty]); the weights differentiable back to ``a``, ``b``."""
    if cu_x is None or cu_y is None:
        raise ValueError(f"{fn}: packed input needs both cu_seqlens_x and cu_seqlens_y (one is None)")
    if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
        raise TypeError(f"{fn}: x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 2 or y.dim() != 2:
        raise ValueError(f"{fn}: with cu_seqlens, x and y must be packed [Tx, d] and [Ty, d], got {list(x.shape)} "
                         f"and {list(y.shape)}")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{fn}: x {list(x.shape)} and y {list(y.shape)} must agree on d")
    if not x.is_floating_point() or not y.is_floating_point():
        raise TypeError(f"{fn}: x and y must be floating point, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"{fn}: x is on {x.device} but y is on {y.device}")
    if cost not in COSTS:
        raise ValueError(f"{fn}: cost must be one of {COSTS}, got {cost!r}")
    from ._packed import Packing, check_cu  # noqa: PLC0415 - packed input only

    Tx, Ty = x.shape[0], y.shape[0]
    cu_x, lx = check_cu(cu_x, "cu_seqlens_x", Tx, x, fn)
    cu_y, ly = check_cu(cu_y, "cu_seqlens_y", Ty, x, fn)
    if cu_x.numel() != cu_y.numel():
        raise ValueError(f"{fn}: cu_seqlens_x and cu_seqlens_y must both be [B + 1], got {cu_x.numel()} and "
                         f"{cu_y.numel()} entries")
    px, py = Packing(cu_x, Tx, lx), Packing(cu_y, Ty, ly)
    like = x.new_empty(0, dtype=ref.compute_dtype(x.dtype))
    a_pad = _packed_side(x_mask, a, px, like, Tx, "x_mask", "a", fn)
    b_pad = _packed_side(y_mask, b, py, like, Ty, "y_mask", "b", fn)
    return px, py, a_pad, b_pad, px.unpad(a_pad), py.unpad(b_pad)


def _packed_embeddings(x, y, x_mask, y_mask, a, b, cost, eps, max_iter, tol, tau_a, tau_b, grad, backend, method,
                       f0, g0, eps_schedule, cu_x, cu_y) -> SinkhornResult:
    """sinkhorn_embeddings on packed (varlen) input; see its docstring."""
    prepared = _packed_inputs(x, y, x_mask, y_mask, a, b, cost, cu_x, cu_y)
    return _packed_solve(x, y, prepared, cost, eps, max_iter, tol, tau_a, tau_b, grad, backend, method, f0, g0,
                         eps_schedule)


def _packed_solve(x, y, prepared, cost, eps, max_iter, tol, tau_a, tau_b, grad, backend, method, f0, g0,
                  eps_schedule, fn: str = "sinkhorn_embeddings") -> SinkhornResult:
    """The packed solve from checked inputs (``prepared``: what _packed_inputs returns; the divergence prepares its
    packings once for its three solves)."""
    px, py, a_pad, b_pad, a_, b_ = prepared
    Tx, Ty = x.shape[0], y.shape[0]
    like = x.new_empty(0, dtype=ref.compute_dtype(x.dtype))
    be = None if grad == "unrolled" else _backend.resolve("sinkhorn", x.device, backend, _backend.AUTO_ORDER_FUSED)
    eps_, tol_, tau_a_, tau_b_ = _solver_args(eps, max_iter, tol, tau_a, tau_b, grad, like.dtype)
    if method not in METHODS:
        raise ValueError(f"{fn}: method must be one of {METHODS}, got {method!r}")
    f0 = _warm(f0, like, "f0", (Tx,), fn)
    g0 = _warm(g0, like, "g0", (Ty,), fn)
    stages = _stages(eps_schedule, eps_, lambda: _embeddings_range(x, y, a_, b_, cost), fn, like.dtype)
    if be not in ("cpp", "triton"):  # solved on the padded equivalent; the potentials come back packed
        res = sinkhorn_embeddings(px.pad(x), py.pad(y), a=a_pad, b=b_pad, cost=cost, eps=eps, max_iter=max_iter,
                                  tol=tol, tau_a=tau_a, tau_b=tau_b, grad=grad, backend=backend, method=method,
                                  f0=None if f0 is None else px.pad(f0), g0=None if g0 is None else py.pad(g0),
                                  eps_schedule=list(stages))
        return dataclasses.replace(res, f=px.unpad(res.f), g=py.unpad(res.g), _packing=(px, py))
    with torch.no_grad():
        status = _embeddings_status(x.detach(), y.detach(), a_pad.detach(), b_pad.detach(), _COST_KIND[cost], eps_,
                                    tau_a_, tau_b_, (px, py))
        status = _warm_status(status, None if f0 is None else px.pad(f0), None if g0 is None else py.pad(g0),
                              a_pad.detach(), b_pad.detach())
    how = _method(method, be, max_iter)
    f, g, value, tc, n_iter, err = _SinkhornEmbeddingsEnvelope.apply(x, y, a_, b_, status, (px, py), be, how, cost,
                                                                     eps_, max_iter, tol_, tau_a_, tau_b_, f0, g0,
                                                                     stages)
    return SinkhornResult(f, g, value, tc, n_iter, err, status, be, eps_,
                          lambda: pairwise_cost(px.pad(x.detach()), py.pad(y.detach()), cost), a_pad, b_pad, how,
                          (px, py))


def _embeddings_range(x, y, a, b, cost: str) -> float:
    """A bound on the cost between real tokens (the first eps of eps_schedule="geometric"): cosine 2,
    sqeuclidean (max |x| + max |y|)^2, dot max |x| max |y| (0 without real tokens)."""
    if cost == "cosine":
        return 2.0
    with torch.no_grad():
        nx, ny = x.detach().double().norm(dim=-1), y.detach().double().norm(dim=-1)
        # a non-finite real token is flagged (status 2), not a range
        nx = torch.where((a.detach() > 0) & torch.isfinite(nx), nx, 0)
        ny = torch.where((b.detach() > 0) & torch.isfinite(ny), ny, 0)
        mx = float(nx.amax()) if nx.numel() else 0.0
        my = float(ny.amax()) if ny.numel() else 0.0
    return (mx + my) ** 2 if cost == "sqeuclidean" else mx * my
