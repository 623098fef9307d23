// CPU Sinkhorn: torch glue, the iteration logic and the parallel schedule. The O(N·M) inner loops are
// in sinkhorn_simd.h, compiled per instruction set (base / AVX2+FMA / AVX-512) and chosen at run time.
//
// Each problem is first gathered into a dense tile Cs = C / eps over its valid rows (a_i > 0) and
// columns (b_j > 0): ragged problems only pay for their real tokens, hot loops have no masks, and padded
// cost entries are never read. Two schedules:
//  * many problems (B >= 2 x threads): one problem per task, every iteration on one core, tile in cache;
//  * few problems: problems in turn, each half-iteration split over row (or column) blocks.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <algorithm>
#include <limits>
#include <string>
#include <tuple>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "cpu/sinkhorn_kernels.h"

namespace fastot {
namespace cpu {

namespace {

Isa detect_isa() {
  Isa best = Isa::base;
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::avx2;
  if (best == Isa::avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl"))
    best = Isa::avx512;
  // FASTOT_CPU_ISA=base|avx2|avx512 caps the choice (for benchmarks and tests); it never raises it.
  if (const char* env = std::getenv("FASTOT_CPU_ISA")) {
    const std::string s(env);
    if (s == "base" || s == "avx2" || s == "avx512") {
      const Isa want = s == "base" ? Isa::base : s == "avx2" ? Isa::avx2 : Isa::avx512;
      if (static_cast<int>(want) < static_cast<int>(best)) best = want;
    } else {
      TORCH_WARN("FASTOT_CPU_ISA='", s, "' is not one of base, avx2, avx512; ignoring it");
    }
  }
  return best;
}

template <typename T>
const Kernels<T>* pick(Isa isa) {
  switch (isa) {
    case Isa::avx512: return kernels_for<Isa::avx512, T>();
    case Isa::avx2: return kernels_for<Isa::avx2, T>();
    default: return kernels_for<Isa::base, T>();
  }
}

template <typename T>
const Kernels<T>* kernels() {
  static const Kernels<T>* k = pick<T>(detect_isa());
  return k;
}

template <typename T>
struct Options {
  T eps;
  int64_t max_iter;
  bool has_tol;
  T tol;
  bool unb_a, unb_b;
  T tau_a, tau_b;
  // warm start [B, N], [B, M] in the compute dtype, or null (potentials start at 0); read on real points only
  const T* f0 = nullptr;
  const T* g0 = nullptr;
  // a symmetric problem (x = y, a = b: rows and columns are the same points): each iteration ends with the averaged
  // state f = g = (f + g) / 2, i.e. h <- (T(h) + T(T(h))) / 2 (log-domain iterations only)
  bool symmetric = false;
  // an eps schedule run before the solve at eps: one iteration at each of these values (the tile rescaled to it in
  // place, never rebuilt), each from the state the one before left; n_iter counts them
  const double* stages = nullptr;
  int64_t n_stages = 0;
  // whether the error of the final state is computed when no tol stopped the iterations (a stage's is not used)
  bool final_error = true;
  // the damping of each side's update: tau / (tau + eps) on a KL-relaxed side, 1 on a balanced one
  T lam_a() const { return unb_a ? tau_a / (tau_a + eps) : T(1); }
  T lam_b() const { return unb_b ? tau_b / (tau_b + eps) : T(1); }
};

// sinkhorn_embeddings: buffers of one problem's embeddings (part of its Tile, so one per thread).
template <typename T>
struct EmbeddingTile {
  std::vector<T> xbuf, ybuf, sx, sy;  // gathered rows (when needed); per-row 1/|.| (cosine) or |.|^2 (sqeuclidean)
  std::vector<uint8_t> x_linear, y_linear;  // cosine: rows with |.| <= 1e-12, where x / 1e-12 is linear
  std::vector<T> rx, ry, gbuf;        // backward: per-row coefficients, one [max(n, m), d] GEMM output
  const T* xp = nullptr;
  const T* yp = nullptr;
};

// The state of the scaling iterations (method "scaling"): f = fb + eps log u, g = gb + eps log v over the
// stabilized kernel K = exp((fb + gb - C) / eps) (n x ld; 0 for a forbidden pair and on padding). w = b v and
// z = a u are the vectors the products take, s = K w and t = K^T z their results; un, vn the candidate scalings;
// wa, wb the weights, ok_a, ok_b 1 for points with at least one allowed pair, wok_a = wa ok_a. Row vectors have
// ldT entries, column vectors ld (padding: weight 0, ok 0). KT (m x ldT): K transposed, kept for small tiles.
template <typename T>
struct ScalingState {
  std::vector<T> K, KT, fb, gb, u, v, un, vn, w, z, s, t, wa, wb, ok_a, ok_b, wok_a;
};

// One problem, gathered: valid row/column indices, their log-weights, the dense tile Cs = C/eps (n x ld,
// ld = m rounded up to 64 bytes) and its transpose CsT (m x ldT); padding entries are +inf (contribute
// nothing). The g-update reduces Cs over rows, the f-update CsT over its rows, both vectorised across
// the output index. CsT is only built by the solver (want_transpose).
template <typename T>
struct Tile {
  std::vector<int64_t> rows, cols;
  std::vector<T> a, loga, logb, Cs, CsT;
  std::vector<T> Cs_kept, CsT_kept;  // an eps schedule: Cs, CsT as filled, while the stages rescale them
  int64_t ld = 0, ldT = 0;
  // iteration state and scratch
  std::vector<T> f, g, fs, gs, lse_r, lse_c, colmax, colsum;
  at::Tensor cost;  // sinkhorn_embeddings: this problem's [n, m] cost, storage reused across the chunk's problems
  EmbeddingTile<T> emb;
  ScalingState<T> sc;

  // The valid rows and columns of a problem and their log-weights.
  void select(const T* aw, const T* bw, int64_t N, int64_t M) {
    rows.clear();
    cols.clear();
    a.clear();
    loga.clear();
    logb.clear();
    for (int64_t i = 0; i < N; ++i)
      if (aw[i] > 0) {
        rows.push_back(i);
        a.push_back(aw[i]);
        loga.push_back(std::log(aw[i]));
      }
    for (int64_t j = 0; j < M; ++j)
      if (bw[j] > 0) {
        cols.push_back(j);
        logb.push_back(std::log(bw[j]));
      }
  }

  // Cs from a cost source: src(r) points at the costs of the r-th valid row; with `full_row` those hold all M
  // columns (picked through `cols`), otherwise only the m valid ones.
  template <typename RowSrc>
  void fill(RowSrc src, bool full_row, int64_t M, T inv_eps, bool want_transpose) {
    const int64_t n = rows.size(), m = cols.size();
    ld = (m + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
    Cs.resize(n * ld);
    const bool dense_cols = !full_row || m == M;
    for (int64_t r = 0; r < n; ++r) {
      const T* s = src(r);
      T* dst = Cs.data() + r * ld;
      if (dense_cols) {
        for (int64_t j = 0; j < m; ++j) dst[j] = s[j] * inv_eps;
      } else {
        for (int64_t c = 0; c < m; ++c) dst[c] = s[cols[c]] * inv_eps;
      }
      for (int64_t j = m; j < ld; ++j) dst[j] = std::numeric_limits<T>::infinity();
    }
    ldT = (n + kLanes<T> - 1) / kLanes<T> * kLanes<T>;
    if (want_transpose) {
      CsT.assign(m * ldT, std::numeric_limits<T>::infinity());
      for (int64_t r = 0; r < n; ++r)
        for (int64_t c = 0; c < m; ++c) CsT[c * ldT + r] = Cs[r * ld + c];
    }
    f.assign(n, T(0));
    g.assign(m, T(0));
    fs.resize(n);
    gs.assign(ld, T(0));
    lse_r.resize(ldT);
    lse_c.resize(ld);
    colmax.resize(std::max(ld, ldT));
    colsum.resize(std::max(ld, ldT));
  }

  void gather(const T* C, const T* aw, const T* bw, int64_t N, int64_t M, T inv_eps, bool want_transpose = true) {
    select(aw, bw, N, M);
    fill([&](int64_t r) { return C + rows[r] * M; }, true, M, inv_eps, want_transpose);
  }

  // fs_i = f_i/eps + log a_i, gs_j = g_j/eps + log b_j over the valid rows/columns, from potentials given either
  // for all N, M points (`full`, indexed through rows/cols) or for the n, m valid ones.
  void load_potentials(const T* F, const T* G, bool full, T inv_eps) {
    for (int64_t i = 0; i < n(); ++i) fs[i] = F[full ? rows[i] : i] * inv_eps + loga[i];
    for (int64_t j = 0; j < m(); ++j) gs[j] = G[full ? cols[j] : j] * inv_eps + logb[j];
  }

  int64_t n() const { return static_cast<int64_t>(rows.size()); }
  int64_t m() const { return static_cast<int64_t>(cols.size()); }

  // Cs (and CsT when built) = factor * the kept copies: C / eps' from C / eps for factor = eps / eps' (padding
  // stays +inf). From the copies, so that a long schedule's rounding does not compound.
  void rescale(T factor) {
    for (size_t i = 0; i < Cs.size(); ++i) Cs[i] = Cs_kept[i] * factor;
    for (size_t i = 0; i < CsT.size(); ++i) CsT[i] = CsT_kept[i] * factor;
  }
};

// L1 violation of the row marginal of (f, g), given lse_r from the row pass at g.
template <typename T>
T row_error(const Tile<T>& t, const Options<T>& o) {
  T err = 0;
  for (int64_t i = 0; i < t.n(); ++i) {
    if (!(t.lse_r[i] > -std::numeric_limits<T>::infinity())) continue;  // every pair forbidden: no mass
    const T ft = -o.eps * t.lse_r[i];
    const T target = o.unb_a ? std::exp(-t.f[i] / o.tau_a) : T(1);
    err += t.a[i] * std::abs(std::exp((t.f[i] - ft) / o.eps) - target);
  }
  return err;
}

// The iterations on a gathered tile. row_pass()/col_pass() run the inner loops (serially or in parallel blocks).
template <typename T, typename RowPass, typename ColPass>
void iterate(Tile<T>& t, const Options<T>& o, int32_t* n_iter, T* err_out, RowPass row_pass, ColPass col_pass) {
  const int64_t n = t.n(), m = t.m();
  if (n == 0 || m == 0) {  // no mass on one side: every potential stays 0 (as in the reference)
    *n_iter = (o.has_tol && T(0) < o.tol) ? 0 : static_cast<int32_t>(o.max_iter);  // as the reference
    *err_out = 0;
    return;
  }
  const T inv_eps = T(1) / o.eps;
  const T lam_a = o.lam_a(), lam_b = o.lam_b();
  auto rows = [&] {
    for (int64_t j = 0; j < m; ++j) t.gs[j] = t.g[j] * inv_eps + t.logb[j];
    row_pass();
  };
  int64_t it = 0;
  T err = 0;
  for (; it < o.max_iter; ++it) {
    rows();
    if (o.has_tol) {
      err = row_error(t, o);
      if (err < o.tol) break;
    }
    constexpr T NEG_INF = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n; ++i) {
      t.f[i] = t.lse_r[i] > NEG_INF ? -lam_a * o.eps * t.lse_r[i] : T(0);
      t.fs[i] = t.f[i] * inv_eps + t.loga[i];
    }
    col_pass();
    for (int64_t j = 0; j < m; ++j) t.g[j] = t.lse_c[j] > NEG_INF ? -lam_b * o.eps * t.lse_c[j] : T(0);
    if (o.symmetric)  // n == m, the same points in the same order
      for (int64_t j = 0; j < m; ++j) t.f[j] = t.g[j] = T(0.5) * (t.f[j] + t.g[j]);
  }
  if ((!o.has_tol || it == o.max_iter) && o.final_error) {
    rows();
    err = row_error(t, o);
  }
  *n_iter = static_cast<int32_t>(it);
  *err_out = err;
}

// Rows per parallel block: enough work (~16k exps) per task to amortise the scheduling.
int64_t grain(int64_t other_dim) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(other_dim, 1)); }

// How the O(n m) loops of one problem run: on the calling thread (one problem per task), or split into blocks
// over the threads (few, large problems). Used by the scaling iterations.
template <typename T>
struct Passes {
  const Kernels<T>* k;
  bool parallel;

