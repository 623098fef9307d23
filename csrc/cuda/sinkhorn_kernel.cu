// CUDA Sinkhorn forward on a given cost C [B,N,M], and the plan kernel. No host synchronisation anywhere; every
// launch is on the caller's stream, so a solve can be captured in a CUDA graph.
//
// Small problems (the common case): one thread block per problem loads its cost tile once from global memory into
// shared memory (scaled to base-2 units, masked pairs set to +inf) and runs every iteration there, in one launch;
// per-problem early stop is a block-uniform flag (sinkhorn_device.cuh).
//
// Large problems (the tile does not fit in shared memory): a streaming solve with two launches per iteration.
//  1. rows kernel, one block per (problem, strip of R rows): loads the strip C[r0:r0+R, :] once into shared memory;
//     from it computes the row log-sum-exps (the new f of those rows) and then, with the new f, each column's
//     partial log-sum-exp over the strip's rows. C is read from global memory once per iteration.
//  2. merge kernel, one block per problem: merges the partials of the strips into g. With a tolerance it first
//     checks the row-marginal error of the iteration's starting point and stops the problem there, exactly where
//     the on-chip kernel would: f stays, n_iter is not incremented. Each strip writes its share of the error and
//     the merge sums the shares in strip order, so the stop (and n_iter) is the same from run to run.
// Problems that stopped skip every later launch at their first instruction.
#include "cuda/sinkhorn_device.cuh"

namespace fastot {
namespace {

using dev::kThreads;

template <typename T>
__global__ void __launch_bounds__(kThreads) sinkhorn_onchip_kernel(
    const T* __restrict__ C, const T* __restrict__ a, const T* __restrict__ b, T* __restrict__ f, T* __restrict__ g,
    int32_t* __restrict__ n_iter, T* __restrict__ err_out, SinkhornArgs args) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int64_t k = blockIdx.x, N = args.N, M = args.M;
  T* tile = reinterpret_cast<T*>(smem_raw);  // [N, M]
  dev::SolveVectors<T> s(tile + N * M, N, M);
  const T* Ck = C + k * N * M;
  const T* ak = a + k * N;
  const T* bk = b + k * M;
  const T scale = static_cast<T>(dev::kLog2e / args.eps);
  for (int64_t idx = threadIdx.x; idx < N * M; idx += blockDim.x) {  // coalesced, once
    const int64_t i = idx / M, j = idx - i * M;
    tile[idx] = (ak[i] > 0 && bk[j] > 0) ? Ck[idx] * scale : T(INFINITY);
  }
  T err;
  // With a warm start f, g hold the starting point: read in the solve's set-up (before its first barrier), written
  // below, by the same block only.
  const int64_t it = dev::solve_on_chip(tile, M, ak, bk, N, M, args, s, err, args.warm_start ? f + k * N : nullptr,
                                        args.warm_start ? g + k * M : nullptr);  // ends with a barrier
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) f[k * N + i] = s.fv[i];
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) g[k * M + j] = s.gv[j];
  if (threadIdx.x == 0) {
    n_iter[k] = static_cast<int32_t>(it);
    err_out[k] = err;
  }
}

// The streaming solve's global scratch: f after this iteration's row update, the column partials of every strip,
// each strip's share of the row-marginal error, and the stop flag of every problem.
template <typename T>
struct StreamWorkspace {
  T* fn;        // [B, N]
  T* pm;        // [B, strips, M] partial max
  T* ps;        // [B, strips, M] partial sum (the partial log-sum-exp is pm + log2 ps)
  T* err_part;  // [B, strips]
  int32_t* done;  // [B]
};

constexpr size_t align_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

