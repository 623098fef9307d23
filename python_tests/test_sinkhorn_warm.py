"""Warm starts (f0, g0) and eps-scaling (eps_schedule) of fastot.sinkhorn / sinkhorn_embeddings (issue 25), on
every backend and iteration scheme (conftest.backend_params).

The properties are about the iteration, not about a formula typed again: an iteration depends on the state only
through g (the f-update comes first), so k1 iterations then k2 from the result's (f, g) are k1 + k2 iterations;
a warm start that meets tol returns at once; the float64 kernels follow the reference from any warm start; and an
annealed solve converges to the plan of POT's own solver (which no one here wrote)."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from hypothesis import given, settings
from hypothesis import strategies as st

import fastot
from fastot.reference import sinkhorn as R
from fastot.sinkhorn import STATUS, geometric_eps_schedule

PARAMS = backend_params("sinkhorn")


def _problem(seed, B, N, M, dtype=torch.float64, zero=0.2, forbid=0.0):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, N, M, generator=g, dtype=torch.float64) * 2
    a = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.1
    a[torch.rand(B, N, generator=g) < zero] = 0
    b[torch.rand(B, M, generator=g) < zero] = 0
    a[:, 0], b[:, 0] = 0.5, 0.5  # mass on both sides
    b = b / b.sum(1, keepdim=True) * a.sum(1, keepdim=True)  # balanced: equal masses
    C[torch.rand(B, N, M, generator=g) < forbid] = float("inf")
    C[:, 0, :], C[:, :, 0] = 1.0, 1.0  # every real point has an allowed pair (with point 0): feasible
    return C.to(dtype), a.to(dtype), b.to(dtype), g


def _fast(backend):
    return backend == "triton"  # the Triton interpreter: fewer examples


@pytest.mark.parametrize("backend,device", PARAMS)
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 24), m=st.integers(1, 24), k1=st.integers(0, 8),
       k2=st.integers(0, 8), tau=st.sampled_from([None, 0.5]), eps=st.sampled_from([0.3, 0.05]))
def test_warm_start_continues_the_iteration(backend, device, seed, n, m, k1, k2, tau, eps):
    C, a, b, _ = _problem(seed, 3, n, m, forbid=0.1)
    C, a, b = C.to(device), a.to(device), b.to(device)
    kw = dict(eps=eps, tau_a=tau, tau_b=tau if tau is None else 2 * tau, backend=backend)
    if tau is not None:
        b = b * 1.5  # unequal masses are allowed when a side is relaxed
    first = fastot.sinkhorn(C, a, b, max_iter=k1, **kw)
    both = fastot.sinkhorn(C, a, b, max_iter=k1 + k2, **kw)
    cont = fastot.sinkhorn(C, a, b, max_iter=k2, f0=first.f, g0=first.g, **kw)
    assert (cont.status == 0).all()
    torch.testing.assert_close(cont.f, both.f, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(cont.g, both.g, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(cont.value, both.value, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(cont.err, both.err, atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("backend,device", PARAMS)
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 20), m=st.integers(1, 20), iters=st.integers(0, 12),
       tol=st.sampled_from([None, 1e-2, 1e-6]), scale=st.sampled_from([0.1, 3.0]), tau=st.sampled_from([None, 1.0]))
def test_any_warm_start_follows_the_reference(backend, device, seed, n, m, iters, tol, scale, tau):
    """Random warm starts (not from a solve), ragged weights, forbidden pairs, tol: the float64 iterates of the
    reference started from the same state (0 at padded points and at points with every pair forbidden, which an
    unbalanced problem may have)."""
    C, a, b, gen = _problem(seed, 3, n, m, forbid=0.15)
    if tau is not None and n > 1:
        C[:, n - 1, :] = float("inf")  # a real point with every pair forbidden
    f0 = torch.randn(3, n, generator=gen, dtype=torch.float64) * scale
    g0 = torch.randn(3, m, generator=gen, dtype=torch.float64) * scale
    got = fastot.sinkhorn(C.to(device), a.to(device), b.to(device), eps=0.1, max_iter=iters, tol=tol, tau_a=tau,
                          tau_b=tau, backend=backend, f0=f0.to(device), g0=g0.to(device))
    assert (got.status == 0).all()
    allowed = (a > 0)[:, :, None] & (b > 0)[:, None, :] & (C < float("inf"))
    want = R.sinkhorn_fwd(C, a, b, 0.1, iters, tol, tau, tau, torch.where(allowed.any(2), f0, 0),
                          torch.where(allowed.any(1), g0, 0))
    torch.testing.assert_close(got.f.cpu(), want[0], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(got.g.cpu(), want[1], atol=1e-9, rtol=1e-9)
    assert torch.equal(got.n_iter.cpu(), want[2])
    torch.testing.assert_close(got.err.cpu(), want[3], atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("backend,device", PARAMS)
def test_converged_warm_start_returns_at_once(backend, device):
    C, a, b, _ = _problem(3, 4, 16, 12)
    C, a, b = C.to(device), a.to(device), b.to(device)
    cold = fastot.sinkhorn(C, a, b, eps=0.1, max_iter=2000, tol=1e-9, backend=backend)
    assert (cold.err < 1e-9).all() and (cold.n_iter > 5).all()
    warm = fastot.sinkhorn(C, a, b, eps=0.1, max_iter=2000, tol=1e-9, backend=backend, f0=cold.f, g0=cold.g)
    assert (warm.n_iter == 0).all()
    torch.testing.assert_close(warm.f, cold.f)
    torch.testing.assert_close(warm.value, cold.value)
    # a nearby problem (the next training step) needs far fewer iterations from the last potentials
    C2 = C * 1.02
    again = fastot.sinkhorn(C2, a, b, eps=0.1, max_iter=2000, tol=1e-9, backend=backend, f0=cold.f, g0=cold.g)
    fresh = fastot.sinkhorn(C2, a, b, eps=0.1, max_iter=2000, tol=1e-9, backend=backend)
    assert (again.n_iter < fresh.n_iter).all()
    torch.testing.assert_close(again.value, fresh.value, atol=1e-8, rtol=0)


@pytest.mark.parametrize("backend,device", PARAMS)
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_embeddings_warm_start_continues_the_iteration(backend, device, cost):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 9, 8, generator=g, dtype=torch.float64).to(device)
    y = torch.randn(3, 7, 8, generator=g, dtype=torch.float64).to(device)
    xm = torch.ones(3, 9, dtype=torch.bool, device=device)
    xm[1, 5:] = False
    kw = dict(cost=cost, eps=0.2 if cost == "cosine" else 2.0, backend=backend)
    first = fastot.sinkhorn_embeddings(x, y, xm, None, max_iter=3, **kw)
    both = fastot.sinkhorn_embeddings(x, y, xm, None, max_iter=7, **kw)
    xg = x.clone().requires_grad_()
    cont = fastot.sinkhorn_embeddings(xg, y, xm, None, max_iter=4, f0=first.f, g0=first.g, **kw)
    torch.testing.assert_close(cont.f, both.f, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(cont.value, both.value, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(cont.transport_cost, both.transport_cost, atol=1e-9, rtol=1e-9)
    cont.value.sum().backward()  # gradients flow as without a warm start
    xb = x.clone().requires_grad_()
    fastot.sinkhorn_embeddings(xb, y, xm, None, max_iter=7, **kw).value.sum().backward()
    torch.testing.assert_close(xg.grad, xb.grad, atol=1e-9, rtol=1e-7)


def test_non_finite_warm_start_flags_only_its_problem():
    C, a, b, _ = _problem(1, 3, 6, 5)
    a[2, 3] = 0
    b[2] *= a[2].sum() / b[2].sum()  # balanced again
    f0 = torch.zeros(3, 6, dtype=torch.float64)
    f0[0, 0] = float("nan")  # a real point: problem 0 is flagged
    f0[2, 3] = float("inf")  # a padded point: ignored
    r = fastot.sinkhorn(C, a, b, eps=0.1, f0=f0, backend="torch")
    assert r.status.tolist() == [6, 0, 0]
    assert torch.isnan(r.f[0]).all() and torch.isfinite(r.f[1:]).all()
    assert 6 in STATUS
    with pytest.raises(ValueError, match="bad warm start"):
        r.check()


@pytest.mark.parametrize("bad,err,match", [
    (torch.zeros(3, 5), ValueError, "f0 must have shape"),
    (torch.zeros(3, 6, dtype=torch.int64), TypeError, "f0 must be floating point"),
    ([0.0] * 6, TypeError, "f0 must be a tensor"),
])
def test_warm_start_argument_errors(bad, err, match):
    C, a, b, _ = _problem(1, 3, 6, 5)
    with pytest.raises(err, match=match):
        fastot.sinkhorn(C, a, b, eps=0.1, f0=bad)
    with pytest.raises(err, match=match):
        fastot.sinkhorn_embeddings(torch.randn(3, 6, 4), torch.randn(3, 5, 4), eps=0.1, f0=bad)


@pytest.mark.parametrize("schedule,err,match", [
    ("linear", ValueError, "eps_schedule must be"),
    ([0.5, -1.0], ValueError, "positive finite"),
    ([float("inf")], ValueError, "positive finite"),
    (0.5, TypeError, "eps_schedule must be"),
])
def test_eps_schedule_argument_errors(schedule, err, match):
    C, a, b, _ = _problem(1, 2, 4, 4)
    with pytest.raises(err, match=match):
        fastot.sinkhorn(C, a, b, eps=0.1, eps_schedule=schedule)


def test_geometric_eps_schedule_values():
    assert geometric_eps_schedule(1.0, 0.1, 0.5) == [1.0, 0.5, 0.25, 0.125]
    assert geometric_eps_schedule(0.05, 0.1) == []
    with pytest.raises(ValueError, match="ratio"):
        geometric_eps_schedule(1.0, 0.1, 1.0)


@pytest.mark.parametrize("backend,device", PARAMS)
def test_eps_schedule_runs_one_iteration_per_stage(backend, device):
    """eps_schedule=[e1, e2] is one iteration at e1, one at e2 (each from the last state), then the solve."""
    C, a, b, _ = _problem(7, 3, 10, 8)
    C, a, b = C.to(device), a.to(device), b.to(device)
    r = fastot.sinkhorn(C, a, b, eps=0.05, max_iter=5, backend=backend, eps_schedule=[0.8, 0.2])
    s1 = fastot.sinkhorn(C, a, b, eps=0.8, max_iter=1, backend=backend)
    s2 = fastot.sinkhorn(C, a, b, eps=0.2, max_iter=1, backend=backend, f0=s1.f, g0=s1.g)
    s3 = fastot.sinkhorn(C, a, b, eps=0.05, max_iter=5, backend=backend, f0=s2.f, g0=s2.g)
    torch.testing.assert_close(r.f, s3.f, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(r.value, s3.value, atol=1e-12, rtol=1e-12)
    assert (r.n_iter == 7).all()


@pytest.mark.parametrize("backend,device", [p for p in PARAMS if "triton" not in p.id])
def test_annealed_small_eps_solve_matches_pot(backend, device):
    """eps = 0.002 x the cost range: the geometric schedule reaches tol and gives POT's plan."""
    ot = pytest.importorskip("ot")
    C, a, b, _ = _problem(11, 2, 12, 12, zero=0.0)
    r = fastot.sinkhorn(C.to(device), a.to(device), b.to(device), eps=0.004, max_iter=20000, tol=1e-9,
                        backend=backend, eps_schedule="geometric")
    assert (r.err < 1e-9).all()
    for k in range(2):
        P = ot.sinkhorn(a[k].numpy(), b[k].numpy(), C[k].numpy(), 0.004, method="sinkhorn_log", numItermax=200000,
                        stopThr=1e-12)
        torch.testing.assert_close(r.plan()[k].cpu(), torch.from_numpy(P), atol=1e-8, rtol=0)


