"""CUDA-only checks of the Sinkhorn kernels beyond the conformance suite: the streaming solve of problems too large
for shared memory, the fused embeddings kernels (tensor cores, chunked fallback), CUDA-graph capture and peak
memory. Every test skips where there is no GPU or the extension was built without CUDA."""

import pytest
import torch

import fastot
from fastot.reference import sinkhorn as ref

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() and "cuda" in fastot.available_backends("sinkhorn", "cuda")),
    reason="needs a GPU and the CUDA extension")


def _problem(B, N, M, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(B, N, M, generator=g, dtype=torch.float64) * 2
    a = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.1
    for k in range(B):  # ragged
        a[k, N - 1 - (k * 37) % (N // 2):] = 0
        b[k, M - 1 - (k * 11) % (M // 2):] = 0
    a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
    return C.to("cuda", dtype), a.to("cuda", dtype), b.to("cuda", dtype)


# N x M too large for one block's shared memory in that dtype: the streaming kernels solve these.
STREAMING = [(2, 300, 257), (3, 700, 40), (1, 33, 2000)]


@pytest.mark.parametrize("B,N,M", STREAMING, ids=[f"B{b}-N{n}-M{m}" for b, n, m in STREAMING])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_streaming_matches_float64_reference(B, N, M, dtype):
    C, a, b = _problem(B, N, M, dtype)
    kw = dict(eps=0.05, max_iter=80, tau_b=0.5)
    r = fastot.sinkhorn(C, a, b, backend="cuda", **kw)
    f, g, n, err = ref.sinkhorn_fwd(C.double().cpu(), a.double().cpu(), b.double().cpu(), **kw)
    tol = 1e-10 if dtype == torch.float64 else 2e-4
    torch.testing.assert_close(r.f.cpu().double(), f, rtol=0, atol=tol)
    torch.testing.assert_close(r.g.cpu().double(), g, rtol=0, atol=tol)
    torch.testing.assert_close(r.err.cpu().double(), err, rtol=1e-3, atol=tol)
    assert (r.n_iter.cpu() == 80).all()


def test_streaming_tol_stops_each_problem_where_the_reference_does():
    C, a, b = _problem(4, 320, 300, torch.float64)
    C[0] *= 0.01  # converges in far fewer iterations
    r = fastot.sinkhorn(C, a, b, eps=0.05, max_iter=3000, tol=1e-9, backend="cuda")
    rr = ref.sinkhorn_fwd(C.cpu(), a.cpu(), b.cpu(), 0.05, 3000, 1e-9)
    assert (r.err.cpu() < 1e-9).all()
    assert (r.n_iter.cpu() - rr[2]).abs().max() <= 1
    assert r.n_iter.min() < r.n_iter.max() < 3000
    torch.testing.assert_close(r.f.cpu(), rr[0], rtol=0, atol=1e-8)
    again = fastot.sinkhorn(C, a, b, eps=0.05, max_iter=3000, tol=1e-9, backend="cuda")
    for x, y in ((r.f, again.f), (r.g, again.g), (r.n_iter, again.n_iter), (r.err, again.err)):
        assert torch.equal(x, y)  # the error's shares are summed in a fixed order: no run-to-run difference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_streaming_equals_on_chip_on_the_same_problems(monkeypatch, dtype):
    """FASTOT_CUDA_ONCHIP=0 streams problems that fit on chip: both paths agree, tolerance stop included."""
    for B, N, M in [(4, 7, 33), (3, 64, 64), (2, 1, 5)]:
        C, a, b = _problem(B, N, M, dtype) if N > 2 else (torch.rand(B, N, M, device="cuda", dtype=dtype), None, None)
        kw = dict(eps=0.05, max_iter=400, tol=1e-5, tau_a=2.0)
        monkeypatch.delenv("FASTOT_CUDA_ONCHIP", raising=False)
        on = fastot.sinkhorn(C, a, b, backend="cuda", **kw)
        monkeypatch.setenv("FASTOT_CUDA_ONCHIP", "0")
        st = fastot.sinkhorn(C, a, b, backend="cuda", **kw)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        assert (on.n_iter - st.n_iter).abs().max() <= 1  # the error is summed in another order near tol
        same = on.n_iter == st.n_iter
        torch.testing.assert_close(st.f[same], on.f[same], rtol=0, atol=tol)
        torch.testing.assert_close(st.g[same], on.g[same], rtol=0, atol=tol)
        torch.testing.assert_close(st.transport_cost, on.transport_cost, rtol=0, atol=10 * tol)


@pytest.mark.parametrize("onchip", [None, "0"], ids=["auto", "streaming"])
def test_edge_shapes_and_subnormal_weights_match_the_reference(monkeypatch, onchip):
    """No rows with 20000 columns (too many for the on-chip vectors, fp32), no columns with 20000 rows, and a
    subnormal fp32 weight: that row is live (as in the reference), not flushed to a dead row by a fast log2."""
    if onchip is None:
        monkeypatch.delenv("FASTOT_CUDA_ONCHIP", raising=False)
    else:
        monkeypatch.setenv("FASTOT_CUDA_ONCHIP", onchip)
    C, a, b = _problem(2, 24, 40, torch.float32, seed=5)
    a[:, 0] = 1e-40  # subnormal in fp32
    cases = [(C, a, b), (torch.rand(2, 0, 20000, device="cuda"), None, None),
             (torch.rand(2, 20000, 0, device="cuda"), None, None)]
    for C, a, b in cases:
        kw = dict(eps=0.05, max_iter=30, tol=1e-6)
        r = fastot.sinkhorn(C, a, b, backend="cuda", **kw)
        e = fastot.sinkhorn(C.double(), None if a is None else a.double(), None if b is None else b.double(),
                            backend="torch", **kw)
        torch.testing.assert_close(r.f.double(), e.f, rtol=0, atol=2e-4)
        torch.testing.assert_close(r.g.double(), e.g, rtol=0, atol=2e-4)
        assert (r.n_iter - e.n_iter).abs().max() <= 1
    assert r.f.shape == (2, 20000)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_fused_embeddings_equal_the_chunked_path(monkeypatch, dtype):
    """FASTOT_CUDA_ONCHIP=0 sends small problems down the chunked path (ATen cost, streaming solve, ATen backward):
    the fused kernels agree with it, forward and gradients, for every cost."""
    x0, y0, xm, ym = _embeddings(5, 23, 31, 40, dtype)
    for cost in ("cosine", "sqeuclidean", "dot"):
        out = []
        for flag in (None, "0"):
            if flag is None:
                monkeypatch.delenv("FASTOT_CUDA_ONCHIP", raising=False)
            else:
                monkeypatch.setenv("FASTOT_CUDA_ONCHIP", flag)
            x = (0.3 * x0).detach().requires_grad_()
            y = (0.3 * y0).detach().requires_grad_()
            r = fastot.sinkhorn_embeddings(x, y, xm, ym, cost=cost, eps=0.1, max_iter=50, backend="cuda")
            (r.value.sum() + r.transport_cost.sum()).backward()
            out.append((r.f, r.g, r.value, r.transport_cost, x.grad, y.grad))
        tol = 1e-10 if dtype == torch.float64 else 2e-5
        for got, want in zip(*out):
            torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def _embeddings(B, N, M, d, dtype, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, d, generator=g)
    y = torch.randn(B, M, d, generator=g)
    xm = torch.arange(N)[None] < torch.randint(1, N + 1, (B,), generator=g)[:, None]
    ym = torch.arange(M)[None] < torch.randint(1, M + 1, (B,), generator=g)[:, None]
    x[~xm] = float("nan")  # whatever padding holds must not reach the result
    return x.to("cuda", dtype), y.to("cuda", dtype), xm.cuda(), ym.cuda()


# (37, 45, 100): nothing a multiple of 16 or of the 32-wide d chunk; (300, 290): too large on chip (chunked path).
EMB = [(4, 37, 45, 100), (3, 128, 96, 64), (2, 300, 290, 48)]


@pytest.mark.parametrize("B,N,M,d", EMB, ids=[f"B{b}-N{n}-M{m}-d{d}" for b, n, m, d in EMB])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean", "dot"])
def test_fused_embeddings_match_the_float64_reference(B, N, M, d, dtype, cost):
    """Forward and gradients of the fused CUDA path vs the float64 reference on the same (rounded) values. fp32
    inputs go through 3xTF32, so they must match at fp32 accuracy, not TF32's 1e-3."""
    x, y, xm, ym = _embeddings(B, N, M, d, dtype)
    scale = 0.1 if cost != "sqeuclidean" else 0.02  # costs of order one
    x, y = x * scale ** 0.5, y * scale ** 0.5
    xr = x.clone().requires_grad_()
    yr = y.clone().requires_grad_()
    r = fastot.sinkhorn_embeddings(xr, yr, xm, ym, cost=cost, eps=0.1, max_iter=60, backend="cuda")
    (r.value.sum() + r.transport_cost.sum()).backward()
    x64 = x.detach().double().cpu().nan_to_num().requires_grad_()
    y64 = y.detach().double().cpu().requires_grad_()
    e = fastot.sinkhorn_embeddings(x64, y64, xm.cpu(), ym.cpu(), cost=cost, eps=0.1, max_iter=60, backend="torch")
    (e.value.sum() + e.transport_cost.sum()).backward()
    # fp32 solve: ~1e-5; TF32 dot products alone would be off by ~1e-3 at eps = 0.1
    torch.testing.assert_close(r.value.cpu().double(), e.value.detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(r.transport_cost.cpu().double(), e.transport_cost.detach(), rtol=0, atol=1e-4)
    gx, gy = xr.grad.float().cpu().double(), yr.grad.float().cpu().double()
    assert torch.isfinite(gx).all() and (gx[~xm.cpu()] == 0).all()
    for got, want in ((gx, x64.grad), (gy, y64.grad)):
        rel = (got - want).norm() / want.norm().clamp_min(1e-30)
        assert rel < (2e-4 if dtype == torch.float32 else 1e-2), rel


def test_fused_embeddings_never_allocate_the_cost_tensor():
    """Peak CUDA memory of forward + backward stays far below one [B,N,M] fp32 tensor (16 MiB); the materialising
    path reaches it (which shows the measurement sees it)."""
    B, N, M, d = 256, 128, 128, 16
    x = torch.randn(B, N, d, device="cuda", dtype=torch.bfloat16)
    y = torch.randn(B, M, d, device="cuda", dtype=torch.bfloat16)

    def peak(backend):
        xr = x.clone().requires_grad_()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fastot.sinkhorn_embeddings(xr, y, eps=0.1, max_iter=20, backend=backend).transport_cost.sum().backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base

    cost_bytes = B * N * M * 4
    assert peak("torch") >= cost_bytes
    assert peak("cuda") < cost_bytes // 2


def test_cuda_graph_capture_replays_the_solves():
    """The on-chip solve, the streaming solve (memsets, 2 launches per iteration) and the fused embeddings forward
    are stream-ordered with no host synchronisation, so they capture into a CUDA graph and replay on new data."""
    static = {
        "onchip": _problem(8, 64, 48, torch.float32, seed=3),
        "stream": _problem(2, 300, 257, torch.float32, seed=4),
    }
    x, y, xm, ym = _embeddings(8, 40, 50, 64, torch.bfloat16)
    x = x.nan_to_num()

    def run():
        out = [fastot.sinkhorn(C, a, b, eps=0.1, max_iter=30, backend="cuda") for C, a, b in static.values()]
        out.append(fastot.sinkhorn_embeddings(x, y, xm, ym, eps=0.1, max_iter=30, backend="cuda"))
        return [(r.f, r.g, r.value) for r in out]

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):  # warm-up on a side stream, as torch.cuda.graphs asks
        run()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = run()
    for i, (C, _a, _b) in enumerate(static.values()):  # new data in the captured input buffers
        C.copy_(_problem(*C.shape, torch.float32, seed=10 + i)[0])
    x.copy_(torch.randn_like(x))
    graph.replay()
    torch.cuda.synchronize()
    for got, want in zip(captured, run()):
        for t_got, t_want in zip(got, want):
            torch.testing.assert_close(t_got, t_want, rtol=0, atol=1e-6)
