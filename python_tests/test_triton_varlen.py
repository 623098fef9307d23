"""Packed variable-length ("varlen") input of the Triton fused embeddings Sinkhorn: x [Tx,D], y [Ty,D] with row
offsets cu_seqlens [B+1]. Every result must equal the padded op's on the same problems padded with zero rows of
weight 0 (taken at the packed positions), and the float64 torch reference on the padded cost.

On CPU the kernels run in the Triton interpreter (TRITON_INTERPRET=1, set by conftest): small fixed cases only.
"""

import os
import subprocess
import sys

import pytest
import torch

import fastot
from fastot.reference import sinkhorn as ref

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif("triton" not in fastot.available_backends("sinkhorn", DEVICE),
                                reason="the triton backend is unavailable here")
COSTS = ("cosine", "sqeuclidean", "dot")  # the ops' cost codes 0, 1, 2
# An empty problem (1), one 13 x 4, one 1 x 11 (lengths far apart), a zero weight inside problems 0 and 3.
LENS_X, LENS_Y = [6, 0, 13, 1], [9, 0, 4, 11]


@pytest.fixture
def tsk():
    from fastot.triton import sinkhorn as tsk

    return tsk


@pytest.fixture
def small_blocks(tsk, monkeypatch):
    """The streaming path (forced), with blocks of 16 rows / columns / features in the row, column, plan and
    gradient kernels: a problem then spans several blocks, and the blocks that the grid (sized by the longest
    problem) holds past a shorter problem's rows or columns have nothing to do."""
    import triton

    from fastot.triton import _sinkhorn_kernels as K

    def tuned(kernel, key, **meta):
        return triton.autotune([triton.Config(meta, num_warps=4)], key=key)(kernel)

    monkeypatch.setattr(tsk, "ONCHIP_MAX", 0)
    monkeypatch.setattr(tsk, "_PLAN_BLOCK", 16)
    monkeypatch.setattr(tsk, "_row_pass", tuned(K._row_pass_kernel, tsk._STREAM_KEY, BLOCK_N=16, BLOCK_M=16))
    monkeypatch.setattr(tsk, "_col_pass", tuned(K._col_pass_kernel, tsk._STREAM_KEY, BLOCK_N=16, BLOCK_M=16))
    monkeypatch.setattr(tsk, "_grad", tuned(K._embedding_grad_kernel, ["N_KEY", "M_KEY", "D_KEY", "KIND", "VARLEN"],
                                            BLOCK_N=16, BLOCK_M=16, BLOCK_D=16))
    return tsk


def _cu(lens, dtype=torch.int64):
    return torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=dtype, device=DEVICE)


def _packed(lens_x=LENS_X, lens_y=LENS_Y, D=10, dtype=torch.float64, seed=0, cu_dtype=torch.int64):
    """x [Tx,D], y [Ty,D], a [Tx], b [Ty], cu_x, cu_y; a zero weight inside the first and the last problem."""
    g = torch.Generator().manual_seed(seed)
    tx, ty = sum(lens_x), sum(lens_y)
    x, y = torch.randn(tx, D, generator=g, dtype=dtype), torch.randn(ty, D, generator=g, dtype=dtype)
    a, b = torch.rand(tx, generator=g, dtype=dtype) + 0.1, torch.rand(ty, generator=g, dtype=dtype) + 0.1
    if tx > 2:
        a[2] = 0
    if ty > 2:
        b[-2] = 0
    cu_x, cu_y = _cu(lens_x, cu_dtype), _cu(lens_y, cu_dtype)
    for w, cu in ((a, cu_x), (b, cu_y)):  # each problem's weights sum to 1: balanced problems converge
        for lo, hi in zip(cu[:-1].tolist(), cu[1:].tolist()):
            w[lo:hi] /= w[lo:hi].sum()
    return (*(t.to(DEVICE) for t in (x, y, a, b)), cu_x, cu_y)


def _pad(v, cu, n=None):
    """[T, ...] packed -> [B, n, ...] with zeros after each problem's rows (n: the longest problem)."""
    cu = cu.tolist()
    lens = [hi - lo for lo, hi in zip(cu[:-1], cu[1:])]
    n = max(lens, default=0) if n is None else n
    out = v.new_zeros((len(lens), n, *v.shape[1:]))
    for k, (lo, hi) in enumerate(zip(cu[:-1], cu[1:])):
        out[k, : hi - lo] = v[lo:hi]
    return out


