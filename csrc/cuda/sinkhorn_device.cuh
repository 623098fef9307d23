// Device code shared by the CUDA Sinkhorn kernels (sinkhorn_kernel.cu: cost given; sinkhorn_embeddings_kernel.cu:
// cost built from embeddings). Torch-free. Every quantity of an iteration is in base-2 units:
//   tile_ij = C_ij log2(e) / eps (+inf where a_i = 0 or b_j = 0),
//   u_i = f_i log2(e) / eps + log2 a_i,  v_j = g_j log2(e) / eps + log2 b_j,
// so each term of a log-sum-exp is one subtraction and one ex2, and P_ij = exp2(u_i + v_j - tile_ij).
#pragma once
#include <cuda_runtime.h>

#include <cfloat>
#include <cmath>
#include <cstdint>

#include "cuda/sinkhorn_kernel.h"

namespace fastot {
namespace dev {

constexpr int kThreads = 256;  // 8 warps per block; not tuned yet (needs a GPU)
constexpr int kWarps = kThreads / 32;
constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.6931471805599453094;

// Sum over the block; every thread gets the total. Begins and ends with a barrier, so `scratch` may be reused and
// whatever the block wrote to shared memory before the call is visible after it.
template <typename T>
__device__ T block_sum(T v, T* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += scratch[w];
  __syncthreads();
  return total;
}

__device__ __forceinline__ float fast_exp2(float x) {  // MUFU.EX2; 2^-inf = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ double fast_exp2(double x) { return exp2(x); }
// Compiles to lg2.approx.f32 without .ftz (checked in the PTX; the build sets no ftz/fast-math flag), which the
// PTX ISA specifies for subnormal inputs: a subnormal weight keeps a finite log, as in the reference, instead of
// becoming a dead row (test_cuda_sinkhorn checks it on a GPU).
__device__ __forceinline__ float fast_log2(float x) { return __log2f(x); }
__device__ __forceinline__ double fast_log2(double x) { return log2(x); }

// Online base-2 log-sum-exp: (m, s) represents m + log2(s). Terms of -inf are skipped.
template <typename T>
__device__ __forceinline__ void lse_push(T v, T& m, T& s) {
  if (v > m) {
    s = s * fast_exp2(m - v) + T(1);  // exp2(-inf) = 0 when m is still -inf
    m = v;
  } else if (v > -INFINITY) {
    s += fast_exp2(v - m);
  }
}
template <typename T>
__device__ __forceinline__ void lse_merge(T m2, T s2, T& m, T& s) {
  if (m2 > m) {
    s = s * fast_exp2(m - m2) + s2;
    m = m2;
  } else if (m2 > -INFINITY) {
    s += s2 * fast_exp2(m2 - m);
  }
}
// Merge across the 32 lanes of a warp; every lane gets the result.
template <typename T>
__device__ __forceinline__ void lse_warp(T& m, T& s) {
  for (int o = 16; o > 0; o >>= 1) {
    const T m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    lse_merge(m2, s2, m, s);
  }
}

// Per-iteration constants of a solve, from the launch arguments.
template <typename T>
struct Consts {
  T eps, scale, to_f, lam_a, lam_b;  // scale: natural -> base-2 units; to_f: base-2 LSE -> potential
  __device__ explicit Consts(const SinkhornArgs& args)
      : eps(static_cast<T>(args.eps)),
        scale(static_cast<T>(kLog2e / args.eps)),
        to_f(static_cast<T>(-args.eps * kLn2)),
        lam_a(args.unb_a ? static_cast<T>(args.tau_a / (args.tau_a + args.eps)) : T(1)),
        lam_b(args.unb_b ? static_cast<T>(args.tau_b / (args.tau_b + args.eps)) : T(1)) {}
};

// The row-marginal error term of row i: a_i |exp((f_i - f~_i)/eps) - target(f_i)|, where f~ is the c-transform of g.
template <typename T>
__device__ __forceinline__ T row_error(T ai, T fi, T fti, const SinkhornArgs& args) {
  const T target = args.unb_a ? exp(-fi / static_cast<T>(args.tau_a)) : T(1);
  return ai * fabs(exp((fi - fti) / static_cast<T>(args.eps)) - target);
}

// Shared-memory vectors of a one-block solve: 4 N + 3 M + 32 elements.
template <typename T>
struct SolveVectors {
  T *u, *fv, *ft, *la;  // [N] u, f, c-transform of g, log2 a (-inf on padded rows)
  T *v, *gv, *lb;       // [M] v, g, log2 b
  T* scratch;           // [32]
  __device__ SolveVectors(T* base, int64_t N, int64_t M)
      : u(base), fv(u + N), ft(fv + N), la(ft + N), v(la + N), gv(v + M), lb(gv + M), scratch(lb + M) {}
};
__host__ __device__ inline constexpr size_t solve_vector_elems(int64_t N, int64_t M) { return static_cast<size_t>(4 * N + 3 * M + 32); }

// Every iteration of one problem in one thread block, on a cost tile in shared memory (tile[i * ld + j], base-2
// units, +inf where masked). Starts from f0k [N], g0k [M] in global memory (a warm start, already 0 on padded points;
// read once, before the first barrier) or, where they are nullptr, from 0. Leaves f, g (and u, v consistent with
// them) in `s`; returns the iterations applied and sets `err` to the final row-marginal error. Per-problem early
// stop is a block-uniform flag.
//   f-update: one warp per row, lanes strided over columns (coalesced, bank-conflict free), an online
//             log-sum-exp per lane, then a shuffle merge across the warp;
//   g-update: one thread per column streaming over rows (consecutive threads read consecutive addresses).
template <typename T>
__device__ int64_t solve_on_chip(const T* tile, int64_t ld, const T* ak, const T* bk, int64_t N, int64_t M,
                                 const SinkhornArgs& args, SolveVectors<T> s, T& err, const T* f0k = nullptr,
                                 const T* g0k = nullptr) {
  const Consts<T> c(args);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  // Each thread writes and reads only its own entries here; the barrier below publishes them. u, v stay -inf on
  // padded points whatever the warm start holds there.
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    s.la[i] = ak[i] > 0 ? fast_log2(ak[i]) : T(-INFINITY);
    if (f0k) {
      s.fv[i] = f0k[i];
      s.u[i] = s.la[i] > -INFINITY ? s.fv[i] * c.scale + s.la[i] : T(-INFINITY);
    } else {
      s.fv[i] = 0;
      s.u[i] = s.la[i];
    }
  }
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    s.lb[j] = bk[j] > 0 ? fast_log2(bk[j]) : T(-INFINITY);
    if (g0k) {
      s.gv[j] = g0k[j];
      s.v[j] = s.lb[j] > -INFINITY ? s.gv[j] * c.scale + s.lb[j] : T(-INFINITY);
    } else {
      s.gv[j] = 0;
      s.v[j] = s.lb[j];
    }
  }
  __syncthreads();

