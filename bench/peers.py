"""The contenders of `python -m bench.run`: fastot's backends and the peers a user would otherwise pick, each
wrapped to the same contract so that one harness times them all on the same inputs.

A contender solves B entropic OT problems with uniform weights and a fixed number of iterations (no early stop)
and offers two calls on its prepared input:

- ``fwd()`` -> (f, g): the potentials as torch tensors on the input's device, in fastot's convention
  (P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps)), so that every contender is checked against the same
  float64 reference;
- ``fwdbwd()``: the solve plus the gradient of the entropic OT value with respect to its input (the cost
  matrix, or x and y for the embeddings path), by the envelope theorem where the peer offers it. Where the
  two halves can be told apart, ``fwdbwd()`` runs the forward and returns the backward as a callable, so that
  the harness times each half of the same call; JAX computes both in one compiled call and returns None.

Peers that are not installed, or that cannot run on the device, are returned as ``Missing`` with the reason,
never dropped. Versions are reported with :func:`versions`.

Peers and how each is held to 100 iterations:

- POT ``ot.batch.solve_batch(method="log_sinkhorn", tol=0, grad="envelope")`` (its defaults are tol 1e-5 and
  max_iter 1000); alternating updates, like fastot.
- geomloss, the loop behind ``SamplesLoss("sinkhorn", backend="tensorized")`` (``sinkhorn_loop`` with
  ``softmin_tensorized``), given a constant epsilon schedule of ``iters`` steps instead of its annealing, no
  debiasing; its updates are symmetric (averaged), and its gradient is its own last-extrapolation envelope.
- ott-jax ``Sinkhorn(min_iterations = max_iterations = iters, use_danskin=True)`` under ``jax.jit(jax.vmap)``
  (inputs converted to JAX arrays once, outside the timing).
- flash-sinkhorn (GPU only, embeddings path): ``SamplesLoss(backend="alternating", eps=eps, n_iters=iters)``
  on the full cost |x - y|^2; it solves a batch one problem after another in Python.
- the torch reference (``backend="torch"``) in eager mode and under ``torch.compile``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import os
from collections.abc import Callable

import torch

import fastot

Pair = tuple[torch.Tensor, torch.Tensor]


@dataclasses.dataclass
class Contender:
    name: str
    family: str  # "fastot", "reference" or "peer"
    fwd: Callable[[], Pair]
    fwdbwd: Callable[[], Callable[[], None] | None]
    sync: Callable[[], None]
    timed_fwd: Callable[[], object] | None = None  # what is timed as fwd when it differs from fwd (no conversions)
    skip_fwdbwd: str | None = None  # why fwd+bwd is not run (e.g. the memory it would need)
    torch_memory: bool = True  # False: the CUDA allocator does not see its memory (JAX)
    input_grad: Callable[[], torch.Tensor | None] | None = None  # the gradient fwdbwd left (tests check it)
    method: str = ""  # fastot's Sinkhorn iteration scheme ("log" or "scaling"); "" for the peers


@dataclasses.dataclass
class Missing:
    name: str
    family: str
    reason: str


def versions() -> dict[str, str]:
    out = {}
    for dist in ("torch", "triton", "pot", "geomloss", "ott-jax", "jax", "flash-sinkhorn", "numpy"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            out[dist] = "missing"
    return out


def _sync_for(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return torch.cuda.synchronize
    return lambda: None


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _zero(*ts: torch.Tensor) -> None:
    for t in ts:
        t.grad = None


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:200]


# ----------------------------------------------------------------------------------------------- cost-matrix path


def fastot_cost(C: torch.Tensor, eps: float, iters: int, backend: str, name: str | None = None,
                family: str = "fastot", method: str = "log") -> Contender:
    Cg = _leaf(C)

    def fwd():
        r = fastot.sinkhorn(C, eps=eps, max_iter=iters, backend=backend, method=method)
        return r.f, r.g

    def fwdbwd():
        _zero(Cg)
        return fastot.sinkhorn(Cg, eps=eps, max_iter=iters, backend=backend, method=method).value.sum().backward

    return Contender(name or f"fastot {backend}" + (f" ({method})" if backend in SCALING_BACKENDS else ""), family,
                     fwd, fwdbwd, _sync_for(C.device), input_grad=lambda: Cg.grad, method=method)


SCALING_BACKENDS = ("cpp",)  # compiled backends with scaling kernels: benched with both schemes


_COMPILED: dict[str, Callable] = {}


def _compiled(name: str, fn: Callable) -> Callable:
    """One torch.compile'd function per name for the whole run (inductor recompiles per shape as it needs)."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn)
    return _COMPILED[name]


