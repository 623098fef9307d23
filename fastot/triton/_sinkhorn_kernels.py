"""Triton kernels of the batched log-domain Sinkhorn (the host side is ``fastot/triton/sinkhorn.py``).

Units. Inside the kernels every log quantity is in base 2, scaled by 1/eps: the cost becomes
``K = C log2(e) / eps`` and the potentials ``F = f log2(e) / eps``, ``G = g log2(e) / eps``, so that

    P_ij = a_i b_j exp((f_i + g_j - C_ij) / eps) = exp2(F_i + log2 a_i + G_j + log2 b_j - K_ij)

and each half-iteration is one ``exp2`` per cost entry. ``Kinv`` is K with +inf wherever the pair is outside
its problem (zero weight on either side, out of range, or a +inf/NaN cost), so the exponent there is -inf.

Two ways through a solve:
- on chip (``_onchip_kernel``): one program per problem holds its whole [BLOCK_N, BLOCK_M] cost tile in
  registers, computed from the cost or from x and y with ``tl.dot``, and runs every iteration in one launch;
  a problem stops on its own once its marginal error is below ``tol``. With WARM it starts from a warm start
  read from separate input buffers, not from 0.
- streaming (``_row_pass_kernel`` / ``_col_pass_kernel``): one launch per half-iteration; each program owns a
  block of rows (columns) and sweeps the other side in tiles with a running-max log-sum-exp. The cost tile is
  read from C or recomputed from x, y in every pass (FlashAttention-style), so [B,N,M] is never stored.
  Per-problem early stop is a flag in global memory that the next launches read: no host synchronisation.
  The state F, G lives in global memory; a warm start is simply its initial content.

Packed problems (VARLEN): x [Tx,D], y [Ty,D] hold the B problems' rows back to back, problem k owning rows
cu_x[k]:cu_x[k+1] (``cu_x_ptr``, int64 [B+1]), and every per-point buffer (weights, potentials, FT, errors,
gradients) is packed alike. Each program then reads its problem's first row and length from the offsets, and
N, M (the kernel arguments: the longest problem, which sizes the grid) become that problem's own lengths;
without VARLEN problem k starts at row k N of [B,N] buffers and at k * stride_b in x. Either way a kernel moves
its pointers to the problem's start once, so ``_cost_block`` and the loops address rows 0..N-1 of one problem.

Scalar arguments that feed fp64 arithmetic are declared ``tl.float64`` (a plain float argument would be fp32)
and cast to the compute dtype ``DT`` inside the kernel.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _cost_block(
    c_ptr, s_cn, s_cm,  # this problem's cost [N,M] and its strides (when not FROM_EMB)
    x_ptr, s_xn, s_xd,  # this problem's row-side embeddings [N,D] and strides (FROM_EMB)
    y_ptr, s_ym, s_yd,  # this problem's column-side embeddings [M,D] and strides (FROM_EMB)
    rx_ptr, ry_ptr,  # this problem's per-point factors [N], [M]: 1/|x| (cosine), |x|^2 (sqeuclidean); unused for dot
    o_n, o_m, m_n, m_m, D,
    m_a, m_b, scale,  # rows/columns inside the problem (weight > 0), log2(e)/eps
    FROM_EMB: tl.constexpr, KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_K: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, DOT_UPCAST: tl.constexpr,
):
    """One [BLOCK_N, BLOCK_M] block of the cost in dtype DT (0 outside the ranges). The pointers point at the
    problem's first row / column, padded or packed alike (see the module docstring).

    From embeddings: KIND 0 cosine 1 - <x,y>/(|x||y|) (norms clamped at 1e-12), 1 squared Euclidean
    |x|^2 + |y|^2 - 2<x,y> clamped at 0, 2 dot -<x,y>; <x,y> accumulates over D in BLOCK_K chunks with tl.dot
    (fp32 accumulation for half inputs). Returns (cost, raw, kinv): raw is the unclamped squared distance for
    KIND 1 (its gradient is zero where the clamp is active) and the cost itself otherwise; kinv is
    K = cost * scale on the pairs inside the problem and +inf elsewhere (zero weight on either side, out of
    range, a +inf or NaN cost), so that exp2(... - kinv) is exactly 0 there.
    """
    o_n64 = o_n.to(tl.int64)  # 64-bit offsets: one problem may hold more than 2^31 cost entries
    o_m64 = o_m.to(tl.int64)
    if FROM_EMB:
        b_acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=DT)
        for k0 in range(0, D, BLOCK_K):
            o_k = k0 + tl.arange(0, BLOCK_K)
            m_k = o_k < D
            b_x = tl.load(x_ptr + o_n64[:, None] * s_xn + o_k[None, :] * s_xd,
                          mask=m_n[:, None] & m_k[None, :], other=0.0)
            b_y = tl.load(y_ptr + o_m64[:, None] * s_ym + o_k[None, :] * s_yd,
                          mask=m_m[:, None] & m_k[None, :], other=0.0)
            if DOT_UPCAST:  # the Triton interpreter multiplies bf16 bit patterns as integers
                b_x = b_x.to(DT)
                b_y = b_y.to(DT)
            b_acc = tl.dot(b_x, tl.trans(b_y), b_acc, input_precision=PREC, out_dtype=DT)
        if KIND == 2:
            b_c = -b_acc
            b_raw = b_c
        else:
            b_rx = tl.load(rx_ptr + o_n, mask=m_n, other=0.0).to(DT)
            b_ry = tl.load(ry_ptr + o_m, mask=m_m, other=0.0).to(DT)
            if KIND == 0:
                b_c = 1.0 - b_acc * b_rx[:, None] * b_ry[None, :]
                b_raw = b_c
            else:
                b_raw = b_rx[:, None] + b_ry[None, :] - 2.0 * b_acc
                b_c = tl.maximum(b_raw, 0.0)
    else:
        b_c = tl.load(c_ptr + o_n64[:, None] * s_cn + o_m64[None, :] * s_cm,
                      mask=m_n[:, None] & m_m[None, :], other=0.0).to(DT)
        b_raw = b_c
    m_valid = m_a[:, None] & m_b[None, :] & (b_c < float("inf"))
    return b_c, b_raw, tl.where(m_valid, b_c * scale, float("inf"))


@triton.jit
def _segment(cu_ptr, i_b):
    """Packed problem i_b's first row cu[i_b] (int64) and its number of rows cu[i_b + 1] - cu[i_b] (int32)."""
    r0 = tl.load(cu_ptr + i_b).to(tl.int64)
    return r0, (tl.load(cu_ptr + i_b + 1) - r0).to(tl.int32)


