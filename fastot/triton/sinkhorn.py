"""Triton backend of ``fastot.sinkhorn`` / ``fastot.sinkhorn_embeddings``: host side of the kernels in
``_sinkhorn_kernels.py``, registered as ops with ``torch.library.triton_op`` (so ``torch.compile`` sees the
kernels) and fake implementations.

Under ``TRITON_INTERPRET=1`` (CPU tensors, the CI) ``wrap_triton`` cannot trace interpreted kernels, so the
same functions are registered as opaque ``torch.library.custom_op`` instead; everything else is identical.

Path choice per call: a problem whose padded tile BLOCK_N x BLOCK_M (powers of two >= 16) has at most
``FASTOT_TRITON_ONCHIP_MAX`` entries (default 16384, i.e. 128 x 128 in fp32: 64 KiB of registers per program)
is solved on chip in one launch; larger problems stream (2 launches per iteration, plus 2 for the final error).
Under ``torch.compile`` a traced ``triton_op`` unrolls those launches into the graph, so streaming solves with
many iterations compile slowly; on-chip solves are one node.

Warm starts: every forward takes optional ``f0`` [B,N], ``g0`` [B,M] (any floating dtype, never differentiated);
the state before the first iteration is ``fastot.reference.sinkhorn.initial_potentials(f0, g0, a, b, dtype)``.

Packed ("varlen", as flash-attention's) embeddings: ``sinkhorn_embeddings_varlen_fwd`` / ``_bwd`` take x [Tx,D],
y [Ty,D], the B problems' rows back to back, with row offsets ``cu_seqlens_x``, ``cu_seqlens_y`` [B+1] (int32 or
int64; problem k owns rows cu[k]:cu[k+1]); weights, potentials, warm starts and gradients are packed the same
way ([Tx], [Ty], [Tx,D]). The kernels read x and y in place (no padded copy): each program loads its problem's
first row and length from the offsets. Results equal the padded ops' on the problems padded with zero rows of
weight 0, at the packed positions. Blocks and the on-chip / streaming choice follow the longest problem on each
side (``max_seqlen_x``, ``max_seqlen_y``, as N, M on the padded ops): pass them to avoid reading the offsets on
the host (the read, one per call, also checks them; under ``torch.compile`` on a GPU they must be passed).
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from ..reference.sinkhorn import initial_potentials
from . import _sinkhorn_kernels as K

__all__ = ["sinkhorn_fwd", "sinkhorn_fwd_scaling", "sinkhorn_plan", "sinkhorn_plan_sums", "sinkhorn_embeddings_fwd",
           "sinkhorn_embeddings_fwd_scaling", "sinkhorn_embeddings_bwd", "sinkhorn_embeddings_varlen_fwd",
           "sinkhorn_embeddings_varlen_bwd", "ONCHIP_MAX"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
LOG2E = math.log2(math.e)
# Largest padded tile (entries) solved on chip. The environment variable is read at import; the module attribute
# on every call (tests move it to force the streaming path).
ONCHIP_MAX = int(os.environ.get("FASTOT_TRITON_ONCHIP_MAX", "16384"))


def _configs(options, interpreted):
    """Autotune candidates [(meta, num_warps)]; the single ``interpreted`` one under TRITON_INTERPRET=1 (the
    interpreter cannot time kernels usefully, and large blocks mean few, faster, interpreted programs)."""
    if INTERPRET:
        options = [interpreted]
    return [triton.Config(meta, num_warps=w) for meta, w in options]


# Candidates for triton.autotune to time on the GPU. No GPU was lent while they were chosen, so they come from
# what this machine can measure: `python -m fastot.triton.aot` compiles for sm_90 and reports registers and spills
# (bench/RESULTS.md). Streaming tiles keep ~16 cost entries per thread (64x64 at 4 warps hits the 255-register
# cap and spills; at 8 warps, 174-234 registers and no spill); on chip, 128x128 needs 16 warps (232 B spill;
# 8 warps spill 848 B).
_STREAM_OPTIONS = [({"BLOCK_N": 64, "BLOCK_M": 64}, 8), ({"BLOCK_N": 32, "BLOCK_M": 64}, 4),
                   ({"BLOCK_N": 32, "BLOCK_M": 128}, 8), ({"BLOCK_N": 64, "BLOCK_M": 128}, 16)]
_ONCHIP_OPTIONS = [({}, 1), ({}, 2), ({}, 4), ({}, 8), ({}, 16)]
_GRAD_OPTIONS = [({"BLOCK_N": 32, "BLOCK_M": 32, "BLOCK_D": 64}, 4), ({"BLOCK_N": 64, "BLOCK_M": 64, "BLOCK_D": 64}, 8),
                 ({"BLOCK_N": 64, "BLOCK_M": 32, "BLOCK_D": 128}, 8), ({"BLOCK_N": 32, "BLOCK_M": 64, "BLOCK_D": 128}, 8)]


def _prune_onchip(configs, named_args, **kwargs):
    """Keep warp counts that give each thread 2..32 entries of the tile (more spill, fewer leave threads idle)."""
    tile = kwargs["BLOCK_N"] * kwargs["BLOCK_M"]
    keep = [c for c in configs if 2 <= tile // (32 * c.num_warps) <= 32]
    return keep or configs[-1:]


# Under the interpreter: 128 x 128 tiles, so that the conformance case N=300, M=257 streams over 3 x 3 ragged tiles.
_STREAM_KEY = ["N_KEY", "M_KEY", "D_KEY", "FROM_EMB", "KIND", "VARLEN"]

_onchip = triton.autotune(_configs(_ONCHIP_OPTIONS, ({}, 4)),
                          key=["BLOCK_N", "BLOCK_M", "D_KEY", "FROM_EMB", "KIND", "VARLEN"],
                          prune_configs_by={"early_config_prune": _prune_onchip})(K._onchip_kernel)
_row_pass = triton.autotune(_configs(_STREAM_OPTIONS, ({"BLOCK_N": 128, "BLOCK_M": 128}, 4)),
                            key=_STREAM_KEY)(K._row_pass_kernel)
_col_pass = triton.autotune(_configs(_STREAM_OPTIONS, ({"BLOCK_N": 128, "BLOCK_M": 128}, 4)),
                            key=_STREAM_KEY)(K._col_pass_kernel)
_grad = triton.autotune(_configs(_GRAD_OPTIONS, ({"BLOCK_N": 64, "BLOCK_M": 64, "BLOCK_D": 64}, 4)),
                        key=["N_KEY", "M_KEY", "D_KEY", "KIND", "VARLEN"])(K._embedding_grad_kernel)
# Fixed (the partial sums are laid out per row block); one pass, memory bound. 64 x 64 at 8 warps compiles without
# spills (158 registers from a cost, 232 from bf16 embeddings); at 4 warps the embeddings variant hit the
# 255-register cap and spilled 208 B (python -m fastot.triton.aot, sm_90).
_PLAN_BLOCK = 64

if INTERPRET:
    def _define(name):
        return torch.library.custom_op(name, mutates_args=())

    def _wrap(kernel):
        return kernel
else:
    def _define(name):
        return torch.library.triton_op(name, mutates_args=())

    _wrap = torch.library.wrap_triton


def _dtypes(t: torch.Tensor):
    """(torch compute dtype, tl compute dtype, tl.dot input precision) for an input tensor."""
    if t.dtype == torch.float64:
        return torch.float64, tl.float64, "ieee"
    # fp32 inputs: 3 tf32 passes keep the cost near fp32 accuracy. Plain tf32 keeps 10 mantissa bits, so a cost
    # error of ~1e-3 relative would move the plan by about exp(1e-3 C / eps): an estimate, not a measurement (no
    # GPU here; the interpreter ignores the setting). Half inputs ignore it too.
    return torch.float32, tl.float32, "tf32x3"


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(max(n, 1)))


def _keys(n: int, m: int, d: int) -> tuple[int, int, int]:
    return triton.next_power_of_2(max(n, 1)), triton.next_power_of_2(max(m, 1)), triton.next_power_of_2(max(d, 1))


class _Operand:
    """Where the cost comes from: a [B,N,M] tensor, or x [B,N,D], y [B,M,D] and a cost kind, or packed x [Tx,D],
    y [Ty,D] with ``cu`` = (cu_x, cu_y, max_n, max_m): int64 row offsets [B+1] on x's device and the longest
    problem on each side (N, M: they size the blocks and the grids)."""

    def __init__(self, cost=None, x=None, y=None, kind=0, cu=None):
        self.from_emb = cost is None
        self.varlen = cu is not None
        if self.from_emb:
            if y.dtype != x.dtype:  # tl.dot needs one operand dtype; x's, as on the cpp backend
                y = y.to(x.dtype)
            self.x, self.y = x, y
            if self.varlen:
                cu_x, cu_y, self.N, self.M = cu
                self.B, self.D = cu_x.shape[0] - 1, x.shape[1]
                # (problem, row, feature) strides; packed problems start at a row given by cu, not at a stride
                self.sx, self.sy = (0, *x.stride()), (0, *y.stride())
                self.rows_x, self.rows_y = (x.shape[0],), (y.shape[0],)
            else:
                self.B, self.N, self.D = x.shape
                self.M = y.shape[1]
                self.sx, self.sy = x.stride(), y.stride()
                self.rows_x, self.rows_y = (self.B, self.N), (self.B, self.M)
            self.kind = kind
            dt = torch.float64 if x.dtype == torch.float64 else torch.float32
            if kind == 0:  # 1/|x| with |x| clamped at 1e-12, like fastot.pairwise_cost
                rx = 1.0 / torch.linalg.vector_norm(x.to(dt), dim=-1).clamp_min(1e-12)
                ry = 1.0 / torch.linalg.vector_norm(y.to(dt), dim=-1).clamp_min(1e-12)
            elif kind == 1:
                rx, ry = x.to(dt).square().sum(-1), y.to(dt).square().sum(-1)
            else:  # unused by the dot cost; any valid pointer
                rx = ry = torch.zeros(1, dtype=dt, device=x.device)
            self.rx, self.ry = rx.contiguous(), ry.contiguous()
            # The offsets of packed problems; any valid pointer (never read) otherwise.
            self.cu = (cu_x, cu_y) if self.varlen else (self.rx, self.ry)
            self.args = (x, 0, 0, 0, x, *self.sx, y, *self.sy, self.rx, self.ry, *self.cu)
            self.block_k = min(64, _block(self.D))
            self.like = x
        else:
            self.B, self.N, self.M = cost.shape
            self.D, self.kind, self.block_k = 0, 0, 16
            self.rows_x, self.rows_y = (self.B, self.N), (self.B, self.M)
            self.args = (cost, *cost.stride(), cost, 0, 0, 0, cost, 0, 0, 0, cost, cost, cost, cost)
            self.like = cost
        self.dt, self.tl_dt, self.prec = _dtypes(self.like)
        # The triton 3.9 interpreter multiplies bf16 bit patterns as integers in tl.dot: upcast there only.
        self.dot_upcast = INTERPRET and self.like.dtype == torch.bfloat16

    def consts(self):
        return dict(FROM_EMB=self.from_emb, KIND=self.kind, BLOCK_K=self.block_k, PREC=self.prec, DT=self.tl_dt,
                    DOT_UPCAST=self.dot_upcast, VARLEN=self.varlen)


def _unused(op: _Operand) -> torch.Tensor:
    """A one-element buffer for a pointer argument that a kernel variant neither reads nor writes."""
    return torch.empty(1, dtype=op.dt, device=op.like.device)


def _weights(op: _Operand, a, b):
    return a.to(op.dt).contiguous(), b.to(op.dt).contiguous()


def _lam(tau, eps):
    return 1.0 if tau is None else tau / (tau + eps)


def _check_warm(f0, g0, B: int, N: int, M: int, device) -> None:
    """ValueError unless the warm start f0 [B,N] / g0 [B,M] (each optional) is floating and on ``device``."""
    for name, w, n in (("f0", f0, N), ("g0", g0, M)):
        if w is None:
            continue
        if tuple(w.shape) != (B, n):
            raise ValueError(f"{name} must be [{B}, {n}] ([B, {'N' if name == 'f0' else 'M'}]), got {list(w.shape)}")
        if not w.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {w.dtype}")
        if w.device != device:
            raise ValueError(f"{name} is on {w.device} but the inputs are on {device}")


def _solve(op: _Operand, a, b, eps, max_iter, tol, tau_a, tau_b, sums: bool, stats: list | None = None,
           absorb: float = 20.0, f0=None, g0=None):
    """(f, g, n_iter, err, tc, mass); tc and mass only when ``sums`` (else None). ``f0``, ``g0``: warm start.

    ``stats`` (a list): scaling iterations (method "scaling") where the problem is solved on chip; the list gets
    the absorptions [B] int32 and whether each problem ran log-domain iterations [B] bool (after an underflow,
    or, for problems too large for the chip, all of them: the streaming path is log-domain only)."""
    B, N, M, D = op.B, op.N, op.M, op.D
    dev = op.like.device
    a, b = _weights(op, a, b)
    if not op.varlen:  # (the packed ops check theirs up front)
        _check_warm(f0, g0, B, N, M, dev)
    warm = f0 is not None or g0 is not None
    # The warm state (f0, g0 where the problem has them, 0 elsewhere), in natural units and the compute dtype.
    f_init, g_init = None, None
    if warm and op.varlen:
        f_init, g_init = _initial_packed(f0, g0, a, b, op.dt, *op.cu)
    elif warm:
        f_init, g_init = initial_potentials(f0, g0, a, b, op.dt)
    f = torch.zeros(op.rows_x, dtype=op.dt, device=dev)
    g = torch.zeros(op.rows_y, dtype=op.dt, device=dev)
    n_iter = torch.zeros(B, dtype=torch.int32, device=dev)
    err = torch.zeros(B, dtype=op.dt, device=dev)
    tc = torch.zeros(B, dtype=op.dt, device=dev) if sums else None
    mass = torch.zeros(B, dtype=op.dt, device=dev) if sums else None
    if B == 0:
        return f, g, n_iter, err, tc, mass
    scale = LOG2E / eps
    lam_a, lam_b = _lam(tau_a, eps), _lam(tau_b, eps)
    eps_tau_a = 0.0 if tau_a is None else eps / tau_a
    has_tol = tol is not None
    tol_v = -1.0 if tol is None else tol
    bn, bm = _block(N), _block(M)
    onchip_max = ONCHIP_MAX // (2 if op.dt == torch.float64 else 1)
    scaling = stats is not None
    if bn * bm <= onchip_max:
        # Pointers the kernel does not write get buffers of their own: an output passed twice is an alias that
        # torch.compile's functionalisation may resolve to the unwritten copy.
        tc_out, mass_out = (tc, mass) if sums else (_unused(op), _unused(op))
        n_abs = torch.zeros(B, dtype=torch.int32, device=dev) if scaling else torch.zeros(1, dtype=torch.int32, device=dev)
        fell = torch.zeros(B, dtype=torch.int32, device=dev) if scaling else torch.zeros(1, dtype=torch.int32, device=dev)
        f0_in, g0_in = (f_init, g_init) if warm else (_unused(op), _unused(op))
        _wrap(_onchip)[(B,)](*op.args, a, b, f, g, n_iter, err, tc_out, mass_out,
                             N, M, D, scale, 1.0 / scale, lam_a, lam_b, eps_tau_a, tol_v, max_iter,
                             _keys(N, M, D)[2], min(absorb, 1e30) * LOG2E, n_abs, fell, f0_in, g0_in,
                             HAS_TOL=has_tol, UNBAL_A=tau_a is not None, SUMS=sums,
                             BLOCK_N=bn, BLOCK_M=bm, SCALING=scaling, WARM=warm, **op.consts())
        if scaling:
            stats += [n_abs, fell.bool()]
        return f, g, n_iter, err, tc, mass
    if scaling:
        stats += [torch.zeros(B, dtype=torch.int32, device=dev), torch.ones(B, dtype=torch.bool, device=dev)]

    # Streaming: state in base-2 units; F, G start at 0, or at the warm start. The row and column passes read
    # F, G from these buffers (the first row pass and the first error check see the warm state).
    if warm:
        f, g = f_init * scale, g_init * scale
    ft = torch.zeros(op.rows_x, dtype=op.dt, device=dev)
    row_err = torch.zeros(op.rows_x, dtype=op.dt, device=dev)
    done = torch.zeros(B, dtype=torch.int32, device=dev)
    # At least one block on each side: a launch with an empty grid does not run, and the column pass must still
    # count iterations (and store F) when M = 0.
    row_grid = lambda meta: (B, max(1, triton.cdiv(N, meta["BLOCK_N"])))  # noqa: E731
    col_grid = lambda meta: (B, max(1, triton.cdiv(M, meta["BLOCK_M"])))  # noqa: E731
    keys = _keys(N, M, D)
    for it in range(max_iter + 1):
        last = it == max_iter  # the final row pass: the error of the returned state, for every problem
        _wrap(_row_pass)[row_grid](*op.args, a, b, f, g, ft, row_err, done, N, M, D, *keys, scale, eps_tau_a,
                                   USE_DONE=not last, UNBAL_A=tau_a is not None, **op.consts())
        _wrap(_col_pass)[(B, 1) if last else col_grid](
            *op.args, a, b, f, g, ft, row_err, done, n_iter, N, M, D, it, *keys, scale, lam_a, lam_b, tol_v, err,
            HAS_TOL=has_tol, ERR_ONLY=last, **op.consts())
    unscale = 1.0 / scale
    f, g = f * unscale, g * unscale
    if sums:
        tc, mass = _plan_pass(op, a, b, f, g, eps, write_plan=False)
    return f, g, n_iter, err, tc, mass


def _plan_pass(op: _Operand, a, b, f, g, eps, write_plan: bool):
    """P [B,N,M] (write_plan; not for packed problems) or (<P, C> [B], sum P [B])."""
    B, N, M, D = op.B, op.N, op.M, op.D
    dev = op.like.device
    a, b = _weights(op, a, b)
    f, g = f.to(op.dt).contiguous(), g.to(op.dt).contiguous()
    nb = triton.cdiv(N, _PLAN_BLOCK)
    launch = B > 0 and N > 0
    # The kernel writes every plan entry; zeros only where it does not run.
    plan = (torch.empty if launch else torch.zeros)(B, N, M, dtype=op.dt, device=dev) if write_plan else None
    tc = torch.zeros(B, nb, dtype=op.dt, device=dev)
    mass = torch.zeros(B, nb, dtype=op.dt, device=dev)
    if launch:
        _wrap(K._plan_kernel)[(B, nb)](*op.args, a, b, f, g, plan if write_plan else _unused(op), tc, mass, N, M, D, nb,
                                       LOG2E / eps, WRITE_PLAN=write_plan, SUMS=not write_plan,
                                       BLOCK_N=_PLAN_BLOCK, BLOCK_M=_PLAN_BLOCK, num_warps=8, **op.consts())
    return plan if write_plan else (tc.sum(1), mass.sum(1))


# --------------------------------------------------------------------------- packed (varlen) problems
def _check_varlen(x, y, cu_x, cu_y, a, b, cost, f0=None, g0=None, f=None, g=None, scale=None, max_seqlen_x=None,
                  max_seqlen_y=None) -> int:
    """B, after every check of the packed ops' arguments that reads no tensor values (the fakes run it too):
    ValueError or TypeError naming the argument. (The ops' schema has already rejected non-tensors.)"""
    for name, t in (("x", x), ("y", y)):
        if t.dim() != 2:
            raise ValueError(f"{name} must be [T, D] (the problems' rows packed), got shape {list(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be floating point, got {t.dtype}")
    if y.shape[1] != x.shape[1]:
        raise ValueError(f"x and y must have the same feature size D, got {x.shape[1]} (x) and {y.shape[1]} (y)")
    if y.device != x.device:
        raise ValueError(f"y is on {y.device} but x is on {x.device}")
    if cost not in (0, 1, 2):
        raise ValueError(f"cost must be 0 (cosine), 1 (sqeuclidean) or 2 (dot), got {cost!r}")
    for name, cu in (("cu_seqlens_x", cu_x), ("cu_seqlens_y", cu_y)):
        if cu.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"{name} must be int32 or int64, got {cu.dtype}")
        if cu.dim() != 1 or cu.shape[0] == 0:
            raise ValueError(f"{name} must be [B+1] (row offsets), got shape {list(cu.shape)}")
    if cu_y.shape[0] != cu_x.shape[0]:
        raise ValueError(f"cu_seqlens_y must be [B+1] like cu_seqlens_x, got {list(cu_y.shape)} and "
                         f"{list(cu_x.shape)}")
    B, tx, ty = cu_x.shape[0] - 1, x.shape[0], y.shape[0]
    for name, t, shape, what in (("a", a, (tx,), "Tx"), ("b", b, (ty,), "Ty"), ("f0", f0, (tx,), "Tx"),
                                 ("g0", g0, (ty,), "Ty"), ("f", f, (tx,), "Tx"), ("g", g, (ty,), "Ty"),
                                 ("scale", scale, (B,), "B")):
        if t is None:
            continue
        if tuple(t.shape) != shape:
            raise ValueError(f"{name} must be [{what}] = {list(shape)}, got {list(t.shape)}")
        if name in ("f0", "g0") and not t.is_floating_point():
            raise ValueError(f"{name} must be floating point, got {t.dtype}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")
    for name, m in (("max_seqlen_x", max_seqlen_x), ("max_seqlen_y", max_seqlen_y)):
        if m is not None and m < 0:
            raise ValueError(f"{name} must be >= 0, got {m}")
    return B