def _reference_iteration(C, f, g, loga, logb, va, vb, eps: float):
    from fastot.reference import sinkhorn as ref  # noqa: PLC0415

    f = ref._row_ctransform(C, g, logb, va, vb, eps)[0]
    return f, ref._col_ctransform(C, f, loga, va, vb, eps)


def compiled_reference_cost(C: torch.Tensor, eps: float, iters: int) -> Contender:
    """The torch reference's iteration under torch.compile, looped from Python; the gradient of the OT value
    (the plan, by the envelope theorem) is the reference's plan, compiled too.

    Compiling the whole solve unrolls the loop: on the CPU machine that took 207 s for one shape at 100
    iterations, so the iteration is the unit that is compiled (once, plus one recompilation for dynamic shapes).
    """
    from fastot.reference import sinkhorn as ref  # noqa: PLC0415

    step = _compiled("iteration", _reference_iteration)
    plan = _compiled("plan", ref.sinkhorn_plan)
    B, N, M = C.shape
    a = torch.full((B, N), 1.0 / N, device=C.device)
    b = torch.full((B, M), 1.0 / M, device=C.device)

    def solve():
        Cc, _, _, va, vb, loga, logb = ref._prepare(C, a, b)
        f = torch.zeros(B, N, dtype=Cc.dtype, device=C.device)
        g = torch.zeros(B, M, dtype=Cc.dtype, device=C.device)
        for _ in range(iters):
            f, g = step(Cc, f, g, loga, logb, va, vb, eps)
        return f, g

    def fwdbwd():
        f, g = solve()
        return lambda: plan(C, a, b, f, g, eps)  # d value / dC

    return Contender("torch reference (torch.compile)", "reference", solve, fwdbwd, _sync_for(C.device))


def pot_cost(C: torch.Tensor, eps: float, iters: int) -> Contender | Missing:
    name = "POT ot.batch log_sinkhorn"
    try:
        import ot.batch  # noqa: PLC0415
    except ImportError as exc:
        return Missing(name, "peer", f"not installed ({_why(exc)})")
    Cg = _leaf(C)
    B, N, M = C.shape
    log_a, log_b = math.log(1.0 / N), math.log(1.0 / M)

    def solve(c):
        return ot.batch.solve_batch(c, reg=eps, max_iter=iters, tol=0.0, method="log_sinkhorn", grad="envelope")

    def fwd():
        u, v = solve(C).potentials  # T = diag(e^u) e^(-C/eps) diag(e^v)
        return eps * (u - log_a), eps * (v - log_b)

    def fwdbwd():
        _zero(Cg)
        return solve(Cg).value.sum().backward

    c = Contender(name, "peer", fwd, fwdbwd, _sync_for(C.device), input_grad=lambda: Cg.grad)
    # POT's grad="envelope" still records the iterations for autograd (two B x N x M tensors each)
    need = 2 * iters * B * N * M * max(C.element_size(), 4)
    if need > 0.5 * _free_bytes(C.device):
        c.skip_fwdbwd = (f"skipped: POT's envelope gradient records every iteration, about {need / 2**30:.0f} GiB "
                         f"here, over half the free memory")
    return c


def _free_bytes(device: torch.device) -> float:
    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024.0
    except OSError:
        pass
    return float("inf")