@triton.jit
def _problem(i_b, N, M, cu_x_ptr, cu_y_ptr, x_ptr, y_ptr, s_xb, s_yb, s_xn, s_ym, VARLEN: tl.constexpr):
    """Problem i_b's first point and length on each side, and x, y moved to its first row: from the offsets
    (packed; N, M become the problem's own lengths) or i_b * N, N (padded)."""
    if VARLEN:
        r_x, n = _segment(cu_x_ptr, i_b)
        r_y, m = _segment(cu_y_ptr, i_b)
        x_ptr += r_x * s_xn
        y_ptr += r_y * s_ym
    else:
        r_x, n = i_b * N, N
        r_y, m = i_b * M, M
        x_ptr += i_b * s_xb
        y_ptr += i_b * s_yb
    return r_x, n, r_y, m, x_ptr, y_ptr


@triton.jit
def _lse2_rows(z):
    """Row-wise base-2 log-sum-exp of z (-inf = excluded): (lse, any entry included); lse = 0 where none is."""
    b_max = tl.max(z, 1)
    m_ok = b_max > float("-inf")
    b_max = tl.where(m_ok, b_max, 0.0)
    b_sum = tl.sum(tl.exp2(z - b_max[:, None]), 1)
    return tl.where(m_ok, b_max + tl.log2(tl.where(m_ok, b_sum, 1.0)), 0.0), m_ok


@triton.jit
def _lse2_cols(z):
    b_max = tl.max(z, 0)
    m_ok = b_max > float("-inf")
    b_max = tl.where(m_ok, b_max, 0.0)
    b_sum = tl.sum(tl.exp2(z - b_max[None, :]), 0)
    return tl.where(m_ok, b_max + tl.log2(tl.where(m_ok, b_sum, 1.0)), 0.0), m_ok


@triton.jit
def _lse2_finish(run_max, run_sum):
    m_ok = run_max > float("-inf")
    return tl.where(m_ok, run_max + tl.log2(tl.where(m_ok, run_sum, 1.0)), 0.0), m_ok


@triton.jit
def _row_error(b_a, b_f, b_ft, m_ok, eps_tau_a, UNBAL_A: tl.constexpr):
    """Per-row marginal violation a_i |exp2(F_i - FT_i) - t_i| (t = 1, or exp2(-F eps/tau_a) when unbalanced)."""
    if UNBAL_A:
        target = tl.exp2(-b_f * eps_tau_a)
    else:
        target = 1.0
    return tl.where(m_ok, b_a * tl.abs(tl.exp2(b_f - b_ft) - target), 0.0)


@triton.jit
def _log_iteration(b_kinv, b_a, b_la, b_lb, b_ft, s_lam_a, s_lam_b, s_eta, UNBAL_A: tl.constexpr):
    """One log-domain iteration from FT (the row c-transform at the current G): (F, G, FT at the new G, err)."""
    b_f = s_lam_a * b_ft
    lse_c, m_okc = _lse2_cols((b_f + b_la)[:, None] - b_kinv)
    b_g = s_lam_b * tl.where(m_okc, -lse_c, 0.0)
    lse, m_ok = _lse2_rows((b_g + b_lb)[None, :] - b_kinv)
    b_ft = tl.where(m_ok, -lse, 0.0)
    return b_f, b_g, b_ft, tl.sum(_row_error(b_a, b_f, b_ft, m_ok, s_eta, UNBAL_A), 0)


@triton.jit
def _scaled(x, base, ok, lam):
    """New scalings from sums x: 1/x on a balanced side (lam = 1), else 2^((lam - 1) base) x^-lam; 1 where not ok."""
    x_safe = tl.where(ok, x, 1.0)
    r = tl.where(lam == 1.0, 1.0 / x_safe, tl.exp2((lam - 1.0) * base - lam * tl.log2(x_safe)))
    return tl.where(ok, r, 1.0)


