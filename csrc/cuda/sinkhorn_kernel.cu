// CUDA Sinkhorn forward: one thread block per problem runs every iteration in one launch; no host
// synchronisation and no per-iteration launches; per-problem early stop is a block-uniform flag.
//
// Small problems (the common case) keep their whole cost tile on chip: the block loads C once from global
// memory into shared memory, pre-scaled to base-2 units (C * log2(e) / eps) with padded rows/columns set to
// +inf, and runs all iterations there. Larger problems read the same layout from global memory (L2-resident
// for the sizes of interest). Potentials are kept in base-2 units too (u = f log2(e)/eps + log2 a), so each
// term of a log-sum-exp is one subtraction and one ex2.
//   f-update: one warp per row, lanes strided over columns (coalesced, bank-conflict free), an online
//             (running-max) log-sum-exp per lane, then a shuffle reduction across the warp;
//   g-update: one thread per column streaming over rows (consecutive threads read consecutive addresses).
#include <cfloat>
#include <cmath>

#include "cuda/sinkhorn_kernel.h"

namespace fastot {
namespace {

constexpr int kThreads = 256;  // 8 warps per problem; not tuned yet (needs a GPU)
constexpr double kLog2e = 1.4426950408889634074;
constexpr double kLn2 = 0.6931471805599453094;

template <typename T>
__device__ T block_sum(T v, T* scratch) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += scratch[w];
  return total;
}

__device__ __forceinline__ float fast_exp2(float x) {  // MUFU.EX2; 2^-inf = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ double fast_exp2(double x) { return exp2(x); }
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

// Cost entry (i, j) in base-2 units, +inf where the pair is padded or forbidden.
template <typename T, bool ON_CHIP>
struct CostView {
  const T* tile;  // ON_CHIP: [N, M] in shared memory, already scaled and masked
  const T* C;     // otherwise: the problem's raw costs in global memory
  const T* a;
  const T* b;
  T scale;        // log2(e) / eps
  int64_t M;
  __device__ __forceinline__ T operator()(int64_t i, int64_t j) const {
    if (ON_CHIP) return tile[i * M + j];
    return (a[i] > 0 && b[j] > 0) ? C[i * M + j] * scale : T(INFINITY);
  }
};

template <typename T, bool ON_CHIP>
__global__ void __launch_bounds__(kThreads) sinkhorn_fwd_kernel(
    const T* __restrict__ C,        // [B,N,M] cost
    const T* __restrict__ a,        // [B,N] weights
    const T* __restrict__ b,        // [B,M] weights
    T* __restrict__ f,              // [B,N] out potentials
    T* __restrict__ g,              // [B,M] out potentials
    int32_t* __restrict__ n_iter,   // [B] out iterations applied
    T* __restrict__ err_out,        // [B] out final marginal error
    SinkhornArgs args) {
  extern __shared__ unsigned char smem_raw[];
  const int64_t k = blockIdx.x, N = args.N, M = args.M;
  T* u = reinterpret_cast<T*>(smem_raw);  // [N] f in base-2 units plus log2 a (-inf on padded rows)
  T* fv = u + N;                          // [N] f
  T* ft = fv + N;                         // [N] c-transform of g (f before damping)
  T* v = ft + N;                          // [M] g in base-2 units plus log2 b
  T* gv = v + M;                          // [M] g
  T* scratch = gv + M;                    // [32]
  T* tile = scratch + 32;                 // [N*M] when ON_CHIP
  const T* Ck = C + k * N * M;
  const T* ak = a + k * N;
  const T* bk = b + k * M;
  const T eps = static_cast<T>(args.eps);
  const T scale = static_cast<T>(kLog2e / args.eps);       // natural units -> base-2 units
  const T to_f = static_cast<T>(-args.eps * kLn2);         // base-2 log-sum-exp -> potential
  const T lam_a = args.unb_a ? static_cast<T>(args.tau_a / (args.tau_a + args.eps)) : T(1);
  const T lam_b = args.unb_b ? static_cast<T>(args.tau_b / (args.tau_b + args.eps)) : T(1);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;

  if (ON_CHIP) {  // global memory is read once: coalesced, scaled, masked
    for (int64_t idx = threadIdx.x; idx < N * M; idx += blockDim.x) {
      const int64_t i = idx / M, j = idx - i * M;
      tile[idx] = (ak[i] > 0 && bk[j] > 0) ? Ck[idx] * scale : T(INFINITY);
    }
  }
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
    fv[i] = 0;
    u[i] = ak[i] > 0 ? fast_log2(ak[i]) : T(-INFINITY);
  }
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    gv[j] = 0;
    v[j] = bk[j] > 0 ? fast_log2(bk[j]) : T(-INFINITY);
  }
  __syncthreads();
  const CostView<T, ON_CHIP> cost{tile, Ck, ak, bk, scale, M};