  template <typename F>
  void blocks(int64_t count, int64_t block, F fn) const {
    if (parallel)
      at::parallel_for(0, count, std::max<int64_t>(1, block), fn);
    else
      fn(0, count);
  }
  // out[i] = LSE_j(s_j - Cs_ij), every row
  void lse_rows(const Tile<T>& t, const T* s, T* out) const {
    blocks(t.n(), grain(t.ld), [&](int64_t r0, int64_t r1) { k->lse_rows(t.Cs.data(), t.ld, s, r0, r1, out); });
  }
  // out[j] = LSE_i(s_i - A_ij) over the columns of A (rows x ld, ld a whole number of vectors): Cs, or CsT for
  // the rows of Cs; blocks of whole vectors of columns
  void lse_columns(Tile<T>& t, const T* A, int64_t rows, int64_t ld, const T* s, T* out) const {
    const int64_t W = kLanes<T>;
    blocks(ld / W, grain(rows) / W, [&](int64_t v0, int64_t v1) {
      k->lse_columns(A, rows, ld, s, v0 * W, v1 * W, out, t.colmax.data(), t.colsum.data());
    });
  }
  // out[j] = LSE_i(s_i - Cs_ij), every column
  void lse_cols(Tile<T>& t, const T* s, T* out) const { lse_columns(t, t.Cs.data(), t.n(), t.ld, s, out); }
  // K = exp(fs_i + gs_j - Cs_ij), 0 for +inf costs (padding included)
  void build(Tile<T>& t, const T* fs, const T* gs) const {
    blocks(t.n(), grain(t.ld), [&](int64_t r0, int64_t r1) {
      T unused_pc = 0, unused_p = 0;
      k->plan_rows(t.Cs.data(), t.ld, fs, gs, r0, r1, t.sc.K.data(), &unused_pc, &unused_p);
    });
  }
  // s = K w (rows, whole vectors of them: K has ldT rows); t = K^T z (columns): ~64k multiply-adds per block.
  void rows(Tile<T>& t) const {
    const int64_t W = kLanes<T>;
    blocks(t.ldT / W, 65536 / (t.ld * W), [&](int64_t v0, int64_t v1) {
      k->matvec_rows(t.sc.K.data(), t.ld, t.sc.w.data(), v0 * W, v1 * W, t.sc.s.data());
    });
  }
  void cols(Tile<T>& t) const {
    const int64_t W = kLanes<T>;
    blocks(t.ld / W, 65536 / (t.n() * W), [&](int64_t v0, int64_t v1) {
      k->matvec_cols(t.sc.K.data(), t.n(), t.ld, t.sc.z.data(), v0 * W, v1 * W, t.sc.t.data());
    });
  }
};

// One log-domain iteration on the tile's f, g (the row pass on the tile itself, no transpose): returns true when
// the row error of (f, g) is below tol (the problem stops; *err holds it), else updates f and g.
// The log-domain row pass at the tile's g (lse_r, on the tile itself) and the row error of (f, g).
template <typename T>
T log_row_error(Tile<T>& t, const Options<T>& o, const Passes<T>& P) {
  const T inv_eps = T(1) / o.eps;
  for (int64_t j = 0; j < t.m(); ++j) t.gs[j] = t.g[j] * inv_eps + t.logb[j];
  P.lse_rows(t, t.gs.data(), t.lse_r.data());
  return row_error(t, o);
}

template <typename T>
bool log_step(Tile<T>& t, const Options<T>& o, const Passes<T>& P, T* err) {
  constexpr T NEG_INF = -std::numeric_limits<T>::infinity();
  const int64_t n = t.n(), m = t.m();
  const T inv_eps = T(1) / o.eps;
  const T lam_a = o.lam_a(), lam_b = o.lam_b();
  const T e = log_row_error(t, o, P);  // (lse_r is needed below; the error is cheap beside it)
  if (o.has_tol) {
    *err = e;
    if (e < o.tol) return true;
  }
  for (int64_t i = 0; i < n; ++i) {
    t.f[i] = t.lse_r[i] > NEG_INF ? -lam_a * o.eps * t.lse_r[i] : T(0);
    t.fs[i] = t.f[i] * inv_eps + t.loga[i];
  }
  P.lse_cols(t, t.fs.data(), t.lse_c.data());
  for (int64_t j = 0; j < m; ++j) t.g[j] = t.lse_c[j] > NEG_INF ? -lam_b * o.eps * t.lse_c[j] : T(0);
  return false;
}

// The iterates of iterate() (same n_iter, stopping rule and err) by stabilized scaling iterations, as in
// fastot/reference/sinkhorn_scaling.py: the first iteration in the log domain; then u from s = K (b v) and v
// from K^T (a u), two matrix-vector products per iteration and no exp per entry; the scalings are absorbed into
// fb, gb (K rebuilt: one exp per entry) once one leaves [e^-absorb, e^absorb]; a problem whose sums underflow
// for a point with an allowed pair goes on in the log domain from its current potentials.
// Vectors over rows are padded to ldT entries and over columns to ld (weight 0, ok 0), so the O(n + m) updates
// are whole vectors too.
template <typename T>
void iterate_scaling(Tile<T>& t, const Options<T>& o, T absorb, const Passes<T>& P, int32_t* n_iter, T* err_out,
                     int32_t* absorptions, bool* fell_back) {
  const int64_t n = t.n(), m = t.m(), ld = t.ld, ldT = t.ldT;
  *absorptions = 0;
  *fell_back = false;
  if (n == 0 || m == 0) {  // as iterate()
    *n_iter = (o.has_tol && T(0) < o.tol) ? 0 : static_cast<int32_t>(o.max_iter);
    *err_out = 0;
    return;
  }
  const T inv_eps = T(1) / o.eps;
  const T lam_a = o.lam_a(), lam_b = o.lam_b();
  T err = 0;
  int64_t it = 0;
  bool stopped = false, scaling = false, log_mode = false;
  if (o.max_iter > 0) {
    stopped = log_step(t, o, P, &err);
    if (!stopped) it = 1;
  }
  ScalingState<T>& S = t.sc;
  // scalings stay in [lo, hi] = [e^-absorb, e^absorb] between absorptions (absorb past the dtype's range: never)
  const T hi = absorb < std::log(std::numeric_limits<T>::max()) ? std::exp(absorb) : std::numeric_limits<T>::infinity();
  const T lo = T(1) / hi;
  auto to_potentials = [&] {  // f = fb + eps log u, g = gb + eps log v (0 for a point with no allowed pair)
    for (int64_t i = 0; i < n; ++i) t.f[i] = S.ok_a[i] > 0 ? S.fb[i] + o.eps * std::log(S.u[i]) : T(0);
    for (int64_t j = 0; j < m; ++j) t.g[j] = S.ok_b[j] > 0 ? S.gb[j] + o.eps * std::log(S.v[j]) : T(0);
  };
  // Small tiles (K in L1, one problem per task) keep K and its transpose: both products are then broadcast
  // multiply-adds vectorised across their outputs (measured at 64 x 64: 2 x 130 ns against 392 ns for the
  // sweep, whose row dot products end in a lane reduction); larger tiles take one sweep over K per iteration,
  // which reads the tile from L2 once instead of twice.
  const bool transposed = !P.parallel && ldT * ld * static_cast<int64_t>(sizeof(T)) <= 16384;
  auto rebuild = [&] {  // also leaves fb / eps in t.fs, the row bases the sweep reads
    for (int64_t i = 0; i < n; ++i) t.fs[i] = S.fb[i] * inv_eps;
    for (int64_t j = 0; j < m; ++j) t.gs[j] = S.gb[j] * inv_eps;
    P.build(t, t.fs.data(), t.gs.data());
    if (transposed)
      for (int64_t i = 0; i < ldT; ++i)
        for (int64_t j = 0; j < m; ++j) S.KT[j * ldT + i] = S.K[i * ld + j];
  };
  // The error of the current state, sum_i a_i |u_i s_i - target_i| over rows with an allowed pair (s = K w).
  auto error = [&] {
    if (!o.unb_a) return P.k->scaled_error(S.u.data(), S.s.data(), S.wok_a.data(), ldT);
    T e = 0;
    for (int64_t i = 0; i < n; ++i)
      if (S.ok_a[i] > 0) e += t.a[i] * std::abs(S.u[i] * S.s[i] - std::exp(-(S.fb[i] + o.eps * std::log(S.u[i])) / o.tau_a));
    return e;
  };
  // One side's update from its sums x: the new scalings into out, weight x scaling into z; flags as scale_update.
  auto update = [&](const std::vector<T>& x, const std::vector<T>& ok, const std::vector<T>& wt,
                    const std::vector<T>& base, T lam, int64_t k, std::vector<T>& out, std::vector<T>& z) {
    if (lam == T(1)) return P.k->scale_update(x.data(), ok.data(), wt.data(), k, lo, hi, out.data(), z.data());
    int flags = 0;
    for (int64_t i = 0; i < k; ++i) {
      T r = T(1);
      if (ok[i] > 0) {
        r = std::exp((lam - T(1)) * base[i] * inv_eps - lam * std::log(x[i]));
        if (!(x[i] > 0) || !std::isfinite(x[i]) || !std::isfinite(r)) flags |= 1;
      }
      if (!(r <= hi && r >= lo)) flags |= 2;
      out[i] = r;
      z[i] = wt[i] * r;
    }
    return flags;
  };
  if (!stopped && it < o.max_iter) {
    scaling = true;
    S.ok_a.assign(ldT, T(0));
    S.ok_b.assign(ld, T(0));
    for (int64_t i = 0; i < n; ++i) {
      const T* row = t.Cs.data() + i * ld;
      for (int64_t j = 0; j < m; ++j)
        if (row[j] < std::numeric_limits<T>::infinity()) {
          S.ok_a[i] = 1;
          S.ok_b[j] = 1;
        }
    }
    S.wa.assign(ldT, T(0));
    S.wb.assign(ld, T(0));
    S.wok_a.assign(ldT, T(0));
    for (int64_t i = 0; i < n; ++i) {
      S.wa[i] = t.a[i];
      S.wok_a[i] = t.a[i] * S.ok_a[i];
    }
    for (int64_t j = 0; j < m; ++j) S.wb[j] = std::exp(t.logb[j]);
    S.fb.assign(t.f.begin(), t.f.end());
    S.gb.assign(t.g.begin(), t.g.end());
    S.fb.resize(ldT, T(0));
    S.gb.resize(ld, T(0));
    S.u.assign(ldT, T(1));
    S.un.assign(ldT, T(1));
    S.v.assign(ld, T(1));
    S.vn.assign(ld, T(1));
    S.w = S.wb;  // w = b v
    S.z.assign(ldT, T(0));
    S.s.assign(ldT, T(1));
    S.t.assign(ld, T(0));
    S.K.assign(ldT * ld, T(0));  // rows past n stay 0: the row kernels take whole vectors of rows
    if (transposed) S.KT.assign(m * ldT, T(0));
    rebuild();
    for (; it < o.max_iter; ++it) {
      if (log_mode) {
        if ((stopped = log_step(t, o, P, &err))) break;
        continue;
      }
      int flags;
      if (transposed) {  // s = K w over K^T, then t = K^T (a u) over K: both vectorised across their outputs
        P.k->matvec_cols(S.KT.data(), m, ldT, S.w.data(), 0, ldT, S.s.data());
        if (o.has_tol && (stopped = (err = error()) < o.tol)) break;
        flags = update(S.s, S.ok_a, S.wa, S.fb, lam_a, ldT, S.un, S.z);
        if (!(flags & 1)) P.k->matvec_cols(S.K.data(), n, ld, S.z.data(), 0, ld, S.t.data());
      } else if (!P.parallel) {  // one sweep over K: s, the new u, and t = K^T (a u)
        flags = P.k->sweep(S.K.data(), ldT, ld, S.w.data(), S.ok_a.data(), S.wa.data(), t.fs.data(), lam_a, lo, hi,
                           S.s.data(), S.un.data(), S.z.data(), S.t.data());
        if (o.has_tol && (stopped = (err = error()) < o.tol)) break;
      } else {  // a row pass, then a column pass, each split over the threads
        P.rows(t);
        if (o.has_tol && (stopped = (err = error()) < o.tol)) break;
        flags = update(S.s, S.ok_a, S.wa, S.fb, lam_a, ldT, S.un, S.z);
        if (!(flags & 1)) P.cols(t);
      }
      if (!(flags & 1)) flags |= update(S.t, S.ok_b, S.wb, S.gb, lam_b, ld, S.vn, S.w);
      if (flags & 1) {  // underflow: this problem goes on in the log domain from its current potentials
        log_mode = true;
        *fell_back = true;
        to_potentials();
        if ((stopped = log_step(t, o, P, &err))) break;
        continue;
      }
      std::swap(S.u, S.un);
      std::swap(S.v, S.vn);
      if (flags & 2) {  // absorb the scalings into the bases and rebuild the kernel
        for (int64_t i = 0; i < n; ++i) S.fb[i] += o.eps * std::log(S.u[i]);
        for (int64_t j = 0; j < m; ++j) S.gb[j] += o.eps * std::log(S.v[j]);
        std::fill(S.u.begin(), S.u.end(), T(1));
        std::fill(S.v.begin(), S.v.end(), T(1));
        S.w = S.wb;
        rebuild();
        ++*absorptions;
      }
    }
    if (!log_mode) to_potentials();
  }
  if (!stopped && o.final_error) {  // the error of the final state
    if (scaling && !log_mode) {
      P.rows(t);
      err = error();
    } else {
      err = log_row_error(t, o, P);
    }
  }
  *n_iter = static_cast<int32_t>(it);
  *err_out = err;
}

template <typename T>
void scatter(const Tile<T>& t, T* f, T* g) {
  for (int64_t i = 0; i < t.n(); ++i) f[t.rows[i]] = t.f[i];
  for (int64_t j = 0; j < t.m(); ++j) g[t.cols[j]] = t.g[j];
}

bool per_problem_schedule(int64_t B, int64_t N, int64_t M) {
  return B >= 2 * at::get_num_threads() || N * M <= 4096;
}

// method "scaling": the absorption threshold and the per-problem statistics (absorptions, fell back to log).
template <typename T>
struct ScalingArgs {
  T absorb;
  int32_t* absorptions;
  bool* fell_back;
};

// Where the points of problem k lie along one side of the inputs (weights, potentials, embedding rows): padded
// (points k * len .. k * len + len - 1 of a [B, len] layout) or packed (points cu[k] .. cu[k + 1] - 1 of the
// concatenation, flash-attention's varlen layout; len is then the longest problem).
struct Segments {
  int64_t len;
  const int64_t* cu = nullptr;
  int64_t start(int64_t k) const { return cu ? cu[k] : k * len; }
  int64_t count(int64_t k) const { return cu ? cu[k + 1] - cu[k] : len; }
};

// The warm start of problem k into a filled tile (its real points; a problem with an empty side keeps 0).
template <typename T>
void warm_start(Tile<T>& t, const Options<T>& o, int64_t k, const Segments& sx, const Segments& sy) {
  if (t.n() == 0 || t.m() == 0) return;
  if (o.f0)
    for (int64_t i = 0; i < t.n(); ++i) t.f[i] = o.f0[sx.start(k) + t.rows[i]];
  if (o.g0)
    for (int64_t j = 0; j < t.m(); ++j) t.g[j] = o.g0[sy.start(k) + t.cols[j]];
}

// The iterations of one filled tile: one at each eps of o's schedule (the tile rescaled from a copy of the one at
// eps, the state carried over; the error of a stage's state is not computed), then solve(o, n_iter, err) at eps on
// the tile as filled. Every stage calls solve with max_iter 1 and no tol.
template <typename T, typename Solve>
void staged(Tile<T>& t, const Options<T>& o, Solve solve, int32_t* n_iter, T* err) {
  if (o.n_stages == 0 || t.n() == 0 || t.m() == 0) {  // (an empty problem: nothing to iterate)
    solve(o, n_iter, err);
    *n_iter += static_cast<int32_t>(o.n_stages);
    return;
  }
  t.Cs_kept = t.Cs;  // (assignments: the tile's buffers are reused from problem to problem)
  t.CsT_kept = t.CsT;
  int32_t unused_n;
  T unused_err;
  for (int64_t s = 0; s < o.n_stages; ++s) {
    Options<T> os = o;
    os.eps = static_cast<T>(o.stages[s]);
    os.max_iter = 1;
    os.has_tol = false;
    os.final_error = false;
    t.rescale(static_cast<T>(static_cast<double>(o.eps) / o.stages[s]));
    solve(os, &unused_n, &unused_err);
  }
  t.Cs = t.Cs_kept;
  t.CsT = t.CsT_kept;
  solve(o, n_iter, err);
  *n_iter += static_cast<int32_t>(o.n_stages);
}

// Solves B problems. fill(k, tile) gathers problem k into the tile; after(k, tile) runs once its iterations
// are done (while the tile is still there). Schedules as described at the top of this file. With `sc` the
// scaling iterations run instead of the log-domain ones (fill need not build the transposed tile then).
template <typename T, typename Fill, typename After>
void solve_problems(int64_t B, const Segments& sx, const Segments& sy, const Options<T>& o, Fill fill, After after,
                    T* f, T* g, int32_t* n_iter, T* err, const ScalingArgs<T>* sc = nullptr) {
  const Kernels<T>* K = kernels<T>();
  // problem k on tile t, its O(n m) passes run as P says (on this thread, or split over the threads)
  auto solve_one = [&](Tile<T>& t, int64_t k, const Passes<T>& P) {
    fill(k, t);
    warm_start(t, o, k, sx, sy);
    staged(
        t, o,
        [&](const Options<T>& oo, int32_t* ni, T* er) {
          if (sc) {
            iterate_scaling(t, oo, sc->absorb, P, ni, er, sc->absorptions + k, sc->fell_back + k);
            return;
          }
          iterate(
              t, oo, ni, er, [&] { P.lse_columns(t, t.CsT.data(), t.m(), t.ldT, t.gs.data(), t.lse_r.data()); },
              [&] { P.lse_cols(t, t.fs.data(), t.lse_c.data()); });
        },
        n_iter + k, err + k);
    scatter(t, f + sx.start(k), g + sy.start(k));
    after(k, t);
  };
  if (per_problem_schedule(B, sx.len, sy.len)) {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Tile<T> t;  // per chunk (one per thread per call): freed when the call ends
      const Passes<T> serial{K, false};
      for (int64_t k = begin; k < end; ++k) solve_one(t, k, serial);
    });
    return;
  }
  Tile<T> t;
  const Passes<T> blocked{K, true};
  for (int64_t k = 0; k < B; ++k) solve_one(t, k, blocked);
}

