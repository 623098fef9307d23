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
  const char* isa;
};

enum class Isa { base, avx2, avx512 };

template <Isa I, typename T>
const Kernels<T>* kernels_for();

}  // namespace cpu
}  // namespace fastot
