"""Triton Sinkhorn beyond the shared conformance suite: the streaming path (forced), its per-problem early stop,
the fused embeddings path without any [B,N,M] tensor, the registered ops, and a compile-for-GPU check.

On CPU the kernels run in the Triton interpreter (TRITON_INTERPRET=1, set by conftest): small sizes only.
"""

import os
import subprocess
import sys

import pytest
import torch
from test_sinkhorn import make_problem

import fastot
from fastot.reference import sinkhorn as ref

pytestmark = pytest.mark.skipif("triton" not in fastot.available_backends("sinkhorn", "cuda" if torch.cuda.is_available() else "cpu"),
                                reason="the triton backend is unavailable here")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture
def tsk():
    from fastot.triton import sinkhorn as tsk

    return tsk


@pytest.fixture
def streaming(tsk, monkeypatch):
    """Every problem takes the streaming path (one launch per half-iteration)."""
    monkeypatch.setattr(tsk, "ONCHIP_MAX", 0)
    return tsk


def _close(got, want, atol):
    torch.testing.assert_close(got.cpu(), want.cpu(), rtol=0, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["fp32", "fp64"])
def test_streaming_matches_reference_with_tol_unbalanced_and_forbidden_pairs(streaming, dtype):
    C, a, b = make_problem(4, 20, 30, dtype, device=DEVICE)
    C[0] *= 0.01  # converges much sooner than the others
    C[1, 2, 3] = C[1, 4, :] = float("inf")  # a forbidden pair, and a row with none allowed
    atol = 1e-12 if dtype == torch.float64 else 1e-5
    # The kernels themselves (the public call flags the balanced problem 1 as infeasible: STATUS 4).
    for kw in (dict(eps=0.1, max_iter=80, tol=1e-5), dict(eps=0.1, max_iter=30, tau_a=0.5, tau_b=2.0),
               dict(eps=0.1, max_iter=0)):
        rf, rg, rn, rerr = streaming.sinkhorn_fwd(C, a, b, **kw)
        f, g, n, err = ref.sinkhorn_fwd(C.cpu(), a.cpu(), b.cpu(), **kw)
        _close(rf, f, 100 * atol if "tol" in kw else atol)
        _close(rg, g, 100 * atol if "tol" in kw else atol)
        _close(rerr, err, 100 * atol if "tol" in kw else atol)
        assert (rn.cpu() - n).abs().max() <= 1  # rounding may move the crossing of tol by one iteration
        expect = ref.sinkhorn_plan_sums(C.cpu(), a.cpu(), b.cpu(), rf.cpu(), rg.cpu(), kw["eps"])
        _close(streaming.sinkhorn_plan_sums(C, a, b, rf, rg, kw["eps"])[0], expect[0], atol)
        assert torch.isfinite(streaming.sinkhorn_plan(C, a, b, rf, rg, kw["eps"])).all()
    # Each problem stops on its own; problem 1 (a row with no allowed pair cannot get its mass) never does.
    _, _, n_iter, err = streaming.sinkhorn_fwd(C, a, b, eps=0.1, max_iter=80, tol=1e-5)
    assert n_iter[1] == 80 and err[1] > 1e-5
    keep = torch.tensor([0, 2, 3])
    assert (err[keep] < 1e-5).all() and n_iter[0] < n_iter[keep].max() < 80
    r = fastot.sinkhorn(C, a, b, eps=0.1, max_iter=80, tol=1e-5, backend="triton")
    assert r.status.tolist() == [0, 4, 0, 0] and r.err[1].isnan() and torch.equal(r.err[keep], err[keep])


def test_streaming_and_onchip_agree_on_padding_garbage_and_empty_problems(tsk, monkeypatch):
    C, a, b = make_problem(3, 9, 11, torch.float64, device=DEVICE)
    a[2] = 0  # a problem without points
    C[a[:, :, None].expand_as(C) == 0] = float("nan")
    out = {}
    for limit in (tsk.ONCHIP_MAX, 0):
        monkeypatch.setattr(tsk, "ONCHIP_MAX", limit)
        r = fastot.sinkhorn(C, a, b, eps=0.05, max_iter=30, backend="triton")
        out[limit] = (r.f, r.g, r.value, r.transport_cost, r.err, r.plan())
    for x, y in zip(*out.values()):
        assert torch.isfinite(x).all()
        _close(x, y, 1e-12)


