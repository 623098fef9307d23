// Fused CUDA sinkhorn_embeddings: one thread block per problem builds the problem's cost tile from x [N,d] and
// y [M,d] in shared memory and never writes it to global memory.
//
// Forward: dot tile <x_i, y_j> on tensor cores (bf16/fp16 inputs: native MMA with fp32 accumulation; fp32 inputs:
// 3xTF32, i.e. x = hi + lo split into two TF32 parts and hi*hi + hi*lo + lo*hi accumulated in fp32, which keeps
// close to fp32 accuracy; fp64: CUDA cores), row norms, cost (cosine / sqeuclidean / dot exactly as
// fastot.pairwise_cost), then every Sinkhorn iteration on the tile (sinkhorn_device.cuh) and <P, C>, sum P.
// Backward (the envelope rule): the same tile, P* from the potentials, Q and the row/column coefficients in place,
// then dx = Q y + diag(rx) x and dy = Q^T x + diag(ry) y on tensor cores (3xTF32 from Q in fp32), d in chunks.
// Every cost's gradient has that form (see csrc/cpu/sinkhorn.cpp, sinkhorn_embeddings_bwd_cpu).
//
// The tile must fit in shared memory: Npad x Mpad fp32 (pad = multiple of 16) plus staging; on an H100 (227 KiB per
// block) that is up to 192 x 192 tokens (fp32 forward, every backward) or 208 x 208 (bf16/fp16 forward). The glue
// solves larger problems through a bounded workspace.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <type_traits>

#include "cuda/sinkhorn_device.cuh"

namespace fastot {
namespace {

using namespace nvcuda;
using dev::kThreads;
using dev::kWarps;

constexpr int kKC = 32;        // d-columns staged in shared memory per step
constexpr int kGLD = kKC + 4;  // row stride (floats) of fp32 staging: 144 B, a multiple of 16 B as WMMA needs
constexpr int kCosine = 0, kSqEuclidean = 1;

__host__ __device__ constexpr int64_t pad16(int64_t n) { return (n + 15) / 16 * 16; }

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }

template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& hi, Frag& lo) {
  for (int t = 0; t < hi.num_elements; ++t) {
    const float v = hi.x[t];
    const float h = wmma::__float_to_tf32(v);
    hi.x[t] = h;
    lo.x[t] = wmma::__float_to_tf32(v - h);
  }
}

// One warp-wide 16x16xK multiply-accumulate per input type; S is the type staged in shared memory.
template <typename Tin>
struct Mma;
template <>
struct Mma<float> {  // 3xTF32
  using S = float;
  static constexpr int K = 8, LD = kGLD;
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 8, float>;
  template <class LA, class LB>
  __device__ static void step(Acc& acc, const float* A, unsigned lda, const float* B, unsigned ldb) {
    wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, LA> ah, al;
    wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, LB> bh, bl;
    wmma::load_matrix_sync(ah, A, lda);
    wmma::load_matrix_sync(bh, B, ldb);
    split_tf32(ah, al);
    split_tf32(bh, bl);
    wmma::mma_sync(acc, al, bh, acc);  // small terms first
    wmma::mma_sync(acc, ah, bl, acc);
    wmma::mma_sync(acc, ah, bh, acc);
  }
};
template <typename H>
struct Mma16 {
  using S = H;
  static constexpr int K = 16, LD = kKC + 8;  // 80 B rows
  using Acc = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;
  template <class LA, class LB>
  __device__ static void step(Acc& acc, const H* A, unsigned lda, const H* B, unsigned ldb) {
    wmma::fragment<wmma::matrix_a, 16, 16, 16, H, LA> fa;
    wmma::fragment<wmma::matrix_b, 16, 16, 16, H, LB> fb;
    wmma::load_matrix_sync(fa, A, lda);
    wmma::load_matrix_sync(fb, B, ldb);
    wmma::mma_sync(acc, fa, fb, acc);
  }
};
template <>
struct Mma<__nv_bfloat16> : Mma16<__nv_bfloat16> {};
template <>
struct Mma<__half> : Mma16<__half> {};