template <typename T>
void solve_batch(const T* C, const T* A, const T* Bw, int64_t B, int64_t N, int64_t M, const Options<T>& o, T* f,
                 T* g, int32_t* n_iter, T* err, const ScalingArgs<T>* sc = nullptr) {
  const T inv_eps = T(1) / o.eps;
  solve_problems<T>(
      B, Segments{N}, Segments{M}, o,
      [&](int64_t k, Tile<T>& t) { t.gather(C + k * N * M, A + k * N, Bw + k * M, N, M, inv_eps, sc == nullptr); },
      [](int64_t, Tile<T>&) {}, f, g, n_iter, err, sc);
}

// Plan and/or <P, C> from the potentials, problem by problem (P rows written only on valid entries).
template <typename T>
void plan_batch(const T* C, const T* A, const T* Bw, const T* F, const T* G, int64_t B, int64_t N, int64_t M, T eps,
                T* P, T* tc, T* mass) {
  const Kernels<T>* K = kernels<T>();
  const T inv_eps = T(1) / eps;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Tile<T> t;  // per chunk (one per thread per call): freed when the call ends
    std::vector<T> ptile;
    for (int64_t k = begin; k < end; ++k) {
      t.gather(C + k * N * M, A + k * N, Bw + k * M, N, M, inv_eps, /*want_transpose=*/false);
      const int64_t n = t.n(), m = t.m();
      t.load_potentials(F + k * N, G + k * M, /*full=*/true, inv_eps);
      if (P) ptile.resize(n * t.ld);
      T s = 0, sp = 0;
      if (n > 0 && m > 0)
        K->plan_rows(t.Cs.data(), t.ld, t.fs.data(), t.gs.data(), 0, n, P ? ptile.data() : nullptr, &s, &sp);
      if (tc) {
        tc[k] = s * eps;
        mass[k] = sp;
      }
      if (P) {
        T* Pk = P + k * N * M;
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = 0; j < m; ++j) Pk[t.rows[i] * M + t.cols[j]] = ptile[i * t.ld + j];
      }
    }
  });
}


