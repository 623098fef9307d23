"""Sinkhorn: backend conformance against the float64 reference, POT as an independent peer, gradients,
registered-op checks, compile smoke test and bad input."""

import math

import pytest
import torch
from conftest import backend_params, devices

import fastot
from fastot.reference import sinkhorn as ref

BACKENDS = backend_params("sinkhorn")
# The Triton interpreter runs a solve in about a second: gradcheck's hundreds of solves are left to the compiled
# backends (the envelope rule is shared by all backends; test_envelope_gradients_are_the_plan covers triton).
COMPILED = [p for p in BACKENDS if p.values != ("triton", "cpu")]
# (backend, device) of the fused sinkhorn_embeddings paths that can run here (cuda and compiled triton need a GPU).
FUSED = [p for p in BACKENDS if p.values[0] in ("cpp", "cuda", "triton")]  # cpp with both schemes
CUDA = pytest.mark.skipif(not (torch.cuda.is_available() and "cuda" in fastot.available_backends("sinkhorn", "cuda")),
                          reason="needs a GPU and the CUDA extension")


def make_problem(B, N, M, dtype=torch.float32, ragged=True, seed=0, device="cpu", scale=1.0):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, N, M, generator=g, dtype=torch.float64) * scale
    a = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.1
    if ragged:  # padded tail per problem, like a batch of sentences of different lengths
        for k in range(B):
            if N > 1:
                a[k, 1 + (k * 5) % N:] = 0
            if M > 1:
                b[k, 1 + (k * 3) % M:] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return C.to(device, dtype), a.to(device, dtype), b.to(device, dtype)


def ref64(C, a, b, **kw):
    f, g, n, err = ref.sinkhorn_fwd(C.double().cpu(), a.double().cpu(), b.double().cpu(), **kw)
    return f, g, ref.sinkhorn_plan(C.double().cpu(), a.double().cpu(), b.double().cpu(), f, g, kw["eps"])


SIZES = [(1, 1, 1), (4, 7, 33), (3, 33, 97), (2, 97, 7), (1, 64, 64), (2, 300, 257)]
CASES = [
    pytest.param(B, N, M, dt, id=f"B{B}-N{N}-M{M}-{'fp64' if dt == torch.float64 else 'fp32'}")
    for (B, N, M) in SIZES for dt in (torch.float32, torch.float64)
]