def _varlen_operand(x, y, cu_x, cu_y, cost, max_n, max_m) -> _Operand:
    """The operand of packed problems: the offsets as int64 on x's device, and the longest problem on each side.

    The offsets are read on the host (one read for both) when a max_seqlen is missing, and always on CPU (where
    it costs no synchronisation); then cu[0] = 0, cu nondecreasing, cu[B] = T and max_seqlen >= the longest
    problem are checked (ValueError). On a GPU with both max_seqlen given nothing is read, and the offsets are
    trusted as flash-attention's varlen kernels trust theirs."""
    cx = cu_x.to(device=x.device, dtype=torch.int64).contiguous()
    cy = cu_y.to(device=x.device, dtype=torch.int64).contiguous()
    if max_n is None or max_m is None or x.device.type == "cpu":
        host = torch.cat([cx, cy]).tolist()
        n1 = cx.shape[0]
        longest = []
        for side, c, t, given in (("x", host[:n1], x.shape[0], max_n), ("y", host[n1:], y.shape[0], max_m)):
            name = f"cu_seqlens_{side}"
            if c[0] != 0:
                raise ValueError(f"{name}[0] must be 0, got {c[0]}")
            lengths = [hi - lo for lo, hi in zip(c[:-1], c[1:])]
            if any(n < 0 for n in lengths):
                raise ValueError(f"{name} must be nondecreasing, got {c[:8]}{' ...' if len(c) > 8 else ''}")
            if c[-1] != t:
                raise ValueError(f"{name}[-1] must be {t} (the rows of {side}), got {c[-1]}")
            top = max(lengths, default=0)
            if given is not None and given < top:
                raise ValueError(f"max_seqlen_{side} = {given} is below the longest problem's {top} rows")
            longest.append(top if given is None else given)
        max_n, max_m = longest
    return _Operand(x=x, y=y, kind=cost, cu=(cx, cy, int(max_n), int(max_m)))