template <typename T>
Options<T> make_options(double eps, int64_t max_iter, c10::optional<double> tol, c10::optional<double> tau_a,
                        c10::optional<double> tau_b) {
  return Options<T>{static_cast<T>(eps), max_iter, tol.has_value(), static_cast<T>(tol.value_or(0.0)),
                    tau_a.has_value(), tau_b.has_value(), static_cast<T>(tau_a.value_or(1.0)),
                    static_cast<T>(tau_b.value_or(1.0))};
}

// sinkhorn_fwd (log-domain) and, with `absorb`, sinkhorn_fwd_scaling (+ absorptions [B] int32, fell_back [B] bool).
// An eps schedule (eps_stages): every value positive and finite; o.stages / o.n_stages point at it.
template <typename T>
void set_stages(Options<T>& o, const char* op, const c10::optional<at::ArrayRef<double>>& stages) {
  if (!stages) return;
  for (double e : *stages)
    TORCH_CHECK(e >= std::numeric_limits<T>::min() && std::isfinite(e), op,
                ": every eps_stages value must be finite and at least the compute dtype's smallest normal number (",
                std::numeric_limits<T>::min(), "), got ", e);
  o.stages = stages->data();
  o.n_stages = static_cast<int64_t>(stages->size());
}

std::vector<at::Tensor> fwd_impl(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps,
                                 int64_t max_iter, c10::optional<double> tol, c10::optional<double> tau_a,
                                 c10::optional<double> tau_b, c10::optional<double> absorb,
                                 const c10::optional<at::Tensor>& f0, const c10::optional<at::Tensor>& g0,
                                 const c10::optional<at::ArrayRef<double>>& stages = c10::nullopt) {
  const char* op = absorb ? "sinkhorn_fwd_scaling" : "sinkhorn";
  check_sinkhorn_inputs(cost, a, b);
  TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  TORCH_CHECK(max_iter >= 0, op, ": max_iter must be >= 0, got ", max_iter);
  TORCH_CHECK(!absorb || *absorb > 0, op, ": absorb must be > 0, got ", absorb.value_or(0.0));
  const auto dt = sinkhorn_compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous();
  const at::Tensor A = a.to(dt).contiguous();
  const at::Tensor Bw = b.to(dt).contiguous();
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  const at::Tensor F0 = warm_start_data(op, f0, "f0", B, N, C.device(), dt);
  const at::Tensor G0 = warm_start_data(op, g0, "g0", B, M, C.device(), dt);
  at::Tensor f = at::zeros({B, N}, C.options());
  at::Tensor g = at::zeros({B, M}, C.options());
  at::Tensor n_iter = at::zeros({B}, C.options().dtype(at::kInt));
  at::Tensor err = at::zeros({B}, C.options());
  at::Tensor absorptions = at::zeros({B}, C.options().dtype(at::kInt));
  at::Tensor fell_back = at::zeros({B}, C.options().dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_fwd_cpu", [&] {
    auto o = make_options<scalar_t>(eps, max_iter, tol, tau_a, tau_b);
    o.f0 = F0.defined() ? F0.data_ptr<scalar_t>() : nullptr;
    o.g0 = G0.defined() ? G0.data_ptr<scalar_t>() : nullptr;
    set_stages(o, op, stages);
    const ScalingArgs<scalar_t> sc{static_cast<scalar_t>(absorb.value_or(0.0)), absorptions.data_ptr<int32_t>(),
                                   fell_back.data_ptr<bool>()};
    solve_batch<scalar_t>(C.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), Bw.data_ptr<scalar_t>(), B, N, M, o,
                          f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), n_iter.data_ptr<int32_t>(),
                          err.data_ptr<scalar_t>(), absorb ? &sc : nullptr);
  });
  if (!absorb) return {f, g, n_iter, err};
  return {f, g, n_iter, err, absorptions, fell_back};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cpu(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps, int64_t max_iter,
    c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b,
    const c10::optional<at::Tensor>& f0, const c10::optional<at::Tensor>& g0) {
  auto r = fwd_impl(cost, a, b, eps, max_iter, tol, tau_a, tau_b, c10::nullopt, f0, g0);
  return {r[0], r[1], r[2], r[3]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_scaling_cpu(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps, int64_t max_iter,
    c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b, double absorb,
    const c10::optional<at::Tensor>& f0, const c10::optional<at::Tensor>& g0,
    c10::optional<at::ArrayRef<double>> eps_stages) {
  auto r = fwd_impl(cost, a, b, eps, max_iter, tol, tau_a, tau_b, absorb, f0, g0, eps_stages);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

at::Tensor plan_or_cost(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, const at::Tensor& f,
                        const at::Tensor& g, double eps, bool want_plan, at::Tensor* mass_out = nullptr) {
  check_sinkhorn_inputs(cost, a, b);
  check_potentials("sinkhorn_plan", f, g, cost.size(0), cost.size(1), cost.size(2), cost.device(), eps);
  const auto dt = sinkhorn_compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous();
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const at::Tensor F = f.to(dt).contiguous(), G = g.to(dt).contiguous();
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  at::Tensor out = want_plan ? at::zeros(C.sizes(), C.options()) : at::zeros({B}, C.options());
  at::Tensor mass = want_plan ? at::Tensor() : at::zeros({B}, C.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_plan_cpu", [&] {
    plan_batch<scalar_t>(C.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), Bw.data_ptr<scalar_t>(),
                         F.data_ptr<scalar_t>(), G.data_ptr<scalar_t>(), B, N, M, static_cast<scalar_t>(eps),
                         want_plan ? out.data_ptr<scalar_t>() : nullptr, want_plan ? nullptr : out.data_ptr<scalar_t>(),
                         want_plan ? nullptr : mass.data_ptr<scalar_t>());
  });
  if (mass_out) *mass_out = mass;
  return out;
}

at::Tensor sinkhorn_plan_cpu(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, const at::Tensor& f,
                             const at::Tensor& g, double eps) {
  return plan_or_cost(cost, a, b, f, g, eps, true);
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_plan_sums_cpu(const at::Tensor& cost, const at::Tensor& a,
                                                         const at::Tensor& b, const at::Tensor& f, const at::Tensor& g,
                                                         double eps) {
  at::Tensor mass;
  at::Tensor tc = plan_or_cost(cost, a, b, f, g, eps, false, &mass);
  return {tc, mass};
}

// ---------------------------------------------------------------------------------------------------------
// sinkhorn_embeddings: the cost tile of each problem is computed from x and y (one GEMM over its valid rows and
// columns) when the problem is solved, and again in the backward; no [B, N, M] tensor ever exists, and the
// inputs are read in their own dtype (bf16/fp16 rows are converted per problem, never as a whole copy).
enum CostKind : int64_t { kCosine = 0, kSqEuclidean = 1, kDot = 2 };

// The rows `idx` of one problem (its `count` rows from row `start` of X, [B, N, d] or packed [T, d]) as a contiguous
// T [n, d] matrix: a pointer into X when it already is one (dtype T, every row valid), otherwise gathered and
// converted into `buf`: bf16 -> fp32 by a bit shift (the loop vectorises), other conversions by one ATen copy per
// run of consecutive rows.
template <typename T>
const T* rows_as(const at::Tensor& X, int64_t start, int64_t count, const std::vector<int64_t>& idx,
                 std::vector<T>& buf) {
  const int64_t d = X.size(-1), n = static_cast<int64_t>(idx.size());
  const auto st = X.scalar_type();
  if (st == c10::CppTypeToScalarType<T>::value && n == count) return X.template const_data_ptr<T>() + start * d;
  buf.resize(n * d);
  const char* src = static_cast<const char*>(X.const_data_ptr()) + start * d * X.element_size();
  if constexpr (std::is_same_v<T, float>) {
    if (st == at::kBFloat16) {
      const uint16_t* s16 = reinterpret_cast<const uint16_t*>(src);
      uint32_t* dst = reinterpret_cast<uint32_t*>(buf.data());  // the fp32 bits of a bf16 value are its bits << 16
      for (int64_t r = 0; r < n; ++r) {
        const uint16_t* row = s16 + idx[r] * d;
        uint32_t* out = dst + r * d;
        for (int64_t c = 0; c < d; ++c) out[c] = static_cast<uint32_t>(row[c]) << 16;
      }
      return buf.data();
    }
  }
  const auto out_opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value);
  for (int64_t r = 0; r < n;) {
    int64_t e = r + 1;
    while (e < n && idx[e] == idx[e - 1] + 1) ++e;
    at::from_blob(buf.data() + r * d, {e - r, d}, out_opts)
        .copy_(at::from_blob(const_cast<char*>(src) + idx[r] * d * X.element_size(), {e - r, d}, X.options()));
    r = e;
  }
  return buf.data();
}

// Sum of squares of each of the n rows of v [n, d], in 16 independent lanes so that the loop vectorises.
template <typename T>
void row_sumsq(const T* v, int64_t n, int64_t d, T* out) {
  constexpr int W = 16;
  for (int64_t r = 0; r < n; ++r) {
    const T* x = v + r * d;
    T acc[W] = {};
    int64_t c = 0;
    for (; c + W <= d; c += W)
      for (int l = 0; l < W; ++l) acc[l] += x[c + l] * x[c + l];
    T tot = 0;
    for (; c < d; ++c) tot += x[c] * x[c];
    for (int l = 0; l < W; ++l) tot += acc[l];
    out[r] = tot;
  }
}

// Problem k (rows where sx, sy put it): its valid rows of x and y (e.xp, e.yp), their norm terms (e.sx, e.sy:
// 1/max(|.|, 1e-12) for cosine, |.|^2 for sqeuclidean) and the cost [n, m] in t.cost, as fastot.pairwise_cost defines it:
// cosine 1 - <x, y> / (max(|x|, 1e-12) max(|y|, 1e-12)); sqeuclidean max(|x|^2 + |y|^2 - 2 <x, y>, 0); dot -<x, y>.
template <typename T>
void embedding_cost(const at::Tensor& X, const at::Tensor& Y, int64_t k, const Segments& sx, const Segments& sy,
                    int64_t kind, Tile<T>& t) {
  EmbeddingTile<T>& e = t.emb;
  const int64_t d = X.size(-1), n = t.n(), m = t.m();
  e.xp = rows_as<T>(X, sx.start(k), sx.count(k), t.rows, e.xbuf);
  e.yp = rows_as<T>(Y, sy.start(k), sy.count(k), t.cols, e.ybuf);
  if (!t.cost.defined()) t.cost = at::empty({0}, at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  t.cost.resize_({n, m});
  if (n == 0 || m == 0) return;
  const auto opts = t.cost.options();
  at::mm_out(t.cost, at::from_blob(const_cast<T*>(e.xp), {n, d}, opts),
             at::from_blob(const_cast<T*>(e.yp), {m, d}, opts).t());
  T* C = t.cost.template data_ptr<T>();
  e.sx.resize(n);
  e.sy.resize(m);
  if (kind == kDot) {
    for (int64_t i = 0; i < n * m; ++i) C[i] = -C[i];
    return;
  }
  row_sumsq(e.xp, n, d, e.sx.data());
  row_sumsq(e.yp, m, d, e.sy.data());
  if (kind == kCosine) {  // sx, sy become 1 / max(|.|, 1e-12)
    e.x_linear.resize(n);
    e.y_linear.resize(m);
    for (int64_t i = 0; i < n; ++i) {
      const T norm = std::sqrt(e.sx[i]);
      e.x_linear[i] = !(norm > T(1e-12));
      e.sx[i] = T(1) / std::max(norm, T(1e-12));
    }
    for (int64_t j = 0; j < m; ++j) {
      const T norm = std::sqrt(e.sy[j]);
      e.y_linear[j] = !(norm > T(1e-12));
      e.sy[j] = T(1) / std::max(norm, T(1e-12));
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) C[i * m + j] = T(1) - C[i * m + j] * e.sx[i] * e.sy[j];
  } else {
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < m; ++j) C[i * m + j] = std::max(e.sx[i] + e.sy[j] - T(2) * C[i * m + j], T(0));
  }
}

// x, y as the kernels read them: detached (the nested ATen calls see no autograd) and contiguous; in the compute
// dtype, except that bf16/fp16 stay as they are (converted per problem as the rows are gathered).
at::Tensor embeddings_data(const at::Tensor& x, at::ScalarType dt) {
  const auto st = x.scalar_type();
  const bool as_is = st == dt || (dt == at::kFloat && (st == at::kBFloat16 || st == at::kHalf));
  return (as_is ? x.detach() : x.detach().to(dt)).contiguous();
}

// The packed (varlen) layout of one side: cu_seqlens [B + 1] (int32 or int64, on the CPU) as int64, after checking
// that it starts at 0, never decreases and ends at `total`, the rows of the packed tensor (the kernels index with it).
at::Tensor packed_offsets(const char* op, const at::Tensor& cu, const char* name, int64_t total) {
  TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 1, op, ": ", name, " must be a 1-D [B + 1] tensor, got ", cu.sizes());
  TORCH_CHECK(cu.scalar_type() == at::kInt || cu.scalar_type() == at::kLong, op, ": ", name,
              " must be int32 or int64, got ", cu.scalar_type());
  TORCH_CHECK(cu.device().is_cpu(), op, ": ", name, " must be on the CPU, got ", cu.device());
  at::Tensor c = cu.to(at::kLong).contiguous();
  const int64_t* p = c.const_data_ptr<int64_t>();
  const int64_t n = c.size(0);
  TORCH_CHECK(p[0] == 0, op, ": ", name, "[0] must be 0, got ", p[0]);
  for (int64_t k = 1; k < n; ++k)
    TORCH_CHECK(p[k] >= p[k - 1], op, ": ", name, " must be nondecreasing, but ", name, "[", k, "] = ", p[k], " < ",
                p[k - 1]);
  TORCH_CHECK(p[n - 1] == total, op, ": ", name, "[-1] must be the number of packed rows ", total, ", got ", p[n - 1]);
  return c;
}

