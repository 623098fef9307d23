"""Plain PyTorch batched log-domain Sinkhorn: the laptop fallback and the test oracle.

Convention (the one every backend implements). For weights ``a`` [B,N], ``b`` [B,M] and cost ``C``
[B,N,M], the plan is ``P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)`` and the updates are

    f_i <- lam_a * (-eps * LSE_j((g_j - C_ij) / eps + log b_j))        over j with b_j > 0
    g_j <- lam_b * (-eps * LSE_i((f_i - C_ij) / eps + log a_i))        over i with a_i > 0

with ``lam = tau / (tau + eps)`` for a KL-relaxed (unbalanced) side and ``lam = 1`` for a balanced one.
Potentials start at 0, or at a warm start ``(f0, g0)``: taken as given on the real points (positive weight)
of a problem with mass on both sides, 0 elsewhere (a caller passes 0 for a point with no allowed pair: such a
point's potential is 0). One iteration is an f-update followed by a g-update. A point with zero weight
is outside its problem: it receives no mass, its potential is 0, and cost entries in its row or
column are never used (they may hold anything, even NaN). A cost of +inf between two real points
forbids that pair (P_ij = 0); a point all of whose pairs are forbidden gets potential 0.

The marginal error ``err`` of a state (f, g) is the L1 violation on the ``a`` side,
``sum_i |(P 1)_i - a_i t_i|`` with ``t_i = 1`` (balanced) or ``exp(-f_i / tau_a)`` (unbalanced).
With ``tol``, each problem checks its error at the start of every iteration and freezes once it is
below ``tol``; ``n_iter`` counts the iterations each problem applied. ``err`` is the error of the
returned state.
"""

from __future__ import annotations

import torch

