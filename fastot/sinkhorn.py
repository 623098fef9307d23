"""Public batched Sinkhorn: ``fastot.sinkhorn`` and ``fastot.sinkhorn_embeddings``.

Path: public function -> backend choice (``fastot._backend.resolve``) -> kernel set of that backend
(``torch.ops.fastot.*`` for cpp/cuda, the reference for torch, ``fastot.triton`` for triton) ->
one autograd rule (envelope) shared by all backends. See ``fastot/reference/sinkhorn.py`` for the
exact convention.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from . import _backend
from .reference import sinkhorn as ref

__all__ = ["SinkhornResult", "sinkhorn", "sinkhorn_embeddings", "pairwise_cost", "COSTS"]

COSTS = ("cosine", "sqeuclidean", "dot")


class _Kernels(NamedTuple):
    fwd: Callable  # (cost, a, b, eps, max_iter, tol, tau_a, tau_b) -> (f, g, n_iter, err)
    plan: Callable  # (cost, a, b, f, g, eps) -> P [B,N,M]
    plan_sums: Callable  # (cost, a, b, f, g, eps) -> (<P, C> [B], sum P [B])


def _kernels(backend: str) -> _Kernels:
    if backend == "torch":
        return _Kernels(ref.sinkhorn_fwd, ref.sinkhorn_plan, ref.sinkhorn_plan_sums)
    if backend in ("cpp", "cuda"):  # one registered op each; the dispatcher picks CPU or CUDA from the device
        return _Kernels(torch.ops.fastot.sinkhorn_fwd, torch.ops.fastot.sinkhorn_plan, torch.ops.fastot.sinkhorn_plan_sums)
    from .triton import sinkhorn as tsk  # noqa: PLC0415 - imported only when the backend is chosen

    return _Kernels(tsk.sinkhorn_fwd, tsk.sinkhorn_plan, tsk.sinkhorn_plan_sums)


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


def _weight_vjp(ctx, a, b, f, g, g_value, i_a: int, i_b: int, eps, tau_a, tau_b):
    """(d_a, d_b) of the backward: g_value times d value/da, d value/db, each only where its input needs it."""
    need_a, need_b = ctx.needs_input_grad[i_a], ctx.needs_input_grad[i_b]
    if not (need_a or need_b):
        return None, None
    ga, gb = _weight_grads(a, b, f, g, eps, tau_a, tau_b)
    return ((ga * g_value[:, None]).to(a.dtype) if need_a else None,
            (gb * g_value[:, None]).to(b.dtype) if need_b else None)


class _SinkhornEnvelope(torch.autograd.Function):
    """The solve is never recorded by autograd.

    value: d/dC = P* (envelope theorem), d/da, d/db from the potentials (see _weight_grads).
    transport_cost: P* is treated as a constant (the OPTICAL loss convention): d/dC = P*, d/da = d/db = 0.
    That is not the full derivative of <P*(C), C>; use grad="unrolled" for that.
    """

    @staticmethod
    def forward(ctx, cost, a, b, backend, eps, max_iter, tol, tau_a, tau_b):
        k = _kernels(backend)
        f, g, n_iter, err = k.fwd(cost, a, b, eps, max_iter, tol, tau_a, tau_b)
        tc, mass = k.plan_sums(cost, a, b, f, g, eps)
        value = _dual_value(a, b, f, g, mass, eps, tau_a, tau_b)
        ctx.save_for_backward(cost, a, b, f, g)
        ctx.cfg = (backend, eps, tau_a, tau_b)
        ctx.mark_non_differentiable(f, g, n_iter, err)
        return f, g, value, tc, n_iter, err

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _gf, _gg, g_value, g_tc, _gn, _ge):
        cost, a, b, f, g = ctx.saved_tensors
        backend, eps, tau_a, tau_b = ctx.cfg
        d_cost = None
        if ctx.needs_input_grad[0]:
            plan = _kernels(backend).plan(cost, a, b, f, g, eps)
            d_cost = (plan * (g_value + g_tc).to(plan.dtype)[:, None, None]).to(cost.dtype)
        d_a, d_b = _weight_vjp(ctx, a, b, f, g, g_value, 1, 2, eps, tau_a, tau_b)
        return d_cost, d_a, d_b, None, None, None, None, None, None


_COST_KIND = {"cosine": 0, "sqeuclidean": 1, "dot": 2}
_FUSED = ("cpp", "cuda", "triton")  # backends whose kernels build the cost from x and y themselves


def _embedding_kernels(backend: str):
    """(forward, backward) of the fused embeddings path of ``backend`` (one of _FUSED)."""
    if backend in ("cpp", "cuda"):  # one registered op each; the dispatcher picks CPU or CUDA from the device
        return torch.ops.fastot.sinkhorn_embeddings_fwd, torch.ops.fastot.sinkhorn_embeddings_bwd
    from .triton import sinkhorn as tsk  # noqa: PLC0415 - imported only when the backend is chosen

    return tsk.sinkhorn_embeddings_fwd, tsk.sinkhorn_embeddings_bwd


class _SinkhornEmbeddingsEnvelope(torch.autograd.Function):
    """Fused sinkhorn_embeddings (cpp, cuda, triton): the cost is built per problem from x and y inside the kernel,
    forward and backward, so no [B,N,M] tensor exists. Same gradient rules as _SinkhornEnvelope; dx, dy come
    from the kernel as <P*, dC/dx> with P* recomputed from the potentials."""

    @staticmethod
    def forward(ctx, x, y, a, b, backend, cost, eps, max_iter, tol, tau_a, tau_b):
        kind = _COST_KIND[cost]
        fwd, _ = _embedding_kernels(backend)
        f, g, n_iter, err, tc, mass = fwd(x, y, a, b, kind, eps, max_iter, tol, tau_a, tau_b)
        value = _dual_value(a, b, f, g, mass, eps, tau_a, tau_b)
        ctx.save_for_backward(x, y, a, b, f, g)
        ctx.cfg = (backend, kind, eps, tau_a, tau_b)
        ctx.mark_non_differentiable(f, g, n_iter, err)
        return f, g, value, tc, n_iter, err

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, _gf, _gg, g_value, g_tc, _gn, _ge):
        x, y, a, b, f, g = ctx.saved_tensors
        backend, kind, eps, tau_a, tau_b = ctx.cfg
        dx = dy = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            _, bwd = _embedding_kernels(backend)
            dx, dy = bwd(x, y, a, b, f, g, (g_value + g_tc).to(f.dtype), kind, eps)
            dx = dx.to(x.dtype) if ctx.needs_input_grad[0] else None
            dy = dy.to(y.dtype) if ctx.needs_input_grad[1] else None
        da, db = _weight_vjp(ctx, a, b, f, g, g_value, 2, 3, eps, tau_a, tau_b)
        return dx, dy, da, db, None, None, None, None, None, None, None


@dataclass
class SinkhornResult:
    """Result of :func:`sinkhorn`. Shapes: f [B,N], g [B,M], value/transport_cost/n_iter/err [B].

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
    backend: str
    eps: float
    _cost: torch.Tensor | Callable[[], torch.Tensor] = field(repr=False)
    _a: torch.Tensor = field(repr=False)
    _b: torch.Tensor = field(repr=False)

    def plan(self) -> torch.Tensor:
        with torch.no_grad():
            k = _kernels(self.backend)
            cost = self._cost() if callable(self._cost) else self._cost  # fused path: the cost is built on demand
            return k.plan(cost.detach(), self._a.detach(), self._b.detach(), self.f.detach(), self.g.detach(),
                          self.eps)


