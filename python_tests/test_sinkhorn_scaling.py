"""The stabilized scaling iterations (method="scaling", issue 24): the log-domain iterates by other arithmetic.
The torch reference and the cpp kernel are each checked against the log-domain reference in float64
(potentials, n_iter, the stopping rule, err; ragged weights, forbidden pairs, unbalanced sides; both cpp
schedules), against float64 in float32 (no worse than the log domain's float32, eps down to 1e-3 x the cost
range), through their fall-back, and against POT's stabilized Sinkhorn, which no one here wrote. The public
``method=`` argument is checked here too; every other Sinkhorn suite runs both schemes (conftest.backend_params)."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fastot
from fastot.reference import sinkhorn as R
from fastot.reference.sinkhorn_scaling import sinkhorn_fwd_scaling

HAS_CPP = "cpp" in fastot.available_backends("sinkhorn", "cpu")
HAS_TRITON = "triton" in fastot.available_backends("sinkhorn", "cpu")
IMPLS = ["torch", pytest.param("cpp", marks=pytest.mark.skipif(not HAS_CPP, reason="no compiled extension")),
         pytest.param("triton", marks=pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable"))]


def _solve(impl, C, a, b, eps, iters, tol=None, tau_a=None, tau_b=None, absorb=20.0):
    """(f, g, n_iter, err, {"absorptions", "fallback"}) of the scaling iterations of ``impl`` (triton: on chip)."""
    if impl == "torch":
        return sinkhorn_fwd_scaling(C, a, b, eps, iters, tol, tau_a, tau_b, absorb=absorb, return_stats=True)
    if impl == "cpp":
        op = torch.ops.fastot.sinkhorn_fwd_scaling
    else:
        from fastot.triton import sinkhorn as tsk  # noqa: PLC0415

        op = tsk.sinkhorn_fwd_scaling
    f, g, n, err, absorptions, fallback = op(C, a, b, eps, iters, tol, tau_a, tau_b, absorb)
    return f, g, n, err, {"absorptions": absorptions, "fallback": fallback}


def _problem(seed, B, N, M, dtype=torch.float64, zero=0.2, forbid=0.1, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, N, M, generator=g, dtype=torch.float64) * scale
    a = torch.rand(B, N, generator=g, dtype=torch.float64)
    b = torch.rand(B, M, generator=g, dtype=torch.float64)
    a[torch.rand(B, N, generator=g) < zero] = 0
    b[torch.rand(B, M, generator=g) < zero] = 0
    C[torch.rand(B, N, M, generator=g) < forbid] = float("inf")
    return C.to(dtype), a.to(dtype), b.to(dtype)


def _iterates_case(impl, seed, n, m, eps, tau, tol, iters):
    C, a, b = _problem(seed, 4, n, m)
    want = R.sinkhorn_fwd(C, a, b, eps, iters, tol, tau, tau)
    got = _solve(impl, C, a, b, eps, iters, tol, tau, tau)
    torch.testing.assert_close(got[0], want[0], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(got[1], want[1], atol=1e-9, rtol=1e-9)
    assert torch.equal(got[2], want[2])  # the same per-problem stopping
    torch.testing.assert_close(got[3], want[3], atol=1e-9, rtol=1e-6)
    if impl != "torch":  # the same absorption decisions as the torch reference
        ref_stats = sinkhorn_fwd_scaling(C, a, b, eps, iters, tol, tau, tau, return_stats=True)[4]
        assert torch.equal(got[4]["absorptions"], ref_stats["absorptions"])
        assert not got[4]["fallback"].any()


_CASE = dict(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 40), m=st.integers(1, 40),
             eps=st.sampled_from([0.5, 0.05, 0.01, 0.002]), tau=st.sampled_from([None, 0.5, 5.0]),
             tol=st.sampled_from([None, 1e-3, 1e-7]), iters=st.integers(0, 60))


@pytest.mark.parametrize("impl", IMPLS[:2])
@settings(max_examples=40, deadline=None)
@given(**_CASE)
def test_float64_iterates_are_the_log_domain_ones(impl, seed, n, m, eps, tau, tol, iters):
    _iterates_case(impl, seed, n, m, eps, tau, tol, iters)


@pytest.mark.skipif(not HAS_TRITON, reason="triton unavailable")
@settings(max_examples=12, deadline=None)  # the interpreter: about a second per example
@given(**_CASE)
def test_triton_float64_iterates_are_the_log_domain_ones(seed, n, m, eps, tau, tol, iters):
    _iterates_case("triton", seed, n, m, eps, tau, tol, iters)


@pytest.mark.skipif(not HAS_CPP, reason="no compiled extension")
@pytest.mark.parametrize("B,N,M", [(1, 150, 130), (2, 97, 211), (9, 70, 66)], ids=["B1", "B2", "B9"])
@pytest.mark.parametrize("tau", [None, 0.5], ids=["balanced", "unbalanced"])
def test_cpp_schedules_match_the_log_domain(B, N, M, tau):
    """Few large problems split every pass over the threads (B1, B2 with two threads); many run one per task
    with the fused sweep (B9). Both give the log-domain iterates, with and without a stopping tolerance."""
    C, a, b = _problem(5, B, N, M, zero=0.1, forbid=0.02)
    for eps, tol in ((0.01, None), (0.05, 1e-6)):
        want = R.sinkhorn_fwd(C, a, b, eps, 80, tol, tau, tau)
        got = _solve("cpp", C, a, b, eps, 80, tol, tau, tau)
        torch.testing.assert_close(got[0], want[0], atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(got[1], want[1], atol=1e-9, rtol=1e-9)
        assert torch.equal(got[2], want[2])
        torch.testing.assert_close(got[3], want[3], atol=1e-9, rtol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("eps_rel", [0.05, 0.01, 0.003, 0.001])
def test_float32_no_less_accurate_than_the_log_domain(impl, eps_rel):
    """eps down to 1e-3 x the cost range (costs in [0, 2]): the float32 potentials' distance to the float64
    solution is within that of the float32 log-domain solver of the same backend (here it is 10-30x smaller).
    The Triton interpreter takes 4 of the 16 problems at the two ends of the eps range (time)."""
    if impl == "triton" and eps_rel in (0.01, 0.003):
        pytest.skip("the interpreter runs the two ends of the eps range only")
    C, a, b = _problem(7, 16, 40, 48, torch.float32, zero=0.1, forbid=0.0)
    if impl == "triton":
        C, a, b = C[:4], a[:4], b[:4]
    eps = eps_rel * 2.0
    ref = R.sinkhorn_fwd(C.double(), a.double(), b.double(), eps, 200)
    if impl == "torch":
        log32 = R.sinkhorn_fwd(C, a, b, eps, 200)
    elif impl == "cpp":
        log32 = torch.ops.fastot.sinkhorn_fwd(C, a, b, eps, 200, None, None, None)
    else:
        from fastot.triton import sinkhorn as tsk  # noqa: PLC0415

        log32 = tsk.sinkhorn_fwd(C, a, b, eps, 200)
    sc32 = _solve(impl, C, a, b, eps, 200)
    err = lambda out: max((out[i].double() - ref[i]).abs().max().item() for i in (0, 1))  # noqa: E731
    assert err(sc32) <= err(log32) + 1e-6
    assert sc32[4]["absorptions"].max() >= 1 and not sc32[4]["fallback"].any()


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the interpreter's numpy, on the way down
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_underflow_falls_back_to_the_log_domain(impl):
    """With absorption switched off, balanced problems whose masses differ (b has 1e-3 of a's mass) drift their
    scalings out of float64's range within a few hundred iterations: those problems go on in the log domain
    from where they were, and still end on the reference's iterates."""
    C, a, b = _problem(3, 6, 20, 24, zero=0.1, forbid=0.05)
    b = b * 1e-3
    want = R.sinkhorn_fwd(C, a, b, 0.01, 300)
    got = _solve(impl, C, a, b, 0.01, 300, absorb=float("inf"))
    assert got[4]["fallback"].all() and int(got[4]["absorptions"].sum()) == 0
    torch.testing.assert_close(got[0], want[0], atol=1e-8, rtol=1e-9)
    torch.testing.assert_close(got[1], want[1], atol=1e-8, rtol=1e-9)
    assert torch.equal(got[2], want[2])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("eps", [0.1, 0.02])
def test_plan_against_pot_sinkhorn_stabilized(impl, eps):
    ot = pytest.importorskip("ot")
    C, a, b = _problem(11, 1, 30, 25, zero=0.0, forbid=0.0)
    a, b = a / a.sum(), b / b.sum()
    f, g, n, err, _ = _solve(impl, C, a, b, eps, 3000, 1e-13)
    ours = R.sinkhorn_plan(C, a, b, f, g, eps)[0].numpy()
    theirs = ot.sinkhorn(a[0].numpy(), b[0].numpy(), C[0].numpy(), eps, method="sinkhorn_stabilized",
                         numItermax=20000, stopThr=1e-13)
    np.testing.assert_allclose(ours, theirs, atol=1e-10)
    assert float(err[0]) < 1e-12


# --------------------------------------------------------------------------- the public method= argument
def test_method_runs_the_scheme_it_names_and_results_agree():
    C, a, b = _problem(2, 3, 20, 30, zero=0.1, forbid=0.0)
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    runs = {}
    for backend in ["torch"] + (["cpp"] if HAS_CPP else []) + (["triton"] if HAS_TRITON else []):
        for method in ("log", "scaling", "auto"):
            r = fastot.sinkhorn(C, a, b, eps=0.02, max_iter=40, tol=1e-8, backend=backend, method=method)
            runs[backend, method] = r
            assert r.method == (method if method != "auto" else ("scaling" if backend == "cpp" else "log"))
    base = runs["torch", "log"]
    for r in runs.values():
        torch.testing.assert_close(r.f, base.f, atol=1e-9, rtol=0)
        torch.testing.assert_close(r.value, base.value, atol=1e-9, rtol=0)
        assert torch.equal(r.n_iter, base.n_iter)
    if HAS_CPP:  # below 3 iterations auto keeps the log domain (the scaling set-up costs as much as they do)
        assert fastot.sinkhorn(C, a, b, eps=0.02, max_iter=2, backend="cpp").method == "log"


@pytest.mark.parametrize("backend", [b for b in ("cpp", "triton") if b in fastot.available_backends("sinkhorn", "cpu")])
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean", "dot"])
def test_fused_embeddings_scaling_equals_log(backend, cost):
    """The fused embeddings path by scaling iterations: potentials, <P, C>, mass and the gradients of the loss
    are the log-domain path's (float64)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 23, 16, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(5, 31, 16, generator=g, dtype=torch.float64)
    xm = torch.rand(5, 23, generator=g) > 0.2
    ym = torch.rand(5, 31, generator=g) > 0.2
    eps = 0.05 if cost != "dot" else 0.5
    out = {}
    for method in ("log", "scaling"):
        r = fastot.sinkhorn_embeddings(x, y, xm, ym, cost=cost, eps=eps, max_iter=60, backend=backend, method=method)
        (dx,) = torch.autograd.grad(r.transport_cost.sum() + r.value.sum(), x)
        out[method] = (r, dx)
        assert r.method == method
    (rl, dl), (rs, ds) = out["log"], out["scaling"]
    for name in ("f", "g", "value", "transport_cost", "err"):
        torch.testing.assert_close(getattr(rs, name), getattr(rl, name), atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(ds, dl, atol=1e-9, rtol=1e-7)


def test_method_errors_name_the_argument(monkeypatch):
    C, a, b = _problem(2, 2, 5, 6, zero=0.0, forbid=0.0)
    with pytest.raises(ValueError, match="method must be one of"):
        fastot.sinkhorn(C, a, b, eps=0.1, method="exp")
    x = torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="sinkhorn_embeddings: method"):
        fastot.sinkhorn_embeddings(x, x, eps=0.1, method="Scaling")
    with pytest.raises(ValueError, match="OTDistillationLoss: method"):
        fastot.OTDistillationLoss(method="fast")
    monkeypatch.setenv("FASTOT_SINKHORN_METHOD", "fast")
    with pytest.raises(ValueError, match="FASTOT_SINKHORN_METHOD must be one of"):
        fastot.sinkhorn(C, a, b, eps=0.1, backend="torch")
    monkeypatch.setenv("FASTOT_SINKHORN_METHOD", "scaling")  # replaces "auto", never an explicit method
    assert fastot.sinkhorn(C, a, b, eps=0.1, backend="torch").method == "scaling"
    assert fastot.sinkhorn(C, a, b, eps=0.1, backend="torch", method="log").method == "log"


def test_scaling_on_a_backend_without_its_kernel_warns_once_and_runs_log(monkeypatch):
    """cuda has no scaling kernel: asking for one runs log-domain, with one warning per backend and process."""
    S = importlib.import_module("fastot.sinkhorn")  # the module (fastot.sinkhorn is also the function)
    monkeypatch.setattr(S, "_warned_log_only", set())
    with pytest.warns(UserWarning, match="no cuda kernel yet"):
        assert S._method("scaling", "cuda", 10) == "log"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert S._method("scaling", "cuda", 10) == "log"
        assert S._method("auto", "cuda", 10) == "log" and S._method("auto", "triton", 10) == "log"
        assert S._method("scaling", "triton", 10) == "scaling"