def _err_bound(out, ref_same_dtype, ref_f64, floor):
    """flash-attention's rule: kernel error <= 2 x the reference's own error in that dtype + floor."""
    return 2 * (ref_same_dtype - ref_f64).abs().max().item() + floor


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("B,N,M,dtype", CASES)
def test_matches_float64_reference(backend, device, B, N, M, dtype):
    C, a, b = make_problem(B, N, M, dtype, device=device)
    kw = dict(eps=0.1, max_iter=50)
    r = fastot.sinkhorn(C, a, b, backend=backend, **kw)
    f64, g64, p64 = ref64(C, a, b, **kw)
    f_same, g_same, _, _ = ref.sinkhorn_fwd(C.cpu(), a.cpu(), b.cpu(), **kw)
    floor = 1e-12 if dtype == torch.float64 else 1e-5
    assert r.f.dtype == dtype and r.g.dtype == dtype
    assert (r.f.cpu().double() - f64).abs().max() <= _err_bound(r.f, f_same.double(), f64, floor)
    assert (r.g.cpu().double() - g64).abs().max() <= _err_bound(r.g, g_same.double(), g64, floor)
    assert (r.plan().cpu().double() - p64).abs().max() <= (1e-12 if dtype == torch.float64 else 1e-5)
    assert (r.n_iter.cpu() == 50).all()
    for t in (r.f, r.g, r.value, r.transport_cost, r.err):
        assert torch.isfinite(t).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_padded_points_get_no_mass_zero_potential_and_ignore_garbage_cost(backend, device):
    C, a, b = make_problem(3, 9, 11, torch.float64, device=device)
    dirty = C.clone()
    dirty[a[:, :, None].expand_as(C) == 0] = float("nan")
    dirty[b[:, None, :].expand_as(C) == 0] = float("inf")
    clean = fastot.sinkhorn(C, a, b, eps=0.05, backend=backend)
    r = fastot.sinkhorn(dirty, a, b, eps=0.05, backend=backend)
    for x, y in ((r.f, clean.f), (r.g, clean.g), (r.value, clean.value), (r.transport_cost, clean.transport_cost)):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    assert (r.f[a == 0] == 0).all() and (r.g[b == 0] == 0).all()
    P = r.plan()
    assert torch.isfinite(P).all() and (P[a == 0] == 0).all()
    # Envelope gradient stays finite and zero on padded entries.
    Cg = dirty.clone().requires_grad_()
    fastot.sinkhorn(Cg, a, b, eps=0.05, backend=backend).value.sum().backward()
    assert torch.isfinite(Cg.grad).all() and (Cg.grad[a == 0] == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_empty_problem_and_batch_one(backend, device):
    C, a, b = make_problem(2, 5, 6, torch.float32, device=device)
    a[1] = 0  # a problem with no points at all
    r = fastot.sinkhorn(C, a, b, eps=0.1, backend=backend)
    for t in (r.f, r.g, r.value, r.transport_cost, r.err, r.plan()):
        assert torch.isfinite(t).all()
    assert (r.f[1] == 0).all() and r.transport_cost[1] == 0
    r1 = fastot.sinkhorn(C[:1], a[:1], b[:1], eps=0.1, backend=backend)
    torch.testing.assert_close(r1.f, r.f[:1])


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_extreme_eps_stays_finite_and_accurate(backend, device, dtype):
    C, a, b = make_problem(3, 17, 23, dtype, device=device)
    r = fastot.sinkhorn(C, a, b, eps=1e-3, max_iter=300, backend=backend)
    for t in (r.f, r.g, r.value, r.transport_cost, r.err, r.plan()):
        assert torch.isfinite(t).all()
    f64, g64, _ = ref64(C, a, b, eps=1e-3, max_iter=300)
    f_same = ref.sinkhorn_fwd(C.cpu(), a.cpu(), b.cpu(), 1e-3, 300)[0].double()
    assert (r.f.cpu().double() - f64).abs().max() <= _err_bound(r.f, f_same, f64, 1e-9 if dtype == torch.float64 else 1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["fp16", "bf16"])
def test_half_inputs_are_solved_in_fp32(backend, device, dtype):
    C, a, b = make_problem(2, 13, 19, dtype, device=device)
    r = fastot.sinkhorn(C, a, b, eps=0.1, backend=backend)
    assert r.f.dtype == torch.float32
    expect = ref.sinkhorn_fwd(C.float().cpu(), a.float().cpu(), b.float().cpu(), 0.1, 100)
    torch.testing.assert_close(r.f.cpu(), expect[0], rtol=0, atol=1e-5)
    Cg = C.clone().requires_grad_()
    fastot.sinkhorn(Cg, a, b, eps=0.1, backend=backend).transport_cost.sum().backward()
    assert Cg.grad.dtype == dtype


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_tol_stops_each_problem_on_its_own(backend, device):
    C, a, b = make_problem(4, 20, 30, torch.float64, device=device)
    C[0] *= 0.01  # an easy problem converges in far fewer iterations
    r = fastot.sinkhorn(C, a, b, eps=0.05, max_iter=2000, tol=1e-9, backend=backend)
    rr = ref.sinkhorn_fwd(C.cpu(), a.cpu(), b.cpu(), 0.05, 2000, 1e-9)
    assert (r.err < 1e-9).all()
    # Kernels round differently from the reference (e.g. C/eps is precomputed), so the iteration at which
    # the error crosses tol may differ by one.
    assert (r.n_iter.cpu() - rr[2]).abs().max() <= 1
    assert r.n_iter.min() < r.n_iter.max() < 2000
    torch.testing.assert_close(r.f.cpu(), rr[0], rtol=0, atol=1e-8)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_unbalanced_matches_reference(backend, device):
    C, a, b = make_problem(3, 11, 8, torch.float64, device=device)
    b = b * 1.7  # different masses are fine when the marginals are relaxed
    kw = dict(eps=0.1, max_iter=80, tau_a=0.5, tau_b=2.0)
    r = fastot.sinkhorn(C, a, b, backend=backend, **kw)
    f, g, _, err = ref.sinkhorn_fwd(C.cpu(), a.cpu(), b.cpu(), **kw)
    torch.testing.assert_close(r.f.cpu(), f, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.g.cpu(), g, rtol=0, atol=1e-12)
    torch.testing.assert_close(r.err.cpu(), err, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_non_contiguous_inputs(backend, device):
    C, a, b = make_problem(3, 12, 10, torch.float32, device=device)
    Ct = C.transpose(1, 2).contiguous().transpose(1, 2)  # same values, strided
    a2 = torch.stack([a, a], -1)[..., 0]
    assert not Ct.is_contiguous() and not a2.is_contiguous()
    r1 = fastot.sinkhorn(C, a, b, eps=0.1, backend=backend)
    r2 = fastot.sinkhorn(Ct, a2, b, eps=0.1, backend=backend)
    torch.testing.assert_close(r1.f, r2.f, rtol=0, atol=0)


def _pot_plans(C, a, b, eps):
    """Each problem's optimal entropic plan from POT (an independent solver), on its real rows and columns,
    zero-padded back to [B, N, M]."""
    ot = pytest.importorskip("ot")
    C, a, b = C.detach().double().cpu(), a.detach().double().cpu(), b.detach().double().cpu()
    P = torch.zeros_like(C)
    for k in range(C.shape[0]):
        i, j = a[k] > 0, b[k] > 0
        Pk = ot.bregman.sinkhorn_log(a[k][i].numpy(), b[k][j].numpy(), C[k][i][:, j].numpy(), eps, numItermax=20000,
                                     stopThr=1e-15)
        P[k][i.nonzero()[:, :1], j.nonzero()[:, 0]] = torch.from_numpy(Pk)
    return P


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_envelope_gradients_are_the_plan(backend, device):
    """d value/dC = P* (envelope theorem); transport_cost's gradient holds P* constant (the OPTICAL
    convention): d/dC = P*, and no gradient for the weights. P* from POT, not from our plan kernels."""
    C, a, b = make_problem(2, 6, 5, torch.float64, device=device)
    C.requires_grad_()
    a.requires_grad_()
    r = fastot.sinkhorn(C, a, b, eps=0.2, max_iter=300, backend=backend)
    (r.value.sum() + 2 * r.transport_cost.sum()).backward()
    torch.testing.assert_close(C.grad.cpu(), 3 * _pot_plans(C, a, b, 0.2), rtol=0, atol=1e-9)
    assert not r.f.requires_grad and not r.g.requires_grad
    a2 = a.detach().clone().requires_grad_()
    fastot.sinkhorn(C.detach(), a2, b, eps=0.2, backend=backend).transport_cost.sum().backward()
    assert (a2.grad == 0).all()


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_value_is_the_dual_objective_at_any_state(backend, device):
    """Checked against closed forms and POT, not against the formula the code uses: at zero potentials
    (max_iter 0) value = -eps (sum_ij a_i b_j exp(-C_ij/eps) - 1); converged, it is the primal entropic objective
    <P,C> + eps KL(P || a b) of POT's plan; a problem without points has value 0."""
    C, a, b = make_problem(3, 6, 7, torch.float64, device=device)
    a[2] = 0  # no rows at all
    eps = 0.3
    r = fastot.sinkhorn(C, a, b, eps=eps, max_iter=0, backend=backend)
    K = a[:, :, None] * b[:, None, :] * torch.exp(-C / eps)
    torch.testing.assert_close(r.value[:2], -eps * (K.sum((1, 2)) - 1)[:2], rtol=0, atol=1e-12)
    r = fastot.sinkhorn(C, a, b, eps=eps, max_iter=500, tol=1e-14, backend=backend)
    P = _pot_plans(C[:2], a[:2], b[:2], eps)
    ab = (a[:2, :, None] * b[:2, None, :]).cpu()
    kl = torch.where(P > 0, P * torch.log(P / ab.clamp_min(1e-300)), torch.zeros_like(P)).sum((1, 2))
    primal = (P * C[:2].cpu()).sum((1, 2)) + eps * kl
    torch.testing.assert_close(r.value[:2].cpu(), primal, rtol=0, atol=1e-9)
    torch.testing.assert_close(r.transport_cost[:2].cpu(), (P * C[:2].cpu()).sum((1, 2)), rtol=0, atol=1e-9)
    for it in (0, 1, 5):
        r = fastot.sinkhorn(C, a, b, eps=eps, max_iter=it, backend=backend)
        assert r.value[2] == 0 and r.transport_cost[2] == 0


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_infinite_cost_forbids_a_pair(backend, device):
    C, a, b = make_problem(2, 6, 7, torch.float64, ragged=False, device=device)
    C[0, 1, 2] = C[0, 3, 0] = C[1, 0, :3] = float("inf")
    C[1, 5, :] = float("inf")  # a row with no allowed pair: potential 0, no mass (unbalanced on that side)
    r = fastot.sinkhorn(C, a, b, eps=0.1, max_iter=50, tau_a=1.0, backend=backend)
    f, g, n, err = ref.sinkhorn_fwd(C.cpu(), a.cpu(), b.cpu(), 0.1, 50, tau_a=1.0)
    for t in (r.f, r.g, r.value, r.transport_cost, r.err, r.plan()):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(r.f.cpu(), f, rtol=0, atol=1e-10)
    P = r.plan()
    assert P[0, 1, 2] == 0 and (P[1, 0, :3] == 0).all() and (P[1, 5] == 0).all() and r.f[1, 5] == 0
    # Balanced on that side, row 5 cannot give its mass: problem 1 is flagged infeasible, problem 0 is solved.
    r = fastot.sinkhorn(C, a, b, eps=0.1, max_iter=50, backend=backend)
    assert r.status.tolist() == [0, 4] and r.value[1].isnan() and torch.isfinite(r.value[0])
    f, g, n, err = ref.sinkhorn_fwd(C[:1].cpu(), a[:1].cpu(), b[:1].cpu(), 0.1, 50)
    torch.testing.assert_close(r.f[:1].cpu(), f, rtol=0, atol=1e-10)


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("N,M", [(0, 5), (4, 0)], ids=["N0", "M0"])
def test_empty_dimensions(backend, device, N, M):
    C = torch.rand(2, N, M, dtype=torch.float64, device=device)
    r = fastot.sinkhorn(C, eps=0.1, backend=backend)
    assert r.f.shape == (2, N) and r.g.shape == (2, M)
    assert (r.value == 0).all() and (r.transport_cost == 0).all() and torch.isfinite(r.err).all()


def test_second_derivatives_raise_instead_of_being_wrong():
    C, a, b = make_problem(1, 3, 3, torch.float64)
    C.requires_grad_()
    (g,) = torch.autograd.grad(fastot.sinkhorn(C, a, b, eps=0.3).value.sum(), C, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable|does not require grad"):
        torch.autograd.grad(g.sum(), C)


# --------------------------------------------------------------------------- independent peer: POT
def _converged(C, a, b, eps, **kw):
    return fastot.sinkhorn(C, a, b, eps=eps, max_iter=5000, tol=1e-13, backend="torch", **kw)


def test_matches_pot_sinkhorn_log_float64():
    ot = pytest.importorskip("ot")
    C, a, b = make_problem(3, 9, 14, torch.float64, ragged=False, seed=3)
    eps = 0.05
    r = _converged(C, a, b, eps)
    for k in range(C.shape[0]):
        P, log = ot.bregman.sinkhorn_log(a[k].numpy(), b[k].numpy(), C[k].numpy(), eps, numItermax=20000,
                                         stopThr=1e-14, log=True)
        torch.testing.assert_close(r.plan()[k], torch.from_numpy(P), rtol=0, atol=1e-6)
        # Same potentials up to the additive gauge: POT's plan is exp(log_u + log_v - C/eps).
        f_pot = eps * (torch.from_numpy(log["log_u"]) - a[k].log())
        g_pot = eps * (torch.from_numpy(log["log_v"]) - b[k].log())
        shift = (r.f[k] - f_pot).mean()
        torch.testing.assert_close(r.f[k], f_pot + shift, rtol=0, atol=1e-6)
        torch.testing.assert_close(r.g[k], g_pot - shift, rtol=0, atol=1e-6)


def test_matches_pot_batch_solver_float64():
    pytest.importorskip("ot")
    batch = pytest.importorskip("ot.batch")
    C, a, b = make_problem(4, 8, 8, torch.float64, ragged=False, seed=4)
    eps = 0.1
    res = batch.solve_batch(C.numpy(), reg=eps, a=a.numpy(), b=b.numpy(), max_iter=20000, tol=1e-14,
                            reg_type="kl")
    r = _converged(C, a, b, eps)
    torch.testing.assert_close(r.plan(), torch.as_tensor(res.plan), rtol=0, atol=1e-6)


def test_unbalanced_matches_pot():
    ot = pytest.importorskip("ot")
    C, a, b = make_problem(2, 7, 9, torch.float64, ragged=False, seed=5)
    b = b * 1.5
    eps, tau = 0.1, 0.7
    r = _converged(C, a, b, eps, tau_a=tau, tau_b=tau)
    for k in range(2):
        P = ot.unbalanced.sinkhorn_unbalanced(a[k].numpy(), b[k].numpy(), C[k].numpy(), eps, tau, method="sinkhorn",
                                              reg_type="kl", numItermax=20000, stopThr=1e-15)
        torch.testing.assert_close(r.plan()[k], torch.from_numpy(P), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("backend,device", COMPILED)
def test_gradcheck_value_wrt_cost_balanced(backend, device):
    C, a, b = make_problem(2, 3, 4, torch.float64, ragged=False, seed=6, device=device)
    C.requires_grad_()
    fn = lambda c: fastot.sinkhorn(c, a, b, eps=0.5, max_iter=150, backend=backend).value  # noqa: E731
    assert fastot.sinkhorn(C, a, b, eps=0.5, max_iter=150).err.max() < 1e-13  # converged, so the envelope is exact
    assert torch.autograd.gradcheck(fn, (C,), atol=1e-7)


@pytest.mark.parametrize("backend,device", COMPILED)
def test_gradcheck_value_wrt_cost_and_weights_unbalanced(backend, device):
    C, a, b = make_problem(2, 3, 4, torch.float64, ragged=False, seed=7, device=device)
    for t in (C, a, b):
        t.requires_grad_()
    fn = lambda c, x, y: fastot.sinkhorn(c, x, y, eps=0.5, max_iter=150, tau_a=1.0, tau_b=2.0,  # noqa: E731
                                         backend=backend).value
    assert fastot.sinkhorn(C, a, b, eps=0.5, max_iter=150, tau_a=1.0, tau_b=2.0).err.max() < 1e-13  # converged
    assert torch.autograd.gradcheck(fn, (C, a, b), atol=1e-7)


def test_unrolled_gradient_converges_to_envelope():
    C, a, b = make_problem(2, 5, 6, torch.float64, seed=8)
    C1 = C.clone().requires_grad_()
    C2 = C.clone().requires_grad_()
    fastot.sinkhorn(C1, a, b, eps=0.3, max_iter=400, grad="unrolled").value.sum().backward()
    fastot.sinkhorn(C2, a, b, eps=0.3, max_iter=400).value.sum().backward()
    torch.testing.assert_close(C1.grad, C2.grad, rtol=0, atol=1e-9)
    with pytest.raises(fastot.BackendUnavailable, match="unrolled"):
        fastot.sinkhorn(C, a, b, eps=0.3, grad="unrolled", backend="cpp")


# --------------------------------------------------------------------------- embeddings
@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean", "dot"])
def test_sinkhorn_embeddings(backend, device, cost):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(3, 7, 16, generator=g, dtype=torch.float64).to(device)
    y = torch.randn(3, 9, 16, generator=g, dtype=torch.float64).to(device)
    xm = torch.arange(7)[None, :] < torch.tensor([7, 4, 1])[:, None]
    ym = torch.arange(9)[None, :] < torch.tensor([2, 9, 5])[:, None]
    x[~xm] = 0  # padded embeddings, like a model's output at padding
    xr = x.clone().requires_grad_()
    r = fastot.sinkhorn_embeddings(xr, y, xm, ym, cost=cost, eps=0.1, backend=backend)
    C = fastot.pairwise_cost(x, y, cost)
    xw, yw = xm.double(), ym.double()
    expect = fastot.sinkhorn(C, xw / xw.sum(1, keepdim=True), yw / yw.sum(1, keepdim=True), eps=0.1, backend="torch")
    torch.testing.assert_close(r.value, expect.value, rtol=0, atol=1e-10)
    r.transport_cost.sum().backward()
    assert torch.isfinite(xr.grad).all() and (xr.grad[~xm] == 0).all()
    # The gradient reaches x through the cost with the plan held constant: <P*, d C(x, y)/dx>.
    P = r.plan()
    expect_grad = torch.autograd.grad((fastot.pairwise_cost(x.requires_grad_(), y, cost) * P).sum(), x)[0]
    torch.testing.assert_close(xr.grad, expect_grad, rtol=0, atol=1e-10)


def test_pairwise_cost_values():
    x = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    y = torch.tensor([[[0.0, 2.0], [3.0, 0.0]]])
    torch.testing.assert_close(fastot.pairwise_cost(x, y, "cosine"), torch.tensor([[[1.0, 0.0], [1.0, 1.0]]]))
    torch.testing.assert_close(fastot.pairwise_cost(x, y, "sqeuclidean"), torch.tensor([[[5.0, 4.0], [4.0, 9.0]]]))
    torch.testing.assert_close(fastot.pairwise_cost(x, y, "dot"), torch.tensor([[[0.0, -3.0], [0.0, 0.0]]]))


# --------------------------------------------------------------------------- registered ops, compile
def _cpp_ops():
    if "cpp" not in fastot.available_backends("sinkhorn"):
        pytest.skip("the compiled extension is not loaded")
    return torch.ops.fastot


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_opcheck_registered_sinkhorn_ops(dtype, device):
    ops = _cpp_ops()
    if device == "cuda" and "cuda" not in fastot.available_backends("sinkhorn", "cuda"):
        pytest.skip("the CUDA kernels are not built")
    C, a, b = make_problem(2, 5, 7, dtype, device=device)
    torch.library.opcheck(ops.sinkhorn_fwd.default, (C, a, b, 0.1, 20, None, None, None))
    torch.library.opcheck(ops.sinkhorn_fwd.default, (C, a, b, 0.1, 20, 1e-6, 1.0, 2.0))
    f, g, _, _ = ops.sinkhorn_fwd(C, a, b, 0.1, 20, None, None, None)
    torch.library.opcheck(ops.sinkhorn_plan.default, (C, a, b, f, g, 0.1))
    torch.library.opcheck(ops.sinkhorn_plan_sums.default, (C, a, b, f, g, 0.1))
    x, y = torch.randn(2, 5, 6, dtype=dtype, device=device), torch.randn(2, 7, 6, dtype=dtype, device=device)
    for kind in (0, 1, 2):
        torch.library.opcheck(ops.sinkhorn_embeddings_fwd.default, (x, y, a, b, kind, 0.1, 20, None, None, None))
        f, g = ops.sinkhorn_embeddings_fwd(x, y, a, b, kind, 0.1, 20, None, None, None)[:2]
        torch.library.opcheck(ops.sinkhorn_embeddings_bwd.default,
                              (x, y, a, b, f, g, torch.ones(2, dtype=dtype, device=device), kind, 0.1))


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_compile_fullgraph_smoke(backend, device):
    C, a, b = make_problem(2, 6, 8, torch.float32, device=device)
    C.requires_grad_()

    def loss(c):
        return fastot.sinkhorn(c, a, b, eps=0.1, max_iter=10, backend=backend).transport_cost.sum()

    # aot_eager traces through the fake impls and autograd like inductor does, without a C++ compile step.
    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    out = compiled(C)
    (g,) = torch.autograd.grad(out, C)
    C2 = C.detach().clone().requires_grad_()
    expect = loss(C2)
    expect.backward()
    torch.testing.assert_close(out, expect)
    torch.testing.assert_close(g, C2.grad)


@pytest.mark.parametrize("backend,device", FUSED)
def test_compile_fullgraph_smoke_fused_embeddings(backend, device):
    x = torch.randn(2, 6, 8, device=device, requires_grad=True)
    y = torch.randn(2, 5, 8, device=device)

    def loss(x):
        return fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=10, backend=backend).transport_cost.sum()

    out = torch.compile(loss, fullgraph=True, backend="aot_eager")(x)
    (gc,) = torch.autograd.grad(out, x)
    (ge,) = torch.autograd.grad(loss(x), x)
    torch.testing.assert_close(gc, ge)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(eps=0.0), "eps"),
        (dict(eps=-1.0), "eps"),
        (dict(eps=float("nan")), "eps"),
        (dict(eps=0.1, max_iter=-1), "max_iter"),
        (dict(eps=0.1, tol=0.0), "tol"),
        (dict(eps=0.1, tau_a=-2.0), "tau_a"),
        (dict(eps=0.1, grad="implicit"), "grad"),
        (dict(eps=0.1, backend="magic"), "unknown backend"),
    ],
)
def test_bad_arguments_raise_clearly(kwargs, match):
    C, a, b = make_problem(2, 3, 4)
    C0 = C.clone()
    with pytest.raises((ValueError, fastot.BackendUnavailable), match=match):
        fastot.sinkhorn(C, a, b, **kwargs)
    assert torch.equal(C, C0)


