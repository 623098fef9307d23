// Inner loops of the CPU Sinkhorn, compiled once per instruction set (sinkhorn_isa_*.cpp define
// FASTOT_ISA and compile flags) and chosen at run time from the CPU's features. Plain C++ on raw
// pointers: no torch/ATen headers, so no inline function is ever shared between TUs built for
// different instruction sets.
//
// All loops run on a dense tile Cs = C / eps restricted to the problem's valid rows and columns, so
// there are no masks in the hot loops and padded entries (which may hold NaN) are never read.
#pragma once
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "cpu/sinkhorn_kernels.h"

#ifndef FASTOT_ISA
#error "define FASTOT_ISA before including sinkhorn_simd.h"
#endif

namespace fastot {
namespace cpu {
namespace FASTOT_ISA {

// exp for float in 1-2 ulp (Cephes' expf polynomial on [-ln2/2, ln2/2] and exponent bits), written so
// that GCC vectorizes it in `omp simd` loops. Inputs are clamped to [-87, 88]: results below ~1e-38
// come out as ~1e-38 instead of 0, invisible next to the terms >= 1 of a max-shifted sum.
static inline float exp_approx(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = std::fma(n, -0.693359375f, x);
  r = std::fma(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = std::fma(p, r, 1.3981999507e-3f);
  p = std::fma(p, r, 8.3334519073e-3f);
  p = std::fma(p, r, 4.1665795894e-2f);
  p = std::fma(p, r, 1.6666665459e-1f);
  p = std::fma(p, r, 5.0000001201e-1f);
  p = std::fma(p * r, r, r) + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  return p * std::bit_cast<float>(e);
}
// float64 keeps libm's exp: it is the oracle-grade path, not the fast one.
static inline double exp_approx(double x) { return std::exp(x); }

template <typename T>
static void row_lse(const T* __restrict Cs, int64_t m, const T* __restrict gs, int64_t r0, int64_t r1,
                    T* __restrict out) {
  for (int64_t i = r0; i < r1; ++i) {
    const T* __restrict row = Cs + i * m;
    T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
    for (int64_t j = 0; j < m; ++j) {
      const T v = gs[j] - row[j];
      mx = v > mx ? v : mx;
    }
    T s = 0;
#pragma omp simd reduction(+ : s)
    for (int64_t j = 0; j < m; ++j) s += exp_approx(gs[j] - row[j] - mx);
    out[i] = m > 0 ? mx + std::log(s) : -std::numeric_limits<T>::infinity();
  }
}

template <typename T>
static void col_lse(const T* __restrict Cs, int64_t n, int64_t m, const T* __restrict fs, int64_t c0, int64_t c1,
                    T* __restrict out, T* __restrict colmax, T* __restrict colsum) {
  for (int64_t j = c0; j < c1; ++j) {
    colmax[j] = -std::numeric_limits<T>::infinity();
    colsum[j] = 0;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* __restrict row = Cs + i * m;
    const T fi = fs[i];
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) {
      const T v = fi - row[j];
      colmax[j] = v > colmax[j] ? v : colmax[j];
    }
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* __restrict row = Cs + i * m;
    const T fi = fs[i];
#pragma omp simd
    for (int64_t j = c0; j < c1; ++j) colsum[j] += exp_approx(fi - row[j] - colmax[j]);
  }
  for (int64_t j = c0; j < c1; ++j)
    out[j] = n > 0 ? colmax[j] + std::log(colsum[j]) : -std::numeric_limits<T>::infinity();
}

// P_ij = exp(fs_i + gs_j - Cs_ij) for rows [r0, r1); optionally written (P != nullptr, row-major n x m) and/or
// accumulated as sum_ij P_ij * Cs_ij (returned; multiply by eps for <P, C>).
template <typename T>
static T plan_rows(const T* __restrict Cs, int64_t m, const T* __restrict fs, const T* __restrict gs, int64_t r0,
                   int64_t r1, T* __restrict P) {
  T acc = 0;
  for (int64_t i = r0; i < r1; ++i) {
    const T* __restrict row = Cs + i * m;
    const T fi = fs[i];
    T s = 0;
    if (P) {
      T* __restrict prow = P + i * m;
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < m; ++j) {
        const T p = exp_approx(fi + gs[j] - row[j]);
        prow[j] = p;
        s += p * row[j];
      }
    } else {
#pragma omp simd reduction(+ : s)
      for (int64_t j = 0; j < m; ++j) s += exp_approx(fi + gs[j] - row[j]) * row[j];
    }
    acc += s;
  }
  return acc;
}

template <typename T>
static const Kernels<T>* table() {
  static const Kernels<T> k{&row_lse<T>, &col_lse<T>, &plan_rows<T>, FASTOT_ISA_NAME};
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