// Rows [0, np) x columns [c0, c0 + kKC) of src [n, d] into dst (row stride ld), zero outside [0, n) x [0, d) and,
// when `live` is given, on rows r with live[r] = -inf (zero weight: whatever they hold must not reach a product).
template <typename Tin, typename S, typename T = float>
__device__ void stage_rows(const Tin* __restrict__ src, int64_t n, int64_t np, int64_t d, int64_t c0, S* dst, int ld,
                           const T* live = nullptr) {
  for (int64_t idx = threadIdx.x; idx < np * kKC; idx += blockDim.x) {
    const int64_t r = idx / kKC, c = idx % kKC;
    float v = 0.f;
    if (r < n && c0 + c < d && (live == nullptr || live[r] != -INFINITY)) v = to_f32(src[r * d + c0 + c]);
    dst[r * ld + c] = static_cast<S>(v);  // exact: S is Tin, or float
  }
}

// dots[i * ld + j] = <x_i, y_j> in fp32 for i < Npad, j < Mpad (0 on padding) on tensor cores. Block-wide; ends
// with a barrier. `stage` holds (Npad + Mpad) * Mma<Tin>::LD elements of Mma<Tin>::S.
template <typename Tin>
__device__ void dot_tile(const Tin* __restrict__ x, const Tin* __restrict__ y, int64_t N, int64_t M, int64_t d,
                         float* dots, int64_t ld, typename Mma<Tin>::S* stage) {
  using MM = Mma<Tin>;
  constexpr int F = 4;  // output tiles per warp per pass (accumulators in registers)
  const int64_t Np = pad16(N), Mp = pad16(M);
  typename MM::S* xs = stage;
  typename MM::S* ys = stage + Np * MM::LD;
  const int64_t tm = Mp / 16, nt = (Np / 16) * tm;
  const int warp = threadIdx.x >> 5;
  for (int64_t base = 0; base < nt; base += kWarps * F) {
    typename MM::Acc acc[F];
#pragma unroll
    for (int q = 0; q < F; ++q) wmma::fill_fragment(acc[q], 0.0f);
    for (int64_t c0 = 0; c0 < d; c0 += kKC) {
      __syncthreads();  // the previous chunk has been read by every warp
      stage_rows(x, N, Np, d, c0, xs, MM::LD);
      stage_rows(y, M, Mp, d, c0, ys, MM::LD);
      __syncthreads();
#pragma unroll
      for (int q = 0; q < F; ++q) {  // unrolled, so that acc stays in registers
        const int64_t t = base + warp * F + q;
        if (t < nt) {  // warp-uniform
          const int64_t ti = t / tm, tj = t - ti * tm;
#pragma unroll
          for (int ks = 0; ks < kKC; ks += MM::K)
            MM::template step<wmma::row_major, wmma::col_major>(acc[q], xs + ti * 16 * MM::LD + ks, MM::LD,
                                                                ys + tj * 16 * MM::LD + ks, MM::LD);
        }
      }
    }
#pragma unroll
    for (int q = 0; q < F; ++q) {
      const int64_t t = base + warp * F + q;
      if (t < nt) {
        const int64_t ti = t / tm, tj = t - ti * tm;
        wmma::store_matrix_sync(dots + ti * 16 * ld + tj * 16, acc[q], static_cast<unsigned>(ld), wmma::mem_row_major);
      }
    }
  }
  __syncthreads();
}

// fp64: the same dot tile on the CUDA cores, straight from global memory (rows are L1/L2 resident).
__device__ void dot_tile_f64(const double* __restrict__ x, const double* __restrict__ y, int64_t N, int64_t M,
                             int64_t d, double* dots, int64_t ld) {
  for (int64_t idx = threadIdx.x; idx < N * M; idx += blockDim.x) {
    const int64_t i = idx / M, j = idx - i * M;
    double acc = 0;
    for (int64_t c = 0; c < d; ++c) acc += x[i * d + c] * y[j * d + c];
    dots[i * ld + j] = acc;
  }
  __syncthreads();
}