def _unpad(v, cu):
    """[B, n, ...] -> [T, ...]: each problem's first cu[k+1] - cu[k] rows."""
    cu = cu.tolist()
    return torch.cat([v[k, : hi - lo] for k, (lo, hi) in enumerate(zip(cu[:-1], cu[1:]))]) if len(cu) > 1 else \
        v.reshape(0, *v.shape[2:])


def _close(got, want, atol, rtol=0.0):
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=rtol, atol=atol)


def _padded_fwd(tsk, x, y, a, b, cu_x, cu_y, cost, eps, max_iter, absorb=None, f0=None, g0=None, **kw):
    """The padded op on the padded problems, with the packed output layout of the varlen op."""
    xp, yp, ap, bp = _pad(x, cu_x), _pad(y, cu_y), _pad(a, cu_x), _pad(b, cu_y)
    warm = dict(f0=None if f0 is None else _pad(f0, cu_x), g0=None if g0 is None else _pad(g0, cu_y))
    if absorb is None:
        out = (*tsk.sinkhorn_embeddings_fwd(xp, yp, ap, bp, cost, eps, max_iter, **kw, **warm), None, None)
    else:
        out = tsk.sinkhorn_embeddings_fwd_scaling(xp, yp, ap, bp, cost, eps, max_iter, **kw, absorb=absorb, **warm)
    return (_unpad(out[0], cu_x), _unpad(out[1], cu_y), *out[2:])


def _reference(x, y, a, b, cu_x, cu_y, cost, eps, max_iter, f0=None, g0=None, **kw):
    """(f, g, n_iter, err, <P,C>, sum P) of the float64 torch reference on the padded cost, f and g packed."""
    xp, yp = _pad(x, cu_x).cpu().double(), _pad(y, cu_y).cpu().double()
    ap, bp = _pad(a, cu_x).cpu().double(), _pad(b, cu_y).cpu().double()
    C = fastot.pairwise_cost(xp, yp, COSTS[cost])
    warm = dict(f0=None if f0 is None else _pad(f0, cu_x).cpu(), g0=None if g0 is None else _pad(g0, cu_y).cpu())
    f, g, n_iter, err = ref.sinkhorn_fwd(C, ap, bp, eps, max_iter, **kw, **warm)
    tc, mass = ref.sinkhorn_plan_sums(C, ap, bp, f, g, eps)
    return _unpad(f, cu_x.cpu()), _unpad(g, cu_y.cpu()), n_iter, err, tc, mass


def _reference_grads(x, y, a, b, cu_x, cu_y, f, g, scale, cost, eps):
    """d/dx, d/dy of sum_k scale_k <P_k, C_k(x, y)> with P (from f, g) held constant: torch autograd, float64."""
    xp = _pad(x, cu_x).cpu().double().requires_grad_()
    yp = _pad(y, cu_y).cpu().double().requires_grad_()
    ap, bp = _pad(a, cu_x).cpu().double(), _pad(b, cu_y).cpu().double()
    C = fastot.pairwise_cost(xp, yp, COSTS[cost])
    P = ref.sinkhorn_plan(C.detach(), ap, bp, _pad(f, cu_x).cpu().double(), _pad(g, cu_y).cpu().double(), eps)
    (scale.cpu().double()[:, None, None] * P * C).sum().backward()
    return _unpad(xp.grad, cu_x.cpu()), _unpad(yp.grad, cu_y.cpu())


def _check_fwd(got, padded, want, atol_pad, atol_ref, n_iter_slack=0):
    """(f, g, n_iter, err, <P,C>, sum P) against the padded op's (same dtypes and shapes) and the reference's;
    absorptions and fell_back against the padded scaling op's, or 0 and False when it ran log-domain."""
    f, g, n_iter, err, tc, mass, n_abs, fell = got
    for u, v in zip((f, g, n_iter, err, tc, mass), padded[:6]):
        assert u.dtype == v.dtype and u.shape == v.shape
        _close(u, v, atol_pad)
    if padded[6] is not None:
        assert torch.equal(n_abs, padded[6]) and torch.equal(fell, padded[7])
    else:
        assert n_abs.dtype == torch.int32 and fell.dtype == torch.bool and n_abs.shape == fell.shape == n_iter.shape
    for u, v in zip((f, g, err, tc, mass), (want[0], want[1], *want[3:])):
        _close(u.double(), v, atol_ref, 0.0 if f.dtype == torch.float64 else 1e-5)  # fp32: costs up to ~100
    assert (n_iter.cpu() - want[2]).abs().max() <= n_iter_slack


