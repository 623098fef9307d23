// Inner loops of the CPU Sinkhorn, compiled once per instruction set (sinkhorn_isa_*.cpp define
// FASTOT_ISA; flags in CMakeLists.txt) and chosen at run time. Plain C++ on raw pointers: no torch/ATen
// headers, so no inline function is ever shared between TUs built for different instruction sets.
//
// The loops use GCC vector extensions at the instruction set's native width (FASTOT_VBYTES: 16 for SSE2,
// 32 for AVX2, 64 for AVX-512; wider generic vectors get their selects scalarised). They run on a dense
// tile Cs = C / eps over the problem's valid rows and columns whose row stride `ld` is a multiple of 64
// bytes; the padding columns hold +inf, so every loop is whole vectors with no masks or tails.
// (An earlier version with `#pragma omp simd reduction` ran at 0.7 ns/exp on AVX-512: GCC kept the
// reduction in a stack slot; see the note in bench/RESULTS.md.)
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <utility>

#include "cpu/sinkhorn_kernels.h"

#if !defined(FASTOT_ISA) || !defined(FASTOT_VBYTES)
#error "define FASTOT_ISA and FASTOT_VBYTES before including sinkhorn_simd.h"
#endif

namespace fastot {
namespace cpu {
namespace FASTOT_ISA {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float v __attribute__((vector_size(FASTOT_VBYTES)));
  typedef int32_t vi __attribute__((vector_size(FASTOT_VBYTES)));
};
template <>
struct Vec<double> {
  typedef double v __attribute__((vector_size(FASTOT_VBYTES)));
  typedef int64_t vi __attribute__((vector_size(FASTOT_VBYTES)));
};
// Lanes of this instruction set's vectors (kLanes<T>, the tile padding, is a multiple of it).
template <typename T>
constexpr int64_t kW = FASTOT_VBYTES / sizeof(T);

template <typename T>
using V = typename Vec<T>::v;

template <typename T>
static inline V<T> load(const T* p) {
  V<T> x;
  std::memcpy(&x, p, sizeof(x));
  return x;
}
template <typename T>
static inline void store(T* p, V<T> x) {
  std::memcpy(p, &x, sizeof(x));
}
template <typename T>
static inline V<T> splat(T s) {
  return V<T>{} + s;
}
template <typename X>
static inline X vmax(X a, X b) {
  return a > b ? a : b;
}
template <typename T>
static inline T hsum(V<T> x) {
  T s = 0;
  for (int l = 0; l < static_cast<int>(kW<T>); ++l) s += x[l];
  return s;
}

// exp(x) per float lane, 1-2 ulp: Cephes' expf polynomial on r = x - n ln2 with n = round(x / ln2), and
// 2^n built in the exponent bits. Round-to-nearest uses the 1.5 * 2^23 trick (plain adds, vectorises on
// every instruction set). Inputs clamp to [-87, 88]: tiny results come out ~1e-38 rather than 0, which
// is invisible next to the max-shifted terms (>= 1) of a log-sum-exp.
static inline V<float> vexp(V<float> x) {
  typedef Vec<float>::vi vi;
  const V<float> magic = splat(12582912.0f);
  x = x < -87.0f ? splat(-87.0f) : x;
  x = x > 88.0f ? splat(88.0f) : x;
  const V<float> nm = x * 1.44269504088896341f + magic;  // n + magic, n = round(x / ln2)
  const V<float> n = nm - magic;
  V<float> r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  V<float> p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = (p * r) * r + r + 1.0f;
  const vi e = ((reinterpret_cast<const vi&>(nm) - reinterpret_cast<const vi&>(magic)) + 127) << 23;
  return p * reinterpret_cast<const V<float>&>(e);
}

// exp(x) per double lane, ~1 ulp: degree-12 Taylor polynomial on |r| <= ln2/2 (truncation < 2e-16 relative)
// with a two-part ln2; same exponent construction with the 1.5 * 2^52 trick. Clamped to [-708, 709].
static inline V<double> vexp(V<double> x) {
  typedef Vec<double>::vi vi;
  const V<double> magic = splat(6755399441055744.0);
  x = x < -708.0 ? splat(-708.0) : x;
  x = x > 709.0 ? splat(709.0) : x;
  const V<double> nm = x * 1.4426950408889634074 + magic;
  const V<double> n = nm - magic;
  V<double> r = x - n * 6.93147180369123816490e-01;
  r = r - n * 1.90821492927058770002e-10;
  V<double> p = splat(1.0 / 479001600.0);  // 1/12!
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  const vi e = ((reinterpret_cast<const vi&>(nm) - reinterpret_cast<const vi&>(magic)) + 1023) << 52;
  return p * reinterpret_cast<const V<double>&>(e);
}

// out[j] = LSE_i(s_i - X_ij) over the n rows of X, for columns [c0, c1) (multiples of the vector width):
// vectorised across columns, so there is no horizontal reduction. Both half-iterations use it: the
// g-update on the tile, the f-update on its transpose. Two passes over the cache-resident block (max, then
// the exp sum) rather than one with a running max: the max pass costs a subtract and a max per entry, while
// a running max rescales the sum with a second exp (about 20 vector instructions) whenever the max grows,
// which per lane is often in the first rows. The kernel runs at 0.4-0.5 ns per exp per core, about one
// vectorised exp's cost (bench/RESULTS.md, "CPU Sinkhorn"), so the max pass is not where time goes.
template <typename T>
static void lse_columns(const T* __restrict Cs, int64_t n, int64_t ld, const T* __restrict fs, int64_t c0,
                        int64_t c1, T* __restrict out, T* __restrict colmax, T* __restrict colsum) {
  constexpr int64_t W = kW<T>;
  constexpr T NEG_INF = -std::numeric_limits<T>::infinity();
  for (int64_t j = c0; j < c1; j += W) {
    V<T> mx = splat(NEG_INF);
    for (int64_t i = 0; i < n; ++i) mx = vmax(mx, splat(fs[i]) - load(Cs + i * ld + j));
    store(colmax + j, mx);
    // A column with no allowed pair has max -inf; shift by 0 there so the (discarded) sum stays finite.
    const V<T> shift = mx > NEG_INF ? mx : V<T>{};
    V<T> s = V<T>{};
    for (int64_t i = 0; i < n; ++i) s += vexp(splat(fs[i]) - load(Cs + i * ld + j) - shift);
    store(colsum + j, s);
  }
  for (int64_t j = c0; j < c1; ++j) out[j] = colmax[j] > NEG_INF ? colmax[j] + std::log(colsum[j]) : NEG_INF;
}

// P_ij = exp(fs_i + gs_j - Cs_ij) for rows [r0, r1), written to P (row stride ld) if non-null; adds
// sum P_ij Cs_ij to *sum_pc and sum P_ij to *sum_p. A +inf cost (forbidden pair, or padding) gives 0.
template <typename T>
static void plan_rows(const T* __restrict Cs, int64_t ld, const T* __restrict fs, const T* __restrict gs, int64_t r0,
                      int64_t r1, T* __restrict P, T* sum_pc, T* sum_p) {
  constexpr int64_t W = kW<T>;
  constexpr T INF = std::numeric_limits<T>::infinity();
  // vexp clamps below (result ~1e-38 / ~1e-308 instead of 0): fine inside a log-sum-exp, not in the plan,
  // whose entries must be exactly 0 where they underflow (and for forbidden pairs).
  constexpr T LO = sizeof(T) == 4 ? T(-87) : T(-708);
  V<T> acc = V<T>{}, mass = V<T>{};
  for (int64_t i = r0; i < r1; ++i) {
    const T* __restrict row = Cs + i * ld;
    const V<T> fi = splat(fs[i]);
    for (int64_t j = 0; j < ld; j += W) {
      const V<T> c = load(row + j);
      const auto ok = c < INF;
      const V<T> z = fi + load(gs + j) - c;
      const V<T> p = (ok & (z > LO)) ? vexp(z) : V<T>{};
      if (P) store(P + i * ld + j, p);
      acc += ok ? p * c : V<T>{};
      mass += p;
    }
  }
  *sum_pc += hsum<T>(acc);
  *sum_p += hsum<T>(mass);
}

// out[i] = LSE_j(s_j - X_ij) over the row of X, for rows [r0, r1) (ld columns; padding columns +inf): the
// log-domain row pass on the tile itself, with one horizontal max and sum per row. The scaling iterations use
// it for their log-domain steps, which are few (the first one, and a problem that falls back), so they need no
// transposed tile.
template <typename T>
static void lse_rows(const T* __restrict X, int64_t ld, const T* __restrict s, int64_t r0, int64_t r1,
                     T* __restrict out) {
  constexpr int64_t W = kW<T>;
  constexpr T NEG_INF = -std::numeric_limits<T>::infinity();
  for (int64_t i = r0; i < r1; ++i) {
    const T* __restrict row = X + i * ld;
    V<T> mx = splat(NEG_INF);
    for (int64_t j = 0; j < ld; j += W) mx = vmax(mx, load(s + j) - load(row + j));
    T m = NEG_INF;
    for (int l = 0; l < static_cast<int>(W); ++l) m = mx[l] > m ? mx[l] : m;
    if (!(m > NEG_INF)) {
      out[i] = NEG_INF;
      continue;
    }
    V<T> acc = V<T>{};
    for (int64_t j = 0; j < ld; j += W) acc += vexp(load(s + j) - load(row + j) - m);
    out[i] = m + std::log(hsum<T>(acc));
  }
}

// The W (= vector width) accumulators acc[r] reduced to one vector whose lane r is the sum of acc[r]'s lanes:
// log2(W) levels of adding the even and odd lanes of pairs (W - 1 pairs, three instructions each), instead of a
// horizontal sum per row.
template <typename T, size_t... I>
static inline V<T> even_lanes(V<T> a, V<T> b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I)...);
}
template <typename T, size_t... I>
static inline V<T> odd_lanes(V<T> a, V<T> b, std::index_sequence<I...>) {
  return __builtin_shufflevector(a, b, (2 * I + 1)...);
}
template <typename T>
static inline V<T> transpose_sum(V<T>* acc) {
  constexpr int W = static_cast<int>(kW<T>);
  using Idx = std::make_index_sequence<W>;
#pragma GCC unroll 8
  for (int width = W; width > 1; width /= 2) {
#pragma GCC unroll 16
    for (int k = 0; k < width / 2; ++k)
      acc[k] = even_lanes<T>(acc[2 * k], acc[2 * k + 1], Idx{}) + odd_lanes<T>(acc[2 * k], acc[2 * k + 1], Idx{});
  }
  return acc[0];
}

