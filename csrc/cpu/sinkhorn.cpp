// CPU Sinkhorn: one problem per task (at::parallel_for over the batch), log-domain updates with
// a two-pass (max, then sum) log-sum-exp. Simple and exact; issue 3 makes it fast.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Optional.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <tuple>
#include <vector>

namespace fastot {
namespace {

template <typename T>
struct Problem {
  const T* C;   // [N, M] cost of this problem
  const T* a;   // [N] weights
  const T* b;   // [M] weights
  int64_t N, M;
};

// f~_i = -eps * LSE_j((g_j - C_ij)/eps + log b_j) over columns with b_j > 0; returns false if none.
template <typename T>
inline bool row_ctransform(const Problem<T>& p, const T* g, const T* logb, T eps, int64_t i, T& out) {
  const T* Ci = p.C + i * p.M;
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = 0; j < p.M; ++j) {
    if (p.b[j] > 0) {
      T v = (g[j] - Ci[j]) / eps + logb[j];
      mx = v > mx ? v : mx;
    }
  }
  if (!(mx > -std::numeric_limits<T>::infinity())) return false;
  T s = 0;
  for (int64_t j = 0; j < p.M; ++j) {
    if (p.b[j] > 0) s += std::exp((g[j] - Ci[j]) / eps + logb[j] - mx);
  }
  out = -eps * (mx + std::log(s));
  return true;
}

// L1 violation of the row marginal of the plan defined by (f, g), given f~ from row_ctransform.
template <typename T>
inline T row_error(const Problem<T>& p, const T* f, const T* ft, const bool* ok, T eps, T tau_a, bool unb_a) {
  T err = 0;
  for (int64_t i = 0; i < p.N; ++i) {
    if (!(p.a[i] > 0) || !ok[i]) continue;
    T target = unb_a ? std::exp(-f[i] / tau_a) : T(1);
    err += p.a[i] * std::abs(std::exp((f[i] - ft[i]) / eps) - target);
  }
  return err;
}

template <typename T>
void solve_one(const Problem<T>& p, T eps, int64_t max_iter, double tol, bool has_tol, double tau_a, bool unb_a,
               double tau_b, bool unb_b, T* f, T* g, int32_t* n_iter, T* err_out) {
  const T lam_a = unb_a ? T(tau_a / (tau_a + eps)) : T(1);
  const T lam_b = unb_b ? T(tau_b / (tau_b + eps)) : T(1);
  std::vector<T> loga(p.N), logb(p.M), ft(p.N), colmax(p.M), colsum(p.M);
  std::vector<char> ok_buf(p.N);
  bool* ok = reinterpret_cast<bool*>(ok_buf.data());
  for (int64_t i = 0; i < p.N; ++i) loga[i] = p.a[i] > 0 ? std::log(p.a[i]) : T(0);
  for (int64_t j = 0; j < p.M; ++j) logb[j] = p.b[j] > 0 ? std::log(p.b[j]) : T(0);
  for (int64_t i = 0; i < p.N; ++i) f[i] = 0;
  for (int64_t j = 0; j < p.M; ++j) g[j] = 0;

  auto row_pass = [&]() {
    for (int64_t i = 0; i < p.N; ++i) ok[i] = p.a[i] > 0 && row_ctransform(p, g, logb.data(), eps, i, ft[i]);
  };
  int64_t it = 0;
  T err = 0;
  for (; it < max_iter; ++it) {
    row_pass();
    if (has_tol) {
      err = row_error(p, f, ft.data(), ok, eps, T(tau_a), unb_a);
      if (err < tol) break;
    }
    for (int64_t i = 0; i < p.N; ++i) f[i] = ok[i] ? lam_a * ft[i] : T(0);
    // Column pass: g_j = -eps * LSE_i((f_i - C_ij)/eps + log a_i), streamed row by row so C is read contiguously.
    for (int64_t j = 0; j < p.M; ++j) colmax[j] = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < p.N; ++i) {
      if (!(p.a[i] > 0)) continue;
      const T* Ci = p.C + i * p.M;
      for (int64_t j = 0; j < p.M; ++j) {
        T v = (f[i] - Ci[j]) / eps + loga[i];
        colmax[j] = v > colmax[j] ? v : colmax[j];
      }
    }
    for (int64_t j = 0; j < p.M; ++j) colsum[j] = 0;
    for (int64_t i = 0; i < p.N; ++i) {
      if (!(p.a[i] > 0)) continue;
      const T* Ci = p.C + i * p.M;
      for (int64_t j = 0; j < p.M; ++j) colsum[j] += std::exp((f[i] - Ci[j]) / eps + loga[i] - colmax[j]);
    }
    for (int64_t j = 0; j < p.M; ++j) {
      bool valid = p.b[j] > 0 && colsum[j] > 0;
      g[j] = valid ? -lam_b * eps * (colmax[j] + std::log(colsum[j])) : T(0);
    }
  }
  if (!has_tol || it == max_iter) {
    row_pass();
    err = row_error(p, f, ft.data(), ok, eps, T(tau_a), unb_a);
  }
  *n_iter = static_cast<int32_t>(it);
  *err_out = err;
}

void check_inputs(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(cost.dim() == 3, "sinkhorn: cost must be [B, N, M], got ", cost.sizes());
  TORCH_CHECK(a.dim() == 2 && a.size(0) == cost.size(0) && a.size(1) == cost.size(1),
              "sinkhorn: a must be [B, N] = ", cost.size(0), "x", cost.size(1), ", got ", a.sizes());
  TORCH_CHECK(b.dim() == 2 && b.size(0) == cost.size(0) && b.size(1) == cost.size(2),
              "sinkhorn: b must be [B, M] = ", cost.size(0), "x", cost.size(2), ", got ", b.sizes());
}