def test_bad_tensors_raise_clearly():
    C, a, b = make_problem(2, 3, 4)
    with pytest.raises(ValueError, match=r"cost must be \[B, N, M\]"):
        fastot.sinkhorn(C[0], eps=0.1)
    with pytest.raises(ValueError, match=r"a must have shape \[2, 3\]"):
        fastot.sinkhorn(C, a[:, :2], b, eps=0.1)
    with pytest.raises(TypeError, match="cost must be floating point"):
        fastot.sinkhorn(C.long(), eps=0.1)
    bad = a.clone()
    bad[0, 0] = -0.5
    r = fastot.sinkhorn(C, bad, b, eps=0.1)  # a value problem: flagged on the device, raised by check()
    assert r.status.tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"bad weights.* in problem \[0\]"):
        r.check()
    if not torch.cuda.is_available():
        with pytest.raises(fastot.BackendUnavailable, match="cuda"):
            fastot.sinkhorn(C, a, b, eps=0.1, backend="cuda")
    x = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="x is on cpu but y is on meta"):
        fastot.sinkhorn_embeddings(x, torch.empty(2, 4, 5, device="meta"), eps=0.1)


def test_registered_ops_check_the_potentials_they_are_given():
    """The plan and embeddings-backward ops index f, g and scale per problem: called directly with wrong shapes (or
    eps <= 0) they raise naming the argument instead of reading out of bounds. The CUDA glue shares the check."""
    ops = _cpp_ops()
    C, a, b = make_problem(4, 3, 5)
    f, g = torch.zeros(4, 3), torch.zeros(4, 5)
    with pytest.raises(RuntimeError, match=r"f must be \[B, N\] = 4x3"):
        ops.sinkhorn_plan(C, a, b, f[:, :1], g, 0.1)
    with pytest.raises(RuntimeError, match=r"g must be \[B, M\] = 4x5"):
        ops.sinkhorn_plan_sums(C, a, b, f, g[:2], 0.1)
    with pytest.raises(RuntimeError, match="eps must be > 0"):
        ops.sinkhorn_plan(C, a, b, f, g, 0.0)
    x, y = torch.randn(4, 3, 6), torch.randn(4, 5, 6)
    with pytest.raises(RuntimeError, match=r"scale must be \[B\] = 4"):
        ops.sinkhorn_embeddings_bwd(x, y, a, b, f, g, torch.ones(1), 0, 0.1)
    with pytest.raises(RuntimeError, match=r"f must be \[B, N\]"):
        ops.sinkhorn_embeddings_bwd(x, y, a, b, f[:, :1], g, torch.ones(4), 0, 0.1)
    dx, dy = ops.sinkhorn_embeddings_bwd(x, y, a, b, f, g, torch.ones(4), 0, 0.1)  # the right shapes still pass
    assert dx.shape == x.shape and dy.shape == y.shape