// The dot products of W consecutive rows of K (from row i) with w: lane r is K_{i+r} . w.
template <typename T>
static inline V<T> dot_rows(const T* __restrict K, int64_t ld, const T* __restrict w, int64_t i) {
  constexpr int W = static_cast<int>(kW<T>);
  V<T> acc[W];
#pragma GCC unroll 16
  for (int r = 0; r < W; ++r) acc[r] = V<T>{};
  for (int64_t j = 0; j < ld; j += W) {
    const V<T> wv = load(w + j);
#pragma GCC unroll 16
    for (int r = 0; r < W; ++r) acc[r] += load(K + (i + r) * ld + j) * wv;
  }
  return transpose_sum<T>(acc);
}

// s_i = sum_j K_ij w_j for rows [r0, r1) (multiples of the vector width; K has that many rows, zero past the
// problem's; w: ld entries, 0 on padding). W rows at a time: W independent FMA chains, one reduction per block.
template <typename T>
static void matvec_rows(const T* __restrict K, int64_t ld, const T* __restrict w, int64_t r0, int64_t r1,
                        T* __restrict s) {
  constexpr int64_t W = kW<T>;
  for (int64_t i = r0; i < r1; i += W) store(s + i, dot_rows(K, ld, w, i));
}

// t_j = sum_i K_ij z_i over the n rows, for columns [c0, c1) (multiples of the vector width): vectorised across
// columns, no horizontal sums. Blocks of four vectors of columns, with even and odd rows in separate
// accumulators (eight independent FMA chains).
template <typename T>
static void matvec_cols(const T* __restrict K, int64_t n, int64_t ld, const T* __restrict z, int64_t c0,
                        int64_t c1, T* __restrict t) {
  constexpr int64_t W = kW<T>;
  int64_t j = c0;
  for (; j + 4 * W <= c1; j += 4 * W) {
    V<T> a0 = V<T>{}, a1 = V<T>{}, a2 = V<T>{}, a3 = V<T>{};
    V<T> b0 = V<T>{}, b1 = V<T>{}, b2 = V<T>{}, b3 = V<T>{};
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
      const T* __restrict r = K + i * ld + j;
      const V<T> z0 = splat(z[i]), z1 = splat(z[i + 1]);
      a0 += load(r) * z0;
      a1 += load(r + W) * z0;
      a2 += load(r + 2 * W) * z0;
      a3 += load(r + 3 * W) * z0;
      b0 += load(r + ld) * z1;
      b1 += load(r + ld + W) * z1;
      b2 += load(r + ld + 2 * W) * z1;
      b3 += load(r + ld + 3 * W) * z1;
    }
    if (i < n) {
      const T* __restrict r = K + i * ld + j;
      const V<T> z0 = splat(z[i]);
      a0 += load(r) * z0;
      a1 += load(r + W) * z0;
      a2 += load(r + 2 * W) * z0;
      a3 += load(r + 3 * W) * z0;
    }
    store(t + j, a0 + b0);
    store(t + j + W, a1 + b1);
    store(t + j + 2 * W, a2 + b2);
    store(t + j + 3 * W, a3 + b3);
  }
  for (; j < c1; j += W) {
    V<T> a0 = V<T>{}, b0 = V<T>{};
    int64_t i = 0;
    for (; i + 2 <= n; i += 2) {
      a0 += load(K + i * ld + j) * splat(z[i]);
      b0 += load(K + (i + 1) * ld + j) * splat(z[i + 1]);
    }
    if (i < n) a0 += load(K + i * ld + j) * splat(z[i]);
    store(t + j, a0 + b0);
  }
}