  // f~_i = c-transform of g for every row; returns this thread's share of the row-marginal error of (f, g).
  auto row_pass = [&]() -> T {
    T e = 0;
    for (int64_t i = warp; i < N; i += n_warps) {
      T m = -INFINITY, s = 0;
      if (ak[i] > 0)
        for (int64_t j = lane; j < M; j += 32) lse_push(v[j] - cost(i, j), m, s);
      for (int o = 16; o > 0; o >>= 1) {
        const T m2 = __shfl_xor_sync(0xffffffffu, m, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
        lse_merge(m2, s2, m, s);
      }
      if (lane == 0) {
        const bool ok = ak[i] > 0 && m > -INFINITY;  // no allowed pair: potential 0, no mass
        ft[i] = ok ? to_f * (m + fast_log2(s)) : T(0);
        if (ok) {
          const T target = args.unb_a ? exp(-fv[i] / static_cast<T>(args.tau_a)) : T(1);
          e += ak[i] * fabs(exp((fv[i] - ft[i]) / eps) - target);
        }
      }
    }
    return e;
  };

  int64_t it = 0;
  T err = 0;
  for (; it < args.max_iter; ++it) {
    const T e = row_pass();
    if (args.has_tol) {
      err = block_sum(e, scratch);                  // ends with a barrier: ft is complete
      if (err < static_cast<T>(args.tol)) break;     // the same value in every thread: block-uniform
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
      fv[i] = lam_a * ft[i];
      u[i] = ak[i] > 0 ? fv[i] * scale + fast_log2(ak[i]) : T(-INFINITY);
    }
    __syncthreads();
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      T m = -INFINITY, s = 0;
      if (bk[j] > 0)
        for (int64_t i = 0; i < N; ++i) lse_push(u[i] - cost(i, j), m, s);
      gv[j] = (bk[j] > 0 && m > -INFINITY) ? lam_b * to_f * (m + fast_log2(s)) : T(0);
      v[j] = bk[j] > 0 ? gv[j] * scale + fast_log2(bk[j]) : T(-INFINITY);
    }
    __syncthreads();
  }
  if (!args.has_tol || it == args.max_iter) err = block_sum(row_pass(), scratch);
  __syncthreads();
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) f[k * N + i] = fv[i];
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) g[k * M + j] = gv[j];
  if (threadIdx.x == 0) {
    n_iter[k] = static_cast<int32_t>(it);
    err_out[k] = err;
  }
}

template <typename T>
__global__ void sinkhorn_plan_kernel(const T* __restrict__ C, const T* __restrict__ a, const T* __restrict__ b,
                                     const T* __restrict__ f, const T* __restrict__ g,
                                     T* __restrict__ P,     // [B,N,M] out plan, or nullptr
                                     T* __restrict__ tc,    // [B] out <P,C>, or nullptr
                                     T* __restrict__ mass,  // [B] out sum P (with tc)
                                     int64_t N, int64_t M, T eps) {
  __shared__ T scratch[32];
  const int64_t k = blockIdx.x;
  T acc = 0, msum = 0;
  for (int64_t idx = threadIdx.x; idx < N * M; idx += blockDim.x) {
    const int64_t i = idx / M, j = idx % M;
    const T ai = a[k * N + i], bj = b[k * M + j], c = C[k * N * M + idx];
    T p = 0;
    if (ai > 0 && bj > 0) p = ai * bj * exp((f[k * N + i] + g[k * M + j] - c) / eps);
    if (P) P[k * N * M + idx] = p;
    if (p > 0) {
      acc += p * c;
      msum += p;
    }
  }
  if (tc) {
    acc = block_sum(acc, scratch);
    msum = block_sum(msum, scratch);
    if (threadIdx.x == 0) {
      tc[k] = acc;
      mass[k] = msum;
    }
  }
}

}  // namespace

template <typename T>
cudaError_t launch_sinkhorn_fwd(const T* C, const T* a, const T* b, T* f, T* g, int32_t* n_iter, T* err,
                                const SinkhornArgs& args, cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  const size_t vec = sinkhorn_fwd_smem_bytes(args.N, args.M, sizeof(T));
  const size_t with_tile = vec + sizeof(T) * static_cast<size_t>(args.N * args.M);
  const bool on_chip = with_tile <= static_cast<size_t>(args.max_smem);
  const size_t smem = on_chip ? with_tile : vec;
  auto kernel = on_chip ? sinkhorn_fwd_kernel<T, true> : sinkhorn_fwd_kernel<T, false>;
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  kernel<<<static_cast<unsigned>(args.B), kThreads, smem, stream>>>(C, a, b, f, g, n_iter, err, args);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_sinkhorn_plan(const T* C, const T* a, const T* b, const T* f, const T* g, T* P, T* tc, T* mass,
                                 int64_t B, int64_t N, int64_t M, double eps, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  sinkhorn_plan_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(C, a, b, f, g, P, tc, mass, N, M,
                                                                             static_cast<T>(eps));
  return cudaGetLastError();
}

template cudaError_t launch_sinkhorn_fwd<float>(const float*, const float*, const float*, float*, float*, int32_t*,
                                                float*, const SinkhornArgs&, cudaStream_t);
template cudaError_t launch_sinkhorn_fwd<double>(const double*, const double*, const double*, double*, double*,
                                                 int32_t*, double*, const SinkhornArgs&, cudaStream_t);
template cudaError_t launch_sinkhorn_plan<float>(const float*, const float*, const float*, const float*, const float*,
                                                 float*, float*, float*, int64_t, int64_t, int64_t, double,
                                                 cudaStream_t);
template cudaError_t launch_sinkhorn_plan<double>(const double*, const double*, const double*, const double*,
                                                  const double*, double*, double*, double*, int64_t, int64_t, int64_t,
                                                  double, cudaStream_t);

}  // namespace fastot