def _initial_packed(f0, g0, a, b, dtype, cu_x, cu_y):
    """``initial_potentials`` of packed problems: (f0, g0) in ``dtype`` on the real points (weight > 0) of the
    problems with a real point on both sides, 0 elsewhere. a [Tx], b [Ty]; cu_x, cu_y int64 [B+1]."""
    B = cu_x.shape[0] - 1
    ids = torch.arange(B, device=a.device)
    seg_x = torch.repeat_interleave(ids, cu_x.diff(), output_size=a.shape[0])
    seg_y = torch.repeat_interleave(ids, cu_y.diff(), output_size=b.shape[0])
    va, vb = a > 0, b > 0
    real_x = torch.zeros(B, dtype=torch.int64, device=a.device).index_add_(0, seg_x, va.long()) > 0
    real_y = torch.zeros(B, dtype=torch.int64, device=a.device).index_add_(0, seg_y, vb.long()) > 0
    both = real_x & real_y
    zero = torch.zeros((), dtype=dtype, device=a.device)
    f = zero.expand(a.shape) if f0 is None else torch.where(va & both[seg_x], f0.detach().to(dtype), zero)
    g = zero.expand(b.shape) if g0 is None else torch.where(vb & both[seg_y], g0.detach().to(dtype), zero)
    return f.contiguous(), g.contiguous()