// One side's balanced scaling update, over k entries (a multiple of the vector width): out_i = 1 / x_i where
// ok_i > 0, else 1; z_i = wt_i out_i (the vector the next product takes). Returns bit 1 when an ok entry's sum
// x_i is not in (0, inf) or its scaling overflows (underflow: the caller falls back to the log domain), bit 2
// when some out_i leaves [lo, hi] (the caller absorbs).
template <typename T>
static int scale_update(const T* __restrict x, const T* __restrict ok, const T* __restrict wt, int64_t k, T lo, T hi,
                        T* __restrict out, T* __restrict z) {
  typedef typename Vec<T>::vi VI;
  constexpr int64_t W = kW<T>;
  const V<T> one = splat(T(1)), inf = splat(std::numeric_limits<T>::infinity());
  VI bad = VI{}, far = VI{};
  for (int64_t j = 0; j < k; j += W) {
    const V<T> xv = load(x + j);
    const auto is_ok = load(ok + j) > T(0);
    const V<T> r = one / xv;
    const V<T> o = is_ok ? r : one;
    bad |= is_ok & ~((xv > T(0)) & (xv < inf) & (r < inf));
    far |= (o > hi) | (o < lo);
    store(out + j, o);
    store(z + j, load(wt + j) * o);
  }
  int flags = 0;
  for (int l = 0; l < static_cast<int>(W); ++l) flags |= (bad[l] ? 1 : 0) | (far[l] ? 2 : 0);
  return flags;
}