template <typename T>
StreamWorkspace<T> carve(void* base, int64_t B, int64_t N, int64_t M, int64_t strips, size_t* bytes) {
  char* p = static_cast<char*>(base);
  size_t off = 0;
  auto take = [&](size_t n) {
    char* q = p ? p + off : nullptr;
    off += align_up(n, 256);
    return q;
  };
  StreamWorkspace<T> w;
  w.fn = reinterpret_cast<T*>(take(sizeof(T) * B * N));
  w.pm = reinterpret_cast<T*>(take(sizeof(T) * B * strips * M));
  w.ps = reinterpret_cast<T*>(take(sizeof(T) * B * strips * M));
  w.err_part = reinterpret_cast<T*>(take(sizeof(T) * B * strips));
  w.done = reinterpret_cast<int32_t*>(take(sizeof(int32_t) * B));
  if (bytes) *bytes = off;
  return w;
}

// One (problem, strip) per block. final_pass: only the row-marginal error of the current (f, g).
template <typename T>
__global__ void __launch_bounds__(kThreads) stream_rows_kernel(
    const T* __restrict__ C, const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ f,
    const T* __restrict__ g, StreamWorkspace<T> w, SinkhornArgs args, int64_t R, int64_t strips, bool final_pass) {
  const int64_t k = blockIdx.x / strips, rb = blockIdx.x - k * strips, N = args.N, M = args.M;
  if (w.done[k]) return;  // block-uniform
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* strip = reinterpret_cast<T*>(smem_raw);  // [R, M]
  T* v = strip + R * M;                        // [M]
  T* u = v + M;                                // [R]
  T* scratch = u + R;                          // [32]
  const dev::Consts<T> c(args);
  const int64_t r0 = rb * R, nr = N - r0 < R ? N - r0 : R;
  const T* Ck = C + (k * N + r0) * M;
  const T* ak = a + k * N + r0;
  const T* bk = b + k * M;
  for (int64_t idx = threadIdx.x; idx < nr * M; idx += blockDim.x) {  // the strip is contiguous in C
    const int64_t i = idx / M, j = idx - i * M;
    strip[idx] = (ak[i] > 0 && bk[j] > 0) ? Ck[idx] * c.scale : T(INFINITY);
  }
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x)
    v[j] = bk[j] > 0 ? g[k * M + j] * c.scale + dev::fast_log2(bk[j]) : T(-INFINITY);
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = blockDim.x >> 5;
  T e = 0;
  for (int64_t i = warp; i < nr; i += n_warps) {  // row log-sum-exps: one warp per row
    const bool live = ak[i] > 0;
    T m = -INFINITY, s = 0;
    if (live)
      for (int64_t j = lane; j < M; j += 32) dev::lse_push(v[j] - strip[i * M + j], m, s);
    dev::lse_warp(m, s);
    if (lane == 0) {
      const bool ok = live && m > -INFINITY;
      const T ft = ok ? c.to_f * (m + dev::fast_log2(s)) : T(0);
      if (ok) e += dev::row_error(ak[i], f[k * N + r0 + i], ft, args);
      if (!final_pass) {
        const T fnew = c.lam_a * ft;
        w.fn[k * N + r0 + i] = fnew;
        u[i] = live ? fnew * c.scale + dev::fast_log2(ak[i]) : T(-INFINITY);
      }
    }
  }
  const T tot = dev::block_sum(e, scratch);  // barriers: u is complete
  if (threadIdx.x == 0) w.err_part[k * strips + rb] = tot;
  if (final_pass) return;
  T* pm = w.pm + (k * strips + rb) * M;
  T* ps = w.ps + (k * strips + rb) * M;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {  // column partials from the same strip, new f
    T m = -INFINITY, s = 0;
    if (bk[j] > 0)
      for (int64_t i = 0; i < nr; ++i) dev::lse_push(u[i] - strip[i * M + j], m, s);
    pm[j] = m;
    ps[j] = s;
  }
}

// The row-marginal error of problem k's current (f, g): the strips' shares, summed in strip order (every thread
// of a block reads the same values and gets the same sum).
template <typename T>
__device__ T stream_error(const StreamWorkspace<T>& w, int64_t k, int64_t strips) {
  T e = 0;
  for (int64_t r = 0; r < strips; ++r) e += w.err_part[k * strips + r];
  return e;
}

