"""Packed (varlen) input of fastot.sinkhorn_embeddings and OTDistillationLoss (issue 25): x [Tx, d], y [Ty, d] with
flash-attention's cu_seqlens, on every backend and scheme (conftest.backend_params).

The oracle is the float64 torch backend on the padded equivalent, built here row by row (problem k's tokens at the
head of row k, zero weight behind): the packed solve must give the same potentials at the packed positions, the same
per-problem values, iteration counts and errors, and the same gradients, for ragged lengths with empty problems,
zero weights inside a problem, tol, unbalanced sides, warm starts and eps schedules."""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from hypothesis import given, settings
from hypothesis import strategies as st

import fastot
from fastot.sinkhorn import COSTS

PARAMS = backend_params("sinkhorn")
NOT_TRITON = [p for p in PARAMS if "triton" not in p.id]


def _packed_problem(seed, lx, ly, d, dtype=torch.float64, zero=0.0, weights=False):
    """Packed x, y, cu_x, cu_y and optional packed weights a, b (None: uniform), from one generator."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(lx), d, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randn(sum(ly), d, generator=g, dtype=torch.float64).to(dtype)
    cu = lambda ls: torch.tensor([0] + list(ls)).cumsum(0)  # noqa: E731
    a = b = None
    if weights:
        a = torch.rand(sum(lx), generator=g, dtype=torch.float64) + 0.1
        b = torch.rand(sum(ly), generator=g, dtype=torch.float64) + 0.1
        a[torch.rand(sum(lx), generator=g) < zero] = 0
        b[torch.rand(sum(ly), generator=g) < zero] = 0
        a, b = a.to(dtype), b.to(dtype)
    return x, y, cu(lx), cu(ly), a, b


def _pad(v, lens, fill=0.0):
    """[T, ...] -> [B, max(lens), ...], row k = problem k's points then `fill` (written out here, independently of
    fastot._packed)."""
    L = max(lens, default=0)
    out = torch.full((len(lens), L) + tuple(v.shape[1:]), fill, dtype=v.dtype)
    s = 0
    for k, n in enumerate(lens):
        out[k, :n] = v[s:s + n]
        s += n
    return out


def _unpad(v, lens):
    return torch.cat([v[k, :n] for k, n in enumerate(lens)]) if lens else v.new_zeros((0,) + tuple(v.shape[2:]))


def _uniform(lens, dtype):
    return torch.cat([torch.full((n,), 1.0 / n, dtype=dtype) for n in lens if n]) if sum(lens) else torch.zeros(0)


def _both(x, y, cx, cy, lx, ly, a, b, backend, **kw):
    """(packed result, padded float64 torch-reference result) of the same problems, gradients for x and y (and a, b
    when given) through value + transport_cost."""
    xp, yp = x.clone().requires_grad_(), y.clone().requires_grad_()
    ap = None if a is None else a.clone().requires_grad_()
    bp = None if b is None else b.clone().requires_grad_()
    res = fastot.sinkhorn_embeddings(xp, yp, a=ap, b=bp, cu_seqlens_x=cx, cu_seqlens_y=cy, backend=backend, **kw)
    X = _pad(x.double(), lx).requires_grad_()
    Y = _pad(y.double(), ly).requires_grad_()
    A = _pad((a if a is not None else _uniform(lx, x.dtype)).double(), lx).requires_grad_()
    Bw = _pad((b if b is not None else _uniform(ly, x.dtype)).double(), ly).requires_grad_()
    warm = {k: _pad(kw[k].double(), lx if k == "f0" else ly) for k in ("f0", "g0") if kw.get(k) is not None}
    ref = fastot.sinkhorn_embeddings(X, Y, a=A, b=Bw, backend="torch", **{**kw, **warm})
    ins = [xp, yp] + [t for t in (ap, bp) if t is not None]
    rins = [X, Y] + [t for t, w in ((A, a), (Bw, b)) if w is not None]
    grads = torch.autograd.grad((res.value + res.transport_cost).sum(), ins, allow_unused=True)
    rgrads = torch.autograd.grad((ref.value + ref.transport_cost).sum(), rins)
    lens = [lx, ly, lx, ly]
    rgrads = [_unpad(gr, n) for gr, n in zip(rgrads, lens)]
    return res, ref, grads, rgrads


def _close(res, ref, grads, rgrads, lx, ly, atol):
    assert res.f.shape == (sum(lx),) and res.g.shape == (sum(ly),)
    torch.testing.assert_close(res.f.double(), _unpad(ref.f, lx), atol=atol, rtol=0)
    torch.testing.assert_close(res.g.double(), _unpad(ref.g, ly), atol=atol, rtol=0)
    for name in ("value", "transport_cost", "err"):
        torch.testing.assert_close(getattr(res, name).double(), getattr(ref, name), atol=atol, rtol=0)
    assert torch.equal(res.n_iter.cpu(), ref.n_iter.cpu())
    assert torch.equal(res.status, ref.status)
    for gr, rg in zip(grads, rgrads):
        torch.testing.assert_close(gr.double(), rg, atol=atol, rtol=0)


@pytest.mark.parametrize("backend,device", NOT_TRITON)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), lx=st.lists(st.integers(0, 20), min_size=1, max_size=5),
       ly=st.lists(st.integers(0, 20), min_size=5, max_size=5), d=st.integers(1, 12), cost=st.sampled_from(COSTS),
       tol=st.sampled_from([None, 1e-9]), tau=st.sampled_from([None, 1.0]), weights=st.booleans())
def test_packed_solve_follows_the_padded_reference(backend, device, seed, lx, ly, d, cost, tol, tau, weights):
    ly = ly[:len(lx)]
    x, y, cx, cy, a, b = _packed_problem(seed, lx, ly, d, zero=0.2, weights=weights)
    if weights and tau is None:  # balanced: equal masses per problem
        for k in range(len(lx)):
            sa, sb = a[cx[k]:cx[k + 1]], b[cy[k]:cy[k + 1]]
            if sa.sum() > 0 and sb.sum() > 0:
                b[cy[k]:cy[k + 1]] = sb / sb.sum() * sa.sum()
    eps = 0.5 if cost == "cosine" else 5.0
    res, ref, grads, rgrads = _both(x, y, cx, cy, lx, ly, a, b, backend, cost=cost, eps=eps, max_iter=25, tol=tol,
                                    tau_a=tau, tau_b=tau)
    _close(res, ref, grads, rgrads, lx, ly, atol=1e-9)


@pytest.mark.parametrize("backend,device", PARAMS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_packed_ragged_batch_every_backend(backend, device, dtype):
    """Lengths 1 to 33 next to an empty problem (both sides), fixed: the Triton interpreter runs it too."""
    lx, ly = [7, 0, 33, 1, 12], [5, 9, 0, 20, 12]
    x, y, cx, cy, _, _ = _packed_problem(3, lx, ly, 16, dtype)
    for cost in ("cosine", "sqeuclidean"):
        eps = 0.1 if cost == "cosine" else 2.0
        res, ref, grads, rgrads = _both(x, y, cx, cy, lx, ly, None, None, backend, cost=cost, eps=eps, max_iter=20)
        _close(res, ref, grads, rgrads, lx, ly, atol=1e-9 if dtype == torch.float64 else 2e-5)
        assert res.backend == backend


@pytest.mark.parametrize("backend,device", PARAMS)
def test_packed_warm_start_and_eps_schedule(backend, device):
    lx, ly = [6, 11, 3], [9, 4, 7]
    x, y, cx, cy, _, _ = _packed_problem(5, lx, ly, 8)
    kw = dict(cu_seqlens_x=cx, cu_seqlens_y=cy, cost="sqeuclidean", eps=1.0, backend=backend)
    first = fastot.sinkhorn_embeddings(x, y, max_iter=4, **kw)
    cont = fastot.sinkhorn_embeddings(x, y, max_iter=5, f0=first.f, g0=first.g, **kw)
    cold = fastot.sinkhorn_embeddings(x, y, max_iter=9, **kw)
    torch.testing.assert_close(cont.f, cold.f, atol=1e-9, rtol=0)
    torch.testing.assert_close(cont.value, cold.value, atol=1e-9, rtol=0)
    # an eps schedule runs one iteration per stage, each warm-started from the one before
    staged = fastot.sinkhorn_embeddings(x, y, max_iter=6, eps_schedule=[8.0, 4.0], **kw)
    chain = fastot.sinkhorn_embeddings(x, y, max_iter=1, **{**kw, "eps": 8.0})
    chain = fastot.sinkhorn_embeddings(x, y, max_iter=1, f0=chain.f, g0=chain.g, **{**kw, "eps": 4.0})
    chain = fastot.sinkhorn_embeddings(x, y, max_iter=6, f0=chain.f, g0=chain.g, **kw)
    torch.testing.assert_close(staged.f, chain.f, atol=1e-9, rtol=0)
    assert staged.n_iter.tolist() == [8, 8, 8]


@pytest.mark.parametrize("backend,device", NOT_TRITON)
def test_packed_masks_and_plan(backend, device):
    """x_mask [Tx] drops tokens as the padded mask does; plan() is the padded [B, N, M] plan."""
    lx, ly = [5, 8, 2], [6, 3, 4]
    x, y, cx, cy, _, _ = _packed_problem(9, lx, ly, 6)
    g = torch.Generator().manual_seed(1)
    mx, my = torch.rand(sum(lx), generator=g) > 0.3, torch.rand(sum(ly), generator=g) > 0.3
    mx[0] = my[0] = True
    res = fastot.sinkhorn_embeddings(x, y, mx, my, cu_seqlens_x=cx, cu_seqlens_y=cy, eps=0.2, max_iter=15,
                                     backend=backend)
    ref = fastot.sinkhorn_embeddings(_pad(x, lx), _pad(y, ly), _pad(mx, lx, False), _pad(my, ly, False), eps=0.2,
                                     max_iter=15, backend="torch")
    torch.testing.assert_close(res.value, ref.value, atol=1e-10, rtol=0)
    torch.testing.assert_close(res.f, _unpad(ref.f, lx), atol=1e-10, rtol=0)
    assert (res.f[~mx] == 0).all()
    torch.testing.assert_close(res.plan(), ref.plan(), atol=1e-10, rtol=0)


def test_packed_unrolled_gradients():
    lx, ly = [4, 6], [5, 3]
    x, y, cx, cy, _, _ = _packed_problem(2, lx, ly, 5)
    xp = x.clone().requires_grad_()
    res = fastot.sinkhorn_embeddings(xp, y, cu_seqlens_x=cx, cu_seqlens_y=cy, eps=0.3, max_iter=10, grad="unrolled")
    (gx,) = torch.autograd.grad(res.value.sum(), xp)
    X = _pad(x, lx).requires_grad_()
    ref = fastot.sinkhorn_embeddings(X, _pad(y, ly), _pad(torch.ones(10, dtype=torch.bool), lx, False),
                                     _pad(torch.ones(8, dtype=torch.bool), ly, False), eps=0.3, max_iter=10,
                                     grad="unrolled")
    (rx,) = torch.autograd.grad(ref.value.sum(), X)
    torch.testing.assert_close(gx, _unpad(rx, lx), atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend,device", PARAMS)
def test_packed_bad_token_flags_only_its_problem(backend, device):
    lx, ly = [4, 5, 3], [6, 2, 4]
    x, y, cx, cy, _, _ = _packed_problem(4, lx, ly, 6)
    x[5, 2] = float("nan")  # problem 1's first token
    xp = x.clone().requires_grad_()
    res = fastot.sinkhorn_embeddings(xp, y, cu_seqlens_x=cx, cu_seqlens_y=cy, eps=0.2, max_iter=10, backend=backend)
    assert res.status.tolist() == [0, 2, 0]
    assert torch.isnan(res.f[4:9]).all() and torch.isfinite(res.f[:4]).all() and torch.isfinite(res.f[9:]).all()
    assert torch.isnan(res.value[1]) and torch.isfinite(res.value[[0, 2]]).all()
    (gx,) = torch.autograd.grad(res.value.nansum(), xp)
    assert torch.isnan(gx[4:9]).all() and torch.isfinite(gx[:4]).all() and torch.isfinite(gx[9:]).all()


def _args():
    x, y, cx, cy, _, _ = _packed_problem(0, [3, 2], [2, 4], 4)
    return dict(x=x, y=y, cu_seqlens_x=cx, cu_seqlens_y=cy, eps=0.1)


@pytest.mark.parametrize("change,err,match", [
    (dict(cu_seqlens_y=None), ValueError, "both cu_seqlens_x and cu_seqlens_y"),
    (dict(x=torch.zeros(1, 5, 4, dtype=torch.float64)), ValueError, r"packed \[Tx, d\]"),
    (dict(y=torch.zeros(6, 3, dtype=torch.float64)), ValueError, "must agree on d"),
    (dict(cu_seqlens_x=torch.tensor([0.0, 3.0, 5.0])), TypeError, "cu_seqlens_x must be int32 or int64"),
    (dict(cu_seqlens_x=torch.tensor([1, 3, 5])), ValueError, r"cu_seqlens_x\[0\] must be 0"),
    (dict(cu_seqlens_x=torch.tensor([0, 4, 3, 5])), ValueError, "cu_seqlens_x must be nondecreasing"),
    (dict(cu_seqlens_x=torch.tensor([0, 3, 4])), ValueError, r"cu_seqlens_x\[-1\] must be the number of packed rows 5"),
    (dict(cu_seqlens_x=torch.tensor([0, 5])), ValueError, "must both be"),
    (dict(cu_seqlens_x=torch.tensor([[0, 3, 5]])), ValueError, r"1-D \[B \+ 1\]"),
    (dict(a=torch.ones(2, 3)), ValueError, r"a must have shape \[5\]"),
    (dict(x_mask=torch.ones(2, 3, dtype=torch.bool)), ValueError, r"x_mask must have shape \[5\]"),
    (dict(f0=torch.zeros(2, 3)), ValueError, r"f0 must have shape \[5\]"),
    (dict(g0=torch.zeros(5)), ValueError, r"g0 must have shape \[6\]"),
    (dict(cost="l1"), ValueError, "cost must be one of"),
])
def test_packed_argument_errors(change, err, match):
    kw = {**_args(), **change}
    x, y = kw.pop("x"), kw.pop("y")
    with pytest.raises(err, match=match):
        fastot.sinkhorn_embeddings(x, y, **kw)


@pytest.mark.parametrize("backend,device", NOT_TRITON)
def test_packed_distillation_loss_equals_the_padded_one(backend, device):
    """OTDistillationLoss on packed hidden states (with a projection) gives the padded loss and its gradients."""
    lx, ly = [5, 9, 2, 7], [6, 4, 8, 7]
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(sum(lx), 12, generator=g, dtype=torch.float64)
    yt = torch.randn(sum(ly), 8, generator=g, dtype=torch.float64)
    cx, cy = torch.tensor([0] + lx).cumsum(0).int(), torch.tensor([0] + ly).cumsum(0).int()
    proj = torch.nn.Linear(12, 8, dtype=torch.float64)
    crit = fastot.OTDistillationLoss(eps=0.1, max_iter=20, projection=proj, backend=backend)
    x1 = xs.clone().requires_grad_()
    loss = crit(x1, None, yt, None, cu_seqlens_student=cx, cu_seqlens_teacher=cy)
    g1 = torch.autograd.grad(loss, [x1, proj.weight])
    X = _pad(xs, lx).requires_grad_()
    ref = crit(X, _pad(torch.ones(sum(lx), dtype=torch.bool), lx, False), _pad(yt, ly),
               _pad(torch.ones(sum(ly), dtype=torch.bool), ly, False))
    g2 = torch.autograd.grad(ref, [X, proj.weight])
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(g1[0], _unpad(g2[0], lx), atol=1e-12, rtol=0)
    torch.testing.assert_close(g1[1], g2[1], atol=1e-12, rtol=0)
    crit = fastot.OTDistillationLoss(eps=0.1, max_iter=20, projection=proj, backend=backend, debias=True, tol=1e-12)
    x1 = xs.clone().requires_grad_()
    loss = crit(x1, None, yt, None, cu_seqlens_student=cx, cu_seqlens_teacher=cy)
    (g1,) = torch.autograd.grad(loss, [x1])
    X = _pad(xs, lx).requires_grad_()
    ref = crit(X, _pad(torch.ones(sum(lx), dtype=torch.bool), lx, False), _pad(yt, ly),
               _pad(torch.ones(sum(ly), dtype=torch.bool), ly, False))
    (g2,) = torch.autograd.grad(ref, [X])
    torch.testing.assert_close(loss, ref, atol=1e-12, rtol=0)
    torch.testing.assert_close(g1, _unpad(g2, lx), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="needs both"):
        fastot.ot_distillation_loss(xs[:, :8], None, yt, None, cu_seqlens_student=cx)
    with pytest.raises(ValueError, match=r"\[T, d\] \(packed"):
        fastot.ot_distillation_loss(_pad(xs, lx), None, yt, None, cu_seqlens_student=cx, cu_seqlens_teacher=cy,
                                    projection=proj)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_opcheck_varlen_ops(dtype):
    if "cpp" not in fastot.available_backends("sinkhorn"):
        pytest.skip("the compiled extension is not loaded")
    ops = torch.ops.fastot
    x, y, cx, cy, a, b = _packed_problem(1, [3, 0, 4], [2, 5, 3], 6, dtype, weights=True)
    b = torch.cat([b[:2] / b[:2].sum() * a[:3].sum(), b[2:7], b[7:] / b[7:].sum() * a[3:].sum()])
    for kind in (0, 1, 2):
        for absorb in (None, 20.0):
            args = (x, y, cx, cy, a, b, kind, 0.1, 20, None, None, None, absorb)
            torch.library.opcheck(ops.sinkhorn_embeddings_varlen_fwd.default, args)
        f, g = ops.sinkhorn_embeddings_varlen_fwd(x, y, cx, cy, a, b, kind, 0.1, 20, None, None, None)[:2]
        torch.library.opcheck(ops.sinkhorn_embeddings_varlen_bwd.default,
                              (x, y, cx, cy, a, b, f, g, torch.ones(3, dtype=dtype), kind, 0.1))
    with pytest.raises(RuntimeError, match="cu_seqlens_x must be nondecreasing"):
        ops.sinkhorn_embeddings_varlen_fwd(x, y, torch.tensor([0, 5, 3, 7]), cy, a, b, 0, 0.1, 5, None, None, None)
    with pytest.raises(RuntimeError, match=r"a must be \[Tx\]"):
        ops.sinkhorn_embeddings_varlen_fwd(x, y, cx, cy, a[:3], b, 0, 0.1, 5, None, None, None)


@pytest.mark.parametrize("backend,device", PARAMS)
def test_packed_divergence_equals_the_padded_one(backend, device):
    """sinkhorn_divergence on packed input (self-problems one packed batch of 2B, no padding) gives the padded
    divergence, its three values, iteration counts and gradients; S(x, x) = 0; a pair with an empty side has S = 0."""
    lx, ly = [6, 3, 0, 9], [4, 7, 5, 9]
    x, y, cx, cy, _, _ = _packed_problem(11, lx, ly, 5)
    y[-9:] = x[-9:]  # the last pair: the same cloud on both sides
    kw = dict(cost="sqeuclidean", eps=0.5, max_iter=30, tol=1e-10, backend=backend)
    xp, yp = x.clone().requires_grad_(), y.clone().requires_grad_()
    div = fastot.sinkhorn_divergence(xp, yp, cu_seqlens_x=cx, cu_seqlens_y=cy, **kw)
    gx, gy = torch.autograd.grad(div.value.sum(), [xp, yp])
    X, Y = _pad(x, lx).requires_grad_(), _pad(y, ly).requires_grad_()
    ref = fastot.sinkhorn_divergence(X, Y, _pad(torch.ones(sum(lx), dtype=torch.bool), lx, False),
                                     _pad(torch.ones(sum(ly), dtype=torch.bool), ly, False), **kw)
    rx, ry = torch.autograd.grad(ref.value.sum(), [X, Y])
    for name in ("value", "ot_xy", "ot_xx", "ot_yy"):
        torch.testing.assert_close(getattr(div, name), getattr(ref, name), atol=1e-9, rtol=0)
    assert torch.equal(div.n_iter, ref.n_iter)
    torch.testing.assert_close(gx, _unpad(rx, lx), atol=1e-8, rtol=0)
    torch.testing.assert_close(gy, _unpad(ry, ly), atol=1e-8, rtol=0)
    assert abs(float(div.value[3].detach())) < 1e-7
    # an empty side: S = 0, not -OT(b, b)/2
    assert float(div.value[2].detach()) == 0.0 and float(div.ot_yy[2].detach()) > 0
    assert (div.value[:2] > 0).all()


def test_pack_tokens_matches_boolean_indexing():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 9, 3, generator=g, requires_grad=True)
    mask = torch.rand(4, 9, generator=g) > 0.4
    mask[2] = False  # an empty row
    packed, cu = fastot.pack_tokens(h, mask.int())
    assert torch.equal(packed, h[mask]) and cu.tolist() == [0] + mask.sum(1).cumsum(0).tolist()
    w = torch.randn(packed.shape, generator=g)
    (gp,) = torch.autograd.grad((packed * w).sum(), h)
    (gb,) = torch.autograd.grad((h[mask] * w).sum(), h)
    assert torch.equal(gp, gb)
    # the packed loss from padded states: the padded loss
    y = torch.randn(4, 7, 3, generator=g)
    my = torch.ones(4, 7, dtype=torch.bool)
    yp, cy = fastot.pack_tokens(y, my)
    loss = fastot.ot_distillation_loss(packed, None, yp, None, cu_seqlens_student=cu, cu_seqlens_teacher=cy)
    ref = fastot.ot_distillation_loss(h, mask, y, my)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="mask must be a"):
        fastot.pack_tokens(h, mask[:, :3])
    with pytest.raises(ValueError, match="hidden must be a"):
        fastot.pack_tokens(h[0], mask)


@pytest.mark.parametrize("backend,device", NOT_TRITON)
def test_packed_half_precision_weights_keep_their_mass_tolerance(backend, device):
    """bf16 weights are checked for equal masses at bf16's eps on packed input, as on padded (with or without a
    mask): uniform bf16 weights over 7 and 11 points do not sum to the same bf16 mass."""
    lx, ly = [7], [11]
    x, y, cx, cy, _, _ = _packed_problem(3, lx, ly, 4)
    a, b = torch.full((7,), 1 / 7, dtype=torch.bfloat16), torch.full((11,), 1 / 11, dtype=torch.bfloat16)
    packed = fastot.sinkhorn_embeddings(x, y, a=a, b=b, cu_seqlens_x=cx, cu_seqlens_y=cy, eps=0.2, max_iter=20,
                                        backend=backend)
    padded = fastot.sinkhorn_embeddings(x[None], y[None], a=a[None], b=b[None], eps=0.2, max_iter=20, backend=backend)
    masked = fastot.sinkhorn_embeddings(x[None], y[None], torch.ones(1, 7, dtype=torch.bool), None, a=a[None],
                                        b=b[None], eps=0.2, max_iter=20, backend=backend)
    assert packed.status.tolist() == padded.status.tolist() == masked.status.tolist() == [0]
    torch.testing.assert_close(packed.value, padded.value, atol=1e-12, rtol=0)
    torch.testing.assert_close(masked.value, padded.value, atol=1e-12, rtol=0)


def test_packed_loss_errors_name_its_arguments():
    x, y, cx, cy, _, _ = _packed_problem(0, [3, 2], [2, 4], 4)
    crit = fastot.OTDistillationLoss(eps=0.1)
    with pytest.raises(ValueError, match=r"cu_seqlens_student\[-1\] must be the number of packed rows 5"):
        crit(x, None, y, None, cu_seqlens_student=torch.tensor([0, 3, 4]), cu_seqlens_teacher=cy)
    with pytest.raises(ValueError, match="cu_seqlens_student has 2 pairs but cu_seqlens_teacher has 1"):
        crit(x, None, y, None, cu_seqlens_student=cx, cu_seqlens_teacher=torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"student_weights must be a \[5\] tensor"):
        crit(x, None, y, None, cu_seqlens_student=cx, cu_seqlens_teacher=cy, student_weights=torch.ones(2, 3))
    with pytest.raises(ValueError, match="eps_schedule value 1e-50 is below the smallest normal"):
        fastot.sinkhorn_embeddings(x.float(), y.float(), cu_seqlens_x=cx, cu_seqlens_y=cy, eps=0.1,
                                   eps_schedule=[1.0, 1e-50])