@triton.jit
def _scaling_error(b_a, b_u, b_s, b_fb, ok_r, s_eta, UNBAL_A: tl.constexpr):
    """sum_i a_i |u_i s_i - target_i| over rows with an allowed pair: the log-domain row error of the state."""
    if UNBAL_A:
        target = tl.exp2(-(b_fb + tl.log2(b_u)) * s_eta)
    else:
        target = 1.0
    return tl.sum(tl.where(ok_r, b_a * tl.abs(b_u * b_s - target), 0.0), 0)


@triton.jit
def _scaling_loop(b_kinv, b_a, b_w, b_la, b_lb, b_f, b_g, b_ft, m_ok, err, n_it, max_iter, s_lam_a, s_lam_b, s_eta,
                  s_tol, s_abs, HAS_TOL: tl.constexpr, UNBAL_A: tl.constexpr, DT: tl.constexpr):
    """The iterations of _onchip_kernel's log-domain loop by stabilized scaling iterations (as the cpp kernel and
    fastot/reference/sinkhorn_scaling.py, in base-2 units): F = FB + log2 u, G = GB + log2 v over the tile
    E = 2^(FB_i + GB_j - K_ij) (0 outside the problem). The first iteration runs in the log domain; then
    u <- from s = E (b v), v <- from E^T (a u): two multiply-add passes over the tile and no exp2 per entry;
    absorbed into FB, GB (E rebuilt) once a scaling leaves [2^-absorb2, 2^absorb2]; on underflow of a sum with
    an allowed pair the problem goes on in the log domain. Returns (F, G, n_iter, err, absorptions, fell back)."""
    go = n_it < max_iter
    if HAS_TOL:
        go = go & ~(err < s_tol)
    if go:  # the first iteration in the log domain: E then starts from O(1) entries
        b_f, b_g, b_ft, err = _log_iteration(b_kinv, b_a, b_la, b_lb, b_ft, s_lam_a, s_lam_b, s_eta, UNBAL_A)
        n_it += 1
    allowed = b_kinv < float("inf")
    ok_r = tl.max(allowed.to(tl.int32), 1) > 0  # points with at least one allowed pair
    ok_c = tl.max(allowed.to(tl.int32), 0) > 0
    b_fb = b_f
    b_gb = b_g
    b_e = tl.exp2(b_fb[:, None] + b_gb[None, :] - b_kinv)
    b_u = tl.full(b_f.shape, 1.0, DT)
    b_v = tl.full(b_g.shape, 1.0, DT)
    b_s = tl.sum(b_e * (b_w * b_v)[None, :], 1)
    hi = tl.exp2(s_abs)
    lo = 1.0 / hi
    n_abs = 0
    fell = 0
    go = n_it < max_iter
    if HAS_TOL:
        go = go & ~(err < s_tol)
    while go:
        if fell == 0:
            u_new = _scaled(b_s, b_fb, ok_r, s_lam_a)
            b_t = tl.sum(b_e * (b_a * u_new)[:, None], 0)
            v_new = _scaled(b_t, b_gb, ok_c, s_lam_b)
            bad_r = ok_r & ~((b_s > 0) & (b_s < float("inf")) & (u_new < float("inf")))
            bad_c = ok_c & ~((b_t > 0) & (b_t < float("inf")) & (v_new < float("inf")))
            bad = (tl.max(bad_r.to(tl.int32), 0) + tl.max(bad_c.to(tl.int32), 0)) > 0
            if bad:  # underflow: on in the log domain from the current (not the new) scalings
                fell = 1
                b_f = tl.where(ok_r, b_fb + tl.log2(b_u), 0.0)
                b_g = tl.where(ok_c, b_gb + tl.log2(b_v), 0.0)
                lse, m_ok = _lse2_rows((b_g + b_lb)[None, :] - b_kinv)
                b_ft = tl.where(m_ok, -lse, 0.0)
            else:
                b_u = u_new
                b_v = v_new
                far_u = (tl.max(b_u, 0) > hi) | (tl.min(b_u, 0) < lo)
                far_v = (tl.max(b_v, 0) > hi) | (tl.min(b_v, 0) < lo)
                if far_u | far_v:  # absorb the scalings into the bases; rebuild the tile
                    b_fb = b_fb + tl.log2(b_u)
                    b_gb = b_gb + tl.log2(b_v)
                    b_u = tl.full(b_f.shape, 1.0, DT)
                    b_v = tl.full(b_g.shape, 1.0, DT)
                    b_e = tl.exp2(b_fb[:, None] + b_gb[None, :] - b_kinv)
                    n_abs += 1
                b_s = tl.sum(b_e * (b_w * b_v)[None, :], 1)
                err = _scaling_error(b_a, b_u, b_s, b_fb, ok_r, s_eta, UNBAL_A)
        if fell != 0:
            b_f, b_g, b_ft, err = _log_iteration(b_kinv, b_a, b_la, b_lb, b_ft, s_lam_a, s_lam_b, s_eta, UNBAL_A)
        n_it += 1
        go = n_it < max_iter
        if HAS_TOL:
            go = go & ~(err < s_tol)
    if fell == 0:
        b_f = tl.where(ok_r, b_fb + tl.log2(b_u), 0.0)
        b_g = tl.where(ok_c, b_gb + tl.log2(b_v), 0.0)
    return b_f, b_g, n_it, err, n_abs, fell