// out[r]: |v_r| for the cosine cost, |v_r|^2 for sqeuclidean (unused for dot). One warp per row.
template <typename Tin, typename T>
__device__ void row_norms(const Tin* __restrict__ v, int64_t n, int64_t d, int kind, T* out) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t r = warp; r < n; r += kWarps) {
    T acc = 0;
    for (int64_t c = lane; c < d; c += 32) {
      T e;
      if constexpr (std::is_same_v<Tin, double>)
        e = v[r * d + c];
      else
        e = to_f32(v[r * d + c]);
      acc += e * e;
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) out[r] = kind == kCosine ? sqrt(acc) : acc;
  }
}

template <typename T>
__device__ __forceinline__ T inv_norm(T norm) { return T(1) / fmax(norm, T(1e-12)); }

// The cost of a pair from its dot product and the rows' norm terms, as fastot.pairwise_cost.
template <typename T>
__device__ __forceinline__ T cost_of(T dot, T nxi, T nyj, int kind) {
  if (kind == kCosine) return T(1) - dot * inv_norm(nxi) * inv_norm(nyj);
  if (kind == kSqEuclidean) return fmax(nxi + nyj - T(2) * dot, T(0));
  return -dot;
}

// Shared-memory layout of the fused blocks (in bytes, every piece aligned to 128 B). The host sizes from the
// same function, so kernel and launcher cannot disagree.
struct EmbLayout {
  size_t tile, stage, wscr, vec, total;
  __host__ __device__ EmbLayout(int64_t N, int64_t M, EmbDtype dt, bool backward) {
    const bool f64 = dt == EmbDtype::kFloat64;
    const size_t elem = f64 ? 8 : 4;
    const int64_t Np = f64 ? N : pad16(N), Mp = f64 ? M : pad16(M);
    auto up = [](size_t n) { return (n + 127) / 128 * 128; };
    tile = 0;
    stage = up(elem * static_cast<size_t>(Np) * Mp);
    // staging of the dot tile (fp32 inputs: 144 B rows; 16-bit inputs: 80 B rows) and of the backward's fp32 chunks
    const size_t stage_row = f64 ? 0 : (backward || dt == EmbDtype::kFloat32 ? 4 * kGLD : 2 * (kKC + 8));
    const size_t stage_bytes = up(stage_row * static_cast<size_t>(Np + Mp));
    if (backward) {  // staging, per-warp results, then u, v, norms, rx, ry: 3 (N + M)
      wscr = stage + stage_bytes;
      vec = wscr + (f64 ? 0 : up(4 * 256 * kWarps));
      total = vec + up(elem * 3 * static_cast<size_t>(N + M));
    } else {  // norms (N + M) and the solve vectors alias the staging, which is dead once the dot tile is built
      wscr = vec = stage;
      const size_t vec_bytes = up(elem * (static_cast<size_t>(N + M) + dev::solve_vector_elems(N, M)));
      total = stage + (vec_bytes > stage_bytes ? vec_bytes : stage_bytes);
    }
  }
};

template <typename Tin>
using Acc_t = std::conditional_t<std::is_same_v<Tin, double>, double, float>;

template <typename Tin>
__host__ __device__ constexpr EmbDtype emb_dtype() {
  if constexpr (std::is_same_v<Tin, double>) return EmbDtype::kFloat64;
  else if constexpr (std::is_same_v<Tin, __nv_bfloat16>) return EmbDtype::kBFloat16;
  else if constexpr (std::is_same_v<Tin, __half>) return EmbDtype::kFloat16;
  else return EmbDtype::kFloat32;
}

// The problem's dot tile and norm terms into shared memory (tile, nx, ny); ends with a barrier.
template <typename Tin, typename T>
__device__ void build_dots(const Tin* xk, const Tin* yk, int64_t N, int64_t M, int64_t d, int kind, T* tile,
                           int64_t ld, unsigned char* stage, T* nx, T* ny) {
  if constexpr (std::is_same_v<Tin, double>)
    dot_tile_f64(xk, yk, N, M, d, tile, ld);
  else
    dot_tile<Tin>(xk, yk, N, M, d, tile, ld, reinterpret_cast<typename Mma<Tin>::S*>(stage));
  row_norms(xk, N, d, kind, nx);
  row_norms(yk, M, d, kind, ny);
  __syncthreads();
}