@pytest.mark.parametrize("backend,device", [p for p in PARAMS if "triton" not in p.id])
def test_eps_schedule_embeddings_reaches_the_fixed_eps_value(backend, device):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 10, 6, generator=g, dtype=torch.float64).to(device)
    y = torch.randn(2, 8, 6, generator=g, dtype=torch.float64).to(device)
    kw = dict(cost="sqeuclidean", eps=0.05, max_iter=50000, tol=1e-10, backend=backend)
    annealed = fastot.sinkhorn_embeddings(x, y, eps_schedule="geometric", **kw)
    fixed = fastot.sinkhorn_embeddings(x, y, **kw)
    # tol 1e-10: the torch scaling reference stops on its scaling-form error and reports the log-form one, which
    # can sit a rounding above tol (1.00007e-10 on one machine)
    assert (annealed.err < 2e-10).all() and (fixed.err < 2e-10).all()
    torch.testing.assert_close(annealed.value, fixed.value, atol=1e-8, rtol=0)


@pytest.mark.parametrize("backend,device", [p for p in PARAMS if "triton" not in p.id])
def test_geometric_schedule_with_a_bad_problem_flags_only_it(backend, device):
    """A NaN token is status 2 for its problem; it does not become the schedule's starting eps."""
    x, y = torch.randn(3, 5, 4, dtype=torch.float64), torch.randn(3, 6, 4, dtype=torch.float64)
    x[1, 2, 0] = float("nan")
    kw = dict(cost="sqeuclidean", eps=0.5, tol=1e-8, max_iter=2000, backend=backend)
    r = fastot.sinkhorn_embeddings(x.to(device), y.to(device), eps_schedule="geometric", **kw)
    assert r.status.tolist() == [0, 2, 0]
    clean = fastot.sinkhorn_embeddings(x[[0, 2]].to(device), y[[0, 2]].to(device), **kw)
    torch.testing.assert_close(r.value[[0, 2]], clean.value, atol=1e-7, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_cpp_stages_inside_the_kernel_equal_one_call_per_stage(dtype):
    """eps_stages on the CPU-only forwards (the tile rescaled per stage, not rebuilt) gives the iterates of one call
    per stage (max_iter 1, no tol) warm-started from the last: scaling (cost and embeddings), packed (log and
    scaling) and the symmetric op; n_iter counts the stages."""
    if "cpp" not in fastot.available_backends("sinkhorn"):
        pytest.skip("the compiled extension is not loaded")
    ops = torch.ops.fastot
    C, a, b, g = _problem(7, 3, 9, 11, dtype)
    x = torch.randn(3, 9, 5, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(3, 11, 5, generator=g, dtype=torch.float64).to(dtype)
    stages = [4.0, 1.0, 0.3]
    atol = 1e-10 if dtype == torch.float64 else 2e-5

    def chained(call, eps, max_iter, tol, n_out=4):
        f = g_ = None
        for e in stages:
            f, g_ = call(e, 1, None, f, g_)[:2]
        out = call(eps, max_iter, tol, f, g_)
        return out[:n_out]

    cases = [
        (lambda e, k, t, f0, g0, **s: ops.sinkhorn_fwd_scaling(C, a, b, e, k, t, None, None, 20.0, f0, g0, **s), 4),
        (lambda e, k, t, f0, g0, **s: ops.sinkhorn_embeddings_fwd_scaling(x, y, a, b, 1, e, k, t, None, None, 20.0,
                                                                           f0, g0, **s), 6),
    ]
    cx, cy = torch.tensor([0, 4, 4, 9]), torch.tensor([0, 6, 11, 11])
    xp, yp, ap, bp = x[0, :9], y[0, :11], a[0] / a[0].sum(), b[0] / b[0].sum()
    ap = torch.cat([ap[:4] / ap[:4].sum(), ap[4:] / ap[4:].sum()])
    bp = torch.cat([bp[:6] / bp[:6].sum(), bp[6:] / bp[6:].sum()])
    for absorb in (None, 20.0):
        cases.append((lambda e, k, t, f0, g0, absorb=absorb, **s: ops.sinkhorn_embeddings_varlen_fwd(
            xp, yp, cx, cy, ap, bp, 1, e, k, t, 0.5, 2.0, absorb, f0, g0, **s), 6))
    for call, n_out in cases:
        for max_iter, tol in ((7, None), (500, 1e-6)):
            want = chained(call, 0.1, max_iter, tol, n_out)
            got = call(0.1, max_iter, tol, None, None, eps_stages=stages)[:n_out]
            for w, o in zip(want[:2], got[:2]):
                torch.testing.assert_close(o, w, atol=atol, rtol=0)
            if tol is None or dtype == torch.float64:  # (fp32 at tol 1e-6: where it stops is rounding's call)
                assert torch.equal(got[2], want[2] + len(stages))
    # the symmetric op: stages are symmetric steps too
    sym = ops.sinkhorn_embeddings_symmetric_fwd
    h = None
    for e in stages:
        h = sym(x, a, 0, e, 1, None, h)[0]
    want = sym(x, a, 0, 0.1, 6, None, h)
    got = sym(x, a, 0, 0.1, 6, None, None, None, stages)
    torch.testing.assert_close(got[0], want[0], atol=atol, rtol=0)
    assert torch.equal(got[1], want[1] + len(stages))
    torch.library.opcheck(ops.sinkhorn_fwd_scaling.default, (C, a, b, 0.1, 5, None, None, None, 20.0, None, None,
                                                             stages))
    for bad in (float("nan"), 0.0, 1e-320 if dtype == torch.float64 else 1e-40):
        with pytest.raises(RuntimeError, match="every eps_stages value must be finite and at least"):
            ops.sinkhorn_fwd_scaling(C, a, b, 0.1, 5, None, None, None, eps_stages=[1.0, bad])
