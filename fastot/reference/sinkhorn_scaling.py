"""Plain PyTorch stabilized scaling-domain Sinkhorn with absorption (Schmitzer 2019): the oracle for the
``method="scaling"`` kernels of issue 24 (the public method is ``method=`` on ``fastot.sinkhorn`` and friends).

The iterates are those of the log-domain reference (:mod:`fastot.reference.sinkhorn`, same convention, same
``n_iter``, stopping rule and ``err``); only the arithmetic differs. The potentials are kept as absorbed bases
plus scalings, ``f = fb + eps log u`` and ``g = gb + eps log v``, over the stabilized kernel
``K_ij = exp((fb_i + gb_j - C_ij) / eps)`` (0 for a forbidden pair or a padded point). With ``s = K (b v)`` and
``t = K^T (a u)`` the log-domain updates read

    u <- exp((lam_a - 1) fb / eps) * s^(-lam_a)        v <- exp((lam_b - 1) gb / eps) * t^(-lam_b)

(``u = 1 / s`` for a balanced side): an iteration costs two matrix-vector products and no exp per cost entry.
The row error of a state is ``sum_i a_i |u_i s_i - target_i|``, which is the log-domain one.

- The first iteration runs in the log domain, so the kernel is built from potentials that make each row's and
  column's largest entries O(1) (no underflow of ``exp(-C / eps)`` at small eps).
- A problem whose ``|log u|`` or ``|log v|`` exceeds ``absorb`` absorbs them into its bases and rebuilds its
  kernel (an exp per entry, only then).
- A problem where ``s`` or ``t`` underflows (0 or not finite) for a point that has an allowed pair falls back
  to log-domain iterations from its current potentials, for the rest of its solve.
"""

from __future__ import annotations

import torch

from .sinkhorn import _col_ctransform, _lam, _prepare, _row_ctransform, _row_error, initial_potentials

__all__ = ["sinkhorn_fwd_scaling"]


def _kernel(C, fb, gb, valid, eps):
    expo = (fb[:, :, None] + gb[:, None, :] - C) / eps
    return torch.where(valid, torch.exp(torch.where(valid, expo, torch.zeros_like(expo))), torch.zeros_like(C))


def _scale(x, base, lam, eps, ok):
    """The new scaling from a row (or column) sum x: exp((lam - 1) base / eps) x^-lam; 1 where not ok."""
    safe = torch.where(ok, x, torch.ones_like(x))
    out = safe.reciprocal() if lam == 1.0 else torch.exp((lam - 1.0) * base / eps) * safe.pow(-lam)
    return torch.where(ok, out, torch.ones_like(out))