template <typename Tin>
__global__ void __launch_bounds__(kThreads) emb_fwd_kernel(
    const Tin* __restrict__ x, const Tin* __restrict__ y, int64_t d, int kind, const Acc_t<Tin>* __restrict__ a,
    const Acc_t<Tin>* __restrict__ b, Acc_t<Tin>* __restrict__ f, Acc_t<Tin>* __restrict__ g,
    int32_t* __restrict__ n_iter, Acc_t<Tin>* __restrict__ err_out, Acc_t<Tin>* __restrict__ tc_out,
    Acc_t<Tin>* __restrict__ mass_out, SinkhornArgs args) {
  using T = Acc_t<Tin>;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const int64_t k = blockIdx.x, N = args.N, M = args.M;
  const EmbLayout L(N, M, emb_dtype<Tin>(), false);
  const int64_t ld = std::is_same_v<Tin, double> ? M : pad16(M);
  T* tile = reinterpret_cast<T*>(smem_raw + L.tile);
  T* nx = reinterpret_cast<T*>(smem_raw + L.vec);
  T* ny = nx + N;
  dev::SolveVectors<T> s(ny + M, N, M);
  const T* ak = a + k * N;
  const T* bk = b + k * M;
  build_dots(x + k * N * d, y + k * M * d, N, M, d, kind, tile, ld, smem_raw + L.stage, nx, ny);
  const T scale = static_cast<T>(dev::kLog2e / args.eps);
  for (int64_t idx = threadIdx.x; idx < N * M; idx += blockDim.x) {
    const int64_t i = idx / M, j = idx - i * M;
    T& t = tile[i * ld + j];
    t = (ak[i] > 0 && bk[j] > 0) ? cost_of(t, nx[i], ny[j], kind) * scale : T(INFINITY);
  }
  T err;
  // With a warm start f, g hold the starting point (read in the solve's set-up, written below by this block only).
  const int64_t it = dev::solve_on_chip(tile, ld, ak, bk, N, M, args, s, err, args.warm_start ? f + k * N : nullptr,
                                        args.warm_start ? g + k * M : nullptr);  // barrier first and last
  T tc, mass;
  dev::plan_sums_on_chip(tile, ld, N, M, scale, s, tc, mass);
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x) f[k * N + i] = s.fv[i];
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) g[k * M + j] = s.gv[j];
  if (threadIdx.x == 0) {
    n_iter[k] = static_cast<int32_t>(it);
    err_out[k] = err;
    tc_out[k] = tc;
    mass_out[k] = mass;
  }
}