@pytest.mark.parametrize("cost", ["cosine", "sqeuclidean", "dot"])
@pytest.mark.parametrize("path", ["onchip", "streaming"])
def test_fused_embeddings_match_materialised_cost(tsk, monkeypatch, cost, path):
    if path == "streaming":
        monkeypatch.setattr(tsk, "ONCHIP_MAX", 0)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 13, 20, generator=g, dtype=torch.float64)
    y = torch.randn(3, 10, 20, generator=g, dtype=torch.float64)
    x[1, 9:] = 0  # padding rows (zero vectors: the cosine norm clamp)
    xm = torch.arange(13)[None] < torch.tensor([13, 9, 4])[:, None]
    ym = torch.arange(10)[None] < torch.tensor([10, 3, 7])[:, None]
    xs, ys = x.to(DEVICE, copy=True).requires_grad_(), y.to(DEVICE, copy=True).requires_grad_()
    r = fastot.sinkhorn_embeddings(xs, ys, xm.to(DEVICE), ym.to(DEVICE), cost=cost, eps=0.2, max_iter=40, tol=1e-9,
                                   tau_b=3.0, backend="triton")
    (r.value.sum() + 0.3 * r.transport_cost.sum()).backward()
    xt, yt = x.clone().requires_grad_(), y.clone().requires_grad_()
    e = fastot.sinkhorn_embeddings(xt, yt, xm, ym, cost=cost, eps=0.2, max_iter=40, tol=1e-9, tau_b=3.0,
                                   backend="torch")
    (e.value.sum() + 0.3 * e.transport_cost.sum()).backward()
    for got, want in ((r.f, e.f), (r.g, e.g), (r.value, e.value), (r.transport_cost, e.transport_cost),
                      (xs.grad, xt.grad), (ys.grad, yt.grad)):
        _close(got, want, 1e-10)
    assert (r.n_iter.cpu() - e.n_iter).abs().max() <= 1