def sinkhorn_fwd_scaling(cost, a, b, eps: float, max_iter: int, tol: float | None = None,
                         tau_a: float | None = None, tau_b: float | None = None, absorb: float = 20.0,
                         return_stats: bool = False, f0=None, g0=None):
    """``fastot.reference.sinkhorn.sinkhorn_fwd`` by stabilized scaling iterations; same arguments and outputs.

    Args:
        absorb: absorption threshold on ``|log u|``, ``|log v|`` (default 20: scalings within e^±20).
        return_stats: also return ``{"absorptions": [B] int32, "fallback": [B] bool}``.
        f0, g0: optional warm start, as in the log-domain reference.
    """
    C, a_, b_, va, vb, loga, logb = _prepare(cost, a, b)
    B, N, M = C.shape
    lam_a, lam_b = _lam(tau_a, eps), _lam(tau_b, eps)
    allowed = va[:, :, None] & vb[:, None, :] & (C < float("inf"))
    row_ok, col_ok = allowed.any(2), allowed.any(1)  # points with at least one allowed pair
    f, g = initial_potentials(f0, g0, a_, b_, C.dtype)
    n_iter = torch.zeros(B, dtype=torch.int32, device=C.device)
    done = torch.zeros(B, dtype=torch.bool, device=C.device)
    absorptions = torch.zeros(B, dtype=torch.int32, device=C.device)
    log_mode = torch.zeros(B, dtype=torch.bool, device=C.device)  # problems that fell back

    def log_iteration(f, g, done, active):
        ft, ok = _row_ctransform(C, g, logb, va, vb, eps)
        if tol is not None:
            done = done | (active & (_row_error(a_, f, ft, ok, eps, tau_a) < tol))
        keep = (done | ~active)[:, None]
        f = torch.where(keep, f, lam_a * ft)
        g = torch.where(keep, g, lam_b * _col_ctransform(C, f, loga, va, vb, eps))
        return f, g, done, active & ~done

    if max_iter > 0:  # the first iteration in the log domain: the kernel then starts from O(1) entries
        f, g, done, stepped = log_iteration(f, g, done, torch.ones_like(done))
        n_iter = n_iter + stepped.to(torch.int32)
    fb, gb = f.clone(), g.clone()
    u = torch.ones_like(f)
    v = torch.ones_like(g)
    K = _kernel(C, fb, gb, allowed, eps)
    # Under torch.compile the data-dependent branches below (fall-back, absorption) are taken unconditionally
    # (their updates are masked per problem, so the result is the same): the trace has no host-side bool.
    tracing = torch.compiler.is_compiling()
    for _ in range(max_iter - 1):
        scaling = ~log_mode
        s = torch.einsum("bnm,bm->bn", K, b_ * v)
        if tol is not None:  # the error of the current state, exp((f - ft) / eps) = u s
            target = torch.ones_like(f) if tau_a is None else torch.exp(-(fb + eps * torch.log(u)) / tau_a)
            err = torch.where(row_ok, a_ * (u * s - target).abs(), torch.zeros_like(s)).sum(1)
            done = done | (scaling & (err < tol))
        step = scaling & ~done
        u_new = _scale(s, fb, lam_a, eps, row_ok)
        t = torch.einsum("bnm,bn->bm", K, a_ * torch.where(step[:, None], u_new, u))
        v_new = _scale(t, gb, lam_b, eps, col_ok)
        bad = ((row_ok & ((s <= 0) | ~torch.isfinite(s) | ~torch.isfinite(u_new))).any(1)
               | (col_ok & ((t <= 0) | ~torch.isfinite(t) | ~torch.isfinite(v_new))).any(1)) & step
        if tracing or bad.any():  # underflow: these problems go on in the log domain from where they are
            log_mode = log_mode | bad
            step = step & ~bad
        u = torch.where(step[:, None], u_new, u)
        v = torch.where(step[:, None], v_new, v)
        n_iter = n_iter + step.to(torch.int32)
        if tracing or log_mode.any():
            lm = log_mode & ~done
            f_cur, g_cur = fb + eps * torch.log(u), gb + eps * torch.log(v)
            f_l, g_l, done, stepped = log_iteration(torch.where(row_ok | ~va, f_cur, torch.zeros_like(f_cur)),
                                                    torch.where(col_ok | ~vb, g_cur, torch.zeros_like(g_cur)),
                                                    done, lm)
            n_iter = n_iter + stepped.to(torch.int32)
            fb, gb = torch.where(log_mode[:, None], f_l, fb), torch.where(log_mode[:, None], g_l, gb)
            u, v = torch.where(log_mode[:, None], 1.0, u), torch.where(log_mode[:, None], 1.0, v)
        far = ((torch.log(u).abs() > absorb).any(1) | (torch.log(v).abs() > absorb).any(1)) & ~log_mode
        if tracing or far.any():  # absorb the scalings into the bases; rebuild those problems' kernels
            fb = torch.where(far[:, None], fb + eps * torch.log(u), fb)
            gb = torch.where(far[:, None], gb + eps * torch.log(v), gb)
            u, v = torch.where(far[:, None], 1.0, u), torch.where(far[:, None], 1.0, v)
            K = torch.where(far[:, None, None], _kernel(C, fb, gb, allowed, eps), K)
            absorptions = absorptions + far.to(torch.int32)
    f = torch.where(row_ok, fb + eps * torch.log(u), torch.zeros_like(fb))
    g = torch.where(col_ok, gb + eps * torch.log(v), torch.zeros_like(gb))
    ft, ok = _row_ctransform(C, g, logb, va, vb, eps)
    err = _row_error(a_, f, ft, ok, eps, tau_a)
    out = (f, g, n_iter, err)
    return (*out, {"absorptions": absorptions, "fallback": log_mode}) if return_stats else out