// The longest segment of a packed side.
int64_t longest(const at::Tensor& cu) {
  const int64_t* p = cu.const_data_ptr<int64_t>();
  int64_t best = 0;
  for (int64_t k = 1; k < cu.size(0); ++k) best = std::max(best, p[k] - p[k - 1]);
  return best;
}

// The layout of an embeddings call: padded (x [B, N, d], a [B, N], ...) or packed (x [Tx, d], a [Tx], cu_x [B + 1],
// ...), checked; the int64 offsets of a packed side are held here (the Segments point into them).
struct EmbeddingLayout {
  int64_t B = 0;
  Segments sx{0}, sy{0};
  at::Tensor cu_x, cu_y;
};

EmbeddingLayout embedding_layout(const char* op, const at::Tensor& x, const at::Tensor& y, const at::Tensor& a,
                                 const at::Tensor& b, int64_t kind, const at::Tensor* cu_x, const at::Tensor* cu_y,
                                 const char* cu_x_name = "cu_seqlens_x", const char* cu_y_name = "cu_seqlens_y") {
  EmbeddingLayout L;
  if (!cu_x) {
    check_embeddings_inputs(x, y, a, b, kind);
    L.B = x.size(0);
    L.sx = Segments{x.size(1)};
    L.sy = Segments{y.size(1)};
    return L;
  }
  TORCH_CHECK(x.dim() == 2 && y.dim() == 2 && x.size(1) == y.size(1), op,
              ": packed x and y must be [Tx, d] and [Ty, d], got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(a.dim() == 1 && a.size(0) == x.size(0), op, ": a must be [Tx] = [", x.size(0), "], got ", a.sizes());
  TORCH_CHECK(b.dim() == 1 && b.size(0) == y.size(0), op, ": b must be [Ty] = [", y.size(0), "], got ", b.sizes());
  TORCH_CHECK(kind >= 0 && kind <= 2, op, ": cost must be 0 (cosine), 1 (sqeuclidean) or 2 (dot)");
  TORCH_CHECK(y.device() == x.device() && a.device() == x.device() && b.device() == x.device(), op,
              ": x, y, a, b must be on one device");
  TORCH_CHECK(cu_x->dim() == 1 && cu_y->dim() == 1 && cu_x->size(0) == cu_y->size(0), op, ": ", cu_x_name, " and ",
              cu_y_name, " must both be [B + 1], got ", cu_x->sizes(), " and ", cu_y->sizes());
  L.cu_x = packed_offsets(op, *cu_x, cu_x_name, x.size(0));
  L.cu_y = packed_offsets(op, *cu_y, cu_y_name, y.size(0));
  L.B = L.cu_x.size(0) - 1;
  L.sx = Segments{longest(L.cu_x), L.cu_x.const_data_ptr<int64_t>()};
  L.sy = Segments{longest(L.cu_y), L.cu_y.const_data_ptr<int64_t>()};
  return L;
}

// A warm start in a side's layout ([B, N] padded, [T] packed), in the compute dtype; undefined when not given.
at::Tensor side_warm_start(const char* op, const c10::optional<at::Tensor>& w, const char* name,
                           const at::Tensor& weights, at::ScalarType dt) {
  if (weights.dim() == 2) return warm_start_data(op, w, name, weights.size(0), weights.size(1), weights.device(), dt);
  if (!w.has_value() || !w->defined()) return at::Tensor();
  TORCH_CHECK(w->dim() == 1 && w->size(0) == weights.size(0), op, ": ", name, " must be [", weights.size(0),
              "] (packed), got ", w->sizes());
  TORCH_CHECK(at::isFloatingType(w->scalar_type()), op, ": ", name, " must be floating point, got ", w->scalar_type());
  TORCH_CHECK(w->device() == weights.device(), op, ": ", name, " is on ", w->device(), " but the inputs are on ",
              weights.device());
  return w->detach().to(dt).contiguous();
}

// sinkhorn_embeddings forward, padded or (with cu_x, cu_y) packed: f, g in the layout of a, b.
std::vector<at::Tensor> embeddings_fwd_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a,
                                            const at::Tensor& b, int64_t kind, double eps, int64_t max_iter,
                                            c10::optional<double> tol, c10::optional<double> tau_a,
                                            c10::optional<double> tau_b, c10::optional<double> absorb,
                                            const c10::optional<at::Tensor>& f0, const c10::optional<at::Tensor>& g0,
                                            bool symmetric = false, const at::Tensor* cu_x = nullptr,
                                            const at::Tensor* cu_y = nullptr,
                                            const c10::optional<at::ArrayRef<double>>& stages = c10::nullopt) {
  const char* op = symmetric ? "sinkhorn_embeddings_symmetric_fwd"
                   : cu_x     ? "sinkhorn_embeddings_varlen_fwd"
                   : absorb   ? "sinkhorn_embeddings_fwd_scaling"
                              : "sinkhorn_embeddings";
  const EmbeddingLayout L = symmetric ? embedding_layout(op, x, y, a, b, kind, cu_x, cu_y, "cu_seqlens", "cu_seqlens")
                                      : embedding_layout(op, x, y, a, b, kind, cu_x, cu_y);
  TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  TORCH_CHECK(max_iter >= 0, op, ": max_iter must be >= 0, got ", max_iter);
  TORCH_CHECK(!absorb || *absorb > 0, op, ": absorb must be > 0, got ", absorb.value_or(0.0));
  const auto dt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor X = embeddings_data(x, dt), Y = embeddings_data(y, dt);
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const int64_t B = L.B;
  const Segments &sx = L.sx, &sy = L.sy;
  const at::Tensor F0 = side_warm_start(op, f0, symmetric ? "h0" : "f0", A, dt);
  const at::Tensor G0 = side_warm_start(op, g0, symmetric ? "h0" : "g0", Bw, dt);
  const auto opts = A.options();
  at::Tensor f = at::zeros(A.sizes(), opts), g = at::zeros(Bw.sizes(), opts), err = at::zeros({B}, opts);
  at::Tensor n_iter = at::zeros({B}, opts.dtype(at::kInt));
  at::Tensor tc = at::zeros({B}, opts), mass = at::zeros({B}, opts);
  at::Tensor absorptions = at::zeros({B}, opts.dtype(at::kInt)), fell_back = at::zeros({B}, opts.dtype(at::kBool));
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_embeddings_fwd_cpu", [&] {
    using T = scalar_t;
    auto o = make_options<T>(eps, max_iter, tol, tau_a, tau_b);
    o.f0 = F0.defined() ? F0.data_ptr<T>() : nullptr;
    o.g0 = G0.defined() ? G0.data_ptr<T>() : nullptr;
    o.symmetric = symmetric;
    set_stages(o, op, stages);
    const ScalingArgs<T> sc{static_cast<T>(absorb.value_or(0.0)), absorptions.data_ptr<int32_t>(),
                            fell_back.data_ptr<bool>()};
    const T inv_eps = T(1) / o.eps;
    const Kernels<T>* K = kernels<T>();
    T *tcp = tc.data_ptr<T>(), *mp = mass.data_ptr<T>();
    solve_problems<T>(
        B, sx, sy, o,
        [&](int64_t k, Tile<T>& t) {
          t.select(A.data_ptr<T>() + sx.start(k), Bw.data_ptr<T>() + sy.start(k), sx.count(k), sy.count(k));
          embedding_cost<T>(X, Y, k, sx, sy, kind, t);
          const T* Cp = t.cost.data_ptr<T>();
          const int64_t m = t.m();
          t.fill([&](int64_t r) { return Cp + r * m; }, false, sy.count(k), inv_eps, !absorb);
        },
        [&](int64_t k, Tile<T>& t) {  // <P, C> and mass while the tile is here
          T sp = 0, sm = 0;
          if (t.n() > 0 && t.m() > 0) {
            t.load_potentials(t.f.data(), t.g.data(), /*full=*/false, inv_eps);
            K->plan_rows(t.Cs.data(), t.ld, t.fs.data(), t.gs.data(), 0, t.n(), nullptr, &sp, &sm);
          }
          tcp[k] = sp * o.eps;
          mp[k] = sm;
        },
        f.data_ptr<T>(), g.data_ptr<T>(), n_iter.data_ptr<int32_t>(), err.data_ptr<T>(), absorb ? &sc : nullptr);
  });
  if (!absorb) return {f, g, n_iter, err, tc, mass};
  return {f, g, n_iter, err, tc, mass, absorptions, fell_back};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_embeddings_fwd_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, const at::Tensor& b, int64_t kind, double eps,
    int64_t max_iter, c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b,
    const c10::optional<at::Tensor>& f0, const c10::optional<at::Tensor>& g0) {
  auto r = embeddings_fwd_impl(x, y, a, b, kind, eps, max_iter, tol, tau_a, tau_b, c10::nullopt, f0, g0);
  return {r[0], r[1], r[2], r[3], r[4], r[5]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sinkhorn_embeddings_fwd_scaling_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, const at::Tensor& b,
                                    int64_t kind, double eps, int64_t max_iter, c10::optional<double> tol,
                                    c10::optional<double> tau_a, c10::optional<double> tau_b, double absorb,
                                    const c10::optional<at::Tensor>& f0, const c10::optional<at::Tensor>& g0,
                                    c10::optional<at::ArrayRef<double>> eps_stages) {
  auto r = embeddings_fwd_impl(x, y, a, b, kind, eps, max_iter, tol, tau_a, tau_b, absorb, f0, g0, false, nullptr,
                               nullptr, eps_stages);
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
}

// dx, dy of sum_k scale_k <P*_k, C_k(x, y)> with P* held constant (the envelope rule). Every cost's gradient has
// the form dx = Q y + diag(rx) x, dy = Q^T x + diag(ry) y with Q [n, m] built from P in place, so the backward
// of a problem is its cost GEMM, two GEMMs and one pass over its rows; no normalised copies of x or y.
//  cosine (c_ij = <x_i, y_j> sx_i sy_j, s = 1/max(|.|, 1e-12)): Q_ij = -P_ij sx_i sy_j, rx_i = sx_i^2 sum_j P_ij c_ij
//    (0 where the clamp is active: there x/1e-12 is linear); sqeuclidean: Q = -2P (P = 0 where the clamp at 0 is
//    active), rx_i = 2 sum_j P_ij; dot: Q = -P, rx = 0.
// Padded (x [B, N, d], f [B, N], ...) or, with cu_x, cu_y, packed (x [Tx, d], f [Tx], ...): dx, dy like x, y.
std::tuple<at::Tensor, at::Tensor> embeddings_bwd_impl(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a,
                                                       const at::Tensor& b, const at::Tensor& f, const at::Tensor& g,
                                                       const at::Tensor& scale, int64_t kind, double eps, bool need_dx,
                                                       bool need_dy, const at::Tensor* cu_x = nullptr,
                                                       const at::Tensor* cu_y = nullptr) {
  const char* op = cu_x ? "sinkhorn_embeddings_varlen_bwd" : "sinkhorn_embeddings_bwd";
  const EmbeddingLayout L = embedding_layout(op, x, y, a, b, kind, cu_x, cu_y);
  const int64_t B = L.B;
  const Segments &sx = L.sx, &sy = L.sy;
  if (cu_x) {
    TORCH_CHECK(f.sizes() == a.sizes() && g.sizes() == b.sizes(), op,
                ": f and g must be [Tx] and [Ty] like a and b, got ", f.sizes(), " and ", g.sizes());
    TORCH_CHECK(f.device() == x.device() && g.device() == x.device(), op, ": f and g must be on ", x.device());
    TORCH_CHECK(scale.dim() == 1 && scale.size(0) == B && scale.device() == x.device(), op, ": scale must be [B] = ",
                B, " on ", x.device(), ", got ", scale.sizes());
    TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
  } else {
    check_potentials(op, f, g, B, x.size(1), y.size(1), x.device(), eps, &scale);
  }
  const auto dt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor X = embeddings_data(x, dt), Y = embeddings_data(y, dt);
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const at::Tensor F = f.to(dt).contiguous(), G = g.to(dt).contiguous(), S = scale.to(dt).contiguous();
  const int64_t d = X.size(-1);
  const auto opts = A.options();
  // A gradient that is needed is written in full by its problem's task (rows without mass get 0), so it is
  // allocated uninitialised: zeroing [B, N, d] up front cost more than the problems' GEMMs (first-touch page
  // faults). One that is not needed is a broadcast zero (no memory).
  auto grad_out = [&](bool need, const at::Tensor& like) {
    std::vector<int64_t> shape(like.sizes().begin(), like.sizes().end());
    shape.back() = d;
    if (need) return at::empty(shape, opts);
    return at::zeros(std::vector<int64_t>(shape.size(), 1), opts).expand(shape);
  };
  at::Tensor dx = grad_out(need_dx, x), dy = grad_out(need_dy, y);
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_embeddings_bwd_cpu", [&] {
    using T = scalar_t;
    const Kernels<T>* K = kernels<T>();
    const T inv_eps = T(1) / static_cast<T>(eps);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Tile<T> t;  // per chunk (one per thread per call): freed when the call ends
      EmbeddingTile<T>& e = t.emb;
      std::vector<T> ptile;
      for (int64_t k = begin; k < end; ++k) {
        t.select(A.data_ptr<T>() + sx.start(k), Bw.data_ptr<T>() + sy.start(k), sx.count(k), sy.count(k));
        const int64_t n = t.n(), m = t.m();
        const T s = S.data_ptr<T>()[k];
        // zero the rows this problem's GEMMs will not write (all of them if it has no gradient)
        const bool skip = n == 0 || m == 0 || s == 0 || !(need_dx || need_dy);
        auto clear = [&](bool need, const at::Tensor& grad, const Segments& seg, const std::vector<int64_t>& idx) {
          if (!need) return;
          const int64_t rows = seg.count(k);
          T* gk = grad.data_ptr<T>() + seg.start(k) * d;
          size_t next = 0;
          for (int64_t r = 0; r < rows; ++r) {
            if (!skip && next < idx.size() && idx[next] == r) {
              ++next;
              continue;
            }
            std::fill(gk + r * d, gk + (r + 1) * d, T(0));
          }
        };
        clear(need_dx, dx, sx, t.rows);
        clear(need_dy, dy, sy, t.cols);
        if (skip) continue;
        embedding_cost<T>(X, Y, k, sx, sy, kind, t);
        const T* Cp = t.cost.data_ptr<T>();
        t.fill([&](int64_t r) { return Cp + r * m; }, false, sy.count(k), inv_eps, false);
        t.load_potentials(F.data_ptr<T>() + sx.start(k), G.data_ptr<T>() + sy.start(k), /*full=*/true, inv_eps);
        const int64_t ld = t.ld;
        ptile.resize(n * ld);  // plan_rows writes every entry, padding columns included
        T unused_pc = 0, unused_p = 0;
        K->plan_rows(t.Cs.data(), ld, t.fs.data(), t.gs.data(), 0, n, ptile.data(), &unused_pc, &unused_p);
        T* P = ptile.data();  // becomes Q in place
        e.rx.assign(n, T(0));
        e.ry.assign(m, T(0));
        for (int64_t i = 0; i < n; ++i) {
          T* Pi = P + i * ld;
          const T* Ci = Cp + i * m;
          if (kind == kCosine) {
            T acc = 0;
            for (int64_t j = 0; j < m; ++j) {
              const T p = Pi[j] * s, pc = p * (T(1) - Ci[j]);
              acc += pc;
              if (!e.y_linear[j]) e.ry[j] += pc;
              Pi[j] = -p * e.sx[i] * e.sy[j];
            }
            if (!e.x_linear[i]) e.rx[i] = acc * e.sx[i] * e.sx[i];
          } else if (kind == kSqEuclidean) {
            T acc = 0;
            for (int64_t j = 0; j < m; ++j) {
              const T p = Ci[j] == T(0) ? T(0) : Pi[j] * s;
              acc += p;
              e.ry[j] += p;
              Pi[j] = T(-2) * p;
            }
            e.rx[i] = T(2) * acc;
          } else {
            for (int64_t j = 0; j < m; ++j) Pi[j] *= -s;
          }
        }
        if (kind == kCosine)
          for (int64_t j = 0; j < m; ++j) e.ry[j] *= e.sy[j] * e.sy[j];
        else if (kind == kSqEuclidean)
          for (int64_t j = 0; j < m; ++j) e.ry[j] *= T(2);
        const auto topts = t.cost.options();
        const at::Tensor Q = at::from_blob(P, {n, m}, {ld, 1}, topts);
        const at::Tensor Xk = at::from_blob(const_cast<T*>(e.xp), {n, d}, topts);
        const at::Tensor Yk = at::from_blob(const_cast<T*>(e.yp), {m, d}, topts);
        e.gbuf.resize(std::max(n, m) * d);
        // rows of the gradient of one side: Qs @ other + coef * own, written to that side's valid rows of problem k
        auto side = [&](const at::Tensor& Qs, const at::Tensor& other, const T* own, const std::vector<T>& coef,
                        const std::vector<int64_t>& idx, T* grad_k) {
          const int64_t cnt = static_cast<int64_t>(idx.size());
          at::Tensor out = at::from_blob(e.gbuf.data(), {cnt, d}, topts);
          at::mm_out(out, Qs, other);
          for (int64_t i = 0; i < cnt; ++i) {
            T* dst = grad_k + idx[i] * d;
            const T* gi = e.gbuf.data() + i * d;
            const T* oi = own + i * d;
            const T r = coef[i];
            for (int64_t c = 0; c < d; ++c) dst[c] = gi[c] + r * oi[c];
          }
        };
        if (need_dx) side(Q, Yk, e.xp, e.rx, t.rows, dx.data_ptr<T>() + sx.start(k) * d);
        if (need_dy) side(Q.t(), Xk, e.yp, e.ry, t.cols, dy.data_ptr<T>() + sy.start(k) * d);
      }
    });
  });
  return {dx, dy};
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_embeddings_bwd_cpu(const at::Tensor& x, const at::Tensor& y,
                                                               const at::Tensor& a, const at::Tensor& b,
                                                               const at::Tensor& f, const at::Tensor& g,
                                                               const at::Tensor& scale, int64_t kind, double eps,
                                                               bool need_dx, bool need_dy) {
  return embeddings_bwd_impl(x, y, a, b, f, g, scale, kind, eps, need_dx, need_dy);
}