def test_value_is_dual_objective_and_entropic_bound():
    """value = <a,f> + <b,g> for probability weights, and OT_eps >= <P,C> - eps-entropy sanity."""
    C, a, b = make_problem(3, 8, 9, torch.float64, ragged=False)
    r = _converged(C, a, b, 0.1)
    torch.testing.assert_close(r.value, (a * r.f).sum(1) + (b * r.g).sum(1), rtol=0, atol=1e-12)
    P = r.plan()
    kl = (P * (P / (a[:, :, None] * b[:, None, :])).log()).sum((1, 2))
    torch.testing.assert_close(r.value, r.transport_cost + 0.1 * kl, rtol=0, atol=1e-10)  # strong duality
    assert math.isclose(P.sum().item(), 3.0, rel_tol=1e-10)


# The peak is read from /proc (VmHWM after a reset), not from ru_maxrss: ru_maxrss survives fork + exec, so a
# child of a large pytest process starts with the parent's peak and would measure no growth at all.
_PEAK_RSS = r"""
import sys, torch, fastot

def kib(field):
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(field + ":"))

backend = sys.argv[1]
B, N, M, d = 512, 256, 256, 8  # [B,N,M] fp32 = 128 MiB; x, y, dx, dy = 8 MiB
g = torch.Generator().manual_seed(0)
x = torch.randn(B, N, d, generator=g, requires_grad=True)
y = torch.randn(B, M, d, generator=g, requires_grad=True)
fastot.sinkhorn_embeddings(x[:2], y[:2], eps=0.1, max_iter=1, backend=backend)  # warm-up: libraries loaded
open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set to the current one
before = kib("VmRSS")
r = fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=2, backend=backend)
r.transport_cost.sum().backward()
print((kib("VmHWM") - before) * 1024)
"""