template <typename Tin>
__global__ void __launch_bounds__(kThreads) emb_bwd_kernel(
    const Tin* __restrict__ x, const Tin* __restrict__ y, int64_t N, int64_t M, int64_t d, int kind,
    const Acc_t<Tin>* __restrict__ a, const Acc_t<Tin>* __restrict__ b, const Acc_t<Tin>* __restrict__ f,
    const Acc_t<Tin>* __restrict__ g, const Acc_t<Tin>* __restrict__ gscale, Acc_t<Tin>* __restrict__ dx,
    Acc_t<Tin>* __restrict__ dy, double eps) {
  using T = Acc_t<Tin>;
  constexpr bool kF64 = std::is_same_v<Tin, double>;
  const int64_t k = blockIdx.x;
  const T sk = gscale[k];
  if (sk == 0) return;  // dx, dy are zero-initialised by the glue
  extern __shared__ __align__(128) unsigned char smem_raw[];
  const EmbLayout L(N, M, emb_dtype<Tin>(), true);
  const int64_t Np = kF64 ? N : pad16(N), Mp = kF64 ? M : pad16(M), ld = Mp;
  T* Q = reinterpret_cast<T*>(smem_raw + L.tile);  // the dot tile, then Q in place
  T* u = reinterpret_cast<T*>(smem_raw + L.vec);   // [N] f scale + log2 a (-inf: zero weight)
  T* v = u + N;                                     // [M]
  T* nx = v + M;                                    // [N]
  T* ny = nx + N;                                   // [M]
  T* rx = ny + M;                                   // [N]
  T* ry = rx + N;                                   // [M]
  const Tin* xk = x + k * N * d;
  const Tin* yk = y + k * M * d;
  build_dots(xk, yk, N, M, d, kind, Q, ld, smem_raw + L.stage, nx, ny);
  const T scale = static_cast<T>(dev::kLog2e / eps);
  for (int64_t i = threadIdx.x; i < N; i += blockDim.x)
    u[i] = a[k * N + i] > 0 ? f[k * N + i] * scale + log2(a[k * N + i]) : T(-INFINITY);
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x)
    v[j] = b[k * M + j] > 0 ? g[k * M + j] * scale + log2(b[k * M + j]) : T(-INFINITY);
  __syncthreads();
  // sk P_ij from the dot tile; 0 for zero-weight rows/columns (whatever their embeddings hold, NaN included) and
  // where the sqeuclidean clamp at 0 is active. Terms with p = 0 are skipped, never multiplied.
  auto plan = [&](int64_t i, int64_t j, T c) -> T {
    if (u[i] == -INFINITY || v[j] == -INFINITY) return T(0);  // dead (zero weight); NaN potentials stay NaN
    if (kind == kSqEuclidean && c == T(0)) return T(0);
    return exp2(u[i] + v[j] - c * scale) * sk;
  };
  // Column coefficients: one thread per column (the tile is not modified yet).
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    T acc = 0;
    if (kind != 2 && v[j] != -INFINITY)
      for (int64_t i = 0; i < N; ++i) {
        const T c = cost_of(Q[i * ld + j], nx[i], ny[j], kind);
        const T p = plan(i, j, c);
        if (p != T(0)) acc += kind == kCosine ? p * (T(1) - c) : p;
      }
    if (kind == kCosine) ry[j] = ny[j] > T(1e-12) ? acc * inv_norm(ny[j]) * inv_norm(ny[j]) : T(0);
    else ry[j] = T(2) * acc;  // 0 for dot
  }
  __syncthreads();
  // Q in place and the row coefficients: one warp per row.
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int64_t i = warp; i < N; i += kWarps) {
    T acc = 0;
    for (int64_t j = lane; j < M; j += 32) {
      T& q = Q[i * ld + j];
      const T c = cost_of(q, nx[i], ny[j], kind);
      const T p = plan(i, j, c);
      if (p != T(0)) acc += kind == kCosine ? p * (T(1) - c) : p;
      q = p == T(0) ? T(0)
                    : (kind == kCosine ? -p * inv_norm(nx[i]) * inv_norm(ny[j]) : (kind == kSqEuclidean ? T(-2) * p : -p));
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) {
      if (kind == kCosine) rx[i] = nx[i] > T(1e-12) ? acc * inv_norm(nx[i]) * inv_norm(nx[i]) : T(0);
      else rx[i] = kind == kSqEuclidean ? T(2) * acc : T(0);
    }
  }
  __syncthreads();  // Q (zero on padding: the staged rows there were zero; zero where p = 0), rx, ry complete

  if constexpr (kF64) {
    for (int64_t idx = threadIdx.x; idx < N * d; idx += blockDim.x) {
      const int64_t i = idx / d, c = idx - i * d;
      T acc = 0;
      if (u[i] != -INFINITY) {
        for (int64_t j = 0; j < M; ++j)
          if (v[j] != -INFINITY) acc += Q[i * ld + j] * yk[j * d + c];
        acc += rx[i] * xk[i * d + c];
      }
      dx[(k * N + i) * d + c] = acc;
    }
    for (int64_t idx = threadIdx.x; idx < M * d; idx += blockDim.x) {
      const int64_t j = idx / d, c = idx - j * d;
      T acc = 0;
      if (v[j] != -INFINITY) {
        for (int64_t i = 0; i < N; ++i)
          if (u[i] != -INFINITY) acc += Q[i * ld + j] * xk[i * d + c];
        acc += ry[j] * yk[j * d + c];
      }
      dy[(k * M + j) * d + c] = acc;
    }
  } else {
    float* xs = reinterpret_cast<float*>(smem_raw + L.stage);  // [Np, kGLD]
    float* ys = xs + Np * kGLD;                                 // [Mp, kGLD]
    float* sc = reinterpret_cast<float*>(smem_raw + L.wscr) + warp * 256;  // this warp's 16 x 16 result
    const int64_t tn = Np / 16, tm = Mp / 16, tasks = (tn + tm) * (kKC / 16);
    for (int64_t c0 = 0; c0 < d; c0 += kKC) {
      __syncthreads();  // the previous chunk has been read
      stage_rows(xk, N, Np, d, c0, xs, kGLD, u);  // zero-weight rows staged as 0
      stage_rows(yk, M, Mp, d, c0, ys, kGLD, v);
      __syncthreads();
      for (int64_t t = warp; t < tasks; t += kWarps) {  // a 16-row x 16-column block of dx or dy
        const bool is_x = t < tn * (kKC / 16);
        const int64_t tt = is_x ? t : t - tn * (kKC / 16), r16 = tt / (kKC / 16), cc = tt % (kKC / 16);
        Mma<float>::Acc acc;
        wmma::fill_fragment(acc, 0.0f);
        if (is_x)  // dx rows r16: Q[rows, :] @ ys[:, cc]
          for (int64_t ks = 0; ks < Mp; ks += 8)
            Mma<float>::step<wmma::row_major, wmma::row_major>(acc, Q + r16 * 16 * ld + ks, ld,
                                                               ys + ks * kGLD + cc * 16, kGLD);
        else  // dy rows r16: Q[:, rows]^T @ xs[:, cc]
          for (int64_t ks = 0; ks < Np; ks += 8)
            Mma<float>::step<wmma::col_major, wmma::row_major>(acc, Q + ks * ld + r16 * 16, ld,
                                                               xs + ks * kGLD + cc * 16, kGLD);
        wmma::store_matrix_sync(sc, acc, 16, wmma::mem_row_major);
        __syncwarp();
        const int64_t n_own = is_x ? N : M;
        const T* live = is_x ? u : v;
        const T* coef = is_x ? rx : ry;
        const float* own = is_x ? xs : ys;
        T* out = is_x ? dx + k * N * d : dy + k * M * d;
        for (int e = lane; e < 256; e += 32) {
          const int64_t r = r16 * 16 + e / 16, col = cc * 16 + e % 16;
          if (r < n_own && c0 + col < d)
            out[r * d + c0 + col] = live[r] != -INFINITY ? sc[e] + coef[r] * own[r * kGLD + col] : T(0);
        }
        __syncwarp();  // sc is reused by the warp's next block
      }
    }
  }
}