# --------------------------------------------------------------------------- on chip: one program per problem
@triton.jit(do_not_specialize=["max_iter"])
def _onchip_kernel(
    c_ptr, s_cb, s_cn, s_cm,  # cost [B,N,M] (FROM_EMB=False)
    x_ptr, s_xb, s_xn, s_xd,  # x [B,N,D] (FROM_EMB=True)
    y_ptr, s_yb, s_ym, s_yd,  # y [B,M,D]
    rx_ptr, ry_ptr,  # cost factors [B,N], [B,M] (see _cost_block)
    cu_x_ptr, cu_y_ptr,  # VARLEN: row offsets [B+1] (int64) of the packed problems (see the module docstring)
    a_ptr, b_ptr,  # weights [B,N], [B,M], contiguous, dtype DT
    f_ptr, g_ptr,  # out: potentials [B,N], [B,M] (natural units, dtype DT)
    nit_ptr, err_ptr,  # out: iterations [B] int32, marginal error [B]
    tc_ptr, mass_ptr,  # out: <P, C> [B] and sum P [B] (only when SUMS)
    N, M, D,
    scale: tl.float64,  # log2(e) / eps
    unscale: tl.float64,  # eps / log2(e): back to natural units
    lam_a: tl.float64, lam_b: tl.float64,  # tau / (tau + eps), 1 when balanced
    eps_tau_a: tl.float64,  # eps / tau_a (unbalanced error target)
    tol: tl.float64,  # stop below this error (HAS_TOL)
    max_iter,
    D_KEY,  # D rounded up to a power of two: part of the autotune key (unused here)
    absorb2: tl.float64,  # SCALING: absorb once a scaling leaves [2^-absorb2, 2^absorb2]
    nabs_ptr, fell_ptr,  # SCALING, out: absorptions [B] int32, fell back to the log domain [B] int32
    f0_ptr, g0_ptr,  # WARM: initial potentials [B,N], [B,M] (natural units, dtype DT; 0 off the problem)
    FROM_EMB: tl.constexpr, KIND: tl.constexpr, HAS_TOL: tl.constexpr, UNBAL_A: tl.constexpr,
    SUMS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    PREC: tl.constexpr, DT: tl.constexpr, DOT_UPCAST: tl.constexpr, SCALING: tl.constexpr = False,
    WARM: tl.constexpr = False, VARLEN: tl.constexpr = False,
):
    i_b = tl.program_id(0).to(tl.int64)
    # packed: this problem's rows and columns from the offsets; N, M become its own lengths
    r_x, N, r_y, M, x_ptr, y_ptr = _problem(i_b, N, M, cu_x_ptr, cu_y_ptr, x_ptr, y_ptr, s_xb, s_yb, s_xn, s_ym,
                                            VARLEN)
    if not VARLEN:
        c_ptr += i_b * s_cb
    o_n = tl.arange(0, BLOCK_N)
    o_m = tl.arange(0, BLOCK_M)
    m_n = o_n < N
    m_m = o_m < M
    s_k = tl.full((), scale, DT)
    s_lam_a = tl.full((), lam_a, DT)
    s_lam_b = tl.full((), lam_b, DT)
    s_eta = tl.full((), eps_tau_a, DT)
    s_tol = tl.full((), tol, DT)

    b_a = tl.load(a_ptr + r_x + o_n, mask=m_n, other=0.0)
    b_w = tl.load(b_ptr + r_y + o_m, mask=m_m, other=0.0)
    m_a = b_a > 0
    b_la = tl.log2(tl.where(m_a, b_a, 1.0))  # 0 where the weight is 0
    m_b = b_w > 0
    b_lb = tl.log2(tl.where(m_b, b_w, 1.0))
    b_c, b_raw, b_kinv = _cost_block(c_ptr, s_cn, s_cm, x_ptr, s_xn, s_xd, y_ptr, s_ym, s_yd, rx_ptr + r_x,
                                     ry_ptr + r_y, o_n, o_m, m_n, m_m, D, m_a, m_b, s_k,
                                     FROM_EMB, KIND, BLOCK_N, BLOCK_M, BLOCK_K, PREC, DT, DOT_UPCAST)

    if WARM:  # the iterations start from the warm start (separate buffers: autotuning reruns the kernel)
        b_f = tl.load(f0_ptr + r_x + o_n, mask=m_n, other=0.0) * s_k
        b_g = tl.load(g0_ptr + r_y + o_m, mask=m_m, other=0.0) * s_k
    else:
        b_f = tl.zeros((BLOCK_N,), dtype=DT)
        b_g = tl.zeros((BLOCK_M,), dtype=DT)
    lse, m_ok = _lse2_rows((b_g + b_lb)[None, :] - b_kinv)
    b_ft = tl.where(m_ok, -lse, 0.0)
    err = tl.sum(_row_error(b_a, b_f, b_ft, m_ok, s_eta, UNBAL_A), 0)
    n_it = 0
    go = n_it < max_iter
    if HAS_TOL:
        go = go & ~(err < s_tol)
    if SCALING:
        b_f, b_g, n_it, err, n_abs, fell = _scaling_loop(
            b_kinv, b_a, b_w, b_la, b_lb, b_f, b_g, b_ft, m_ok, err, n_it, max_iter, s_lam_a, s_lam_b, s_eta, s_tol,
            tl.full((), absorb2, DT), HAS_TOL, UNBAL_A, DT)
        tl.store(nabs_ptr + i_b, n_abs)
        tl.store(fell_ptr + i_b, fell)
    else:
        while go:
            b_f = s_lam_a * b_ft
            lse_c, m_okc = _lse2_cols((b_f + b_la)[:, None] - b_kinv)
            b_g = s_lam_b * tl.where(m_okc, -lse_c, 0.0)
            lse, m_ok = _lse2_rows((b_g + b_lb)[None, :] - b_kinv)
            b_ft = tl.where(m_ok, -lse, 0.0)
            n_it += 1
            go = n_it < max_iter
            if HAS_TOL:
                err = tl.sum(_row_error(b_a, b_f, b_ft, m_ok, s_eta, UNBAL_A), 0)
                go = go & ~(err < s_tol)
        if not HAS_TOL:
            err = tl.sum(_row_error(b_a, b_f, b_ft, m_ok, s_eta, UNBAL_A), 0)

    s_un = tl.full((), unscale, DT)
    tl.store(f_ptr + r_x + o_n, b_f * s_un, mask=m_n)
    tl.store(g_ptr + r_y + o_m, b_g * s_un, mask=m_m)
    tl.store(nit_ptr + i_b, n_it)
    tl.store(err_ptr + i_b, err)
    if SUMS:
        b_p = tl.exp2((b_f + b_la)[:, None] + (b_g + b_lb)[None, :] - b_kinv)
        tl.store(tc_ptr + i_b, tl.sum(tl.sum(b_p * tl.where(b_p > 0, b_c, 0.0), 1), 0))
        tl.store(mass_ptr + i_b, tl.sum(tl.sum(b_p, 1), 0))