def _assert_zero_off_problem(f, g, a, b, cu_x, cu_y):
    """f, g vanish at points of weight 0 and on every point of a problem with an empty side."""
    assert (f[a == 0] == 0).all() and (g[b == 0] == 0).all()
    for k in range(len(cu_x) - 1):
        fk, gk = f[cu_x[k]:cu_x[k + 1]], g[cu_y[k]:cu_y[k + 1]]
        if fk.numel() == 0 or gk.numel() == 0:
            assert (fk == 0).all() and (gk == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
@pytest.mark.parametrize("cost", [0, 1, 2], ids=COSTS)
def test_fwd_and_bwd_match_padded_op_and_reference(tsk, cost, dtype):
    x, y, a, b, cu_x, cu_y = _packed(dtype=dtype, seed=cost)
    kw = dict(cost=cost, eps=0.2, max_iter=20)
    got = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y, a, b, **kw)
    padded = _padded_fwd(tsk, x, y, a, b, cu_x, cu_y, **kw)
    want = _reference(x, y, a, b, cu_x, cu_y, **kw)
    fp64 = dtype == torch.float64
    _check_fwd(got, padded, want, 1e-12 if fp64 else 1e-6, 1e-10 if fp64 else 1e-4)
    assert not got[6].any() and not got[7].any()  # absorb None: log-domain iterations
    f, g = got[0], got[1]
    assert f.shape == (x.shape[0],) and g.shape == (y.shape[0],) and f.dtype == dtype
    _assert_zero_off_problem(f, g, a, b, cu_x, cu_y)

    scale = torch.tensor([0.5, 2.0, -1.0, 3.0], dtype=dtype, device=DEVICE)
    dx, dy = tsk.sinkhorn_embeddings_varlen_bwd(x, y, cu_x, cu_y, a, b, f, g, scale, cost, 0.2)
    pdx, pdy = tsk.sinkhorn_embeddings_bwd(_pad(x, cu_x), _pad(y, cu_y), _pad(a, cu_x), _pad(b, cu_y), _pad(f, cu_x),
                                           _pad(g, cu_y), scale, cost, 0.2)
    assert dx.shape == x.shape and dy.shape == y.shape and dx.dtype == dtype
    _close(dx, _unpad(pdx, cu_x), 1e-12 if fp64 else 1e-6)
    _close(dy, _unpad(pdy, cu_y), 1e-12 if fp64 else 1e-6)
    wdx, wdy = _reference_grads(x, y, a, b, cu_x, cu_y, f, g, scale, cost, 0.2)
    # fp32: P = exp2(~100 +- rounding) on the sqeuclidean cost, so ~1e-5 relative; the padded op agrees to 1e-6
    _close(dx.double(), wdx, 1e-10 if fp64 else 1e-4, 0.0 if fp64 else 1e-4)
    _close(dy.double(), wdy, 1e-10 if fp64 else 1e-4, 0.0 if fp64 else 1e-4)
    assert (dx[a == 0] == 0).all() and (dy[b == 0] == 0).all()


@pytest.mark.parametrize("case", ["tol-unbalanced", "warm-tol"])
def test_tol_unbalanced_and_warm_start(tsk, case):
    x, y, a, b, cu_x, cu_y = _packed(seed=3, cu_dtype=torch.int32)
    if case == "tol-unbalanced":
        kw = dict(cost=1, eps=0.5, max_iter=30, tol=1e-6, tau_a=0.7, tau_b=2.0)
    else:  # a warm start on every point (garbage where the weight is 0 or the problem has an empty side)
        g = torch.Generator().manual_seed(5)
        f0 = torch.randn(x.shape[0], generator=g, dtype=torch.float64).to(DEVICE)
        g0 = torch.randn(y.shape[0], generator=g, dtype=torch.float32).to(DEVICE)  # any floating dtype
        kw = dict(cost=0, eps=0.2, max_iter=30, tol=1e-6, f0=f0, g0=g0)
    got = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y, a, b, **kw)
    # the iteration where the error crosses tol may differ by one between the float64 computations
    _check_fwd(got, _padded_fwd(tsk, x, y, a, b, cu_x, cu_y, **kw), _reference(x, y, a, b, cu_x, cu_y, **kw), 1e-12,
               1e-8, n_iter_slack=1)
    assert (got[3][got[2] < 30] < 1e-6).all()  # problems that stopped did so below tol
    _assert_zero_off_problem(got[0], got[1], a, b, cu_x, cu_y)


