// Launchers for the CUDA Sinkhorn kernels: raw pointers + stream, no torch headers.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

namespace fastot {

struct SinkhornArgs {
  int64_t B, N, M;  // batch, rows, columns
  double eps;       // entropic regularisation
  int64_t max_iter;
  double tol;       // used when has_tol
  bool has_tol;
  double tau_a, tau_b;  // marginal relaxation, used when unb_a / unb_b
  bool unb_a, unb_b;
  int64_t max_smem;     // shared memory a block may use (cudaDevAttrMaxSharedMemoryPerBlockOptin)
};

// Contiguous inputs: C [B,N,M], a [B,N], b [B,M]; outputs f [B,N], g [B,M], n_iter [B], err [B].
template <typename T>
cudaError_t launch_sinkhorn_fwd(const T* C, const T* a, const T* b, T* f, T* g, int32_t* n_iter, T* err,
                                const SinkhornArgs& args, cudaStream_t stream);

// P [B,N,M] (when P != nullptr) and/or tc [B] = <P, C> and mass [B] = sum P (when tc != nullptr).
template <typename T>
cudaError_t launch_sinkhorn_plan(const T* C, const T* a, const T* b, const T* f, const T* g, T* P, T* tc, T* mass,
                                 int64_t B, int64_t N, int64_t M, double eps, cudaStream_t stream);

// Dynamic shared memory of the forward kernel without the cost tile (potentials and scratch); the glue checks it
// against the device. The tile (N*M more elements) is kept on chip when it fits as well.
inline size_t sinkhorn_fwd_smem_bytes(int64_t N, int64_t M, size_t elem) { return elem * (3 * N + 2 * M + 32); }

}  // namespace fastot