def _check_positive(name: str, value, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or value != value:
        raise ValueError(f"sinkhorn: {name} must be a positive number{' or None' if allow_none else ''}, got {value!r}")


def _solver_args(eps, max_iter, tol, tau_a, tau_b, grad):
    """Checks the scalar arguments shared by sinkhorn and sinkhorn_embeddings; returns them as floats."""
    _check_positive("eps", eps, allow_none=False)
    _check_positive("tol", tol)
    _check_positive("tau_a", tau_a)
    _check_positive("tau_b", tau_b)
    if not isinstance(max_iter, int) or isinstance(max_iter, bool) or max_iter < 0:
        raise ValueError(f"sinkhorn: max_iter must be an integer >= 0, got {max_iter!r}")
    if grad not in ("envelope", "unrolled"):
        raise ValueError(f"sinkhorn: grad must be 'envelope' or 'unrolled', got {grad!r}")
    as_float = lambda v: None if v is None else float(v)  # noqa: E731
    return float(eps), as_float(tol), as_float(tau_a), as_float(tau_b)


def _weights(w, like: torch.Tensor, n: int, name: str, shape: tuple[int, int]) -> torch.Tensor:
    if w is None:
        return torch.full(shape, 1.0 / max(n, 1), dtype=ref.compute_dtype(like.dtype), device=like.device)
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"sinkhorn: {name} must be a tensor or None, got {type(w).__name__}")
    if tuple(w.shape) != shape:
        raise ValueError(f"sinkhorn: {name} must have shape {list(shape)}, got {list(w.shape)}")
    if not w.is_floating_point():
        raise TypeError(f"sinkhorn: {name} must be floating point, got {w.dtype}")
    if w.device != like.device:
        raise ValueError(f"sinkhorn: {name} is on {w.device} but cost is on {like.device}")
    # A value check needs the data on the host: free on CPU, skipped on accelerators (no sync).
    if w.device.type == "cpu" and not torch.compiler.is_compiling():
        bad = (w < 0) | ~torch.isfinite(w)
        if bool(bad.any()):
            raise ValueError(f"sinkhorn: {name} must be finite and nonnegative; found {w[bad].flatten()[:3].tolist()}")
    return w


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
) -> SinkhornResult:
    """Batched log-domain Sinkhorn for B entropic OT problems.

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

    Returns:
        :class:`SinkhornResult` with f [B,N], g [B,M], value [B], transport_cost [B], n_iter [B] int32,
        err [B], and ``plan()`` -> [B,N,M].
    """
    if not isinstance(cost, torch.Tensor):
        raise TypeError(f"sinkhorn: cost must be a tensor, got {type(cost).__name__}")
    if cost.dim() != 3:
        raise ValueError(f"sinkhorn: cost must be [B, N, M], got shape {list(cost.shape)}")
    if not cost.is_floating_point():
        raise TypeError(f"sinkhorn: cost must be floating point, got {cost.dtype}")
    eps, tol, tau_a, tau_b = _solver_args(eps, max_iter, tol, tau_a, tau_b, grad)
    B, N, M = cost.shape
    a = _weights(a, cost, N, "a", (B, N))
    b = _weights(b, cost, M, "b", (B, M))

    if grad == "unrolled":
        if backend not in (None, "auto", "torch"):
            raise _backend.BackendUnavailable(f"sinkhorn: grad='unrolled' runs on the torch backend only, got backend={backend!r}")
        f, g, n_iter, err = ref.sinkhorn_fwd(cost, a, b, eps, max_iter, tol, tau_a, tau_b)
        tc, mass = ref.sinkhorn_plan_sums(cost, a, b, f, g, eps)
        value = _dual_value(a, b, f, g, mass, eps, tau_a, tau_b)
        return SinkhornResult(f, g, value, tc, n_iter, err.detach(), "torch", eps, cost, a, b)

    be = _backend.resolve("sinkhorn", cost.device, backend)
    f, g, value, tc, n_iter, err = _SinkhornEnvelope.apply(cost, a, b, be, eps, max_iter, tol, tau_a, tau_b)
    return SinkhornResult(f, g, value, tc, n_iter, err, be, eps, cost, a, b)


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