// One problem per block: the tolerance check of the iteration, then f <- fn and g <- merged partials.
template <typename T>
__global__ void __launch_bounds__(kThreads) stream_merge_kernel(
    const T* __restrict__ b, T* __restrict__ f, T* __restrict__ g, int32_t* __restrict__ n_iter,
    T* __restrict__ err_out, StreamWorkspace<T> w, SinkhornArgs args, int64_t strips) {
  const int64_t k = blockIdx.x, N = args.N, M = args.M;
  if (w.done[k]) return;
  const T e = stream_error(w, k, strips);
  if (args.has_tol && e < static_cast<T>(args.tol)) {  // the same in every thread
    if (threadIdx.x == 0) {
      w.done[k] = 1;
      err_out[k] = e;
    }
    return;
  }
  const dev::Consts<T> c(args);
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) f[k * N + i] = w.fn[k * N + i];
  const T* bk = b + k * M;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    T m = -INFINITY, s = 0;
    for (int64_t r = 0; r < strips; ++r) dev::lse_merge(w.pm[(k * strips + r) * M + j], w.ps[(k * strips + r) * M + j], m, s);
    g[k * M + j] = (bk[j] > 0 && m > -INFINITY) ? c.lam_b * c.to_f * (m + dev::fast_log2(s)) : T(0);
  }
  if (threadIdx.x == 0) ++n_iter[k];
}

template <typename T>
__global__ void stream_final_kernel(T* __restrict__ err_out, StreamWorkspace<T> w, int64_t B, int64_t strips) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k < B && !w.done[k]) err_out[k] = stream_error(w, k, strips);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sinkhorn_plan_kernel(
    const T* __restrict__ C, const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ f,
    const T* __restrict__ g,
    T* __restrict__ P,     // [B,N,M] out plan, or nullptr
    T* __restrict__ tc,    // [B] out <P,C>, or nullptr
    T* __restrict__ mass,  // [B] out sum P (with tc)
    int64_t N, int64_t M, T eps) {
  __shared__ T scratch[32];
  const int64_t k = blockIdx.x;
  T acc = 0, msum = 0;
  for (int64_t idx = threadIdx.x; idx < N * M; idx += blockDim.x) {
    const int64_t i = idx / M, j = idx - i * M;
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
    acc = dev::block_sum(acc, scratch);
    msum = dev::block_sum(msum, scratch);
    if (threadIdx.x == 0) {
      tc[k] = acc;
      mass[k] = msum;
    }
  }
}

// At least one strip, so that problems with no rows (N = 0) still get g = 0 from the merge.
inline int64_t stream_strips(int64_t N, int64_t R) { return N > 0 ? (N + R - 1) / R : 1; }

