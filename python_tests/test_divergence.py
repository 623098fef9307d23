"""fastot.sinkhorn_divergence and OTDistillationLoss(debias=True) (issue 25): against geomloss's
SamplesLoss("sinkhorn", debias=True), which no one here wrote (value and gradient, float64), against finite
differences, and the divergence's defining properties (hypothesis): nonnegative, 0 at x = y."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from hypothesis import given, settings
from hypothesis import strategies as st

import fastot

PARAMS = backend_params("sinkhorn")


def _clouds(seed, B, N, M, d, shift=0.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, d, generator=g, dtype=dtype)
    y = torch.randn(B, M, d, generator=g, dtype=dtype) + shift
    return x, y


@pytest.mark.parametrize("backend,device", [p for p in PARAMS if "triton" not in p.id])
def test_matches_geomloss_value_and_gradient(backend, device):
    """geomloss's cost is |x - y|^2 / 2 and eps = blur^2: geomloss = S / 2 at eps = 2 blur^2. Its eps-scaling
    anneals down to blur; with scaling 0.9999 it ends converged (measured gap: value 1.3e-7, gradient 1.9e-4 of
    0.2, shrinking ten-fold per 9 added to the scaling)."""
    geomloss = pytest.importorskip("geomloss")
    x, y = _clouds(0, 3, 12, 9, 3)
    blur = 0.3
    loss = geomloss.SamplesLoss("sinkhorn", p=2, blur=blur, debias=True, scaling=0.9999, backend="tensorized")
    xg = x.clone().requires_grad_()
    want = loss(xg, y)
    want.sum().backward()
    xf = x.clone().to(device).requires_grad_()
    got = fastot.sinkhorn_divergence(xf, y.to(device), cost="sqeuclidean", eps=2 * blur**2, max_iter=2000,
                                     tol=1e-12, backend=backend)
    assert (got.status == 0).all() and (got.err < 1e-11).all()
    (got.value.sum() / 2).backward()
    torch.testing.assert_close(got.value.cpu() / 2, want.detach(), atol=1e-6, rtol=0)
    torch.testing.assert_close(xf.grad.cpu(), xg.grad, atol=2e-3, rtol=0)
    assert (got.n_iter[1:] < 50).all()  # the symmetric updates: self-problems converge in a few steps


@pytest.mark.parametrize("backend,device", [p for p in PARAMS if p.id in ("torch-cpu", "cpp-cpu")])
def test_gradient_matches_finite_differences(backend, device):
    x, y = _clouds(1, 2, 5, 4, 3)
    x, y = x.to(device), y.to(device)
    kw = dict(cost="sqeuclidean", eps=1.0, max_iter=200, tol=1e-13, backend=backend)
    xg = x.clone().requires_grad_()
    yg = y.clone().requires_grad_()
    fastot.sinkhorn_divergence(xg, yg, **kw).value.sum().backward()
    h = 1e-6
    for t, grad, other in ((x, xg.grad, "y"), (y, yg.grad, "x")):
        for idx in [(0, 0, 0), (1, 2, 1), (0, 3, 2)]:
            tp, tm = t.clone(), t.clone()
            tp[idx] += h
            tm[idx] -= h
            args_p = (tp, y) if other == "y" else (x, tp)
            args_m = (tm, y) if other == "y" else (x, tm)
            fd = (fastot.sinkhorn_divergence(*args_p, **kw).value.sum()
                  - fastot.sinkhorn_divergence(*args_m, **kw).value.sum()) / (2 * h)
            assert abs(float(fd) - float(grad[idx])) < 1e-6 * max(1.0, abs(float(fd))), (idx, float(fd), float(grad[idx]))


@pytest.mark.parametrize("backend,device", [p for p in PARAMS if "triton" not in p.id])
@settings(max_examples=8, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 10), m=st.integers(1, 10), cost=st.sampled_from(
    ["cosine", "sqeuclidean"]), eps=st.sampled_from([0.1, 0.5]), shift=st.sampled_from([0.0, 1.0]))
def test_nonnegative_and_zero_at_equality(backend, device, seed, n, m, cost, eps, shift):
    x, y = _clouds(seed, 2, n, m, 4, shift)
    xm = torch.ones(2, n, dtype=torch.bool)
    xm[1, n // 2 + 1:] = False  # ragged: some padding
    kw = dict(cost=cost, eps=eps, max_iter=2000, tol=1e-11, backend=backend)
    r = fastot.sinkhorn_divergence(x.to(device), y.to(device), xm.to(device), None, **kw)
    assert (r.status == 0).all()
    assert (r.value > -1e-7).all(), r.value  # 0 up to the solve's accuracy at tol 1e-11
    same = fastot.sinkhorn_divergence(x.to(device), x.to(device), xm.to(device), xm.to(device), **kw)
    assert same.value.abs().max() < 1e-7, same.value


@pytest.mark.parametrize("backend,device", [p for p in PARAMS if "triton" in p.id])
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean"])
def test_triton_divergence_is_the_reference_one(backend, device, cost):
    """One ragged case per cost under the Triton interpreter (slow: the property tests run the other backends)."""
    x, y = _clouds(3, 2, 6, 5, 4)
    xm = torch.tensor([[1] * 6, [1] * 4 + [0] * 2], dtype=torch.bool)
    kw = dict(cost=cost, eps=0.5, max_iter=300, tol=1e-10)
    got = fastot.sinkhorn_divergence(x.to(device), y.to(device), xm.to(device), None, backend=backend, **kw)
    want = fastot.sinkhorn_divergence(x, y, xm, None, backend="torch", **kw)
    torch.testing.assert_close(got.value.cpu(), want.value, atol=1e-9, rtol=0)
    assert torch.equal(got.n_iter.cpu(), want.n_iter)
    assert (got.value > 0).all()


@pytest.mark.skipif("cpp" not in fastot.available_backends("sinkhorn", "cpu"), reason="no compiled extension")
@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 24), cost=st.sampled_from(["cosine", "sqeuclidean", "dot"]),
       iters=st.integers(0, 30), tol=st.sampled_from([None, 1e-3, 1e-9]), stages=st.sampled_from([(), (2.0, 1.0)]))
def test_cpp_symmetric_kernel_is_the_averaged_step_loop(seed, n, cost, iters, tol, stages):
    """cpp runs the self-problems' averaged steps inside one kernel; the other backends loop over their solver
    (one iteration from (h, h), then the average): the same h and step counts, float64."""
    from fastot.divergence import _symmetric_potentials  # noqa: PLC0415

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, n, 5, generator=g, dtype=torch.float64) * 0.5
    w = torch.rand(4, n, generator=g, dtype=torch.float64)
    w[torch.rand(4, n, generator=g) < 0.3] = 0
    w[3] = 0  # an empty problem
    got = _symmetric_potentials(x, w, cost, 0.3, iters, tol, stages, "cpp", "log")
    want = _symmetric_potentials(x, w, cost, 0.3, iters, tol, stages, "torch", "log")
    torch.testing.assert_close(got[0], want[0], atol=1e-12, rtol=1e-12)
    assert torch.equal(got[1], want[1])  # the same per-problem stops


def test_divergence_argument_errors():
    x, y = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match="agree on B and d"):
        fastot.sinkhorn_divergence(x, torch.randn(3, 5, 3), eps=0.1)
    with pytest.raises(ValueError, match="cost must be one of"):
        fastot.sinkhorn_divergence(x, y, cost="l1", eps=0.1)
    with pytest.raises(ValueError, match="x_mask must have shape"):
        fastot.sinkhorn_divergence(x, y, torch.ones(2, 5), eps=0.1)
    with pytest.raises(ValueError, match="eps must be a positive"):
        fastot.sinkhorn_divergence(x, y, eps=0.0)


@pytest.mark.parametrize("backend,device", [p for p in PARAMS if "triton" not in p.id])
def test_debiased_distillation_loss(backend, device):
    g = torch.Generator().manual_seed(4)
    s = torch.randn(3, 7, 8, generator=g).to(device)
    t = torch.randn(3, 6, 8, generator=g).to(device)
    sm = torch.ones(3, 7, dtype=torch.bool, device=device)
    sm[2, 4:] = False
    crit = fastot.OTDistillationLoss(eps=0.1, max_iter=200, debias=True, reduction="none", backend=backend)
    assert crit.objective == "sinkhorn" and "debias=True" in repr(crit)
    sg = s.clone().requires_grad_()
    loss = crit(sg, sm, t, None)
    want = fastot.sinkhorn_divergence(s, t, sm, None, eps=0.1, max_iter=200, backend=backend).value
    torch.testing.assert_close(loss.detach(), want)
    loss.sum().backward()
    assert torch.isfinite(sg.grad).all() and sg.grad.abs().sum() > 0
    assert crit(t, None, t, None).abs().max() < 1e-6  # student = teacher: no loss
    mean = fastot.OTDistillationLoss(eps=0.1, max_iter=200, debias=True, backend=backend)(s, sm, t, None)
    torch.testing.assert_close(mean, want.mean())
    # a pair whose student side is empty carries no loss (S = 0, not -OT(t, t)/2) and leaves the mean
    sm0 = sm.clone()
    sm0[1] = False
    per = crit(s, sm0, t, None)
    assert float(per[1]) == 0.0 and (per[[0, 2]] > 0).all()
    mean0 = fastot.OTDistillationLoss(eps=0.1, max_iter=200, debias=True, backend=backend)(s, sm0, t, None)
    torch.testing.assert_close(mean0, per[[0, 2]].mean())
    # a flagged pair (a NaN weight; negative weights summing to 0) stays NaN, not an empty pair's 0
    w = sm.double() / sm.sum(1, keepdim=True)
    w[0, 0] = float("nan")
    w[1, :2] = torch.tensor([0.5, -0.5])
    w[1, 2:] = 0
    div = fastot.sinkhorn_divergence(s, t, a=w, eps=0.1, max_iter=50, backend=backend)
    assert div.status.tolist()[:2] == [1, 1] and torch.isnan(div.value[:2]).all() and torch.isfinite(div.value[2])
    with pytest.raises(ValueError, match="debias=True is the Sinkhorn divergence"):
        fastot.OTDistillationLoss(debias=True, objective="transport_cost")
    with pytest.raises(ValueError, match="debias must be True or False"):
        fastot.OTDistillationLoss(debias="yes")