def test_scaling_iterations(tsk):
    """absorb: the scaling scheme of sinkhorn_embeddings_fwd_scaling (absorptions and all), on chip."""
    x, y, a, b, cu_x, cu_y = _packed(seed=4)
    kw = dict(cost=2, eps=0.1, max_iter=25, absorb=2.0)  # a small absorb: scalings are absorbed often
    got = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y, a, b, **kw)
    padded = _padded_fwd(tsk, x, y, a, b, cu_x, cu_y, **kw)
    want = _reference(x, y, a, b, cu_x, cu_y, cost=2, eps=0.1, max_iter=25)
    _check_fwd(got, padded, want, 1e-12, 1e-9)
    assert got[6].max() > 0 and not got[7].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_streaming_path(small_blocks, dtype):
    """Problems too large for the chip (forced here) stream; with absorb they run log-domain (fell_back)."""
    tsk = small_blocks
    lens_x, lens_y = [3, 0, 40, 1], [17, 5, 6, 33]  # 40 rows: 3 row blocks, of which 1 for problem 0
    x, y, a, b, cu_x, cu_y = _packed(lens_x, lens_y, D=20, dtype=dtype, seed=6)
    # tol: problems 1 (no x rows) and 3 (one row) stop at once, each on its own done flag; 0 and 2 run on
    kw = dict(cost=1, eps=0.5, max_iter=8, tol=1e-3)
    got = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y, a, b, **kw, absorb=20.0)
    padded = _padded_fwd(tsk, x, y, a, b, cu_x, cu_y, **kw)
    fp64 = dtype == torch.float64
    _check_fwd(got, padded, _reference(x, y, a, b, cu_x, cu_y, **kw), 1e-12 if fp64 else 1e-6,
               1e-9 if fp64 else 1e-4, n_iter_slack=0 if fp64 else 1)
    assert got[2].tolist() == [8, 0, 8, 1]
    assert not got[6].any() and got[7].all()  # streaming is log-domain: every problem "fell back"
    _assert_zero_off_problem(got[0], got[1], a, b, cu_x, cu_y)

    f, g = got[0], got[1]
    scale = torch.tensor([1.0, 2.0, 0.5, -1.0], dtype=dtype, device=DEVICE)
    dx, dy = tsk.sinkhorn_embeddings_varlen_bwd(x, y, cu_x, cu_y, a, b, f, g, scale, 1, 0.5, max_seqlen_x=40,
                                                max_seqlen_y=33)
    pdx, pdy = tsk.sinkhorn_embeddings_bwd(_pad(x, cu_x), _pad(y, cu_y), _pad(a, cu_x), _pad(b, cu_y), _pad(f, cu_x),
                                           _pad(g, cu_y), scale, 1, 0.5)
    _close(dx, _unpad(pdx, cu_x), 1e-12 if fp64 else 1e-6)
    _close(dy, _unpad(pdy, cu_y), 1e-12 if fp64 else 1e-6)
    wdx, wdy = _reference_grads(x, y, a, b, cu_x, cu_y, f, g, scale, 1, 0.5)
    _close(dx.double(), wdx, 1e-10 if fp64 else 1e-4, 0.0 if fp64 else 1e-4)
    _close(dy.double(), wdy, 1e-10 if fp64 else 1e-4, 0.0 if fp64 else 1e-4)