def _largest_allocation(fn) -> int:
    """Bytes of the largest single tensor allocation that fn makes (the CPU profiler's memory events)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return max((e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0), default=0)


@pytest.mark.skipif(DEVICE != "cpu", reason="the CPU profiler variant; see test_fused_embeddings_peak_memory_cuda")
@pytest.mark.parametrize("path", ["onchip", "streaming"])
def test_fused_embeddings_never_allocate_a_cost_sized_tensor(tsk, monkeypatch, path):
    if path == "streaming":
        monkeypatch.setattr(tsk, "ONCHIP_MAX", 0)
    B, N, M, d = 2, 48, 40, 4  # [B,N,M] = 3840 entries; x, y, dx, dy = 384 and 320
    x = torch.randn(B, N, d, requires_grad=True)
    y = torch.randn(B, M, d, requires_grad=True)

    def step(backend):
        fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=3, backend=backend).transport_cost.sum().backward()

    cost_bytes = B * N * M * 4
    assert _largest_allocation(lambda: step("torch")) >= cost_bytes  # the measurement sees a cost tensor
    assert _largest_allocation(lambda: step("triton")) < cost_bytes // 4


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fused_embeddings_peak_memory_cuda():
    B, N, M, d = 256, 128, 128, 8  # small d: dx, dy (fp32) and the bf16 grads stay far below one [B,N,M] fp32
    x = torch.randn(B, N, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y = torch.randn(B, M, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step():
        fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=20, backend="triton").transport_cost.sum().backward()
        x.grad = y.grad = None

    step()  # autotuning (which allocates benchmark buffers) happens outside the measurement
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base < B * N * M * 4 // 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_triton_ops_compile_with_inductor():
    """On a GPU the ops are triton_op: inductor sees the kernels themselves (wrap_triton)."""
    x = torch.randn(4, 20, 32, device="cuda", requires_grad=True)
    y = torch.randn(4, 24, 32, device="cuda")

    def loss(x):
        return fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=10, backend="triton").transport_cost.sum()

    (gc,) = torch.autograd.grad(torch.compile(loss, fullgraph=True)(x), x)
    (ge,) = torch.autograd.grad(loss(x), x)
    torch.testing.assert_close(gc, ge)


def test_registered_ops_opcheck(tsk):
    """Schema, fake (meta) implementation and autograd registration of every Triton op; on a GPU (the real
    triton_op registration) every opcheck test, AOT dispatch included."""
    C, a, b = make_problem(2, 5, 7, torch.float32, device=DEVICE)
    tests = (("test_schema", "test_faketensor", "test_autograd_registration")
             + (("test_aot_dispatch_dynamic",) if DEVICE == "cuda" else ()))
    torch.library.opcheck(tsk.sinkhorn_fwd, (C, a, b, 0.1, 5, 1e-6, 1.0, None), test_utils=tests)
    f, g, _, _ = tsk.sinkhorn_fwd(C, a, b, 0.1, 5)
    torch.library.opcheck(tsk.sinkhorn_plan, (C, a, b, f, g, 0.1), test_utils=tests)
    torch.library.opcheck(tsk.sinkhorn_plan_sums, (C, a, b, f, g, 0.1), test_utils=tests)
    x, y = torch.randn(2, 5, 16, device=DEVICE), torch.randn(2, 7, 16, device=DEVICE)
    torch.library.opcheck(tsk.sinkhorn_embeddings_fwd, (x, y, a, b, 0, 0.1, 5, None, None, None), test_utils=tests)
    torch.library.opcheck(tsk.sinkhorn_embeddings_bwd, (x, y, a, b, f, g, torch.ones(2, device=DEVICE), 1, 0.1),
                          test_utils=tests)


@pytest.mark.parametrize("path", ["onchip", "streaming"])
def test_empty_batch_and_dimensions(tsk, monkeypatch, path):
    if path == "streaming":
        monkeypatch.setattr(tsk, "ONCHIP_MAX", 0)
    for B, N, M in ((0, 4, 5), (2, 0, 5), (2, 4, 0)):
        C = torch.rand(B, N, M, device=DEVICE)
        r = fastot.sinkhorn(C, eps=0.1, max_iter=3, backend="triton")
        e = fastot.sinkhorn(C.cpu(), eps=0.1, max_iter=3, backend="torch")
        assert r.f.shape == (B, N) and r.g.shape == (B, M) and (r.value == 0).all()
        assert torch.equal(r.n_iter.cpu(), e.n_iter)  # iterations are counted even with nothing to transport
        rt = fastot.sinkhorn(C, eps=0.1, max_iter=3, tol=1e-6, backend="triton")
        assert torch.equal(rt.n_iter.cpu(), fastot.sinkhorn(C.cpu(), eps=0.1, max_iter=3, tol=1e-6).n_iter)
        x, y = torch.randn(B, N, 8, device=DEVICE, requires_grad=True), torch.randn(B, M, 8, device=DEVICE)
        re = fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=3, backend="triton")
        re.transport_cost.sum().backward()
        assert x.grad.shape == x.shape and (x.grad == 0).all()


def test_mixed_embedding_dtypes_follow_x():
    x = torch.randn(2, 6, 16, device=DEVICE, requires_grad=True)
    y = torch.randn(2, 5, 16, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    r = fastot.sinkhorn_embeddings(x, y, eps=0.1, max_iter=5, backend="triton")
    e = fastot.sinkhorn_embeddings(x.detach(), y.detach().float(), eps=0.1, max_iter=5, backend="torch")
    _close(r.value, e.value, 1e-5)
    r.transport_cost.sum().backward()
    assert y.grad.dtype == torch.bfloat16 and x.grad.dtype == torch.float32


_AOT = [
    ("80", ["onchip-cost-fp32-tol-unbal-64x64", "onchip-emb-bf16-cosine-128x128", "grad-bf16-cosine-64x64x128",
            "onchip-scaling-cost-fp32-tol-unbal-64x64",
            "codeswitch-3words-8x128"]),
    ("90", None),  # every variant
]


@pytest.mark.parametrize("arch,names", _AOT, ids=[f"sm_{a}" for a, _ in _AOT])
def test_kernels_compile_for_gpu_without_a_gpu(arch, names):
    """Lower every kernel variant through Triton to a cubin for sm_80 / sm_90 (Triton's own ptxas, no device):
    the interpreter checks numerics, this checks that the code compiles for the GPUs it is meant for."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    res = subprocess.run([sys.executable, "-m", "fastot.triton.aot", "--arch", arch, *(names or [])],
                         capture_output=True, text=True, env=env, timeout=900)
    assert res.returncode == 0, res.stderr[-4000:]
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith(f"sm_{arch} ")]
    from fastot.triton.aot import VARIANTS

    assert len(lines) == len(names or VARIANTS)
    assert all("regs" in ln for ln in lines)


