"""The stabilized scaling-domain reference (issue 24, not yet a public method): the log-domain reference's iterates
by other arithmetic. Checked against the log-domain reference in float64 (potentials, n_iter, the stopping rule,
err; ragged weights, forbidden pairs, unbalanced sides), against float64 in float32 (no worse than the log
domain's float32), through its fall-back, and against POT's stabilized Sinkhorn, which no one here wrote."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fastot.reference import sinkhorn as R
from fastot.reference.sinkhorn_scaling import sinkhorn_fwd_scaling


def _problem(seed, B, N, M, dtype=torch.float64, zero=0.2, forbid=0.1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, N, M, generator=g, dtype=torch.float64) * scale
    a = torch.rand(B, N, generator=g, dtype=torch.float64)
    b = torch.rand(B, M, generator=g, dtype=torch.float64)
    a[torch.rand(B, N, generator=g) < zero] = 0
    b[torch.rand(B, M, generator=g) < zero] = 0
    C[torch.rand(B, N, M, generator=g) < forbid] = float("inf")
    return C.to(dtype), a.to(dtype), b.to(dtype)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 14), m=st.integers(1, 14),
       eps=st.sampled_from([0.5, 0.05, 0.01, 0.002]), tau=st.sampled_from([None, 0.5, 5.0]),
       tol=st.sampled_from([None, 1e-3, 1e-7]), iters=st.integers(0, 60))
def test_float64_iterates_are_the_log_domain_ones(seed, n, m, eps, tau, tol, iters):
    C, a, b = _problem(seed, 4, n, m)
    want = R.sinkhorn_fwd(C, a, b, eps, iters, tol, tau, tau)
    got = sinkhorn_fwd_scaling(C, a, b, eps, iters, tol, tau, tau)
    torch.testing.assert_close(got[0], want[0], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(got[1], want[1], atol=1e-9, rtol=1e-9)
    assert torch.equal(got[2], want[2])  # the same per-problem stopping
    torch.testing.assert_close(got[3], want[3], atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("eps_rel", [0.05, 0.01, 0.003, 0.001])
def test_float32_no_less_accurate_than_the_log_domain(eps_rel):
    """eps down to 1e-3 x the cost range (costs in [0, 2]): the float32 potentials' distance to the float64
    solution is within that of the float32 log-domain reference (here it is 10-30x smaller)."""
    C, a, b = _problem(7, 16, 40, 48, torch.float32, zero=0.1, forbid=0.0)
    eps = eps_rel * 2.0
    ref = R.sinkhorn_fwd(C.double(), a.double(), b.double(), eps, 200)
    log32 = R.sinkhorn_fwd(C, a, b, eps, 200)
    sc32 = sinkhorn_fwd_scaling(C, a, b, eps, 200, return_stats=True)
    err = lambda out: max((out[i].double() - ref[i]).abs().max().item() for i in (0, 1))  # noqa: E731
    assert err(sc32) <= err(log32) + 1e-6
    assert sc32[4]["absorptions"].max() >= 1 and not sc32[4]["fallback"].any()


def test_underflow_falls_back_to_the_log_domain():
    """With absorption switched off, balanced problems whose masses differ (b has 1e-3 of a's mass) drift their
    scalings out of float64's range within a few hundred iterations: those problems go on in the log domain
    from where they were, and still end on the reference's iterates."""
    C, a, b = _problem(3, 6, 20, 24, zero=0.1, forbid=0.05)
    b = b * 1e-3
    want = R.sinkhorn_fwd(C, a, b, 0.01, 300)
    got = sinkhorn_fwd_scaling(C, a, b, 0.01, 300, absorb=float("inf"), return_stats=True)
    assert got[4]["fallback"].all() and int(got[4]["absorptions"].sum()) == 0
    torch.testing.assert_close(got[0], want[0], atol=1e-8, rtol=1e-9)
    torch.testing.assert_close(got[1], want[1], atol=1e-8, rtol=1e-9)
    assert torch.equal(got[2], want[2])


@pytest.mark.parametrize("eps", [0.1, 0.02])
def test_plan_against_pot_sinkhorn_stabilized(eps):
    ot = pytest.importorskip("ot")
    C, a, b = _problem(11, 1, 30, 25, zero=0.0, forbid=0.0)
    a, b = a / a.sum(), b / b.sum()
    f, g, n, err = sinkhorn_fwd_scaling(C, a, b, eps, 3000, 1e-13)
    ours = R.sinkhorn_plan(C, a, b, f, g, eps)[0].numpy()
    theirs = ot.sinkhorn(a[0].numpy(), b[0].numpy(), C[0].numpy(), eps, method="sinkhorn_stabilized",
                         numItermax=20000, stopThr=1e-13)
    np.testing.assert_allclose(ours, theirs, atol=1e-10)
    assert float(err[0]) < 1e-12