# --------------------------------------------------------------------------- streaming: one launch per half-iteration
@triton.jit
def _row_pass_kernel(
    c_ptr, s_cb, s_cn, s_cm, x_ptr, s_xb, s_xn, s_xd, y_ptr, s_yb, s_ym, s_yd, rx_ptr, ry_ptr,  # as _onchip_kernel
    cu_x_ptr, cu_y_ptr,  # VARLEN: row offsets [B+1]
    a_ptr, b_ptr,  # weights [B,N], [B,M]
    f_ptr, g_ptr,  # state F [B,N], G [B,M] (base-2 units)
    ft_ptr, re_ptr,  # out: row c-transform FT [B,N] and per-row marginal error [B,N]
    done_ptr,  # per-problem stop flag [B] int32 (read only here)
    N, M, D,
    N_KEY, M_KEY, D_KEY,  # N, M, D rounded up to powers of two: the autotune key (unused here), so ragged
    # batches of a new length reuse the tuning of their size class instead of timing every config again
    scale: tl.float64, eps_tau_a: tl.float64,
    USE_DONE: tl.constexpr, FROM_EMB: tl.constexpr, KIND: tl.constexpr, UNBAL_A: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr,
    DOT_UPCAST: tl.constexpr, VARLEN: tl.constexpr = False,
):
    """FT_i = -LSE2_j(G_j + log2 b_j - K_ij) for one block of rows, and each row's marginal error at (F, FT)."""
    i_b = tl.program_id(0).to(tl.int64)
    r_x, N, r_y, M, x_ptr, y_ptr = _problem(i_b, N, M, cu_x_ptr, cu_y_ptr, x_ptr, y_ptr, s_xb, s_yb, s_xn, s_ym,
                                            VARLEN)
    if not VARLEN:
        c_ptr += i_b * s_cb
    o_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    active = True
    if USE_DONE:
        active = tl.load(done_ptr + i_b) == 0
    if VARLEN:  # the grid covers the longest problem: blocks past this one's rows have nothing to do
        active = (tl.program_id(1) * BLOCK_N < N) & active
    if active:
        s_k = tl.full((), scale, DT)
        b_a = tl.load(a_ptr + r_x + o_n, mask=m_n, other=0.0)
        m_a = b_a > 0
        run_max = tl.full((BLOCK_N,), float("-inf"), DT)
        run_sum = tl.zeros((BLOCK_N,), DT)
        for m0 in range(0, M, BLOCK_M):
            o_m = m0 + tl.arange(0, BLOCK_M)
            m_m = o_m < M
            b_wb = tl.load(b_ptr + r_y + o_m, mask=m_m, other=0.0)
            m_b = b_wb > 0
            b_lb = tl.log2(tl.where(m_b, b_wb, 1.0))  # 0 where the weight is 0
            b_g = tl.load(g_ptr + r_y + o_m, mask=m_m, other=0.0)
            b_c, b_raw, b_kinv = _cost_block(c_ptr, s_cn, s_cm, x_ptr, s_xn, s_xd, y_ptr, s_ym, s_yd, rx_ptr + r_x,
                                             ry_ptr + r_y, o_n, o_m, m_n, m_m, D, m_a, m_b, s_k,
                                             FROM_EMB, KIND, BLOCK_N, BLOCK_M, BLOCK_K, PREC, DT, DOT_UPCAST)
            z = (b_g + b_lb)[None, :] - b_kinv
            new_max = tl.maximum(run_max, tl.max(z, 1))  # online log-sum-exp over the column tiles
            safe = tl.where(new_max > float("-inf"), new_max, 0.0)
            run_sum = run_sum * tl.exp2(run_max - safe) + tl.sum(tl.exp2(z - safe[:, None]), 1)
            run_max = new_max
        lse, m_ok = _lse2_finish(run_max, run_sum)
        b_ft = tl.where(m_ok, -lse, 0.0)
        b_f = tl.load(f_ptr + r_x + o_n, mask=m_n, other=0.0)
        tl.store(ft_ptr + r_x + o_n, b_ft, mask=m_n)
        tl.store(re_ptr + r_x + o_n, _row_error(b_a, b_f, b_ft, m_ok, tl.full((), eps_tau_a, DT), UNBAL_A),
                 mask=m_n)