def test_backward_sides_and_empty_batches(tsk, monkeypatch):
    x, y, a, b, cu_x, cu_y = _packed(D=4, seed=7)
    f = torch.randn(x.shape[0], dtype=torch.float64) * (a > 0)
    g = torch.randn(y.shape[0], dtype=torch.float64) * (b > 0)
    scale = torch.ones(4, dtype=torch.float64)
    dx, dy = tsk.sinkhorn_embeddings_varlen_bwd(x, y, cu_x, cu_y, a, b, f, g, scale, 0, 0.3)
    dx_only, zero_y = tsk.sinkhorn_embeddings_varlen_bwd(x, y, cu_x, cu_y, a, b, f, g, scale, 0, 0.3, need_dy=False)
    zero_x, dy_only = tsk.sinkhorn_embeddings_varlen_bwd(x, y, cu_x, cu_y, a, b, f, g, scale, 0, 0.3, need_dx=False)
    assert torch.equal(dx_only, dx) and torch.equal(dy_only, dy) and dx.abs().sum() > 0 and dy.abs().sum() > 0
    assert zero_x.shape == x.shape and zero_y.shape == y.shape and not zero_x.any() and not zero_y.any()

    for limit in (16384, 0):  # on chip, then streaming
        monkeypatch.setattr(tsk, "ONCHIP_MAX", limit)
        for lens_x, lens_y in (([], []), ([0, 0], [0, 0]), ([0, 0], [2, 3]), ([3, 1], [0, 0])):
            x, y, a, b, cu_x, cu_y = _packed(lens_x, lens_y, D=3, seed=8)
            warm = dict(f0=torch.ones_like(a), g0=torch.ones_like(b))  # no problem has mass on both sides
            for tol, absorb in ((None, 20.0), (1e-6, None)):
                kw = dict(cost=1, eps=0.2, max_iter=3, tol=tol, absorb=absorb, **warm)
                out = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y, a, b, **kw)
                B = len(lens_x)
                assert [tuple(t.shape) for t in out] == [(x.shape[0],), (y.shape[0],)] + [(B,)] * 6
                assert not out[0].any() and not out[1].any() and not out[4].any() and not out[5].any()
                padded = _padded_fwd(tsk, x, y, a, b, cu_x, cu_y, **kw)
                for u, v in zip(out, padded if absorb else padded[:6]):
                    assert torch.equal(u, v)  # iterations are counted even with nothing to transport
                assert absorb or not (out[6].any() or out[7].any())
            dx, dy = tsk.sinkhorn_embeddings_varlen_bwd(x, y, cu_x, cu_y, a, b, out[0], out[1], torch.ones(B), 1, 0.2)
            assert dx.shape == x.shape and dy.shape == y.shape and not dx.any() and not dy.any()


def test_offsets_dtypes_and_max_seqlen(tsk):
    x, y, a, b, cu_x, cu_y = _packed(D=6, dtype=torch.float32, seed=9)
    kw = dict(cost=0, eps=0.2, max_iter=10)
    base = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y, a, b, **kw)
    same = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x.int(), cu_y.int(), a, b, **kw, max_seqlen_x=13,
                                              max_seqlen_y=11)
    wider = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y.int(), a, b, **kw, max_seqlen_x=40, max_seqlen_y=20)
    for u, v, w in zip(base, same, wider):
        assert torch.equal(u, v)  # the same blocks: the same results
        _close(w, u, 1e-6)  # larger blocks: the same problems
    # half and mixed dtypes (y follows x, as on the padded op), and strided x
    xh, yh, xs = x.bfloat16(), y.double(), torch.stack([x, -x], -1)[..., 0]
    assert xs.stride() == (12, 2)
    for xx, yy in ((xh, yh), (xs, y)):
        got = tsk.sinkhorn_embeddings_varlen_fwd(xx, yy, cu_x, cu_y, a, b, **kw)
        for u, v in zip(got[:6], _padded_fwd(tsk, xx, yy, a, b, cu_x, cu_y, **kw)[:6]):
            assert u.dtype == v.dtype
            _close(u, v, 1e-6)
    with pytest.raises(ValueError, match="max_seqlen_x"):
        tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y, a, b, **kw, max_seqlen_x=12)
    with pytest.raises(ValueError, match="max_seqlen_y"):
        tsk.sinkhorn_embeddings_varlen_bwd(x, y, cu_x, cu_y, a, b, base[0], base[1], torch.ones(4), 0, 0.2,
                                           max_seqlen_y=-1)