def _mask_weights(mask, w, n, like, name, shape):
    if mask is None:
        return w
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"sinkhorn_embeddings: {name} must be a tensor or None, got {type(mask).__name__}")
    if tuple(mask.shape) != shape:
        raise ValueError(f"sinkhorn_embeddings: {name} must have shape {list(shape)}, got {list(mask.shape)}")
    m = mask.to(device=like.device, dtype=ref.compute_dtype(like.dtype))
    if w is None:
        return m / m.sum(1, keepdim=True).clamp_min(1)
    return w * m


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
) -> SinkhornResult:
    """Sinkhorn between token embeddings, cost computed from x and y.

    Args:
        x: [B, N, d], y: [B, M, d] (fp32/fp64; bf16/fp16 promoted to fp32 for the cost).
        x_mask: [B, N] bool/0-1, True = real token (padding gets zero weight). y_mask: [B, M].
        a, b: optional weights; default uniform over the unmasked tokens.
        cost: "cosine" (default), "sqeuclidean" or "dot".
        Other arguments as :func:`sinkhorn`. Gradients reach x and y through the cost.

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
    if x.dim() != 3 or y.dim() != 3:
        raise ValueError(f"sinkhorn_embeddings: x and y must be [B, N, d] and [B, M, d], got {list(x.shape)} and {list(y.shape)}")
    if x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"sinkhorn_embeddings: x {list(x.shape)} and y {list(y.shape)} must agree on B and d")
    if not x.is_floating_point() or not y.is_floating_point():
        raise TypeError(f"sinkhorn_embeddings: x and y must be floating point, got {x.dtype} and {y.dtype}")
    if x.device != y.device:
        raise ValueError(f"sinkhorn_embeddings: x is on {x.device} but y is on {y.device}")
    if cost not in COSTS:
        raise ValueError(f"sinkhorn_embeddings: cost must be one of {COSTS}, got {cost!r}")
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    like = x.new_empty(0, dtype=ref.compute_dtype(x.dtype))
    a = _mask_weights(x_mask, a, N, like, "x_mask", (B, N))
    b = _mask_weights(y_mask, b, M, like, "y_mask", (B, M))
    be = None if grad == "unrolled" else _backend.resolve("sinkhorn", x.device, backend, _backend.AUTO_ORDER_FUSED)
    if be in _FUSED:  # the cost is built per problem inside the kernel
        eps, tol, tau_a, tau_b = _solver_args(eps, max_iter, tol, tau_a, tau_b, grad)
        a = _weights(a, like, N, "a", (B, N))
        b = _weights(b, like, M, "b", (B, M))
        f, g, value, tc, n_iter, err = _SinkhornEmbeddingsEnvelope.apply(x, y, a, b, be, cost, eps, max_iter, tol,
                                                                         tau_a, tau_b)
        return SinkhornResult(f, g, value, tc, n_iter, err, be, eps,
                              lambda: pairwise_cost(x.detach(), y.detach(), cost), a, b)
    C = pairwise_cost(x, y, cost)
    return sinkhorn(C, a, b, eps=eps, max_iter=max_iter, tol=tol, tau_a=tau_a, tau_b=tau_b, grad=grad, backend=backend)


def _register_fakes() -> None:
    """Meta implementations of the C++ Sinkhorn ops, so they trace under torch.compile."""

    @torch.library.register_fake("fastot::sinkhorn_fwd")
    def _(cost, a, b, eps, max_iter, tol, tau_a, tau_b):
        B, N, M = cost.shape
        dt = ref.compute_dtype(cost.dtype)
        return (cost.new_empty((B, N), dtype=dt), cost.new_empty((B, M), dtype=dt),
                cost.new_empty((B,), dtype=torch.int32), cost.new_empty((B,), dtype=dt))

    @torch.library.register_fake("fastot::sinkhorn_plan")
    def _(cost, a, b, f, g, eps):
        return cost.new_empty(cost.shape, dtype=ref.compute_dtype(cost.dtype))

    @torch.library.register_fake("fastot::sinkhorn_plan_sums")
    def _(cost, a, b, f, g, eps):
        dt = ref.compute_dtype(cost.dtype)
        return cost.new_empty((cost.shape[0],), dtype=dt), cost.new_empty((cost.shape[0],), dtype=dt)

    @torch.library.register_fake("fastot::sinkhorn_embeddings_fwd")
    def _(x, y, a, b, cost, eps, max_iter, tol, tau_a, tau_b):
        B, N, M = x.shape[0], x.shape[1], y.shape[1]
        dt = ref.compute_dtype(x.dtype)
        e = lambda *s: x.new_empty(s, dtype=dt)  # noqa: E731
        return e(B, N), e(B, M), x.new_empty((B,), dtype=torch.int32), e(B), e(B), e(B)

    @torch.library.register_fake("fastot::sinkhorn_embeddings_bwd")
    def _(x, y, a, b, f, g, scale, cost, eps):
        dt = ref.compute_dtype(x.dtype)
        return x.new_empty(x.shape, dtype=dt), y.new_empty(y.shape, dtype=dt)
