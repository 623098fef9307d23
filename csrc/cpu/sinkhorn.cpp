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
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cmath>
#include <cstdlib>
#include <algorithm>
#include <limits>
#include <string>
#include <tuple>
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
};

// One problem, gathered: valid row/column indices, their log-weights, the dense tile Cs = C/eps (n x ld,
// ld = m rounded up to 64 bytes) and its transpose CsT (m x ldT); padding entries are +inf (contribute
// nothing). The g-update reduces Cs over rows, the f-update CsT over its rows, both vectorised across
// the output index. CsT is only built by the solver (want_transpose).
template <typename T>
struct Tile {
  std::vector<int64_t> rows, cols;
  std::vector<T> a, loga, logb, Cs, CsT;
  int64_t ld = 0, ldT = 0;
  // iteration state and scratch
  std::vector<T> f, g, fs, gs, lse_r, lse_c, colmax, colsum;
  at::Tensor cost;  // sinkhorn_embeddings: this problem's [n, m] cost, storage reused across the chunk's problems

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
  const T lam_a = o.unb_a ? o.tau_a / (o.tau_a + o.eps) : T(1);
  const T lam_b = o.unb_b ? o.tau_b / (o.tau_b + o.eps) : T(1);
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
  }
  if (!o.has_tol || it == o.max_iter) {
    rows();
    err = row_error(t, o);
  }
  *n_iter = static_cast<int32_t>(it);
  *err_out = err;
}

template <typename T>
void scatter(const Tile<T>& t, T* f, T* g) {
  for (int64_t i = 0; i < t.n(); ++i) f[t.rows[i]] = t.f[i];
  for (int64_t j = 0; j < t.m(); ++j) g[t.cols[j]] = t.g[j];
}

// Rows per parallel block: enough work (~16k exps) per task to amortise the scheduling.
int64_t grain(int64_t other_dim) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(other_dim, 1)); }

bool per_problem_schedule(int64_t B, int64_t N, int64_t M) {
  return B >= 2 * at::get_num_threads() || N * M <= 4096;
}

// Solves B problems. fill(k, tile) gathers problem k into the tile; after(k, tile) runs once its iterations
// are done (while the tile is still there). Schedules as described at the top of this file.
template <typename T, typename Fill, typename After>
void solve_problems(int64_t B, int64_t N, int64_t M, const Options<T>& o, Fill fill, After after, T* f, T* g,
                    int32_t* n_iter, T* err) {
  const Kernels<T>* K = kernels<T>();
  if (per_problem_schedule(B, N, M)) {
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Tile<T> t;  // per chunk (one per thread per call): freed when the call ends
      for (int64_t k = begin; k < end; ++k) {
        fill(k, t);
        const int64_t n = t.n(), m = t.m();
        iterate(
            t, o, n_iter + k, err + k,
            [&] {
              K->lse_columns(t.CsT.data(), m, t.ldT, t.gs.data(), 0, t.ldT, t.lse_r.data(), t.colmax.data(),
                             t.colsum.data());
            },
            [&] {
              K->lse_columns(t.Cs.data(), n, t.ld, t.fs.data(), 0, t.ld, t.lse_c.data(), t.colmax.data(),
                             t.colsum.data());
            });
        scatter(t, f + k * N, g + k * M);
        after(k, t);
      }
    });
    return;
  }
  Tile<T> t;
  for (int64_t k = 0; k < B; ++k) {
    fill(k, t);
    const int64_t n = t.n(), m = t.m(), W = kLanes<T>;
    iterate(
        t, o, n_iter + k, err + k,
        [&] {  // blocks of whole vectors of rows (columns of the transpose)
          at::parallel_for(0, t.ldT / W, std::max<int64_t>(1, grain(m) / W), [&](int64_t v0, int64_t v1) {
            K->lse_columns(t.CsT.data(), m, t.ldT, t.gs.data(), v0 * W, v1 * W, t.lse_r.data(), t.colmax.data(),
                           t.colsum.data());
          });
        },
        [&] {  // blocks of whole vectors of columns
          at::parallel_for(0, t.ld / W, std::max<int64_t>(1, grain(n) / W), [&](int64_t v0, int64_t v1) {
            K->lse_columns(t.Cs.data(), n, t.ld, t.fs.data(), v0 * W, v1 * W, t.lse_c.data(), t.colmax.data(),
                           t.colsum.data());
          });
        });
    scatter(t, f + k * N, g + k * M);
    after(k, t);
  }
}