def test_argument_errors(tsk, monkeypatch):
    x, y, a, b, cu_x, cu_y = _packed(D=4, seed=10)
    launches = []
    for name in ("_onchip", "_row_pass", "_col_pass", "_grad"):
        monkeypatch.setattr(tsk, name, launches)  # any launch would fail on a list: none may happen

    def fwd(**over):
        args = dict(x=x, y=y, cu_seqlens_x=cu_x, cu_seqlens_y=cu_y, a=a, b=b, cost=0, eps=0.1, max_iter=3)
        return tsk.sinkhorn_embeddings_varlen_fwd(**{**args, **over})

    bad = [
        (RuntimeError, "argument 'x'", dict(x=x.tolist())),  # the op's schema (torch) rejects non-tensors
        (ValueError, "x must be", dict(x=x[None])),
        (ValueError, "y must be", dict(y=y[:, 0])),
        (TypeError, "y must be floating", dict(y=y.long())),
        (ValueError, "same feature size", dict(y=y[:, :3])),
        (ValueError, "cost must be", dict(cost=3)),
        (TypeError, "cu_seqlens_x must be int32 or int64", dict(cu_seqlens_x=cu_x.double())),
        (ValueError, "cu_seqlens_y must be \\[B\\+1\\]", dict(cu_seqlens_y=cu_y[None])),
        (ValueError, "cu_seqlens_y must be \\[B\\+1\\] like", dict(cu_seqlens_y=cu_y[:-1])),
        (ValueError, "cu_seqlens_x\\[-1\\] must be", dict(cu_seqlens_x=torch.tensor([0, 6, 6, 19, 19]))),
        (ValueError, "cu_seqlens_y\\[0\\] must be 0", dict(cu_seqlens_y=cu_y + 1)),
        (ValueError, "cu_seqlens_x must be nondecreasing", dict(cu_seqlens_x=torch.tensor([0, 7, 6, 19, 20]))),
        (ValueError, "a must be \\[Tx\\]", dict(a=a[:-1])),
        (ValueError, "b must be \\[Ty\\]", dict(b=b[None])),
        (ValueError, "f0 must be \\[Tx\\]", dict(f0=torch.zeros(4, 13, dtype=torch.float64))),
        (ValueError, "g0 must be floating", dict(g0=torch.zeros(y.shape[0], dtype=torch.long))),
    ]
    for exc, match, over in bad:
        with pytest.raises(exc, match=match):
            fwd(**over)
    f, g, scale = torch.zeros(x.shape[0]), torch.zeros(y.shape[0]), torch.ones(4)
    for exc, match, over in ((ValueError, "f must be \\[Tx\\]", dict(f=f[1:])), (ValueError, "g must be", dict(g=f)),
                             (ValueError, "scale must be \\[B\\]", dict(scale=scale[:3]))):
        args = {**dict(f=f, g=g, scale=scale), **over}
        with pytest.raises(exc, match=match):
            tsk.sinkhorn_embeddings_varlen_bwd(x, y, cu_x, cu_y, a, b, args["f"], args["g"], args["scale"], 1, 0.1)
    assert launches == []


def test_registered_ops_opcheck(tsk):
    """Schema, fake (meta) implementation and autograd registration of the packed ops."""
    x, y, a, b, cu_x, cu_y = _packed([2, 0, 3], [4, 1, 0], D=4, dtype=torch.float32, seed=11, cu_dtype=torch.int32)
    tests = (("test_schema", "test_faketensor", "test_autograd_registration")
             + (("test_aot_dispatch_dynamic",) if DEVICE == "cuda" else ()))
    torch.library.opcheck(tsk.sinkhorn_embeddings_varlen_fwd, (x, y, cu_x, cu_y, a, b, 0, 0.1, 3),
                          dict(tol=1e-6, absorb=20.0, max_seqlen_x=3, max_seqlen_y=4), test_utils=tests)
    f, g = tsk.sinkhorn_embeddings_varlen_fwd(x, y, cu_x, cu_y, a, b, 0, 0.1, 3)[:2]
    torch.library.opcheck(tsk.sinkhorn_embeddings_varlen_bwd, (x, y, cu_x, cu_y, a, b, f, g, torch.ones(3), 1, 0.1),
                          test_utils=tests)


def test_varlen_kernels_compile_for_gpu_without_a_gpu():
    """Lower the packed kernel variants to sm_90 cubins (Triton's own ptxas, no device), as
    test_triton_sinkhorn.py's compile check does for all of them."""
    from fastot.triton.aot import VARIANTS

    names = [v for v in VARIANTS if "varlen" in v]
    assert len(names) == 6
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-m", "fastot.triton.aot", "--arch", "90", *names], capture_output=True,
                         text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("sm_90 ")]
    assert len(lines) == len(names) and all("regs" in ln for ln in lines)