__all__ = ["sinkhorn_fwd", "sinkhorn_plan", "sinkhorn_plan_sums", "compute_dtype", "initial_potentials"]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp64 stays fp64; every other floating dtype is solved in fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _masked_lse(z: torch.Tensor, valid: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-sum-exp of ``z`` over ``dim`` restricted to ``valid``; returns (lse, any_valid).

    Written so that neither the value nor its autograd gradient is ever NaN, also for empty sets.
    """
    if z.shape[dim] == 0:  # N = 0 or M = 0: nothing to sum over
        zero = z.sum(dim)
        return zero, torch.zeros(zero.shape, dtype=torch.bool, device=z.device)
    # A +inf cost (a forbidden pair) gives z = -inf: it is left out like a padded point.
    valid = valid & (z > float("-inf"))
    neg_inf = torch.tensor(float("-inf"), dtype=z.dtype, device=z.device)
    z = torch.where(valid, z, neg_inf)
    any_valid = valid.any(dim)
    m = z.amax(dim, keepdim=True).detach()
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(z - m).sum(dim)
    s_safe = torch.where(any_valid, s, torch.ones_like(s))
    return torch.where(any_valid, m.squeeze(dim) + torch.log(s_safe), torch.zeros_like(s)), any_valid


def _lam(tau: float | None, eps: float) -> float:
    return 1.0 if tau is None else tau / (tau + eps)


def _row_ctransform(C, g, logb, va, vb, eps):
    """f~_i = -eps LSE_j((g_j - C_ij)/eps + log b_j); 0 where a_i = 0 or no column is valid."""
    z = (g[:, None, :] - C) / eps + logb[:, None, :]
    lse, ok = _masked_lse(z, vb[:, None, :].expand_as(z), dim=2)
    ok = ok & va
    return torch.where(ok, -eps * lse, torch.zeros_like(lse)), ok


def _col_ctransform(C, f, loga, va, vb, eps):
    z = (f[:, :, None] - C) / eps + loga[:, :, None]
    lse, ok = _masked_lse(z, va[:, :, None].expand_as(z), dim=1)
    ok = ok & vb
    return torch.where(ok, -eps * lse, torch.zeros_like(lse))


def _row_error(a, f, ft, ok, eps, tau_a):
    target = torch.ones_like(f) if tau_a is None else torch.exp(-f / tau_a)
    viol = a * (torch.exp((f - ft) / eps) - target).abs()
    return torch.where(ok, viol, torch.zeros_like(viol)).sum(1)


def initial_potentials(f0, g0, a, b, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The state before the first iteration: (f0, g0) in ``dtype`` on the real points (weight > 0) of problems with
    a real point on both sides, 0 elsewhere; a missing warm start is 0. a [B,N], b [B,M]."""
    va, vb = a > 0, b > 0
    both = (va.any(1) & vb.any(1))[:, None]
    zero = torch.zeros((), dtype=dtype, device=a.device)
    f = zero.expand(a.shape) if f0 is None else torch.where(va & both, f0.detach().to(dtype), zero)
    g = zero.expand(b.shape) if g0 is None else torch.where(vb & both, g0.detach().to(dtype), zero)
    return f.contiguous(), g.contiguous()


def _prepare(cost, a, b):
    dt = compute_dtype(cost.dtype)
    C, a, b = cost.to(dt), a.to(dt), b.to(dt)
    va, vb = a > 0, b > 0
    zero = torch.zeros((), dtype=dt, device=C.device)
    loga = torch.where(va, torch.log(torch.where(va, a, torch.ones_like(a))), zero)
    logb = torch.where(vb, torch.log(torch.where(vb, b, torch.ones_like(b))), zero)
    # Entries in padded rows/columns are replaced so that whatever they hold (even NaN) never leaks.
    C = torch.where(va[:, :, None] & vb[:, None, :], C, zero)
    return C, a, b, va, vb, loga, logb


def sinkhorn_fwd(
    cost: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    eps: float,
    max_iter: int,
    tol: float | None = None,
    tau_a: float | None = None,
    tau_b: float | None = None,
    f0: torch.Tensor | None = None,
    g0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Solve B entropic OT problems.

    Args:
        cost: [B, N, M] fp16/bf16/fp32/fp64 (half types are solved in fp32).
        a: [B, N] nonnegative weights. b: [B, M] nonnegative weights.
        f0, g0: optional warm start [B, N], [B, M] (see the module docstring; never differentiated).
    Returns:
        f [B, N], g [B, M] in the compute dtype; n_iter [B] int32; err [B] in the compute dtype.

    Differentiable through the iterations when the inputs require grad (``grad="unrolled"``).
    """
    C, a_, b_, va, vb, loga, logb = _prepare(cost, a, b)
    B, N, M = C.shape
    lam_a, lam_b = _lam(tau_a, eps), _lam(tau_b, eps)
    f, g = initial_potentials(f0, g0, a_, b_, C.dtype)
    n_iter = torch.zeros(B, dtype=torch.int32, device=C.device)
    done = torch.zeros(B, dtype=torch.bool, device=C.device)
    for _ in range(max_iter):
        ft, ok = _row_ctransform(C, g, logb, va, vb, eps)
        if tol is not None:
            done = done | (_row_error(a_, f, ft, ok, eps, tau_a) < tol)
        f = torch.where(done[:, None], f, lam_a * ft)
        g = torch.where(done[:, None], g, lam_b * _col_ctransform(C, f, loga, va, vb, eps))
        n_iter = n_iter + (~done).to(torch.int32)
    ft, ok = _row_ctransform(C, g, logb, va, vb, eps)
    err = _row_error(a_, f, ft, ok, eps, tau_a)
    return f, g, n_iter, err


def sinkhorn_plan(cost, a, b, f, g, eps: float) -> torch.Tensor:
    """P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps), 0 in padded rows/columns. [B, N, M]"""
    C, a_, b_, va, vb, _, _ = _prepare(cost, a, b)
    f, g = f.to(C.dtype), g.to(C.dtype)
    valid = va[:, :, None] & vb[:, None, :]
    expo = torch.where(valid, (f[:, :, None] + g[:, None, :] - C) / eps, torch.zeros_like(C))
    return torch.where(valid, a_[:, :, None] * b_[:, None, :] * torch.exp(expo), torch.zeros_like(C))


def sinkhorn_plan_sums(cost, a, b, f, g, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(<P, C>, sum P) per problem, [B] each; forbidden (+inf) pairs contribute 0."""
    C = _prepare(cost, a, b)[0]
    P = sinkhorn_plan(cost, a, b, f, g, eps)
    # Where P is 0 the cost may be +inf (forbidden pair): take 0 * 0 there instead of 0 * inf.
    return (P * torch.where(P > 0, C, torch.zeros_like(C))).sum((1, 2)), P.sum((1, 2))
