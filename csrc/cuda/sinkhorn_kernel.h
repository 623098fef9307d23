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
  bool allow_on_chip = true;  // false: stream even when the tile fits (FASTOT_CUDA_ONCHIP=0, for tests)
  bool warm_start = false;    // true: f, g hold the starting point on entry (a warm start, masked by the glue);
                              // false: the solve starts at f = g = 0 and f, g are outputs only
};

// How sinkhorn_fwd solves problems of this shape (sinkhorn_kernel.cu):
//  - on chip: one block per problem holds the whole cost tile in shared memory for every iteration;
//  - streaming: blocks of `rows` rows each hold their row strip of the cost for one iteration (2 launches per
//    iteration), so C is read from global memory once per iteration; needs a workspace in global memory.
struct SinkhornPlan {
  bool on_chip = false;
  int64_t rows = 0;              // streaming: rows per block
  size_t smem = 0;               // dynamic shared memory per block
  size_t workspace_bytes = 0;    // streaming: global scratch (aligned pieces), 0 on chip
  bool ok() const { return smem > 0; }  // false: M too large for one row in shared memory
};
SinkhornPlan sinkhorn_fwd_plan(int64_t B, int64_t N, int64_t M, size_t elem, int64_t max_smem,
                               bool allow_on_chip = true);

// Contiguous inputs: C [B,N,M], a [B,N], b [B,M]; outputs f [B,N], g [B,M], n_iter [B], err [B]. With
// args.warm_start, f and g are read first: they hold the state before the first iteration (0 on padded points and
// on problems with an empty side). `workspace` holds plan.workspace_bytes (may be nullptr on chip). Enqueues on
// `stream` only: no host synchronisation.
template <typename T>
cudaError_t launch_sinkhorn_fwd(const T* C, const T* a, const T* b, T* f, T* g, int32_t* n_iter, T* err,
                                void* workspace, const SinkhornArgs& args, cudaStream_t stream);

// P [B,N,M] (when P != nullptr) and/or tc [B] = <P, C> and mass [B] = sum P (when tc != nullptr).
template <typename T>
cudaError_t launch_sinkhorn_plan(const T* C, const T* a, const T* b, const T* f, const T* g, T* P, T* tc, T* mass,
                                 int64_t B, int64_t N, int64_t M, double eps, cudaStream_t stream);

// ---- sinkhorn_embeddings (sinkhorn_embeddings_kernel.cu): the cost is built per problem from x [B,N,d] and
// y [B,M,d] inside the kernels, forward and backward; no [B,N,M] tensor exists. Inputs: contiguous, one dtype for
// x and y (fp32, bf16, fp16 on tensor cores with fp32 accumulation; fp64 on the CUDA cores). Costs: 0 cosine,
// 1 sqeuclidean, 2 dot, as fastot.pairwise_cost defines them.
enum class EmbDtype { kFloat32, kFloat64, kBFloat16, kFloat16 };

// Dynamic shared memory of the fused forward / backward block for one problem, or 0 when it does not fit in
// max_smem (the glue then solves through a bounded global workspace instead).
size_t sinkhorn_embeddings_fwd_smem(int64_t N, int64_t M, EmbDtype dt, int64_t max_smem);
size_t sinkhorn_embeddings_bwd_smem(int64_t N, int64_t M, EmbDtype dt, int64_t max_smem);

// x, y: device pointers of type dt; a, b and the outputs in fp64 for kFloat64 inputs, fp32 otherwise.
// Outputs f [B,N], g [B,M], n_iter [B], err [B], tc [B] = <P, C>, mass [B] = sum P; f, g are read first (the
// starting point) when args.warm_start, as for launch_sinkhorn_fwd.
cudaError_t launch_sinkhorn_embeddings_fwd(const void* x, const void* y, EmbDtype dt, int64_t d, int kind,
                                           const float* a, const float* b, float* f, float* g, int32_t* n_iter,
                                           float* err, float* tc, float* mass, const SinkhornArgs& args,
                                           cudaStream_t stream);
cudaError_t launch_sinkhorn_embeddings_fwd(const void* x, const void* y, EmbDtype dt, int64_t d, int kind,
                                           const double* a, const double* b, double* f, double* g, int32_t* n_iter,
                                           double* err, double* tc, double* mass, const SinkhornArgs& args,
                                           cudaStream_t stream);

// dx [B,N,d], dy [B,M,d] of sum_k scale_k <P*_k, C_k(x, y)> with P* recomputed from f, g (the envelope rule).
// Rows of zero weight get a zero gradient; dx, dy must be zero-initialised (problems with scale_k = 0 are skipped).
cudaError_t launch_sinkhorn_embeddings_bwd(const void* x, const void* y, EmbDtype dt, int64_t B, int64_t N, int64_t M,
                                           int64_t d, int kind, const float* a, const float* b, const float* f,
                                           const float* g, const float* scale, float* dx, float* dy, double eps,
                                           int64_t max_smem, cudaStream_t stream);
cudaError_t launch_sinkhorn_embeddings_bwd(const void* x, const void* y, EmbDtype dt, int64_t B, int64_t N, int64_t M,
                                           int64_t d, int kind, const double* a, const double* b, const double* f,
                                           const double* g, const double* scale, double* dx, double* dy, double eps,
                                           int64_t max_smem, cudaStream_t stream);

}  // namespace fastot