def test_fused_embeddings_never_allocate_the_cost_tensor():
    """Peak resident memory of forward + backward, in a fresh process: the fused path must stay far below one
    [B,N,M] tensor (128 MiB); the materialising path must not (which shows the measurement sees it)."""
    if "cpp" not in fastot.available_backends("sinkhorn"):
        pytest.skip("the compiled extension is not loaded")
    import subprocess
    import sys

    def peak(backend):
        res = subprocess.run([sys.executable, "-c", _PEAK_RSS, backend], capture_output=True, text=True, timeout=600)
        assert res.returncode == 0, res.stderr[-2000:]
        return int(res.stdout.strip().splitlines()[-1])

    mib = 1 << 20
    fused, materialised = peak("cpp"), peak("torch")
    assert materialised >= 128 * mib, materialised / mib
    assert fused < 48 * mib, fused / mib


@pytest.mark.parametrize("backend,device", FUSED)
def test_fused_embeddings_gradients_match_the_materialising_path(backend, device):
    """dx, dy, da, db of value + transport_cost, fused (cpp, cuda, triton) vs materialised cost (torch on CPU), fp64,
    ragged."""
    g = torch.Generator().manual_seed(5)
    for cost in ("cosine", "sqeuclidean", "dot"):
        x0 = torch.randn(4, 9, 6, generator=g, dtype=torch.float64)
        y0 = torch.randn(4, 7, 6, generator=g, dtype=torch.float64)
        a0 = torch.rand(4, 9, generator=g, dtype=torch.float64) + 0.1
        b0 = torch.rand(4, 7, generator=g, dtype=torch.float64) + 0.1
        a0[1, 5:] = 0
        b0[2, :3] = 0
        grads = {}
        for be, dev in ((backend, device), ("torch", "cpu")):
            x, y, a, b = (t.to(dev, copy=True).requires_grad_() for t in (x0, y0, a0, b0))
            r = fastot.sinkhorn_embeddings(x, y, a=a, b=b, cost=cost, eps=0.2, max_iter=60, tau_a=1.0, tau_b=2.0,
                                           backend=be)
            (r.value.sum() + 0.5 * r.transport_cost.sum()).backward()
            grads[be] = [t.cpu() for t in (r.value, r.transport_cost, x.grad, y.grad, a.grad, b.grad)]
        for got, want in zip(grads[backend], grads["torch"]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("backend,device", FUSED)
def test_fused_embeddings_gradients_at_the_clamps(backend, device):
    """Tiny and zero vectors among the valid rows (the cosine norm clamp at 1e-12, where x/1e-12 is linear) and a token
    equal to one of the other side (the sqeuclidean clamp at 0): fused vs the materialised cost, fp64."""
    g = torch.Generator().manual_seed(8)
    x0 = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    y0 = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    x0[0, 2] *= 1e-14  # below the clamp but not zero: the linear branch has its own gradient
    y0[1, 3] = 0
    x0[2, 1] = y0[2, 0]
    xm = torch.ones(3, 6, dtype=torch.bool)
    xm[1, 4:] = False
    for cost in ("cosine", "sqeuclidean", "dot"):
        grads = {}
        for be, dev in ((backend, device), ("torch", "cpu")):
            x, y = x0.to(dev, copy=True).requires_grad_(), y0.to(dev, copy=True).requires_grad_()
            r = fastot.sinkhorn_embeddings(x, y, xm.to(dev), cost=cost, eps=0.3, max_iter=40, backend=be)
            r.transport_cost.sum().backward()
            grads[be] = [t.cpu() for t in (r.transport_cost, x.grad, y.grad)]
        for got, want in zip(grads[backend], grads["torch"]):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64], ids=["bf16", "fp16", "fp64"])