@triton.jit(do_not_specialize=["it"])
def _col_pass_kernel(
    c_ptr, s_cb, s_cn, s_cm, x_ptr, s_xb, s_xn, s_xd, y_ptr, s_yb, s_ym, s_yd, rx_ptr, ry_ptr,  # as _onchip_kernel
    cu_x_ptr, cu_y_ptr,  # VARLEN: row offsets [B+1]
    a_ptr, b_ptr,  # weights [B,N], [B,M]
    f_ptr, g_ptr,  # state F [B,N] (written by column block 0), G [B,M] (written)
    ft_ptr, re_ptr,  # row c-transform and per-row error from the row pass
    done_ptr, nit_ptr,  # stop flag [B] int32, iteration count [B] int32
    N, M, D, it,  # it: index of this iteration (0-based)
    N_KEY, M_KEY, D_KEY,  # autotune key (see _row_pass_kernel)
    scale: tl.float64, lam_a: tl.float64, lam_b: tl.float64, tol: tl.float64,
    err_ptr,  # out: marginal error [B] (ERR_ONLY)
    HAS_TOL: tl.constexpr, ERR_ONLY: tl.constexpr, FROM_EMB: tl.constexpr, KIND: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr,
    DOT_UPCAST: tl.constexpr, VARLEN: tl.constexpr = False,
):
    """Finish iteration ``it``: unless the problem has stopped (or its error is now below tol, which stops it),
    F <- lam_a FT and G_j <- lam_b (-LSE2_i(F_i + log2 a_i - K_ij)) for one block of columns.

    With ERR_ONLY (after the last row pass) it only stores each problem's error, summed exactly as the stop test
    sums it, so a problem that stopped reports an error below tol. Every write is a function of the row pass's
    output alone, so running the kernel twice (autotuning) is harmless."""
    i_b = tl.program_id(0).to(tl.int64)
    r_x, N, r_y, M, x_ptr, y_ptr = _problem(i_b, N, M, cu_x_ptr, cu_y_ptr, x_ptr, y_ptr, s_xb, s_yb, s_xn, s_ym,
                                            VARLEN)
    if not VARLEN:
        c_ptr += i_b * s_cb
    i_m = tl.program_id(1)
    o_m = i_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_m = o_m < M
    active = tl.load(done_ptr + i_b) == 0
    if HAS_TOL or ERR_ONLY:
        err = tl.zeros((BLOCK_N,), DT)
        for n0 in range(0, N, BLOCK_N):
            o_n = n0 + tl.arange(0, BLOCK_N)
            err += tl.load(re_ptr + r_x + o_n, mask=o_n < N, other=0.0)
        err_sum = tl.sum(err, 0)
    if ERR_ONLY:
        if i_m == 0:
            tl.store(err_ptr + i_b, err_sum)
        active = False
    elif HAS_TOL:
        stop = active & (err_sum < tl.full((), tol, DT))
        tl.store(done_ptr + i_b, 1, mask=stop)
        active = active & ~stop
    if VARLEN:  # column blocks past this problem's columns have nothing to do (block 0 still writes F, n_iter)
        active = active & ((i_m == 0) | (i_m * BLOCK_M < M))
    if active:
        s_k = tl.full((), scale, DT)
        s_lam_a = tl.full((), lam_a, DT)
        b_wb = tl.load(b_ptr + r_y + o_m, mask=m_m, other=0.0)
        m_b = b_wb > 0
        run_max = tl.full((BLOCK_M,), float("-inf"), DT)
        run_sum = tl.zeros((BLOCK_M,), DT)
        for n0 in range(0, N, BLOCK_N):
            o_n = n0 + tl.arange(0, BLOCK_N)
            m_n = o_n < N
            b_wa = tl.load(a_ptr + r_x + o_n, mask=m_n, other=0.0)
            m_a = b_wa > 0
            b_la = tl.log2(tl.where(m_a, b_wa, 1.0))  # 0 where the weight is 0
            b_f = s_lam_a * tl.load(ft_ptr + r_x + o_n, mask=m_n, other=0.0)
            if i_m == 0:
                tl.store(f_ptr + r_x + o_n, b_f, mask=m_n)
            b_c, b_raw, b_kinv = _cost_block(c_ptr, s_cn, s_cm, x_ptr, s_xn, s_xd, y_ptr, s_ym, s_yd, rx_ptr + r_x,
                                             ry_ptr + r_y, o_n, o_m, m_n, m_m, D, m_a, m_b, s_k,
                                             FROM_EMB, KIND, BLOCK_N, BLOCK_M, BLOCK_K, PREC, DT, DOT_UPCAST)
            z = (b_f + b_la)[:, None] - b_kinv
            new_max = tl.maximum(run_max, tl.max(z, 0))  # online log-sum-exp over the row tiles
            safe = tl.where(new_max > float("-inf"), new_max, 0.0)
            run_sum = run_sum * tl.exp2(run_max - safe) + tl.sum(tl.exp2(z - safe[None, :]), 0)
            run_max = new_max
        lse, m_ok = _lse2_finish(run_max, run_sum)
        tl.store(g_ptr + r_y + o_m, tl.full((), lam_b, DT) * tl.where(m_ok, -lse, 0.0), mask=m_m)
        if i_m == 0:
            tl.store(nit_ptr + i_b, it + 1)