at::ScalarType compute_dtype(const at::Tensor& cost) {
  return cost.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cpu(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps, int64_t max_iter,
    c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b) {
  check_inputs(cost, a, b);
  TORCH_CHECK(eps > 0, "sinkhorn: eps must be > 0, got ", eps);
  TORCH_CHECK(max_iter >= 0, "sinkhorn: max_iter must be >= 0, got ", max_iter);
  const auto dt = compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous();
  const at::Tensor A = a.to(dt).contiguous();
  const at::Tensor Bw = b.to(dt).contiguous();
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  at::Tensor f = at::zeros({B, N}, C.options());
  at::Tensor g = at::zeros({B, M}, C.options());
  at::Tensor n_iter = at::zeros({B}, C.options().dtype(at::kInt));
  at::Tensor err = at::zeros({B}, C.options());
  const bool has_tol = tol.has_value();
  const bool unb_a = tau_a.has_value(), unb_b = tau_b.has_value();
  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "sinkhorn_fwd_cpu", [&] {
    const scalar_t* Cp = C.data_ptr<scalar_t>();
    const scalar_t* Ap = A.data_ptr<scalar_t>();
    const scalar_t* Bp = Bw.data_ptr<scalar_t>();
    scalar_t* fp = f.data_ptr<scalar_t>();
    scalar_t* gp = g.data_ptr<scalar_t>();
    scalar_t* ep = err.data_ptr<scalar_t>();
    int32_t* np = n_iter.data_ptr<int32_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        Problem<scalar_t> p{Cp + k * N * M, Ap + k * N, Bp + k * M, N, M};
        solve_one(p, static_cast<scalar_t>(eps), max_iter, has_tol ? *tol : 0.0, has_tol,
                  unb_a ? *tau_a : 0.0, unb_a, unb_b ? *tau_b : 0.0, unb_b, fp + k * N, gp + k * M, np + k,
                  ep + k);
      }
    });
  });
  return {f, g, n_iter, err};
}

// Shared loop for the plan and <P, C>: calls emit(k, i, j, P_ij, C_ij) for every entry.
template <typename T, typename Emit>
void for_each_plan_entry(const at::Tensor& C, const at::Tensor& A, const at::Tensor& Bw, const at::Tensor& f,
                         const at::Tensor& g, double eps, Emit emit) {
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  const T* Cp = C.data_ptr<T>();
  const T* Ap = A.data_ptr<T>();
  const T* Bp = Bw.data_ptr<T>();
  const T* fp = f.data_ptr<T>();
  const T* gp = g.data_ptr<T>();
  const T e = static_cast<T>(eps);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      for (int64_t i = 0; i < N; ++i) {
        const T ai = Ap[k * N + i];
        for (int64_t j = 0; j < M; ++j) {
          const T bj = Bp[k * M + j];
          const T c = Cp[(k * N + i) * M + j];
          T pij = 0;
          if (ai > 0 && bj > 0) pij = ai * bj * std::exp((fp[k * N + i] + gp[k * M + j] - c) / e);
          emit(k, i, j, pij, c);
        }
      }
    }
  });
}

at::Tensor sinkhorn_plan_cpu(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, const at::Tensor& f,
                             const at::Tensor& g, double eps) {
  check_inputs(cost, a, b);
  const auto dt = compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous();
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const at::Tensor F = f.to(dt).contiguous(), G = g.to(dt).contiguous();
  at::Tensor P = at::empty(C.sizes(), C.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_plan_cpu", [&] {
    scalar_t* Pp = P.data_ptr<scalar_t>();
    const int64_t N = C.size(1), M = C.size(2);
    for_each_plan_entry<scalar_t>(C, A, Bw, F, G, eps, [&](int64_t k, int64_t i, int64_t j, scalar_t p, scalar_t) {
      Pp[(k * N + i) * M + j] = p;
    });
  });
  return P;
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_plan_sums_cpu(const at::Tensor& cost, const at::Tensor& a,
                                                         const at::Tensor& b, const at::Tensor& f, const at::Tensor& g,
                                                         double eps) {
  check_inputs(cost, a, b);
  const auto dt = compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous();
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const at::Tensor F = f.to(dt).contiguous(), G = g.to(dt).contiguous();
  at::Tensor out = at::zeros({C.size(0)}, C.options()), mass = at::zeros({C.size(0)}, C.options());
  AT_DISPATCH_FLOATING_TYPES(dt, "sinkhorn_plan_sums_cpu", [&] {
    scalar_t* op = out.data_ptr<scalar_t>();
    scalar_t* mp = mass.data_ptr<scalar_t>();
    // Each problem k is owned by one task, so the per-problem sum needs no atomics.
    for_each_plan_entry<scalar_t>(C, A, Bw, F, G, eps, [&](int64_t k, int64_t, int64_t, scalar_t p, scalar_t c) {
      if (p > 0) {
        op[k] += p * c;
        mp[k] += p;
      }
    });
  });
  return {out, mass};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastot, CPU, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cpu);
  m.impl("sinkhorn_plan", &sinkhorn_plan_cpu);
  m.impl("sinkhorn_plan_sums", &sinkhorn_plan_sums_cpu);
}

}  // namespace fastot
