// The per-instruction-set inner loops of the CPU Sinkhorn (see sinkhorn_simd.h), as a table of function
// pointers chosen once at run time. Plain C++: included by the ISA translation units and the glue.
#pragma once
#include <cstdint>

namespace fastot {
namespace cpu {

// Elements per 64-byte vector. Tiles have a row stride `ld` that is a multiple of this, padded with +inf.
template <typename T>
constexpr int64_t kLanes = 64 / sizeof(T);

template <typename T>
struct Kernels {
  // out[j] = LSE_i(s_i - X_ij) over the n rows of X (row stride ld), for columns [c0, c1) (multiples of
  // kLanes); -inf where no term is finite. colmax/colsum: [ld] scratch.
  void (*lse_columns)(const T* X, int64_t n, int64_t ld, const T* s, int64_t c0, int64_t c1, T* out, T* colmax,
                      T* colsum);
  // P_ij = exp(fs_i + gs_j - Cs_ij) for rows [r0, r1), written to P (stride ld) if non-null; adds sum P_ij Cs_ij
  // to *sum_pc and sum P_ij to *sum_p (+inf costs, padding included, give P_ij = 0).
  void (*plan_rows)(const T* Cs, int64_t ld, const T* fs, const T* gs, int64_t r0, int64_t r1, T* P, T* sum_pc,
                    T* sum_p);
  // out[i] = LSE_j(s_j - X_ij) for rows [r0, r1) of X (row stride ld, s: ld entries); -inf where no term is finite.
  void (*lse_rows)(const T* X, int64_t ld, const T* s, int64_t r0, int64_t r1, T* out);
  // s_i = sum_j K_ij w_j for rows [r0, r1) (w: ld entries, 0 on padding).
  void (*matvec_rows)(const T* K, int64_t ld, const T* w, int64_t r0, int64_t r1, T* s);
  // t_j = sum_i K_ij z_i over the n rows, for columns [c0, c1) (multiples of kLanes).
  void (*matvec_cols)(const T* K, int64_t n, int64_t ld, const T* z, int64_t c0, int64_t c1, T* t);
  // Balanced scaling update over k entries (a multiple of kLanes): out_i = ok_i > 0 ? 1 / x_i : 1, z_i = wt_i out_i;
  // returns bit 1 if an ok x_i is not in (0, inf) or 1 / x_i overflows, bit 2 if some out_i is outside [lo, hi].
  int (*scale_update)(const T* x, const T* ok, const T* wt, int64_t k, T lo, T hi, T* out, T* z);
  // sum_i wok_i |u_i x_i - 1| over k entries (a multiple of kLanes), entries with wok_i = 0 skipped.
  T (*scaled_error)(const T* u, const T* x, const T* wok, int64_t k);
  // One fused sweep of a scaling iteration (rows [0, n) of K read once): s = K w; u_i = ok_i > 0 ? 1 / s_i (lam = 1)
  // or exp((lam - 1) bs_i - lam log s_i) : 1; z = wa u; t = K^T z (ld entries). Returns scale_update's flags for u.
  int (*sweep)(const T* K, int64_t n, int64_t ld, const T* w, const T* ok, const T* wa, const T* bs, T lam, T lo, T hi,
               T* s, T* u, T* z, T* t);
  const char* isa;
};

enum class Isa { base, avx2, avx512 };

template <Isa I, typename T>
const Kernels<T>* kernels_for();

}  // namespace cpu
}  // namespace fastot
