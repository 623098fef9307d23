"""Compile the Triton kernels (Sinkhorn, code-switch) for an NVIDIA architecture without a GPU.

Triton lowers a kernel to PTX and runs its bundled ``ptxas`` without touching a device, so this machine can
check that every kernel variant compiles for sm_80 / sm_90 (the interpreter, which runs the tests on CPU,
checks numerics but not that the code lowers) and report the registers and spill (stack) bytes of each.

    python -m fastot.triton.aot            # every variant in VARIANTS, sm_90, one line each
    python -m fastot.triton.aot --arch 80

Must run in a process where ``TRITON_INTERPRET`` is unset: under the interpreter ``@triton.jit`` returns
interpreted functions that cannot be compiled.
"""

from __future__ import annotations

import argparse
import inspect
import os
import subprocess
import sys
import tempfile
import time

__all__ = ["VARIANTS", "compile_variant", "resource_usage"]


def _tl():
    import triton.language as tl  # noqa: PLC0415

    return tl


# (name, kernel, constexprs, pointer dtypes that differ from the compute dtype, num_warps); kernels named
# "codeswitch:<kernel>" live in _codeswitch_kernels (int64 pointers unless named).
def _variants():
    tl = _tl()
    f32, f64 = tl.float32, tl.float64
    base = dict(FROM_EMB=False, KIND=0, BLOCK_K=16, PREC="tf32x3", DT=f32, DOT_UPCAST=False, VARLEN=False)
    onchip = dict(HAS_TOL=False, UNBAL_A=False, SUMS=False, SCALING=False, WARM=False)
    i32 = {"nit_ptr": "*i32", "done_ptr": "*i32", "nabs_ptr": "*i32", "fell_ptr": "*i32"}
    half = lambda t: {"x_ptr": t, "y_ptr": t}  # noqa: E731
    # Packed (varlen) problems: int64 row offsets; x, y [T,D] and every per-point buffer packed.
    emb = dict(FROM_EMB=True, BLOCK_K=64, VARLEN=True)
    cu = {"cu_x_ptr": "*i64", "cu_y_ptr": "*i64"}
    # Integer scalars compile as Triton types them at a call: i32 below 2^31. The random prefixes are 32-bit
    # hashes, i32 or i64 by value (two specialisations at run time); the wider one is compiled here.
    u8 = {"word_start_ptr": "*u8", "special_ptr": "*u8", "*": "*i64",
          "prefix_switch": "i64", "prefix_lang": "i64", "prefix_trans": "i64"}

    def merge(*parts, **kw):  # later keys win
        out = {}
        for part in parts + (kw,):
            out.update(part)
        return out

    return [
        ("onchip-cost-fp32-tol-unbal-64x64", "_onchip_kernel",
         merge(base, onchip, HAS_TOL=True, UNBAL_A=True, BLOCK_N=64, BLOCK_M=64), i32, 8),
        ("onchip-cost-fp32-128x128", "_onchip_kernel", merge(base, onchip, BLOCK_N=128, BLOCK_M=128), i32, 16),
        ("onchip-scaling-cost-fp32-tol-unbal-64x64", "_onchip_kernel",
         merge(base, onchip, HAS_TOL=True, UNBAL_A=True, SCALING=True, BLOCK_N=64, BLOCK_M=64), i32, 8),
        ("onchip-warm-cost-fp32-tol-64x64", "_onchip_kernel",
         merge(base, onchip, HAS_TOL=True, WARM=True, BLOCK_N=64, BLOCK_M=64), i32, 8),
        ("onchip-scaling-warm-emb-fp32-dot-tol-unbal-64x64", "_onchip_kernel",
         merge(base, onchip, FROM_EMB=True, KIND=2, HAS_TOL=True, UNBAL_A=True, SUMS=True, SCALING=True, WARM=True,
               BLOCK_K=64, BLOCK_N=64, BLOCK_M=64), i32, 8),
        ("onchip-scaling-emb-bf16-cosine-128x128", "_onchip_kernel",
         merge(base, onchip, FROM_EMB=True, SUMS=True, SCALING=True, BLOCK_K=64, BLOCK_N=128, BLOCK_M=128),
         {**i32, **half("*bf16")}, 16),
        ("onchip-emb-bf16-cosine-128x128", "_onchip_kernel",
         merge(base, onchip, FROM_EMB=True, SUMS=True, BLOCK_K=64, BLOCK_N=128, BLOCK_M=128),
         {**i32, **half("*bf16")}, 16),
        ("onchip-emb-fp64-sqeuclidean-32x32", "_onchip_kernel",
         merge(base, onchip, FROM_EMB=True, KIND=1, SUMS=True, BLOCK_K=32, BLOCK_N=32, BLOCK_M=32, PREC="ieee",
              DT=f64), i32, 4),
        ("row-pass-emb-fp16-dot-64x64", "_row_pass_kernel",
         merge(base, FROM_EMB=True, KIND=2, USE_DONE=True, UNBAL_A=False, BLOCK_K=64, BLOCK_N=64, BLOCK_M=64),
         {**i32, **half("*fp16")}, 8),
        ("row-pass-cost-fp32-64x64", "_row_pass_kernel",
         merge(base, USE_DONE=True, UNBAL_A=False, BLOCK_N=64, BLOCK_M=64), i32, 8),
        ("row-pass-cost-fp64-32x64", "_row_pass_kernel",
         merge(base, USE_DONE=False, UNBAL_A=True, BLOCK_N=32, BLOCK_M=64, PREC="ieee", DT=f64), i32, 4),
        ("col-pass-cost-fp32-tol-64x64", "_col_pass_kernel",
         merge(base, HAS_TOL=True, ERR_ONLY=False, BLOCK_N=64, BLOCK_M=64), i32, 8),
        ("col-pass-err-only-fp32-64x64", "_col_pass_kernel",
         merge(base, HAS_TOL=True, ERR_ONLY=True, BLOCK_N=64, BLOCK_M=64), i32, 8),
        ("col-pass-emb-bf16-sqeuclidean-32x128", "_col_pass_kernel",
         merge(base, HAS_TOL=False, ERR_ONLY=False, FROM_EMB=True, KIND=1, BLOCK_K=64, BLOCK_N=32, BLOCK_M=128),
         {**i32, **half("*bf16")}, 8),
        ("plan-cost-fp32", "_plan_kernel", merge(base, WRITE_PLAN=True, SUMS=False, BLOCK_N=64, BLOCK_M=64), {}, 8),
        ("plan-sums-emb-bf16-cosine", "_plan_kernel",
         merge(base, WRITE_PLAN=False, SUMS=True, FROM_EMB=True, BLOCK_K=64, BLOCK_N=64, BLOCK_M=64),
         half("*bf16"), 8),
        ("grad-bf16-cosine-64x64x128", "_embedding_grad_kernel",
         dict(KIND=0, BLOCK_N=64, BLOCK_M=64, BLOCK_K=64, BLOCK_D=128, PREC="tf32x3", DT=f32, DOT_UPCAST=False,
              VARLEN=False), half("*bf16"), 8),
        ("grad-fp64-dot-32x32x64", "_embedding_grad_kernel",
         dict(KIND=2, BLOCK_N=32, BLOCK_M=32, BLOCK_K=32, BLOCK_D=64, PREC="ieee", DT=f64, DOT_UPCAST=False,
              VARLEN=False), {}, 4),
        ("onchip-varlen-emb-fp32-cosine-tol-unbal-64x64", "_onchip_kernel",
         merge(base, onchip, emb, HAS_TOL=True, UNBAL_A=True, SUMS=True, BLOCK_N=64, BLOCK_M=64), {**i32, **cu}, 8),
        ("onchip-varlen-scaling-warm-emb-bf16-cosine-128x128", "_onchip_kernel",
         merge(base, onchip, emb, SUMS=True, SCALING=True, WARM=True, BLOCK_N=128, BLOCK_M=128),
         {**i32, **cu, **half("*bf16")}, 16),
        ("row-pass-varlen-emb-bf16-dot-64x64", "_row_pass_kernel",
         merge(base, emb, KIND=2, USE_DONE=True, UNBAL_A=False, BLOCK_N=64, BLOCK_M=64),
         {**i32, **cu, **half("*bf16")}, 8),
        ("col-pass-varlen-emb-bf16-sqeuclidean-tol-32x128", "_col_pass_kernel",
         merge(base, emb, KIND=1, HAS_TOL=True, ERR_ONLY=False, BLOCK_N=32, BLOCK_M=128),
         {**i32, **cu, **half("*bf16")}, 8),
        ("plan-sums-varlen-emb-bf16-cosine", "_plan_kernel",
         merge(base, emb, WRITE_PLAN=False, SUMS=True, BLOCK_N=64, BLOCK_M=64), {**cu, **half("*bf16")}, 8),
        ("grad-varlen-bf16-cosine-64x64x128", "_embedding_grad_kernel",
         dict(KIND=0, BLOCK_N=64, BLOCK_M=64, BLOCK_K=64, BLOCK_D=128, PREC="tf32x3", DT=f32, DOT_UPCAST=False,
              VARLEN=True), {**cu, **half("*bf16")}, 8),
        ("codeswitch-1word-trunc-2x512", "codeswitch:_codeswitch_kernel",
         dict(BLOCK_B=2, BLOCK_L=512, LOG2_L=9, MAX_KEY_WORDS=1, TRUNCATE=True, WRITE=True), u8, 8),
        ("codeswitch-3words-8x128", "codeswitch:_codeswitch_kernel",
         dict(BLOCK_B=8, BLOCK_L=128, LOG2_L=7, MAX_KEY_WORDS=3, TRUNCATE=False, WRITE=True), u8, 8),
        ("codeswitch-count-3words-2x512", "codeswitch:_codeswitch_kernel",
         dict(BLOCK_B=2, BLOCK_L=512, LOG2_L=9, MAX_KEY_WORDS=3, TRUNCATE=False, WRITE=False), u8, 8),
    ]