# --------------------------------------------------------------------------- registered ops
@_define("fastot::triton_sinkhorn_fwd")
def sinkhorn_fwd(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, max_iter: int,
                 tol: float | None = None, tau_a: float | None = None, tau_b: float | None = None,
                 f0: torch.Tensor | None = None, g0: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Same contract as ``fastot.reference.sinkhorn.sinkhorn_fwd`` (warm start f0 [B,N], g0 [B,M] included)."""
    f, g, n_iter, err, _, _ = _solve(_Operand(cost=cost), a, b, eps, max_iter, tol, tau_a, tau_b, sums=False,
                                     f0=f0, g0=g0)
    return f, g, n_iter, err


@_define("fastot::triton_sinkhorn_fwd_scaling")
def sinkhorn_fwd_scaling(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, eps: float, max_iter: int,
                         tol: float | None = None, tau_a: float | None = None, tau_b: float | None = None,
                         absorb: float = 20.0, f0: torch.Tensor | None = None, g0: torch.Tensor | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """As ``torch.ops.fastot.sinkhorn_fwd_scaling``: (f, g, n_iter, err, absorptions, fell_back). Scaling
    iterations on chip; a problem too large for the chip runs the log-domain streaming path (fell_back True)."""
    stats: list = []
    f, g, n_iter, err, _, _ = _solve(_Operand(cost=cost), a, b, eps, max_iter, tol, tau_a, tau_b, sums=False,
                                     stats=stats, absorb=absorb, f0=f0, g0=g0)
    return f, g, n_iter, err, *_stats(stats, cost, cost.shape[0])


def _stats(stats: list, like: torch.Tensor, B: int):
    if stats:
        return stats[0], stats[1]
    return (torch.zeros(B, dtype=torch.int32, device=like.device), torch.zeros(B, dtype=torch.bool, device=like.device))


@_define("fastot::triton_sinkhorn_plan")
def sinkhorn_plan(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
                  eps: float) -> torch.Tensor:
    return _plan_pass(_Operand(cost=cost), a, b, f, g, eps, write_plan=True)


@_define("fastot::triton_sinkhorn_plan_sums")
def sinkhorn_plan_sums(cost: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor, g: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _plan_pass(_Operand(cost=cost), a, b, f, g, eps, write_plan=False)


@_define("fastot::triton_sinkhorn_embeddings_fwd")
def sinkhorn_embeddings_fwd(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, cost: int,
                            eps: float, max_iter: int, tol: float | None = None, tau_a: float | None = None,
                            tau_b: float | None = None, f0: torch.Tensor | None = None, g0: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                       torch.Tensor]:
    """Same contract as ``torch.ops.fastot.sinkhorn_embeddings_fwd``: (f, g, n_iter, err, <P,C>, sum P)."""
    return _solve(_Operand(x=x, y=y, kind=cost), a, b, eps, max_iter, tol, tau_a, tau_b, sums=True, f0=f0, g0=g0)


@_define("fastot::triton_sinkhorn_embeddings_fwd_scaling")
def sinkhorn_embeddings_fwd_scaling(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, cost: int,
                                    eps: float, max_iter: int, tol: float | None = None, tau_a: float | None = None,
                                    tau_b: float | None = None, absorb: float = 20.0,
                                    f0: torch.Tensor | None = None, g0: torch.Tensor | None = None
                                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                               torch.Tensor, torch.Tensor, torch.Tensor]:
    """As ``torch.ops.fastot.sinkhorn_embeddings_fwd_scaling`` (on chip; larger problems stream log-domain)."""
    stats: list = []
    out = _solve(_Operand(x=x, y=y, kind=cost), a, b, eps, max_iter, tol, tau_a, tau_b, sums=True, stats=stats,
                 absorb=absorb, f0=f0, g0=g0)
    return (*out, *_stats(stats, x, x.shape[0]))


@_define("fastot::triton_sinkhorn_embeddings_bwd")
def sinkhorn_embeddings_bwd(x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor,
                            g: torch.Tensor, scale: torch.Tensor, cost: int, eps: float, need_dx: bool = True,
                            need_dy: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(dx, dy) of sum_k scale_k <P*_k, C_k(x, y)> with P* held constant, in the compute dtype; a side that is not
    needed is zeros and its kernel is not launched."""
    return _embedding_grads(_Operand(x=x, y=y, kind=cost), a, b, f, g, scale, eps, need_dx, need_dy)


def _embedding_grads(op: _Operand, a, b, f, g, scale, eps, need_dx: bool, need_dy: bool):
    B, N, M, D = op.B, op.N, op.M, op.D
    x, y = op.x, op.y
    a, b = _weights(op, a, b)
    f, g = f.to(op.dt).contiguous(), g.to(op.dt).contiguous()
    w = scale.to(op.dt).contiguous()
    rx, ry = op.rx, op.ry
    cu_x, cu_y = op.cu
    dx = torch.zeros(*op.rows_x, D, dtype=op.dt, device=x.device)
    dy = torch.zeros(*op.rows_y, D, dtype=op.dt, device=x.device)
    consts = op.consts()
    del consts["FROM_EMB"]
    for (u, v, su, sv, ru, rv, cu, cv, wu, wv, pu, pv, out, n, m, need) in (
            (x, y, op.sx, op.sy, rx, ry, cu_x, cu_y, a, b, f, g, dx, N, M, need_dx),
            (y, x, op.sy, op.sx, ry, rx, cu_y, cu_x, b, a, g, f, dy, M, N, need_dy)):
        if B == 0 or n == 0 or D == 0 or not need:
            continue
        grid = lambda meta, n=n: (B, triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(D, meta["BLOCK_D"]))  # noqa: E731
        _wrap(_grad)[grid](u, *su, v, *sv, ru, rv, cu, cv, wu, wv, pu, pv, w, out, n, m, D,
                           *_keys(n, m, D), LOG2E / eps, **consts)
    return dx, dy


@_define("fastot::triton_sinkhorn_embeddings_varlen_fwd")
def sinkhorn_embeddings_varlen_fwd(x: torch.Tensor, y: torch.Tensor, cu_seqlens_x: torch.Tensor,
                                   cu_seqlens_y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, cost: int,
                                   eps: float, max_iter: int, tol: float | None = None, tau_a: float | None = None,
                                   tau_b: float | None = None, absorb: float | None = None,
                                   f0: torch.Tensor | None = None, g0: torch.Tensor | None = None,
                                   max_seqlen_x: int | None = None, max_seqlen_y: int | None = None
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                              torch.Tensor, torch.Tensor, torch.Tensor]:
    """``sinkhorn_embeddings_fwd`` on packed problems: (f [Tx], g [Ty], n_iter, err, <P,C>, sum P, absorptions,
    fell_back), each per problem [B] but f, g; the values of the padded op on the problems padded with zero rows
    of weight 0. x [Tx,D], y [Ty,D]: the problems' rows back to back, problem k owning rows
    cu_seqlens_x[k]:cu_seqlens_x[k+1] of x (int32 or int64 offsets [B+1]); a [Tx], b [Ty], f0 [Tx], g0 [Ty]
    packed alike. ``absorb`` None: log-domain iterations (absorptions 0, fell_back False); a float: the scaling
    iterations of ``sinkhorn_embeddings_fwd_scaling``. max_seqlen_x / _y: the longest problem on each side (read
    from the offsets when None; see ``_varlen_operand``)."""
    B = _check_varlen(x, y, cu_seqlens_x, cu_seqlens_y, a, b, cost, f0=f0, g0=g0, max_seqlen_x=max_seqlen_x,
                      max_seqlen_y=max_seqlen_y)
    op = _varlen_operand(x, y, cu_seqlens_x, cu_seqlens_y, cost, max_seqlen_x, max_seqlen_y)
    stats = None if absorb is None else []
    out = _solve(op, a, b, eps, max_iter, tol, tau_a, tau_b, sums=True, stats=stats,
                 absorb=20.0 if absorb is None else absorb, f0=f0, g0=g0)
    return (*out, *_stats(stats or [], x, B))


@_define("fastot::triton_sinkhorn_embeddings_varlen_bwd")
def sinkhorn_embeddings_varlen_bwd(x: torch.Tensor, y: torch.Tensor, cu_seqlens_x: torch.Tensor,
                                   cu_seqlens_y: torch.Tensor, a: torch.Tensor, b: torch.Tensor, f: torch.Tensor,
                                   g: torch.Tensor, scale: torch.Tensor, cost: int, eps: float, need_dx: bool = True,
                                   need_dy: bool = True, max_seqlen_x: int | None = None,
                                   max_seqlen_y: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``sinkhorn_embeddings_bwd`` on packed problems (see ``sinkhorn_embeddings_varlen_fwd``): dx [Tx,D],
    dy [Ty,D] in the compute dtype; f [Tx], g [Ty], scale [B]."""
    _check_varlen(x, y, cu_seqlens_x, cu_seqlens_y, a, b, cost, f=f, g=g, scale=scale, max_seqlen_x=max_seqlen_x,
                  max_seqlen_y=max_seqlen_y)
    op = _varlen_operand(x, y, cu_seqlens_x, cu_seqlens_y, cost, max_seqlen_x, max_seqlen_y)
    return _embedding_grads(op, a, b, f, g, scale, eps, need_dx, need_dy)


def _fake_dtype(t):
    return torch.float64 if t.dtype == torch.float64 else torch.float32


@sinkhorn_fwd_scaling.register_fake
def _(cost, a, b, eps, max_iter, tol=None, tau_a=None, tau_b=None, absorb=20.0, f0=None, g0=None):
    B, N, M = cost.shape
    _check_warm(f0, g0, B, N, M, cost.device)
    dt = _fake_dtype(cost)
    return (cost.new_empty((B, N), dtype=dt), cost.new_empty((B, M), dtype=dt),
            cost.new_empty((B,), dtype=torch.int32), cost.new_empty((B,), dtype=dt),
            cost.new_empty((B,), dtype=torch.int32), cost.new_empty((B,), dtype=torch.bool))


@sinkhorn_embeddings_fwd_scaling.register_fake
def _(x, y, a, b, cost, eps, max_iter, tol=None, tau_a=None, tau_b=None, absorb=20.0, f0=None, g0=None):
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    _check_warm(f0, g0, B, N, M, x.device)
    dt = _fake_dtype(x)
    e = lambda *s: x.new_empty(s, dtype=dt)  # noqa: E731
    return (e(B, N), e(B, M), x.new_empty((B,), dtype=torch.int32), e(B), e(B), e(B),
            x.new_empty((B,), dtype=torch.int32), x.new_empty((B,), dtype=torch.bool))


@sinkhorn_fwd.register_fake
def _(cost, a, b, eps, max_iter, tol=None, tau_a=None, tau_b=None, f0=None, g0=None):
    B, N, M = cost.shape
    _check_warm(f0, g0, B, N, M, cost.device)
    dt = _fake_dtype(cost)
    return (cost.new_empty((B, N), dtype=dt), cost.new_empty((B, M), dtype=dt),
            cost.new_empty((B,), dtype=torch.int32), cost.new_empty((B,), dtype=dt))


@sinkhorn_plan.register_fake
def _(cost, a, b, f, g, eps):
    return cost.new_empty(cost.shape, dtype=_fake_dtype(cost))


@sinkhorn_plan_sums.register_fake
def _(cost, a, b, f, g, eps):
    dt = _fake_dtype(cost)
    return cost.new_empty((cost.shape[0],), dtype=dt), cost.new_empty((cost.shape[0],), dtype=dt)


@sinkhorn_embeddings_fwd.register_fake
def _(x, y, a, b, cost, eps, max_iter, tol=None, tau_a=None, tau_b=None, f0=None, g0=None):
    B, N, M = x.shape[0], x.shape[1], y.shape[1]
    _check_warm(f0, g0, B, N, M, x.device)
    dt = _fake_dtype(x)
    e = lambda *s: x.new_empty(s, dtype=dt)  # noqa: E731
    return e(B, N), e(B, M), x.new_empty((B,), dtype=torch.int32), e(B), e(B), e(B)


@sinkhorn_embeddings_bwd.register_fake
def _(x, y, a, b, f, g, scale, cost, eps, need_dx=True, need_dy=True):
    dt = _fake_dtype(x)
    return x.new_empty(x.shape, dtype=dt), y.new_empty(y.shape, dtype=dt)


@sinkhorn_embeddings_varlen_fwd.register_fake
def _(x, y, cu_seqlens_x, cu_seqlens_y, a, b, cost, eps, max_iter, tol=None, tau_a=None, tau_b=None, absorb=None,
      f0=None, g0=None, max_seqlen_x=None, max_seqlen_y=None):
    B = _check_varlen(x, y, cu_seqlens_x, cu_seqlens_y, a, b, cost, f0=f0, g0=g0, max_seqlen_x=max_seqlen_x,
                      max_seqlen_y=max_seqlen_y)
    dt = _fake_dtype(x)
    e = lambda *s: x.new_empty(s, dtype=dt)  # noqa: E731
    return (e(x.shape[0]), e(y.shape[0]), x.new_empty((B,), dtype=torch.int32), e(B), e(B), e(B),
            x.new_empty((B,), dtype=torch.int32), x.new_empty((B,), dtype=torch.bool))


@sinkhorn_embeddings_varlen_bwd.register_fake
def _(x, y, cu_seqlens_x, cu_seqlens_y, a, b, f, g, scale, cost, eps, need_dx=True, need_dy=True, max_seqlen_x=None,
      max_seqlen_y=None):
    _check_varlen(x, y, cu_seqlens_x, cu_seqlens_y, a, b, cost, f=f, g=g, scale=scale, max_seqlen_x=max_seqlen_x,
                  max_seqlen_y=max_seqlen_y)
    dt = _fake_dtype(x)
    return x.new_empty(x.shape, dtype=dt), y.new_empty(y.shape, dtype=dt)