template <typename T>
void solve_batch(const T* C, const T* A, const T* Bw, int64_t B, int64_t N, int64_t M, const Options<T>& o, T* f,
                 T* g, int32_t* n_iter, T* err) {
  const T inv_eps = T(1) / o.eps;
  solve_problems<T>(
      B, N, M, o, [&](int64_t k, Tile<T>& t) { t.gather(C + k * N * M, A + k * N, Bw + k * M, N, M, inv_eps); },
      [](int64_t, Tile<T>&) {}, f, g, n_iter, err);
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


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cpu(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps, int64_t max_iter,
    c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b) {
  check_sinkhorn_inputs(cost, a, b);
  TORCH_CHECK(eps > 0, "sinkhorn: eps must be > 0, got ", eps);
  TORCH_CHECK(max_iter >= 0, "sinkhorn: max_iter must be >= 0, got ", max_iter);
  const auto dt = sinkhorn_compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous();
  const at::Tensor A = a.to(dt).contiguous();
  const at::Tensor Bw = b.to(dt).contiguous();
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  at::Tensor f = at::zeros({B, N}, C.options());
  at::Tensor g = at::zeros({B, M}, C.options());
  at::Tensor n_iter = at::zeros({B}, C.options().dtype(at::kInt));
  at::Tensor err = at::zeros({B}, C.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_fwd_cpu", [&] {
    const Options<scalar_t> o{static_cast<scalar_t>(eps), max_iter, tol.has_value(),
                              static_cast<scalar_t>(tol.value_or(0.0)), tau_a.has_value(), tau_b.has_value(),
                              static_cast<scalar_t>(tau_a.value_or(1.0)), static_cast<scalar_t>(tau_b.value_or(1.0))};
    solve_batch<scalar_t>(C.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(), Bw.data_ptr<scalar_t>(), B, N, M, o,
                          f.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), n_iter.data_ptr<int32_t>(),
                          err.data_ptr<scalar_t>());
  });
  return {f, g, n_iter, err};
}