VARIANTS = [v[0] for v in _variants()]


def _signature(fn, consts, ptr_types):
    tl = _tl()
    default_ptr = ptr_types.get("*") or ("*fp64" if consts["DT"] == tl.float64 else "*fp32")
    sig = {}
    # eval_str: the kernels' module uses `from __future__ import annotations`, so annotations are strings
    for p in inspect.signature(fn.fn, eval_str=True).parameters.values():
        if p.annotation is tl.constexpr and p.name not in consts:
            raise ValueError(f"{fn.__name__}: variant gives no value for constexpr {p.name}")
        if p.name in consts:
            sig[p.name] = "constexpr"
        elif p.name.endswith("_ptr"):
            sig[p.name] = ptr_types.get(p.name, default_ptr)
        elif p.annotation is tl.float64:
            sig[p.name] = "fp64"
        else:
            sig[p.name] = ptr_types.get(p.name, "i32")
    return sig


def _kernel(name: str):
    """The @triton.jit function of a variant."""
    from . import _codeswitch_kernels, _sinkhorn_kernels  # noqa: PLC0415

    (kname,) = [v[1] for v in _variants() if v[0] == name]
    module, _, kname = kname.rpartition(":")
    return getattr(_codeswitch_kernels if module == "codeswitch" else _sinkhorn_kernels, kname)


