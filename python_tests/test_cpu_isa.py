"""The CPU Sinkhorn's inner loops exist once per instruction set (base SSE2, AVX2, AVX-512), chosen at
run time. The machine picks the best one, so the others are exercised here through FASTOT_CPU_ISA, in a
subprocess each (the choice is made once per process), against the float64 reference; both iteration
schemes (log-domain and scaling)."""

import json
import subprocess
import sys

import pytest

import fastot

SCRIPT = r"""
import json, torch, fastot
from fastot.reference import sinkhorn as ref
out = {"isa": torch.ops.fastot.cpu_isa(), "cases": []}
g = torch.Generator().manual_seed(0)
# (B, N, M): per-problem schedule (B >= 2 x threads or small) and row/column-block schedule (few, large)
for B, N, M in [(6, 7, 33), (8, 40, 23), (1, 130, 97), (2, 300, 17)]:
    for dtype in (torch.float32, torch.float64):
        C = torch.rand(B, N, M, generator=g, dtype=torch.float64) * 2
        a = torch.rand(B, N, generator=g, dtype=torch.float64) + 0.1
        b = torch.rand(B, M, generator=g, dtype=torch.float64) + 0.1
        a[0, N // 2:] = 0
        b[-1, : M // 3] = 0
        C[-1, 0, M - 1] = float("inf")
        a, b = a / a.sum(1, keepdim=True), b / b.sum(1, keepdim=True)
        for kw in (dict(eps=0.05, max_iter=60), dict(eps=0.05, max_iter=500, tol=1e-5),
                   dict(eps=0.1, max_iter=60, tau_a=0.5, tau_b=1.0)):
            rf, rg, rn, rerr = ref.sinkhorn_fwd(C, a, b, **kw)
            sf, sg, _, serr = ref.sinkhorn_fwd(C.to(dtype), a.to(dtype), b.to(dtype), **kw)
            for op in ("sinkhorn_fwd", "sinkhorn_fwd_scaling"):  # both iteration schemes
                f, gg, n, err = getattr(torch.ops.fastot, op)(C.to(dtype), a.to(dtype), b.to(dtype), kw["eps"],
                                                              kw["max_iter"], kw.get("tol"), kw.get("tau_a"),
                                                              kw.get("tau_b"))[:4]
                tc, mass = torch.ops.fastot.sinkhorn_plan_sums(C.to(dtype), a.to(dtype), b.to(dtype), f, gg, kw["eps"])
                rtc, rmass = ref.sinkhorn_plan_sums(C, a, b, f.double(), gg.double(), kw["eps"])
                P = torch.ops.fastot.sinkhorn_plan(C.to(dtype), a.to(dtype), b.to(dtype), f, gg, kw["eps"])
                rP = ref.sinkhorn_plan(C, a, b, f.double(), gg.double(), kw["eps"])
                out["cases"].append(dict(
                    op=op, B=B, N=N, M=M, dtype=str(dtype), kw=str(kw),
                    err_f=(f.double() - rf).abs().max().item(), ref_err_f=(sf.double() - rf).abs().max().item(),
                    err_g=(gg.double() - rg).abs().max().item(), ref_err_g=(sg.double() - rg).abs().max().item(),
                    err_err=(err.double() - rerr).abs().max().item(), ref_err_err=(serr.double() - rerr).abs().max().item(),
                    err_P=(P.double() - rP).abs().max().item(), err_mass=(mass.double() - rmass).abs().max().item(),
                    err_tc=(tc.double() - rtc).abs().max().item(), dn=(n - rn).abs().max().item(),
                    finite=bool(torch.isfinite(f).all() and torch.isfinite(gg).all() and torch.isfinite(tc).all())))
print(json.dumps(out))
"""


@pytest.mark.parametrize("isa", ["base", "avx2", "avx512"])
def test_each_instruction_set_matches_the_reference(isa):
    if "cpp" not in fastot.available_backends("sinkhorn"):
        pytest.skip("the compiled extension is not loaded")
    env = dict(__import__("os").environ, FASTOT_CPU_ISA=isa)
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    order = ["base", "avx2", "avx512"]
    assert order.index(out["isa"]) <= order.index(isa)  # the variable caps the choice, never raises it
    if out["isa"] != isa:
        pytest.skip(f"this CPU has no {isa} (ran {out['isa']})")
    for c in out["cases"]:
        fp64 = "float64" in c["dtype"]
        assert c["finite"], c
        # error <= 2 x the reference's own error in that dtype + a floor (flash-attention's rule)
        floor = 1e-10 if fp64 else 2e-5
        assert c["err_f"] <= 2 * c["ref_err_f"] + floor, c
        assert c["err_g"] <= 2 * c["ref_err_g"] + floor, c
        assert c["err_err"] <= 2 * c["ref_err_err"] + floor, c
        assert c["err_P"] <= (1e-12 if fp64 else 1e-6), c
        assert c["err_tc"] <= (1e-10 if fp64 else 1e-5) and c["err_mass"] <= (1e-10 if fp64 else 1e-5), c
        assert c["dn"] <= 1, c


def test_unknown_isa_value_warns():
    if "cpp" not in fastot.available_backends("sinkhorn"):
        pytest.skip("the compiled extension is not loaded")
    env = dict(__import__("os").environ, FASTOT_CPU_ISA="AVX2")
    res = subprocess.run([sys.executable, "-c", "import torch, fastot; print(torch.ops.fastot.cpu_isa())"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0 and "not one of base, avx2, avx512" in res.stderr


def test_extension_links_openmp():
    """at::parallel_for is a header template: without OpenMP in the extension every 'parallel' loop is serial
    (this happened: 2 threads ran no faster than 1)."""
    import shutil

    if "cpp" not in fastot.available_backends("sinkhorn") or shutil.which("ldd") is None:
        pytest.skip("needs the extension and ldd")
    res = subprocess.run(["ldd", fastot._C.__file__], capture_output=True, text=True, timeout=60)
    assert "gomp" in res.stdout or "omp" in res.stdout, res.stdout
