"""Significance tests for retrieval comparisons: the paired randomization (sign-flip) test on per-query scores
and Holm's step-down correction for a family of tests."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["paired_randomization_test", "holm"]


def paired_randomization_test(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10_000, seed: int = 0,
                              exact_up_to: int = 16) -> dict:
    """Two-sided paired randomization test of mean(a - b) = 0 over queries (Fisher's sign-flip test, the
    standard IR significance test: Smucker, Allan and Carterette, CIKM 2007).

    Under the null each query's difference is as likely to have either sign. With at most ``exact_up_to``
    non-zero differences every sign pattern is enumerated (exact p); otherwise ``n_resamples`` random sign
    patterns are drawn (seeded) and p = (1 + #{|mean*| >= |mean|}) / (1 + n_resamples), never 0.

    Args:
        a, b: per-query scores of two systems on the same queries, [Q] each.
    Returns:
        ``{"mean_a", "mean_b", "diff", "p", "n", "exact"}``.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a, b: expected two 1-d sequences of one length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("a, b: expected finite scores")
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples: expected an integer >= 1, got {n_resamples!r}")
    n = len(a)
    d = a - b
    out = {"mean_a": float(a.mean()) if n else float("nan"), "mean_b": float(b.mean()) if n else float("nan"),
           "diff": float(d.mean()) if n else float("nan"), "n": n}
    nz = d[d != 0]
    if nz.size == 0:
        return {**out, "p": 1.0, "exact": True}
    obs = abs(nz.sum())
    tol = 1e-12 * max(1.0, float(np.abs(nz).sum()))  # sums that equal the observed one up to rounding count
    if nz.size <= exact_up_to:
        signs = 1 - 2 * ((np.arange(1 << nz.size)[:, None] >> np.arange(nz.size)) & 1)
        sums = np.abs(signs @ nz)
        return {**out, "p": float((sums >= obs - tol).mean()), "exact": True}
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, n_resamples, 4096):  # bounded memory
        k = min(4096, n_resamples - start)
        signs = rng.integers(0, 2, size=(k, nz.size)) * 2 - 1
        hits += int((np.abs(signs @ nz) >= obs - tol).sum())
    return {**out, "p": (1 + hits) / (1 + n_resamples), "exact": False}


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (step-down; controls the family-wise error rate), in the input order.
    NaN entries are left out of the family and stay NaN."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.ndim != 1:
        raise ValueError(f"pvalues: expected a 1-d sequence, got shape {p.shape}")
    ok = ~np.isnan(p)
    if ((p[ok] < 0) | (p[ok] > 1)).any():
        raise ValueError("pvalues: expected values in [0, 1]")
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(ok)
    m = idx.size
    order = idx[np.argsort(p[idx], kind="stable")]
    running = 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        out[i] = running
    return out.tolist()