def compile_variant(name: str, arch: int = 90):
    """Compile one variant for sm_<arch>; returns the triton CompiledKernel (asm: ttir ... ptx, cubin)."""
    import triton  # noqa: PLC0415
    from triton.backends.compiler import GPUTarget  # noqa: PLC0415
    from triton.compiler import ASTSource  # noqa: PLC0415

    (_, _, consts, ptrs, warps), = [v for v in _variants() if v[0] == name]
    fn = _kernel(name)
    src = ASTSource(fn=fn, signature=_signature(fn, consts, ptrs), constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=dict(num_warps=warps))


def resource_usage(cubin: bytes) -> dict[str, int]:
    """{'REG': registers per thread, 'STACK': spill/stack bytes, 'SHARED': static shared bytes} via cuobjdump
    (Triton's shared memory is dynamic: ``CompiledKernel.metadata.shared``)."""
    import triton  # noqa: PLC0415

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as fh:
        fh.write(cubin)
        fh.flush()
        out = subprocess.run([tool, "--dump-resource-usage", fh.name], capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if "REG:" in ln)
    return {k: int(v) for k, v in (tok.split(":")[:2] for tok in line.split() if tok.split(":")[0] in
                                   ("REG", "STACK", "SHARED"))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability without the dot: 80, 90 (default 90)")
    ap.add_argument("names", nargs="*", help="variants to compile (default: all)")
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        print("fastot.triton.aot: unset TRITON_INTERPRET to compile kernels", file=sys.stderr)
        return 2
    for name in args.names or VARIANTS:
        t0 = time.perf_counter()
        kernel = compile_variant(name, args.arch)
        use = resource_usage(kernel.asm["cubin"])
        smem = kernel.metadata.shared  # dynamic shared memory (tl.dot operands, layout conversions)
        print(f"sm_{args.arch} {name:<40} regs {use['REG']:>3}  spill {use['STACK']:>5} B  "
              f"shared {smem:>6} B  ({time.perf_counter() - t0:.1f}s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