template <typename K>
cudaError_t allow_smem(K kernel, size_t smem) {
  if (smem <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

}  // namespace

SinkhornPlan sinkhorn_fwd_plan(int64_t B, int64_t N, int64_t M, size_t elem, int64_t max_smem, bool allow_on_chip) {
  SinkhornPlan p;
  const size_t limit = static_cast<size_t>(max_smem);
  const size_t on_chip = elem * (static_cast<size_t>(N) * M + dev::solve_vector_elems(N, M));
  if (allow_on_chip && on_chip <= limit) {
    p.on_chip = true;
    p.smem = on_chip > 0 ? on_chip : elem;
    return p;
  }
  // Strips of up to 32 rows, sized to leave room for two blocks per SM where M allows it (the driver reserves
  // 1 KiB of shared memory per block on sm_80+, so two blocks get limit / 2 - 1 KiB each).
  const size_t half = limit / 2 > 1024 ? limit / 2 - 1024 : 0;
  const size_t budget = half >= elem * (2 * static_cast<size_t>(M) + 64) ? half : limit;
  for (int64_t R = N < 32 ? (N > 0 ? N : 1) : 32; R >= 1; R /= 2) {
    const size_t smem = elem * (static_cast<size_t>(R) * M + M + R + 32);
    if (smem <= budget) {
      p.rows = R;
      p.smem = smem;
      const int64_t strips = stream_strips(N, R);
      if (elem == sizeof(double))
        carve<double>(nullptr, B, N, M, strips, &p.workspace_bytes);
      else
        carve<float>(nullptr, B, N, M, strips, &p.workspace_bytes);
      return p;
    }
  }
  return p;  // not ok: one row of M entries does not fit
}

template <typename T>
cudaError_t launch_sinkhorn_fwd(const T* C, const T* a, const T* b, T* f, T* g, int32_t* n_iter, T* err,
                                void* workspace, const SinkhornArgs& args, cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  const SinkhornPlan plan = sinkhorn_fwd_plan(args.B, args.N, args.M, sizeof(T), args.max_smem, args.allow_on_chip);
  if (!plan.ok()) return cudaErrorInvalidValue;
  cudaError_t e;
  if (plan.on_chip) {
    if ((e = allow_smem(sinkhorn_onchip_kernel<T>, plan.smem)) != cudaSuccess) return e;
    sinkhorn_onchip_kernel<T><<<static_cast<unsigned>(args.B), kThreads, plan.smem, stream>>>(C, a, b, f, g, n_iter,
                                                                                              err, args);
    return cudaGetLastError();
  }
  if (workspace == nullptr) return cudaErrorInvalidValue;
  const int64_t B = args.B, N = args.N, M = args.M, R = plan.rows, strips = stream_strips(N, R);
  const StreamWorkspace<T> w = carve<T>(workspace, B, N, M, strips, nullptr);
  if ((e = allow_smem(stream_rows_kernel<T>, plan.smem)) != cudaSuccess) return e;
  // The starting point (f = g = 0, or the warm start already in f, g) and the per-problem state; memsets are stream
  // operations (graph-capturable). The first rows pass reads f, g: the error check of iteration 1 (or, for
  // max_iter = 0, the final error) is that of the starting point.
  if (!args.warm_start) {
    if ((e = cudaMemsetAsync(f, 0, sizeof(T) * B * N, stream)) != cudaSuccess) return e;
    if ((e = cudaMemsetAsync(g, 0, sizeof(T) * B * M, stream)) != cudaSuccess) return e;
  }
  if ((e = cudaMemsetAsync(n_iter, 0, sizeof(int32_t) * B, stream)) != cudaSuccess) return e;
  if ((e = cudaMemsetAsync(w.done, 0, sizeof(int32_t) * B, stream)) != cudaSuccess) return e;
  const unsigned row_blocks = static_cast<unsigned>(B * strips);
  for (int64_t it = 0; it < args.max_iter; ++it) {
    stream_rows_kernel<T><<<row_blocks, kThreads, plan.smem, stream>>>(C, a, b, f, g, w, args, R, strips, false);
    stream_merge_kernel<T><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(b, f, g, n_iter, err, w, args, strips);
  }
  stream_rows_kernel<T><<<row_blocks, kThreads, plan.smem, stream>>>(C, a, b, f, g, w, args, R, strips, true);
  stream_final_kernel<T><<<static_cast<unsigned>((B + 255) / 256), 256, 0, stream>>>(err, w, B, strips);
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
                                                float*, void*, const SinkhornArgs&, cudaStream_t);
template cudaError_t launch_sinkhorn_fwd<double>(const double*, const double*, const double*, double*, double*,
                                                 int32_t*, double*, void*, const SinkhornArgs&, cudaStream_t);
template cudaError_t launch_sinkhorn_plan<float>(const float*, const float*, const float*, const float*, const float*,
                                                 float*, float*, float*, int64_t, int64_t, int64_t, double,
                                                 cudaStream_t);
template cudaError_t launch_sinkhorn_plan<double>(const double*, const double*, const double*, const double*,
                                                  const double*, double*, double*, double*, int64_t, int64_t, int64_t,
                                                  double, cudaStream_t);

}  // namespace fastot