def test_fused_cpp_ragged_rows_in_other_dtypes(dtype):
    """x in bf16/fp16 (rows converted per problem) or fp64 with y in fp32 (x sets the compute dtype), ragged
    rows that are not a prefix: cost and gradients equal the torch path on the same values in that dtype."""
    if "cpp" not in fastot.available_backends("sinkhorn"):
        pytest.skip("the compiled extension is not loaded")
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(5, 10, 24, generator=g).to(dtype)
    y0 = torch.randn(5, 7, 24, generator=g)
    xm = torch.rand(5, 10, generator=g) > 0.3
    ym = torch.rand(5, 7, generator=g) > 0.2
    xm[:, 0] = ym[:, 0] = True
    ct = torch.float64 if dtype == torch.float64 else torch.float32
    for cost in ("cosine", "sqeuclidean"):
        x = x0.clone().requires_grad_()
        r = fastot.sinkhorn_embeddings(x, y0, xm, ym, cost=cost, eps=0.1, max_iter=50, backend="cpp")
        r.transport_cost.sum().backward()
        xr = x0.to(ct, copy=True).requires_grad_()
        e = fastot.sinkhorn_embeddings(xr, y0.to(ct), xm, ym, cost=cost, eps=0.1, max_iter=50, backend="torch")
        e.transport_cost.sum().backward()
        tol = 1e-12 if ct == torch.float64 else 5e-5  # fp32: |x|^2 + |y|^2 - 2<x, y> cancels at ~50
        torch.testing.assert_close(r.transport_cost, e.transport_cost, rtol=tol, atol=tol)
        assert x.grad.dtype == dtype and (x.grad[~xm] == 0).all()
        torch.testing.assert_close(x.grad, xr.grad.to(dtype), rtol=1e-2 if ct == torch.float32 else 1e-9, atol=1e-5)


