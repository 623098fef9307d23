// The per-instruction-set inner loops of the CPU Sinkhorn (see sinkhorn_simd.h), as a table of function
// pointers chosen once at run time. Plain C++: included by the ISA translation units and the glue.
#pragma once
#include <cstdint>

namespace fastot {
namespace cpu {

template <typename T>
struct Kernels {
  // out[i] = LSE_j(gs_j - Cs_ij) for rows [r0, r1) of the dense n x m tile Cs.
  void (*row_lse)(const T* Cs, int64_t m, const T* gs, int64_t r0, int64_t r1, T* out);
  // out[j] = LSE_i(fs_i - Cs_ij) for columns [c0, c1); colmax/colsum: [m] scratch.
  void (*col_lse)(const T* Cs, int64_t n, int64_t m, const T* fs, int64_t c0, int64_t c1, T* out, T* colmax,
                  T* colsum);
  // P_ij = exp(fs_i + gs_j - Cs_ij) for rows [r0, r1), written to P if non-null; returns sum P_ij * Cs_ij.
  T (*plan_rows)(const T* Cs, int64_t m, const T* fs, const T* gs, int64_t r0, int64_t r1, T* P);
  const char* isa;
};

enum class Isa { base, avx2, avx512 };

template <Isa I, typename T>
const Kernels<T>* kernels_for();

}  // namespace cpu
}  // namespace fastot