  // f~_i = c-transform of g for every row; returns this thread's share of the row-marginal error of (f, g).
  auto row_pass = [&]() -> T {
    T e = 0;
    for (int64_t i = warp; i < N; i += n_warps) {
      const bool live = s.la[i] > -INFINITY;
      T m = -INFINITY, sum = 0;
      if (live)
        for (int64_t j = lane; j < M; j += 32) lse_push(s.v[j] - tile[i * ld + j], m, sum);
      lse_warp(m, sum);
      if (lane == 0) {
        const bool ok = live && m > -INFINITY;  // no allowed pair: potential 0, no mass
        s.ft[i] = ok ? c.to_f * (m + fast_log2(sum)) : T(0);
        if (ok) e += row_error(ak[i], s.fv[i], s.ft[i], args);
      }
    }
    return e;
  };

  int64_t it = 0;
  err = 0;
  for (; it < args.max_iter; ++it) {
    const T e = row_pass();
    if (args.has_tol) {
      err = block_sum(e, s.scratch);             // barriers around: ft is complete
      if (err < static_cast<T>(args.tol)) break;  // the same value in every thread: block-uniform
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
      s.fv[i] = c.lam_a * s.ft[i];
      s.u[i] = s.fv[i] * c.scale + s.la[i];  // -inf stays -inf on padded rows
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      T m = -INFINITY, sum = 0;
      if (s.lb[j] > -INFINITY)
        for (int64_t i = 0; i < N; ++i) lse_push(s.u[i] - tile[i * ld + j], m, sum);
      s.gv[j] = m > -INFINITY ? c.lam_b * c.to_f * (m + fast_log2(sum)) : T(0);
      s.v[j] = s.gv[j] * c.scale + s.lb[j];
    }
    __syncthreads();
  }
  if (!args.has_tol || it == args.max_iter) err = block_sum(row_pass(), s.scratch);
  return it;
}

// (<P, C>, sum P) of the solved problem from its tile and the final u, v: P_ij = exp2(u_i + v_j - tile_ij),
// C_ij = tile_ij / scale. Block-wide; every thread gets both sums.
template <typename T>
__device__ void plan_sums_on_chip(const T* tile, int64_t ld, int64_t N, int64_t M, T scale, const SolveVectors<T>& s,
                                  T& tc, T& mass) {
  T acc = 0, msum = 0;
  for (int64_t idx = threadIdx.x; idx < N * M; idx += blockDim.x) {
    const int64_t i = idx / M, j = idx - i * M;
    const T t = tile[i * ld + j];
    const T p = exp2(s.u[i] + s.v[j] - t);  // 0 where masked (t = +inf) or on a padded row (u = -inf)
    if (p > 0) {
      acc += p * t;
      msum += p;
    }
  }
  tc = block_sum(acc, s.scratch) / scale;
  mass = block_sum(msum, s.scratch);
}

}  // namespace dev
}  // namespace fastot