@pytest.mark.parametrize("backend,device", BACKENDS)
def test_plan_is_exactly_zero_where_it_underflows(backend, device):
    C = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]], dtype=torch.float64, device=device)
    for dtype in (torch.float32, torch.float64):
        P = fastot.sinkhorn(C.to(dtype), eps=1e-3, max_iter=10, backend=backend).plan()
        assert P[0, 0, 1] == 0 and P[0, 1, 0] == 0 and abs(P[0, 0, 0].item() - 0.5) < 1e-6


@pytest.mark.parametrize("backend,device", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_sinkhorn_embeddings_half_inputs(backend, device, dtype):
    g = torch.Generator().manual_seed(2)
    x = torch.randn(3, 9, 32, generator=g).to(device, dtype).requires_grad_()
    y = torch.randn(3, 11, 32, generator=g).to(device, dtype)
    r = fastot.sinkhorn_embeddings(x, y, eps=0.1, backend=backend)
    expect = fastot.sinkhorn(fastot.pairwise_cost(x.detach().float(), y.float()), eps=0.1, backend="torch")
    torch.testing.assert_close(r.value, expect.value, rtol=0, atol=1e-5)
    r.transport_cost.sum().backward()
    assert x.grad.dtype == dtype and torch.isfinite(x.grad.float()).all()
    # The gradient is computed in fp32 and only rounded to the input dtype at the end (its plan-weighted terms
    # are ~1/(N M) and would lose most digits, or flush to zero in fp16, if cast down first).
    xf = x.detach().float().requires_grad_()
    fastot.sinkhorn_embeddings(xf, y.float(), eps=0.1, backend="torch").transport_cost.sum().backward()
    rel = (x.grad.float() - xf.grad).norm() / xf.grad.norm()
    assert rel < 1e-2, rel


@pytest.mark.parametrize("backend,device", FUSED)
def test_fused_backward_skips_the_side_nobody_needs(backend, device):
    """A frozen teacher (y without grad): dx is the same as with both sides, and the op computes no dy (zeros
    from the registered op called with need_dy=False)."""
    x = torch.randn(3, 6, 16, device=device, dtype=torch.float64)
    y = torch.randn(3, 7, 16, device=device, dtype=torch.float64)
    grads = []
    for y_grad in (True, False):
        xg, yg = x.clone().requires_grad_(), y.clone().requires_grad_(y_grad)
        fastot.sinkhorn_embeddings(xg, yg, eps=0.1, max_iter=30, backend=backend).transport_cost.sum().backward()
        grads.append(xg.grad)
        assert (yg.grad is not None) == y_grad
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=0)
    r = fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=30, backend=backend)
    bwd = (torch.ops.fastot.sinkhorn_embeddings_bwd if backend in ("cpp", "cuda")
           else __import__("fastot.triton.sinkhorn", fromlist=["x"]).sinkhorn_embeddings_bwd)
    scale = torch.ones(3, dtype=torch.float64, device=device)
    dx, dy = bwd(x, y, r._a, r._b, r.f, r.g, scale, 0, 0.1, True, False)
    dx2, dy2 = bwd(x, y, r._a, r._b, r.f, r.g, scale, 0, 0.1)
    assert (dy == 0).all() and (dy2 != 0).any()
    torch.testing.assert_close(dx, dx2, rtol=0, atol=0)