// Packed (varlen) inputs: x [Tx, d], y [Ty, d], the rows of problem k at cu_seqlens_x[k] .. cu_seqlens_x[k + 1] - 1
// (and y's likewise), weights a [Tx], b [Ty]; read in place, never padded. absorb given: scaling iterations.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>
sinkhorn_embeddings_varlen_fwd_cpu(const at::Tensor& x, const at::Tensor& y, const at::Tensor& cu_seqlens_x,
                                   const at::Tensor& cu_seqlens_y, const at::Tensor& a, const at::Tensor& b,
                                   int64_t kind, double eps, int64_t max_iter, c10::optional<double> tol,
                                   c10::optional<double> tau_a, c10::optional<double> tau_b,
                                   c10::optional<double> absorb, const c10::optional<at::Tensor>& f0,
                                   const c10::optional<at::Tensor>& g0,
                                   c10::optional<at::ArrayRef<double>> eps_stages) {
  auto r = embeddings_fwd_impl(x, y, a, b, kind, eps, max_iter, tol, tau_a, tau_b, absorb, f0, g0, false,
                               &cu_seqlens_x, &cu_seqlens_y, eps_stages);
  if (r.size() == 6) {
    const int64_t B = r[2].size(0);
    r.push_back(at::zeros({B}, r[2].options()));
    r.push_back(at::zeros({B}, r[2].options().dtype(at::kBool)));
  }
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7]};
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_embeddings_varlen_bwd_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& cu_seqlens_x, const at::Tensor& cu_seqlens_y,
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& f, const at::Tensor& g, const at::Tensor& scale,
    int64_t kind, double eps, bool need_dx, bool need_dy) {
  return embeddings_bwd_impl(x, y, a, b, f, g, scale, kind, eps, need_dx, need_dy, &cu_seqlens_x, &cu_seqlens_y);
}

}  // namespace