// sum_i wok_i |u_i x_i - 1| over k entries (a multiple of the vector width; wok_i = 0 skips an entry): the
// balanced row error of a scaling state, x = K w.
template <typename T>
static T scaled_error(const T* __restrict u, const T* __restrict x, const T* __restrict wok, int64_t k) {
  constexpr int64_t W = kW<T>;
  V<T> acc = V<T>{};
  for (int64_t j = 0; j < k; j += W) {
    const V<T> wv = load(wok + j);
    const V<T> d = load(u + j) * load(x + j) - T(1);
    acc += wv > T(0) ? wv * vmax(d, -d) : V<T>{};
  }
  return hsum<T>(acc);
}

// One sweep of a scaling iteration over the tile, reading each block of W rows of K once from wherever it
// lives: s = K w for the block (dot_rows), the block's new scalings u (ok > 0: 1 / s balanced,
// exp((lam - 1) bs - lam log s) unbalanced, bs = the row bases / eps; else 1) and z = wa u, then t += z_i K_i
// while the block is in L1. Rows [0, nr) (a multiple of W; K zero past the problem's rows, ok and wa 0 there);
// t: ld entries (overwritten). Returns the flags of scale_update for u.
template <typename T>
static int sweep(const T* __restrict K, int64_t nr, int64_t ld, const T* __restrict w, const T* __restrict ok,
                 const T* __restrict wa, const T* __restrict bs, T lam, T lo, T hi, T* __restrict s,
                 T* __restrict u, T* __restrict z, T* __restrict t) {
  typedef typename Vec<T>::vi VI;
  constexpr int64_t W = kW<T>;
  const V<T> one = splat(T(1)), inf = splat(std::numeric_limits<T>::infinity());
  VI bad = VI{}, far = VI{};
  for (int64_t j = 0; j < ld; j += W) store(t + j, V<T>{});
  for (int64_t i = 0; i < nr; i += W) {
    const V<T> x = dot_rows(K, ld, w, i);
    store(s + i, x);
    const auto is_ok = load(ok + i) > T(0);
    V<T> r;
    if (lam == T(1)) {
      r = one / x;
    } else {
      for (int l = 0; l < static_cast<int>(W); ++l) r[l] = std::exp((lam - T(1)) * bs[i + l] - lam * std::log(x[l]));
    }
    const V<T> o = is_ok ? r : one;
    bad |= is_ok & ~((x > T(0)) & (x < inf) & (r < inf) & (r == r));
    far |= (o > hi) | (o < lo);
    store(u + i, o);
    const V<T> zv = load(wa + i) * o;
    store(z + i, zv);
    const T* __restrict kb = K + i * ld;
    const T* __restrict zb = z + i;  // broadcast from memory: a load, where a lane of zv would be a permute
    for (int64_t j = 0; j < ld; j += W) {
      V<T> p = load(kb + j) * zb[0], q = load(kb + ld + j) * zb[1];
#pragma GCC unroll 16
      for (int r2 = 2; r2 < static_cast<int>(W); r2 += 2) {
        p += load(kb + r2 * ld + j) * zb[r2];
        q += load(kb + (r2 + 1) * ld + j) * zb[r2 + 1];
      }
      store(t + j, load(t + j) + (p + q));
    }
  }
  int flags = 0;
  for (int l = 0; l < static_cast<int>(W); ++l) flags |= (bad[l] ? 1 : 0) | (far[l] ? 2 : 0);
  return flags;
}

template <typename T>
static const Kernels<T>* table() {
  static const Kernels<T> k{&lse_columns<T>, &plan_rows<T>, &lse_rows<T>, &matvec_rows<T>, &matvec_cols<T>,
                            &scale_update<T>, &scaled_error<T>, &sweep<T>,
                            FASTOT_ISA_NAME};
  return &k;
}

}  // namespace FASTOT_ISA

template <>
const Kernels<float>* kernels_for<Isa::FASTOT_ISA, float>() {
  return FASTOT_ISA::table<float>();
}
template <>
const Kernels<double>* kernels_for<Isa::FASTOT_ISA, double>() {
  return FASTOT_ISA::table<double>();
}

}  // namespace cpu
}  // namespace fastot