def test_aot_scalars_are_typed_as_at_a_call():
    """The compile check types each integer scalar as Triton does when the kernel is called (i32 below 2^31;
    the 32-bit random prefixes of the code-switch kernel take i64 from 2^31), not as i64 throughout."""
    from triton.runtime.jit import mangle_type

    from fastot.triton import aot

    for name, _kernel, consts, ptrs, _warps in aot._variants():
        sig = aot._signature(aot._kernel(name), consts, ptrs)
        scalars = {k: v for k, v in sig.items() if v != "constexpr" and not k.endswith("_ptr")}
        assert scalars, name
        for k, v in scalars.items():
            if v == "fp64":
                continue
            sample = 2**31 + 5 if k.startswith("prefix_") else 1000
            assert v == mangle_type(sample), (name, k, v)


def test_aot_codeswitch_scalars_match_a_real_launch(minilm_tokenizer, monkeypatch):
    """The scalar types the compile check uses for the code-switch kernel are those of the arguments a real call
    passes (recorded at the launch, typed by triton's own mangle_type); the random prefixes may take either of
    their two specialisations, and the check compiles the wider."""
    if "triton" not in fastot.available_backends("codeswitch"):
        pytest.skip("the Triton code-switch backend is unavailable")
    import inspect

    from triton.runtime.jit import mangle_type

    from fastot.triton import aot
    from fastot.triton import codeswitch as tcs

    kernel = tcs.K._codeswitch_kernel
    sigs = {name: aot._signature(aot._kernel(name), consts, ptrs)
            for name, kname, consts, ptrs, _warps in aot._variants() if kname.startswith("codeswitch:")}
    launches = []

    class Spy:
        def __getitem__(self, grid):
            def run(*args, **kwargs):
                launches.append(args)
                return kernel[grid](*args, **kwargs)
            return run

    monkeypatch.setattr(tcs.K, "_codeswitch_kernel", Spy())
    tok = minilm_tokenizer
    lex = fastot.Lexicon.from_pairs([("river", "mto"), ("market", "soko")], tok, languages="sw")
    enc = tok(["the river market", "a river"], padding=True, return_tensors="pt")
    for seed, max_length in ((0, None), (12345, 6)):
        fastot.CodeSwitcher(lex, p=0.5, seed=seed, backend="triton")(enc["input_ids"], enc["attention_mask"],
                                                                      max_length=max_length)
    assert launches
    params = list(inspect.signature(kernel.fn).parameters)
    assert sigs
    for name, sig in sigs.items():
        for args in launches:
            for pname, value in zip(params, args):
                if sig[pname] == "constexpr" or pname.endswith("_ptr"):
                    continue
                if pname.startswith("prefix_"):
                    assert sig[pname] == "i64" and mangle_type(value) in ("i32", "i64"), (name, pname, value)
                else:
                    assert sig[pname] == mangle_type(value), (name, pname, value)