// The instruction set the CPU kernels run with here ("base", "avx2" or "avx512").
std::string cpu_isa() { return kernels<float>()->isa; }

// The symmetric problems (x, x) with weights a (padded, or packed with cu_seqlens): averaged updates
// h <- (T(h) + T(T(h))) / 2 from h0 (or 0), each step one log-domain iteration and the average; tol stops a problem
// once the state (h, h) meets it.
std::tuple<at::Tensor, at::Tensor, at::Tensor> sinkhorn_embeddings_symmetric_fwd_cpu(
    const at::Tensor& x, const at::Tensor& a, int64_t kind, double eps, int64_t max_iter, c10::optional<double> tol,
    const c10::optional<at::Tensor>& h0, const c10::optional<at::Tensor>& cu_seqlens,
    c10::optional<at::ArrayRef<double>> eps_stages) {
  const bool packed = cu_seqlens.has_value() && cu_seqlens->defined();
  const at::Tensor* cu = packed ? &*cu_seqlens : nullptr;
  auto r = embeddings_fwd_impl(x, x, a, a, kind, eps, max_iter, tol, c10::nullopt, c10::nullopt, c10::nullopt, h0, h0,
                               /*symmetric=*/true, cu, cu, eps_stages);
  return {r[0], r[2], r[3]};
}

TORCH_LIBRARY_IMPL(fastot, CPU, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cpu);
  m.impl("sinkhorn_fwd_scaling", &sinkhorn_fwd_scaling_cpu);
  m.impl("sinkhorn_plan", &sinkhorn_plan_cpu);
  m.impl("sinkhorn_plan_sums", &sinkhorn_plan_sums_cpu);
  m.impl("sinkhorn_embeddings_fwd", &sinkhorn_embeddings_fwd_cpu);
  m.impl("sinkhorn_embeddings_fwd_scaling", &sinkhorn_embeddings_fwd_scaling_cpu);
  m.impl("sinkhorn_embeddings_symmetric_fwd", &sinkhorn_embeddings_symmetric_fwd_cpu);
  m.impl("sinkhorn_embeddings_bwd", &sinkhorn_embeddings_bwd_cpu);
  m.impl("sinkhorn_embeddings_varlen_fwd", &sinkhorn_embeddings_varlen_fwd_cpu);
  m.impl("sinkhorn_embeddings_varlen_bwd", &sinkhorn_embeddings_varlen_bwd_cpu);
}

}  // namespace cpu
}  // namespace fastot