at::Tensor plan_or_cost(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, const at::Tensor& f,
                        const at::Tensor& g, double eps, bool want_plan, at::Tensor* mass_out = nullptr) {
  check_sinkhorn_inputs(cost, a, b);
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
// sinkhorn_embeddings: the cost tile of each problem is computed from x and y (a GEMM over its valid rows and
// columns) when the problem is solved, and again in the backward; no [B, N, M] tensor ever exists.
enum CostKind : int64_t { kCosine = 0, kSqEuclidean = 1, kDot = 2 };

// x [n, d], y [m, d] (valid rows only) -> cost [n, m] written into `out` (created on first use, then resized and
// reused across the problems of a task, so the [n, m] temporaries do not churn the allocator). cosine uses norms
// clamped at 1e-12 and sqeuclidean is clamped at 0, like fastot.pairwise_cost.
void embedding_cost(const at::Tensor& x, const at::Tensor& y, int64_t kind, at::Tensor& out) {
  if (!out.defined()) out = at::empty({0}, x.options());
  out.resize_({x.size(0), y.size(0)});
  if (kind == kCosine) {
    const at::Tensor xn = x / x.norm(2, {1}, true).clamp_min(1e-12);
    const at::Tensor yn = y / y.norm(2, {1}, true).clamp_min(1e-12);
    at::mm_out(out, xn, yn.t()).neg_().add_(1);
  } else if (kind == kDot) {
    at::mm_out(out, x, y.t()).neg_();
  } else {
    at::mm_out(out, x, y.t()).mul_(-2).add_((x * x).sum(1, true)).add_((y * y).sum(1).unsqueeze(0)).clamp_min_(0);
  }
}

at::Tensor take_rows(const at::Tensor& x, std::vector<int64_t>& idx) {
  if (static_cast<int64_t>(idx.size()) == x.size(0)) return x;
  return x.index_select(0, at::from_blob(idx.data(), {static_cast<int64_t>(idx.size())}, at::kLong));
}

void check_embeddings(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, const at::Tensor& b,
                      int64_t kind) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3 && x.size(0) == y.size(0) && x.size(2) == y.size(2),
              "sinkhorn_embeddings: x and y must be [B, N, d] and [B, M, d], got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(a.dim() == 2 && a.size(0) == x.size(0) && a.size(1) == x.size(1), "sinkhorn_embeddings: a must be [B, N]");
  TORCH_CHECK(b.dim() == 2 && b.size(0) == y.size(0) && b.size(1) == y.size(1), "sinkhorn_embeddings: b must be [B, M]");
  TORCH_CHECK(kind >= 0 && kind <= 2, "sinkhorn_embeddings: cost must be 0 (cosine), 1 (sqeuclidean) or 2 (dot)");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_embeddings_fwd_cpu(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, const at::Tensor& b, int64_t kind, double eps,
    int64_t max_iter, c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b) {
  check_embeddings(x, y, a, b, kind);
  TORCH_CHECK(eps > 0, "sinkhorn_embeddings: eps must be > 0, got ", eps);
  TORCH_CHECK(max_iter >= 0, "sinkhorn_embeddings: max_iter must be >= 0, got ", max_iter);
  const auto dt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Kernels work on data: detached, so the nested ATen calls (GEMMs into reused buffers) see no autograd.
  const at::Tensor X = x.detach().to(dt).contiguous(), Y = y.detach().to(dt).contiguous();
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const int64_t B = X.size(0), N = X.size(1), M = Y.size(1);
  const auto opts = X.options();
  at::Tensor f = at::zeros({B, N}, opts), g = at::zeros({B, M}, opts), err = at::zeros({B}, opts);
  at::Tensor n_iter = at::zeros({B}, opts.dtype(at::kInt));
  at::Tensor tc = at::zeros({B}, opts), mass = at::zeros({B}, opts);
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_embeddings_fwd_cpu", [&] {
    using T = scalar_t;
    const Options<T> o{static_cast<T>(eps), max_iter, tol.has_value(), static_cast<T>(tol.value_or(0.0)),
                       tau_a.has_value(), tau_b.has_value(), static_cast<T>(tau_a.value_or(1.0)),
                       static_cast<T>(tau_b.value_or(1.0))};
    const T inv_eps = T(1) / o.eps;
    const Kernels<T>* K = kernels<T>();
    T *tcp = tc.data_ptr<T>(), *mp = mass.data_ptr<T>();
    solve_problems<T>(
        B, N, M, o,
        [&](int64_t k, Tile<T>& t) {
          t.select(A.data_ptr<T>() + k * N, Bw.data_ptr<T>() + k * M, N, M);
          embedding_cost(take_rows(X[k], t.rows), take_rows(Y[k], t.cols), kind, t.cost);
          const T* Cp = t.cost.data_ptr<T>();
          const int64_t m = t.m();
          t.fill([&](int64_t r) { return Cp + r * m; }, false, M, inv_eps, true);
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
        f.data_ptr<T>(), g.data_ptr<T>(), n_iter.data_ptr<int32_t>(), err.data_ptr<T>());
  });
  return {f, g, n_iter, err, tc, mass};
}

