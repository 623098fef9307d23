// CUDA Sinkhorn, first version: one thread block per problem runs every iteration in one launch,
// potentials in shared memory, cost read from global memory (L2-resident for small problems).
// Per-problem early stop is a block-uniform flag; no host synchronisation.
#include <cfloat>
#include <cmath>

#include "cuda/sinkhorn_kernel.h"

namespace fastot {
namespace {

constexpr int kThreads = 256;  // block size; tuned in issue 3

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

template <typename T>
__global__ void sinkhorn_fwd_kernel(const T* __restrict__ C,  // [B,N,M] cost
                                    const T* __restrict__ a,  // [B,N] weights
                                    const T* __restrict__ b,  // [B,M] weights
                                    T* __restrict__ f,        // [B,N] out potentials
                                    T* __restrict__ g,        // [B,M] out potentials
                                    int32_t* __restrict__ n_iter,  // [B] out
                                    T* __restrict__ err_out,       // [B] out
                                    SinkhornArgs args) {
  extern __shared__ unsigned char smem_raw[];
  T* sf = reinterpret_cast<T*>(smem_raw);  // [N] f
  T* sft = sf + args.N;                    // [N] c-transform of g
  T* sg = sft + args.N;                    // [M] g
  T* scratch = sg + args.M;                // [32] reduction scratch
  const int64_t k = blockIdx.x, N = args.N, M = args.M;
  const T* Ck = C + k * N * M;
  const T* ak = a + k * N;
  const T* bk = b + k * M;
  const T eps = static_cast<T>(args.eps);
  const T lam_a = args.unb_a ? static_cast<T>(args.tau_a / (args.tau_a + args.eps)) : T(1);
  const T lam_b = args.unb_b ? static_cast<T>(args.tau_b / (args.tau_b + args.eps)) : T(1);
  const T NEG_INF = -INFINITY;
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) sf[i] = 0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) sg[j] = 0;
  __syncthreads();

  // Row pass: sft_i = c-transform; returns this thread's share of the row-marginal error.
  auto row_pass = [&]() -> T {
    T e = 0;
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) {
      const T ai = ak[i];
      T mx = NEG_INF, s = 0;
      if (ai > 0) {
        for (int64_t j = 0; j < M; ++j) {
          const T bj = bk[j];
          if (bj > 0) {
            const T v = (sg[j] - Ck[i * M + j]) / eps + log(bj);
            if (v == NEG_INF) continue;  // +inf cost: a forbidden pair
            if (v > mx) { s = s * exp(mx - v) + T(1); mx = v; } else { s += exp(v - mx); }
          }
        }
      }
      const bool ok = ai > 0 && s > 0;
      sft[i] = ok ? -eps * (mx + log(s)) : T(0);
      if (ok) {
        const T target = args.unb_a ? exp(-sf[i] / static_cast<T>(args.tau_a)) : T(1);
        e += ai * fabs(exp((sf[i] - sft[i]) / eps) - target);
      }
    }
    return e;
  };

  int64_t it = 0;
  T err = 0;
  for (; it < args.max_iter; ++it) {
    T e = row_pass();
    if (args.has_tol) {
      err = block_sum(e, scratch);
      if (err < static_cast<T>(args.tol)) break;  // block-uniform
    }
    __syncthreads();
    for (int64_t i = threadIdx.x; i < N; i += blockDim.x) sf[i] = lam_a * sft[i];
    __syncthreads();
    for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
      T mx = NEG_INF, s = 0;
      const T bj = bk[j];
      if (bj > 0) {
        for (int64_t i = 0; i < N; ++i) {
          const T ai = ak[i];
          if (ai > 0) {
            const T v = (sf[i] - Ck[i * M + j]) / eps + log(ai);
            if (v == NEG_INF) continue;
            if (v > mx) { s = s * exp(mx - v) + T(1); mx = v; } else { s += exp(v - mx); }
          }
        }
      }
      sg[j] = (bj > 0 && s > 0) ? -lam_b * eps * (mx + log(s)) : T(0);
    }
    __syncthreads();
  }
  if (!args.has_tol || it == args.max_iter) {
    T e = row_pass();
    err = block_sum(e, scratch);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) f[k * N + i] = sf[i];
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) g[k * M + j] = sg[j];
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
  const size_t smem = sinkhorn_fwd_smem_bytes(args.N, args.M, sizeof(T));
  if (smem > 48 * 1024) {
    cudaError_t e = cudaFuncSetAttribute(sinkhorn_fwd_kernel<T>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  sinkhorn_fwd_kernel<T><<<static_cast<unsigned>(args.B), kThreads, smem, stream>>>(C, a, b, f, g, n_iter, err, args);
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