def geomloss_cost(C: torch.Tensor, eps: float, iters: int) -> Contender | Missing:
    name = "geomloss tensorized"
    try:
        from geomloss._legacy.sinkhorn_divergence import sinkhorn_loop  # noqa: PLC0415
        from geomloss._legacy.sinkhorn_samples import softmin_tensorized  # noqa: PLC0415
    except ImportError as exc:
        return Missing(name, "peer", f"not installed ({_why(exc)})")
    B, N, M = C.shape
    Cg = _leaf(C)
    # geomloss differentiates through its last extrapolation with the reverse cost held constant
    # (sinkhorn_tensorized: C_yx = cost(y, x.detach())); a contiguous copy, as its users have, made once here
    C_t = C.transpose(1, 2).contiguous()

    def solve(c):
        a_log = torch.full((B, N), math.log(1.0 / N), dtype=c.dtype, device=c.device)
        b_log = torch.full((B, M), math.log(1.0 / M), dtype=c.dtype, device=c.device)
        grad = torch.is_grad_enabled()
        try:
            _, _, g_ab, f_ba = sinkhorn_loop(softmin_tensorized, a_log, b_log, None, None, c, C_t,
                                             [eps] * iters, None, debias=False)
        finally:
            torch.autograd.set_grad_enabled(grad)  # sinkhorn_loop switches autograd off and on itself
        return f_ba, g_ab

    def fwd():
        return solve(C)

    def fwdbwd():
        _zero(Cg)
        f, g = solve(Cg)
        return (f.mean(1) + g.mean(1)).sum().backward  # the dual value <a, f> + <b, g>, uniform weights

    return Contender(name, "peer", fwd, fwdbwd, _sync_for(C.device), input_grad=lambda: Cg.grad)


def _jax():
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # else JAX takes 75% of the GPU up front
    import jax  # noqa: PLC0415

    jax.config.update("jax_enable_x64", True)  # lets float64 inputs stay float64; float32 stays float32
    return jax


def _to_jax(t: torch.Tensor):
    jax = _jax()
    import jax.numpy as jnp  # noqa: PLC0415

    dev = jax.devices("gpu")[0] if t.device.type == "cuda" else jax.devices("cpu")[0]
    host = t.detach().cpu()
    arr = jnp.asarray(host.float().numpy()) if host.dtype == torch.bfloat16 else jnp.asarray(host.numpy())
    arr = arr.astype(jnp.bfloat16) if host.dtype == torch.bfloat16 else arr
    return jax.device_put(arr, dev)


def _from_jax(x, device) -> torch.Tensor:
    import numpy as np  # noqa: PLC0415

    return torch.from_numpy(np.array(x, dtype=np.float64)).to(device)  # a writable copy


def _ott(name: str, device: torch.device, iters: int):
    """(jax, a Sinkhorn solver running exactly ``iters`` iterations, ott's linear_problem module) or Missing."""
    try:
        jax = _jax()
        from ott.problems.linear import linear_problem  # noqa: PLC0415
        from ott.solvers.linear import sinkhorn  # noqa: PLC0415
    except ImportError as exc:
        return Missing(name, "peer", f"not installed ({_why(exc)})")
    if device.type == "cuda":
        try:
            jax.devices("gpu")
        except RuntimeError as exc:
            return Missing(name, "peer", f"no JAX GPU backend ({_why(exc)})")
    # fixpoint_iter runs max_iterations // inner_iterations blocks: one block of exactly iters iterations
    solver = sinkhorn.Sinkhorn(min_iterations=iters, max_iterations=iters, inner_iterations=iters,
                               threshold=0.0, use_danskin=True)
    return jax, solver, linear_problem


def ott_cost(C: torch.Tensor, eps: float, iters: int) -> Contender | Missing:
    name = "ott-jax (jit, vmap)"
    ott = _ott(name, C.device, iters)
    if isinstance(ott, Missing):
        return ott
    jax, solver, linear_problem = ott
    from ott.geometry import geometry  # noqa: PLC0415

    B, N, M = C.shape
    Cj = _to_jax(C)

    def one(c):
        out = solver(linear_problem.LinearProblem(geometry.Geometry(cost_matrix=c, epsilon=eps)))
        return out.f, out.g, out.reg_ot_cost

    batched = jax.jit(jax.vmap(one))
    grad = jax.jit(jax.grad(lambda c: jax.vmap(one)(c)[2].sum()))

    def fwd():
        f, g, _ = batched(Cj)
        f, g = jax.block_until_ready((f, g))
        # ott: P = exp((f + g - C) / eps), the weights folded into the potentials
        return _from_jax(f, C.device) - eps * math.log(1.0 / N), _from_jax(g, C.device) - eps * math.log(1.0 / M)

    def run_fwd():
        jax.block_until_ready(batched(Cj))

    def fwdbwd():
        jax.block_until_ready(grad(Cj))  # value and gradient in one compiled call: no split

    # timing leaves out the conversion back to torch; the CUDA allocator does not see JAX's memory
    return Contender(name, "peer", fwd, fwdbwd, lambda: None, timed_fwd=run_fwd, torch_memory=False)