# --------------------------------------------------------------------------- plan, its sums, and gradients
@triton.jit
def _plan_kernel(
    c_ptr, s_cb, s_cn, s_cm, x_ptr, s_xb, s_xn, s_xd, y_ptr, s_yb, s_ym, s_yd, rx_ptr, ry_ptr,  # as _onchip_kernel
    cu_x_ptr, cu_y_ptr,  # VARLEN: row offsets [B+1] (SUMS only: no plan is written for packed problems)
    a_ptr, b_ptr,  # weights [B,N], [B,M]
    f_ptr, g_ptr,  # potentials [B,N], [B,M] (natural units)
    p_ptr,  # out: plan [B,N,M] contiguous (WRITE_PLAN)
    tc_ptr, mass_ptr,  # out: per row block partial <P, C> and sum P, [B, cdiv(N, BLOCK_N)] (SUMS)
    N, M, D, n_blocks,
    scale: tl.float64,
    WRITE_PLAN: tl.constexpr, SUMS: tl.constexpr, FROM_EMB: tl.constexpr, KIND: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr,
    DOT_UPCAST: tl.constexpr, VARLEN: tl.constexpr = False,
):
    """P_ij = exp2((f_i + g_j - C_ij) log2(e)/eps + log2 a_i + log2 b_j) for one block of rows; 0 outside."""
    i_b = tl.program_id(0).to(tl.int64)
    i_n = tl.program_id(1)
    m_hi = M  # columns swept
    r_x, N, r_y, M, x_ptr, y_ptr = _problem(i_b, N, M, cu_x_ptr, cu_y_ptr, x_ptr, y_ptr, s_xb, s_yb, s_xn, s_ym,
                                            VARLEN)
    if VARLEN:  # a row block past this problem's rows sweeps none (its sums are 0)
        m_hi = tl.where(i_n * BLOCK_N < N, M, 0)
    else:
        c_ptr += i_b * s_cb
    o_n = i_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_n = o_n < N
    s_k = tl.full((), scale, DT)
    b_wa = tl.load(a_ptr + r_x + o_n, mask=m_n, other=0.0)
    m_a = b_wa > 0
    b_la = tl.log2(tl.where(m_a, b_wa, 1.0))  # 0 where the weight is 0
    b_f = tl.load(f_ptr + r_x + o_n, mask=m_n, other=0.0).to(DT) * s_k + b_la
    acc_tc = tl.zeros((BLOCK_N,), DT)
    acc_mass = tl.zeros((BLOCK_N,), DT)
    for m0 in range(0, m_hi, BLOCK_M):
        o_m = m0 + tl.arange(0, BLOCK_M)
        m_m = o_m < M
        b_wb = tl.load(b_ptr + r_y + o_m, mask=m_m, other=0.0)
        m_b = b_wb > 0
        b_lb = tl.log2(tl.where(m_b, b_wb, 1.0))  # 0 where the weight is 0
        b_g = tl.load(g_ptr + r_y + o_m, mask=m_m, other=0.0).to(DT) * s_k + b_lb
        b_c, b_raw, b_kinv = _cost_block(c_ptr, s_cn, s_cm, x_ptr, s_xn, s_xd, y_ptr, s_ym, s_yd, rx_ptr + r_x,
                                         ry_ptr + r_y, o_n, o_m, m_n, m_m, D, m_a, m_b, s_k,
                                         FROM_EMB, KIND, BLOCK_N, BLOCK_M, BLOCK_K, PREC, DT, DOT_UPCAST)
        b_p = tl.exp2(b_f[:, None] + b_g[None, :] - b_kinv)
        if WRITE_PLAN:
            tl.store(p_ptr + (i_b * N + o_n.to(tl.int64))[:, None] * M + o_m[None, :], b_p,
                     mask=m_n[:, None] & m_m[None, :])
        if SUMS:
            acc_tc += tl.sum(b_p * tl.where(b_p > 0, b_c, 0.0), 1)
            acc_mass += tl.sum(b_p, 1)
    if SUMS:
        tl.store(tc_ptr + i_b * n_blocks + i_n, tl.sum(acc_tc, 0))
        tl.store(mass_ptr + i_b * n_blocks + i_n, tl.sum(acc_mass, 0))