template <typename K>
cudaError_t allow_smem(K kernel, size_t smem) {
  if (smem <= 48 * 1024) return cudaSuccess;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
}

size_t fit(size_t bytes, int64_t max_smem) { return bytes <= static_cast<size_t>(max_smem) ? bytes : 0; }

template <typename Tin>
cudaError_t fwd_typed(const void* x, const void* y, int64_t d, int kind, const Acc_t<Tin>* a, const Acc_t<Tin>* b,
                      Acc_t<Tin>* f, Acc_t<Tin>* g, int32_t* n_iter, Acc_t<Tin>* err, Acc_t<Tin>* tc,
                      Acc_t<Tin>* mass, const SinkhornArgs& args, cudaStream_t stream) {
  const size_t smem = fit(EmbLayout(args.N, args.M, emb_dtype<Tin>(), false).total, args.max_smem);
  if (smem == 0) return cudaErrorInvalidValue;
  cudaError_t e = allow_smem(emb_fwd_kernel<Tin>, smem);
  if (e != cudaSuccess) return e;
  emb_fwd_kernel<Tin><<<static_cast<unsigned>(args.B), kThreads, smem, stream>>>(
      static_cast<const Tin*>(x), static_cast<const Tin*>(y), d, kind, a, b, f, g, n_iter, err, tc, mass, args);
  return cudaGetLastError();
}