def cost_contenders(C: torch.Tensor, eps: float, iters: int, compile_reference: bool = True
                    ) -> list[Contender | Missing]:
    dev = C.device
    out: list[Contender | Missing] = []
    for be in ("cpp", "cuda", "triton"):
        if be in fastot.available_backends("sinkhorn", dev.type):
            for method in ("log", "scaling") if be in SCALING_BACKENDS else ("log",):
                out.append(fastot_cost(C, eps, iters, be, method=method))
        elif not (be == "cpp" and dev.type == "cuda") and not (be == "cuda" and dev.type == "cpu"):
            why = ("timed on a GPU only (on CPU it runs under the Triton interpreter)" if be == "triton"
                   and dev.type == "cpu" else "backend not built or not available here")
            out.append(Missing(f"fastot {be}", "fastot", why))
    out.append(fastot_cost(C, eps, iters, "torch", "torch reference (eager)", "reference"))
    if compile_reference:
        out.append(compiled_reference_cost(C, eps, iters))
    else:
        out.append(Missing("torch reference (torch.compile)", "reference", "left out (--no-compile)"))
    out.append(pot_cost(C, eps, iters))
    out.append(geomloss_cost(C, eps, iters))
    out.append(ott_cost(C, eps, iters))
    return out


# ------------------------------------------------------------------------------------------------ embeddings path


def fastot_embeddings(x, y, eps, iters, backend, fused: bool, cost: str, method: str = "log") -> Contender:
    xg, yg = _leaf(x), _leaf(y)
    from fastot.sinkhorn import _FUSED  # noqa: PLC0415

    kind = "fused" if fused and backend in _FUSED else "materialise + solve"
    name = f"fastot {backend} ({kind}{', ' + method if backend in SCALING_BACKENDS else ''})"
    family = "fastot"
    if backend == "torch":
        name, family = "torch reference (eager)", "reference"

    def solve(x_, y_):
        if fused:
            return fastot.sinkhorn_embeddings(x_, y_, cost=cost, eps=eps, max_iter=iters, backend=backend,
                                              method=method)
        return fastot.sinkhorn(fastot.pairwise_cost(x_, y_, cost), eps=eps, max_iter=iters, backend=backend,
                               method=method)

    def fwd():
        r = solve(x, y)
        return r.f, r.g

    def fwdbwd():
        _zero(xg, yg)
        return solve(xg, yg).value.sum().backward

    return Contender(name, family, fwd, fwdbwd, _sync_for(x.device), method=method)


def geomloss_embeddings(x, y, eps, iters) -> Contender | Missing:
    """geomloss's tensorized path on point clouds: C = |x - y|^2 materialised by its own squared_distances (the
    full squared distance, the cost every contender of this section solves)."""
    name = "geomloss tensorized"
    try:
        from geomloss._legacy.sinkhorn_divergence import sinkhorn_loop  # noqa: PLC0415
        from geomloss._legacy.sinkhorn_samples import softmin_tensorized  # noqa: PLC0415
        from geomloss._legacy.utils import squared_distances  # noqa: PLC0415
    except ImportError as exc:
        return Missing(name, "peer", f"not installed ({_why(exc)})")
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    xg, yg = _leaf(x), _leaf(y)

    def solve(x_, y_):
        grad = torch.is_grad_enabled()
        x_, y_ = x_.float(), y_.float()
        C_xy, C_yx = squared_distances(x_, y_.detach()), squared_distances(y_, x_.detach())  # as geomloss
        a_log = torch.full((B, N), math.log(1.0 / N), device=x_.device)
        b_log = torch.full((B, M), math.log(1.0 / M), device=x_.device)
        try:
            _, _, g_ab, f_ba = sinkhorn_loop(softmin_tensorized, a_log, b_log, None, None, C_xy, C_yx,
                                             [eps] * iters, None, debias=False)
        finally:
            torch.autograd.set_grad_enabled(grad)
        return f_ba, g_ab

    def fwdbwd():
        _zero(xg, yg)
        f, g = solve(xg, yg)
        return (f.mean(1) + g.mean(1)).sum().backward

    return Contender(name, "peer", lambda: solve(x, y), fwdbwd, _sync_for(x.device))