@triton.jit
def _embedding_grad_kernel(
    x_ptr, s_xb, s_xn, s_xd,  # this side's embeddings [B,N,D] (the gradient is taken w.r.t. these)
    y_ptr, s_yb, s_ym, s_yd,  # the other side's embeddings [B,M,D]
    rx_ptr, ry_ptr,  # cost factors [B,N], [B,M] (see _cost_block)
    cu_x_ptr, cu_y_ptr,  # VARLEN: row offsets [B+1] of this side and the other
    a_ptr, b_ptr,  # weights [B,N], [B,M]
    f_ptr, g_ptr,  # potentials [B,N], [B,M] (natural units)
    w_ptr,  # per-problem factor [B] of the gradient (the incoming gradient of the loss)
    dx_ptr,  # out: [B,N,D] ([Tx,D] packed) contiguous, dtype DT
    N, M, D,
    N_KEY, M_KEY, D_KEY,  # autotune key (see _row_pass_kernel)
    scale: tl.float64,
    KIND: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_D: tl.constexpr, PREC: tl.constexpr, DT: tl.constexpr, DOT_UPCAST: tl.constexpr,
    VARLEN: tl.constexpr = False,
):
    """dx_i = w sum_j P_ij dC_ij/dx_i for one block of rows and one BLOCK_D slice of the features, with P
    recomputed block by block from the potentials (never stored). Written as dx_i = sum_j W_ij y_j + c_i x_i:
    dot: W = -w P, c = 0; sqeuclidean: W = -2 w P, c_i = 2 w sum_j P_ij (P = 0 where the clamp at 0 is active);
    cosine: W_ij = -w P_ij / (|x_i| |y_j|), c_i = w sum_j P_ij (1 - C_ij) / |x_i|^2 (c = 0 below the 1e-12
    norm clamp, where x/1e-12 is linear). By symmetry of the costs, dy is the same kernel with the sides
    swapped."""
    i_b = tl.program_id(0).to(tl.int64)
    m_hi = M  # columns swept
    r_x, N, r_y, M, x_ptr, y_ptr = _problem(i_b, N, M, cu_x_ptr, cu_y_ptr, x_ptr, y_ptr, s_xb, s_yb, s_xn, s_ym,
                                            VARLEN)
    if VARLEN:  # a row block past this problem's rows sweeps none (writes nothing)
        m_hi = tl.where(tl.program_id(1) * BLOCK_N < N, M, 0)
    o_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    o_d = tl.program_id(2) * BLOCK_D + tl.arange(0, BLOCK_D)
    m_n = o_n < N
    m_d = o_d < D
    s_k = tl.full((), scale, DT)
    s_w = tl.load(w_ptr + i_b).to(DT)
    b_wa = tl.load(a_ptr + r_x + o_n, mask=m_n, other=0.0)
    m_a = b_wa > 0
    b_la = tl.log2(tl.where(m_a, b_wa, 1.0))  # 0 where the weight is 0
    b_f = tl.load(f_ptr + r_x + o_n, mask=m_n, other=0.0).to(DT) * s_k + b_la
    if KIND == 0:
        b_rx = tl.load(rx_ptr + r_x + o_n, mask=m_n, other=0.0).to(DT)
    acc = tl.zeros((BLOCK_N, BLOCK_D), DT)
    acc_c = tl.zeros((BLOCK_N,), DT)
    for m0 in range(0, m_hi, BLOCK_M):
        o_m = m0 + tl.arange(0, BLOCK_M)
        m_m = o_m < M
        b_wb = tl.load(b_ptr + r_y + o_m, mask=m_m, other=0.0)
        m_b = b_wb > 0
        b_lb = tl.log2(tl.where(m_b, b_wb, 1.0))  # 0 where the weight is 0
        b_g = tl.load(g_ptr + r_y + o_m, mask=m_m, other=0.0).to(DT) * s_k + b_lb
        b_c, b_raw, b_kinv = _cost_block(x_ptr, 0, 0, x_ptr, s_xn, s_xd, y_ptr, s_ym, s_yd, rx_ptr + r_x,
                                         ry_ptr + r_y, o_n, o_m, m_n, m_m, D, m_a, m_b, s_k,
                                         True, KIND, BLOCK_N, BLOCK_M, BLOCK_K, PREC, DT, DOT_UPCAST)
        b_p = tl.exp2(b_f[:, None] + b_g[None, :] - b_kinv)
        if KIND == 0:
            b_ry = tl.load(ry_ptr + r_y + o_m, mask=m_m, other=0.0).to(DT)
            acc_c += tl.sum(b_p * tl.where(b_p > 0, 1.0 - b_c, 0.0), 1)
            b_wt = -s_w * b_p * b_rx[:, None] * b_ry[None, :]
        elif KIND == 1:
            b_p = tl.where(b_raw < 0, 0.0, b_p)
            acc_c += tl.sum(b_p, 1)
            b_wt = -2.0 * s_w * b_p
        else:
            b_wt = -s_w * b_p
        b_y = tl.load(y_ptr + o_m.to(tl.int64)[:, None] * s_ym + o_d[None, :] * s_yd,
                      mask=m_m[:, None] & m_d[None, :], other=0.0)
        # W stays in the compute dtype: its entries are ~1/(N M) and would lose most digits in bf16 (fp16 flushes
        # them to zero), so half inputs are upcast here rather than W cast down.
        acc = tl.dot(b_wt, b_y.to(DT), acc, input_precision=PREC, out_dtype=DT)
    b_x = tl.load(x_ptr + o_n.to(tl.int64)[:, None] * s_xn + o_d[None, :] * s_xd,
                  mask=m_n[:, None] & m_d[None, :], other=0.0).to(DT)
    if KIND == 0:
        b_coef = tl.where(b_rx < 1e12, s_w * acc_c * b_rx * b_rx, 0.0)
        acc += b_coef[:, None] * b_x
    elif KIND == 1:
        acc += (2.0 * s_w * acc_c)[:, None] * b_x
    tl.store(dx_ptr + (r_x + o_n.to(tl.int64))[:, None] * D + o_d[None, :], acc, mask=m_n[:, None] & m_d[None, :])