// dx, dy of sum_k scale_k <P*_k, C_k(x, y)> with P* held constant (the envelope rule).
std::tuple<at::Tensor, at::Tensor> sinkhorn_embeddings_bwd_cpu(const at::Tensor& x, const at::Tensor& y,
                                                               const at::Tensor& a, const at::Tensor& b,
                                                               const at::Tensor& f, const at::Tensor& g,
                                                               const at::Tensor& scale, int64_t kind, double eps) {
  check_embeddings(x, y, a, b, kind);
  const auto dt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  // Kernels work on data: detached, so the nested ATen calls (GEMMs into reused buffers) see no autograd.
  const at::Tensor X = x.detach().to(dt).contiguous(), Y = y.detach().to(dt).contiguous();
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const at::Tensor F = f.to(dt).contiguous(), G = g.to(dt).contiguous(), S = scale.to(dt).contiguous();
  const int64_t B = X.size(0), N = X.size(1), M = Y.size(1);
  at::Tensor dx = at::zeros(X.sizes(), X.options()), dy = at::zeros(Y.sizes(), Y.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_embeddings_bwd_cpu", [&] {
    using T = scalar_t;
    const Kernels<T>* K = kernels<T>();
    const T inv_eps = T(1) / static_cast<T>(eps);
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      Tile<T> t;  // per chunk (one per thread per call): freed when the call ends
      std::vector<T> ptile;
      for (int64_t k = begin; k < end; ++k) {
        t.select(A.data_ptr<T>() + k * N, Bw.data_ptr<T>() + k * M, N, M);
        const int64_t n = t.n(), m = t.m();
        const T s = S.data_ptr<T>()[k];
        if (n == 0 || m == 0 || s == 0) continue;
        const at::Tensor xk = take_rows(X[k], t.rows), yk = take_rows(Y[k], t.cols);
        embedding_cost(xk, yk, kind, t.cost);
        const T* Cp = t.cost.data_ptr<T>();
        t.fill([&](int64_t r) { return Cp + r * m; }, false, M, inv_eps, false);
        t.load_potentials(F.data_ptr<T>() + k * N, G.data_ptr<T>() + k * M, /*full=*/true, inv_eps);
        ptile.assign(n * t.ld, T(0));
        T unused_pc = 0, unused_p = 0;
        K->plan_rows(t.Cs.data(), t.ld, t.fs.data(), t.gs.data(), 0, n, ptile.data(), &unused_pc, &unused_p);
        at::Tensor P = at::from_blob(ptile.data(), {n, t.ld}, X.options()).narrow(1, 0, m).mul_(s);  // in place
        at::Tensor gx, gy;
        if (kind == kDot) {
          gx = -P.mm(yk);
          gy = -P.t().mm(xk);
        } else if (kind == kSqEuclidean) {
          // d|x - y|^2 = 2 (x - y); zero where the clamp at 0 was active (the clamped cost is exactly 0 there)
          P.masked_fill_(t.cost == 0, 0);
          gx = 2 * (P.sum(1, true) * xk - P.mm(yk));
          gy = 2 * (P.sum(0).unsqueeze(1) * yk - P.t().mm(xk));
        } else {
          // C = 1 - <x/|x|, y/|y|>: d/dx = -(I - xh xh^T) (P yh) / |x|; below the 1e-12 clamp, x/1e-12 is linear
          const at::Tensor nx = xk.norm(2, {1}, true), ny = yk.norm(2, {1}, true);
          const at::Tensor nxc = nx.clamp_min(1e-12), nyc = ny.clamp_min(1e-12);
          const at::Tensor xh = xk / nxc, yh = yk / nyc;
          const at::Tensor Gx = -P.mm(yh), Gy = -P.t().mm(xh);
          gx = at::where(nx > 1e-12, (Gx - (Gx * xh).sum(1, true) * xh) / nxc, Gx / 1e-12);
          gy = at::where(ny > 1e-12, (Gy - (Gy * yh).sum(1, true) * yh) / nyc, Gy / 1e-12);
        }
        dx[k].index_copy_(0, at::from_blob(t.rows.data(), {n}, at::kLong), gx);
        dy[k].index_copy_(0, at::from_blob(t.cols.data(), {m}, at::kLong), gy);
      }
    });
  });
  return {dx, dy};
}

}  // namespace

// The instruction set the CPU kernels run with here ("base", "avx2" or "avx512").
std::string cpu_isa() { return kernels<float>()->isa; }

TORCH_LIBRARY_IMPL(fastot, CPU, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cpu);
  m.impl("sinkhorn_plan", &sinkhorn_plan_cpu);
  m.impl("sinkhorn_plan_sums", &sinkhorn_plan_sums_cpu);
  m.impl("sinkhorn_embeddings_fwd", &sinkhorn_embeddings_fwd_cpu);
  m.impl("sinkhorn_embeddings_bwd", &sinkhorn_embeddings_bwd_cpu);
}

}  // namespace cpu
}  // namespace fastot