template <typename Tin>
cudaError_t bwd_typed(const void* x, const void* y, int64_t B, int64_t N, int64_t M, int64_t d, int kind,
                      const Acc_t<Tin>* a, const Acc_t<Tin>* b, const Acc_t<Tin>* f, const Acc_t<Tin>* g,
                      const Acc_t<Tin>* scale, Acc_t<Tin>* dx, Acc_t<Tin>* dy, double eps, int64_t max_smem,
                      cudaStream_t stream) {
  const size_t smem = fit(EmbLayout(N, M, emb_dtype<Tin>(), true).total, max_smem);
  if (smem == 0) return cudaErrorInvalidValue;
  cudaError_t e = allow_smem(emb_bwd_kernel<Tin>, smem);
  if (e != cudaSuccess) return e;
  emb_bwd_kernel<Tin><<<static_cast<unsigned>(B), kThreads, smem, stream>>>(
      static_cast<const Tin*>(x), static_cast<const Tin*>(y), N, M, d, kind, a, b, f, g, scale, dx, dy, eps);
  return cudaGetLastError();
}

}  // namespace

size_t sinkhorn_embeddings_fwd_smem(int64_t N, int64_t M, EmbDtype dt, int64_t max_smem) {
  return fit(EmbLayout(N, M, dt, false).total, max_smem);
}
size_t sinkhorn_embeddings_bwd_smem(int64_t N, int64_t M, EmbDtype dt, int64_t max_smem) {
  return fit(EmbLayout(N, M, dt, true).total, max_smem);
}

cudaError_t launch_sinkhorn_embeddings_fwd(const void* x, const void* y, EmbDtype dt, int64_t d, int kind,
                                                  const float* a, const float* b, float* f, float* g, int32_t* n_iter,
                                                  float* err, float* tc, float* mass, const SinkhornArgs& args,
                                                  cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  switch (dt) {
    case EmbDtype::kFloat32: return fwd_typed<float>(x, y, d, kind, a, b, f, g, n_iter, err, tc, mass, args, stream);
    case EmbDtype::kBFloat16:
      return fwd_typed<__nv_bfloat16>(x, y, d, kind, a, b, f, g, n_iter, err, tc, mass, args, stream);
    case EmbDtype::kFloat16: return fwd_typed<__half>(x, y, d, kind, a, b, f, g, n_iter, err, tc, mass, args, stream);
    default: return cudaErrorInvalidValue;
  }
}
cudaError_t launch_sinkhorn_embeddings_fwd(const void* x, const void* y, EmbDtype dt, int64_t d, int kind,
                                                   const double* a, const double* b, double* f, double* g,
                                                   int32_t* n_iter, double* err, double* tc, double* mass,
                                                   const SinkhornArgs& args, cudaStream_t stream) {
  if (args.B == 0) return cudaSuccess;
  if (dt != EmbDtype::kFloat64) return cudaErrorInvalidValue;
  return fwd_typed<double>(x, y, d, kind, a, b, f, g, n_iter, err, tc, mass, args, stream);
}

cudaError_t launch_sinkhorn_embeddings_bwd(const void* x, const void* y, EmbDtype dt, int64_t B, int64_t N,
                                                  int64_t M, int64_t d, int kind, const float* a, const float* b,
                                                  const float* f, const float* g, const float* scale, float* dx,
                                                  float* dy, double eps, int64_t max_smem, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  switch (dt) {
    case EmbDtype::kFloat32:
      return bwd_typed<float>(x, y, B, N, M, d, kind, a, b, f, g, scale, dx, dy, eps, max_smem, stream);
    case EmbDtype::kBFloat16:
      return bwd_typed<__nv_bfloat16>(x, y, B, N, M, d, kind, a, b, f, g, scale, dx, dy, eps, max_smem, stream);
    case EmbDtype::kFloat16:
      return bwd_typed<__half>(x, y, B, N, M, d, kind, a, b, f, g, scale, dx, dy, eps, max_smem, stream);
    default: return cudaErrorInvalidValue;
  }
}
cudaError_t launch_sinkhorn_embeddings_bwd(const void* x, const void* y, EmbDtype dt, int64_t B, int64_t N,
                                                   int64_t M, int64_t d, int kind, const double* a, const double* b,
                                                   const double* f, const double* g, const double* scale, double* dx,
                                                   double* dy, double eps, int64_t max_smem, cudaStream_t stream) {
  if (B == 0) return cudaSuccess;
  if (dt != EmbDtype::kFloat64) return cudaErrorInvalidValue;
  return bwd_typed<double>(x, y, B, N, M, d, kind, a, b, f, g, scale, dx, dy, eps, max_smem, stream);
}

}  // namespace fastot