def ott_embeddings(x, y, eps, iters) -> Contender | Missing:
    name = "ott-jax (jit, vmap)"
    ott = _ott(name, x.device, iters)
    if isinstance(ott, Missing):
        return ott
    jax, solver, linear_problem = ott
    from ott.geometry import costs, pointcloud  # noqa: PLC0415

    N, M = x.shape[1], y.shape[1]
    xj, yj = _to_jax(x), _to_jax(y)

    def one(xx, yy):
        geom = pointcloud.PointCloud(xx, yy, cost_fn=costs.SqEuclidean(), epsilon=eps)
        out = solver(linear_problem.LinearProblem(geom))
        return out.f, out.g, out.reg_ot_cost

    batched = jax.jit(jax.vmap(one))
    grad = jax.jit(jax.grad(lambda a, b: jax.vmap(one)(a, b)[2].sum(), argnums=(0, 1)))

    def fwd():
        f, g, _ = batched(xj, yj)
        return _from_jax(f, x.device) - eps * math.log(1.0 / N), _from_jax(g, x.device) - eps * math.log(1.0 / M)

    def fwdbwd():
        jax.block_until_ready(grad(xj, yj))  # value and gradient in one compiled call: no split

    return Contender(name, "peer", fwd, fwdbwd, lambda: None,
                     timed_fwd=lambda: jax.block_until_ready(batched(xj, yj)), torch_memory=False)


def flash_sinkhorn_embeddings(x, y, eps, iters) -> Contender | Missing:
    """flash-sinkhorn's alternating solver at a fixed eps for a fixed number of iterations, on the full cost
    |x - y|^2 (half_cost=False), no debiasing; batched inputs are solved one problem after another in Python."""
    name = "flash-sinkhorn (alternating, its default tf32 dots)"
    if x.device.type != "cuda":
        return Missing(name, "peer", "GPU only (CUDA Triton kernels)")
    try:
        from flash_sinkhorn import SamplesLoss  # noqa: PLC0415
    except ImportError as exc:
        return Missing(name, "peer", f"not installed ({_why(exc)})")
    kw = dict(loss="sinkhorn", backend="alternating", eps=eps, n_iters=iters, debias=False, half_cost=False,
              use_epsilon_scaling=False)
    try:
        potentials, value = SamplesLoss(**kw, potentials=True), SamplesLoss(**kw)
    except Exception as exc:  # noqa: BLE001 - a peer that fails is reported, not fatal
        return Missing(name, "peer", _why(exc))
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    xs, ys = x.float(), y.float()
    xg, yg = _leaf(xs), _leaf(ys)

    def fwd():
        f, g = potentials(xs, ys)
        return f.reshape(B, N), g.reshape(B, M)

    def fwdbwd():
        _zero(xg, yg)
        return value(xg, yg).sum().backward

    return Contender(name, "peer", fwd, fwdbwd, torch.cuda.synchronize)


def embedding_contenders(x, y, eps, iters, cost: str = "sqeuclidean") -> list[Contender | Missing]:
    dev = x.device
    out: list[Contender | Missing] = []
    from fastot.sinkhorn import _FUSED  # noqa: PLC0415

    for be in {"cpu": ("cpp",), "cuda": ("triton", "cuda")}[dev.type]:
        if be not in fastot.available_backends("sinkhorn", dev.type):
            out.append(Missing(f"fastot {be}", "fastot", "backend not built or not available here"))
            continue
        for method in ("log", "scaling") if be in SCALING_BACKENDS else ("log",):
            if be in _FUSED:
                out.append(fastot_embeddings(x, y, eps, iters, be, fused=True, cost=cost, method=method))
            out.append(fastot_embeddings(x, y, eps, iters, be, fused=False, cost=cost, method=method))
    out.append(fastot_embeddings(x, y, eps, iters, "torch", fused=False, cost=cost))
    out.append(geomloss_embeddings(x, y, eps, iters))
    out.append(ott_embeddings(x, y, eps, iters))
    out.append(flash_sinkhorn_embeddings(x, y, eps, iters))
    return out
