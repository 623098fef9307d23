// Torch glue for the CUDA Sinkhorn kernels: checks, device guard, stream, launch.
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <tuple>
#include <utility>

#include "checks.h"
#include "cuda/sinkhorn_kernel.h"

namespace fastot {
namespace {

int64_t max_smem_of(const at::Device& device) {
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, device.index()));
  return max_smem;
}

// FASTOT_CUDA_ONCHIP=0 sends every problem down the paths for large ones (streaming solve, chunked embeddings), so
// that tests can compare both paths on the same problems. Read per call.
bool on_chip_allowed() {
  const char* v = std::getenv("FASTOT_CUDA_ONCHIP");
  return v == nullptr || std::string(v) != "0";
}

// The state before the first iteration, as fastot/reference/sinkhorn.py (initial_potentials) defines it, written
// into the contiguous output buffers f [B,N], g [B,M]: the warm start F0 / G0 (compute dtype, from warm_start_data)
// on the real points (weight > 0) of problems with a real point on both sides, 0 elsewhere; a missing one is 0.
// Returns false, leaving f, g untouched, when neither is given: the kernels then start at 0 on their own, exactly
// as a solve without warm start always did.
bool fill_warm_start(const at::Tensor& F0, const at::Tensor& G0, const at::Tensor& A, const at::Tensor& Bw,
                     at::Tensor& f, at::Tensor& g) {
  if (!F0.defined() && !G0.defined()) return false;
  const at::Tensor va = A > 0, vb = Bw > 0;
  const at::Tensor both = va.any(1).logical_and(vb.any(1)).unsqueeze(1);  // [B,1]; false when N = 0 or M = 0
  if (F0.defined())
    f.copy_(at::where(va.logical_and(both), F0, 0));
  else
    f.zero_();
  if (G0.defined())
    g.copy_(at::where(vb.logical_and(both), G0, 0));
  else
    g.zero_();
  return true;
}

// Runs the forward solve on contiguous C, A, Bw of one dtype into f, g, n_iter, err; on chip or streaming (with a
// workspace from the caching allocator, so graph capture works). warm: f, g already hold the starting point
// (fill_warm_start); otherwise the solve starts at 0.
void solve_into(const at::Tensor& C, const at::Tensor& A, const at::Tensor& Bw, double eps, int64_t max_iter,
                c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b, int64_t max_smem,
                at::Tensor& f, at::Tensor& g, at::Tensor& n_iter, at::Tensor& err, bool warm = false,
                const char* op = "sinkhorn") {
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  const bool allow_on_chip = on_chip_allowed();
  const SinkhornPlan plan = sinkhorn_fwd_plan(B, N, M, C.element_size(), max_smem, allow_on_chip);
  TORCH_CHECK(plan.ok(), op, " (cuda): one row of M=", M, " costs in ", C.scalar_type(),
              " does not fit in the device's shared memory per block (", max_smem, " bytes); the triton backend ",
              "streams column tiles");
  at::Tensor workspace;
  if (plan.workspace_bytes > 0)
    workspace = at::empty({static_cast<int64_t>(plan.workspace_bytes)}, C.options().dtype(at::kByte));
  SinkhornArgs args{B, N, M, eps, max_iter, tol.value_or(0.0), tol.has_value(), tau_a.value_or(0.0),
                    tau_b.value_or(0.0), tau_a.has_value(), tau_b.has_value(), max_smem, allow_on_chip};
  args.warm_start = warm;
  void* ws = workspace.defined() ? workspace.data_ptr() : nullptr;
  auto stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t e;
  if (C.scalar_type() == at::kDouble)
    e = launch_sinkhorn_fwd<double>(C.data_ptr<double>(), A.data_ptr<double>(), Bw.data_ptr<double>(),
                                    f.data_ptr<double>(), g.data_ptr<double>(), n_iter.data_ptr<int32_t>(),
                                    err.data_ptr<double>(), ws, args, stream);
  else
    e = launch_sinkhorn_fwd<float>(C.data_ptr<float>(), A.data_ptr<float>(), Bw.data_ptr<float>(), f.data_ptr<float>(),
                                   g.data_ptr<float>(), n_iter.data_ptr<int32_t>(), err.data_ptr<float>(), ws, args,
                                   stream);
  TORCH_CHECK(e == cudaSuccess, "sinkhorn_fwd: CUDA launch failed: ", cudaGetErrorString(e));
}


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cuda(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps, int64_t max_iter,
    c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b,
    const c10::optional<at::Tensor>& f0, const c10::optional<at::Tensor>& g0) {
  check_sinkhorn_inputs(cost, a, b);
  TORCH_CHECK(eps > 0, "sinkhorn: eps must be > 0, got ", eps);
  TORCH_CHECK(max_iter >= 0, "sinkhorn: max_iter must be >= 0, got ", max_iter);
  const c10::cuda::CUDAGuard guard(cost.device());
  const auto dt = sinkhorn_compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous(), A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  const at::Tensor F0 = warm_start_data("sinkhorn", f0, "f0", B, N, cost.device(), dt);
  const at::Tensor G0 = warm_start_data("sinkhorn", g0, "g0", B, M, cost.device(), dt);
  at::Tensor f = at::empty({B, N}, C.options()), g = at::empty({B, M}, C.options());
  at::Tensor n_iter = at::empty({B}, C.options().dtype(at::kInt)), err = at::empty({B}, C.options());
  const bool warm = fill_warm_start(F0, G0, A, Bw, f, g);
  solve_into(C, A, Bw, eps, max_iter, tol, tau_a, tau_b, max_smem_of(cost.device()), f, g, n_iter, err, warm);
  return {f, g, n_iter, err};
}

// want_plan: return P [B,N,M]; otherwise <P,C> [B] (and sum P into *mass_out).
at::Tensor plan_or_cost(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, const at::Tensor& f,
                        const at::Tensor& g, double eps, bool want_plan, at::Tensor* mass_out = nullptr) {
  check_sinkhorn_inputs(cost, a, b);
  check_potentials("sinkhorn_plan", f, g, cost.size(0), cost.size(1), cost.size(2), cost.device(), eps);
  const c10::cuda::CUDAGuard guard(cost.device());
  const auto dt = sinkhorn_compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous(), A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const at::Tensor F = f.to(dt).contiguous(), G = g.to(dt).contiguous();
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  at::Tensor out = want_plan ? at::empty(C.sizes(), C.options()) : at::zeros({B}, C.options());
  at::Tensor mass = want_plan ? at::Tensor() : at::zeros({B}, C.options());
  auto stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t e;
  if (dt == at::kDouble)
    e = launch_sinkhorn_plan<double>(C.data_ptr<double>(), A.data_ptr<double>(), Bw.data_ptr<double>(),
                                     F.data_ptr<double>(), G.data_ptr<double>(),
                                     want_plan ? out.data_ptr<double>() : nullptr,
                                     want_plan ? nullptr : out.data_ptr<double>(),
                                     want_plan ? nullptr : mass.data_ptr<double>(), B, N, M, eps, stream);
  else
    e = launch_sinkhorn_plan<float>(C.data_ptr<float>(), A.data_ptr<float>(), Bw.data_ptr<float>(), F.data_ptr<float>(),
                                    G.data_ptr<float>(), want_plan ? out.data_ptr<float>() : nullptr,
                                    want_plan ? nullptr : out.data_ptr<float>(),
                                    want_plan ? nullptr : mass.data_ptr<float>(), B, N, M, eps, stream);
  TORCH_CHECK(e == cudaSuccess, "sinkhorn_plan: CUDA launch failed: ", cudaGetErrorString(e));
  if (mass_out) *mass_out = mass;
  return out;
}

at::Tensor sinkhorn_plan_cuda(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, const at::Tensor& f,
                              const at::Tensor& g, double eps) {
  return plan_or_cost(cost, a, b, f, g, eps, true);
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_plan_sums_cuda(const at::Tensor& cost, const at::Tensor& a,
                                                          const at::Tensor& b, const at::Tensor& f,
                                                          const at::Tensor& g, double eps) {
  at::Tensor mass;
  at::Tensor tc = plan_or_cost(cost, a, b, f, g, eps, false, &mass);
  return {tc, mass};
}

// ---------------------------------------------------------------------------------------------------------
// sinkhorn_embeddings. Problems whose tile fits in shared memory run the fused kernels (the cost never leaves the
// block). Larger ones are solved a chunk of problems at a time: the chunk's cost is built with ATen (cuBLAS) into
// a workspace of at most kChunkBytes, solved (streaming) and released, so memory stays bounded for any B.
constexpr int64_t kChunkBytes = int64_t(256) << 20;

// x, y as the fused kernels read them: detached, contiguous, one dtype (bf16/fp16 kept; mixed dtypes promoted).
std::pair<at::Tensor, at::Tensor> embeddings_data(const at::Tensor& x, const at::Tensor& y, at::ScalarType dt) {
  const auto st = x.scalar_type();
  const bool keep = st == y.scalar_type() && (st == dt || (dt == at::kFloat && (st == at::kBFloat16 || st == at::kHalf)));
  if (keep) return {x.detach().contiguous(), y.detach().contiguous()};
  return {x.detach().to(dt).contiguous(), y.detach().to(dt).contiguous()};
}

EmbDtype emb_dtype_of(at::ScalarType st) {
  switch (st) {
    case at::kDouble: return EmbDtype::kFloat64;
    case at::kBFloat16: return EmbDtype::kBFloat16;
    case at::kHalf: return EmbDtype::kFloat16;
    default: return EmbDtype::kFloat32;
  }
}

// Problems per chunk so that a chunk's temporaries (`per_problem` bytes each) stay within kChunkBytes; at least one.
int64_t chunk_of(int64_t B, int64_t per_problem) {
  return std::max<int64_t>(1, std::min<int64_t>(B, kChunkBytes / std::max<int64_t>(1, per_problem)));
}

// Cost [b,N,M] of a chunk, as fastot.pairwise_cost (x, y in the compute dtype); nx, ny: |x| (cosine) or |x|^2.
at::Tensor chunk_cost(const at::Tensor& X, const at::Tensor& Y, int64_t kind, at::Tensor& nx, at::Tensor& ny) {
  at::Tensor dots = at::bmm(X, Y.transpose(1, 2));
  if (kind == 2) return dots.neg_();
  nx = (X * X).sum(-1);
  ny = (Y * Y).sum(-1);
  if (kind == 0) {
    nx = nx.sqrt();
    ny = ny.sqrt();
    return dots.mul_(nx.clamp_min(1e-12).reciprocal().unsqueeze(2)).mul_(ny.clamp_min(1e-12).reciprocal().unsqueeze(1))
        .neg_()
        .add_(1);
  }
  return dots.mul_(-2).add_(nx.unsqueeze(2)).add_(ny.unsqueeze(1)).clamp_min_(0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_embeddings_fwd_cuda(
    const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, const at::Tensor& b, int64_t kind, double eps,
    int64_t max_iter, c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b,
    const c10::optional<at::Tensor>& f0, const c10::optional<at::Tensor>& g0) {
  check_embeddings_inputs(x, y, a, b, kind);
  TORCH_CHECK(eps > 0, "sinkhorn_embeddings: eps must be > 0, got ", eps);
  TORCH_CHECK(max_iter >= 0, "sinkhorn_embeddings: max_iter must be >= 0, got ", max_iter);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto [X, Y] = embeddings_data(x, y, dt);
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const int64_t B = X.size(0), N = X.size(1), M = Y.size(1), d = X.size(2);
  const at::Tensor F0 = warm_start_data("sinkhorn_embeddings", f0, "f0", B, N, x.device(), dt);
  const at::Tensor G0 = warm_start_data("sinkhorn_embeddings", g0, "g0", B, M, x.device(), dt);
  const auto opts = A.options();
  at::Tensor f = at::empty({B, N}, opts), g = at::empty({B, M}, opts), err = at::empty({B}, opts);
  at::Tensor n_iter = at::empty({B}, opts.dtype(at::kInt)), tc = at::empty({B}, opts), mass = at::empty({B}, opts);
  if (B == 0) return {f, g, n_iter, err, tc, mass};
  // f, g hold the warm start (on every path below: the fused kernel reads it, the chunks solve from their slices).
  const bool warm = fill_warm_start(F0, G0, A, Bw, f, g);
  const int64_t max_smem = max_smem_of(x.device());
  const EmbDtype edt = emb_dtype_of(X.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream();
  if (on_chip_allowed() && sinkhorn_embeddings_fwd_smem(N, M, edt, max_smem) > 0) {
    SinkhornArgs args{B, N, M, eps, max_iter, tol.value_or(0.0), tol.has_value(), tau_a.value_or(0.0),
                      tau_b.value_or(0.0), tau_a.has_value(), tau_b.has_value(), max_smem};
    args.warm_start = warm;
    cudaError_t e;
    if (dt == at::kDouble)
      e = launch_sinkhorn_embeddings_fwd(X.data_ptr(), Y.data_ptr(), edt, d, static_cast<int>(kind),
                                         A.data_ptr<double>(), Bw.data_ptr<double>(), f.data_ptr<double>(),
                                         g.data_ptr<double>(), n_iter.data_ptr<int32_t>(), err.data_ptr<double>(),
                                         tc.data_ptr<double>(), mass.data_ptr<double>(), args, stream);
    else
      e = launch_sinkhorn_embeddings_fwd(X.data_ptr(), Y.data_ptr(), edt, d, static_cast<int>(kind),
                                         A.data_ptr<float>(), Bw.data_ptr<float>(), f.data_ptr<float>(),
                                         g.data_ptr<float>(), n_iter.data_ptr<int32_t>(), err.data_ptr<float>(),
                                         tc.data_ptr<float>(), mass.data_ptr<float>(), args, stream);
    TORCH_CHECK(e == cudaSuccess, "sinkhorn_embeddings_fwd: CUDA launch failed: ", cudaGetErrorString(e));
    return {f, g, n_iter, err, tc, mass};
  }
  // Per problem: the cost, the transport-cost pass's temporaries, and the streaming solve's workspace (its column
  // partials grow to 2 N M when a strip holds a single row, i.e. for very wide problems).
  const int64_t elem = dt == at::kDouble ? 8 : 4;
  const int64_t ws = static_cast<int64_t>(sinkhorn_fwd_plan(1, N, M, elem, max_smem, false).workspace_bytes);
  const int64_t step = chunk_of(B, 2 * N * M * elem + ws);
  for (int64_t k0 = 0; k0 < B; k0 += step) {
    const int64_t k1 = std::min(B, k0 + step);
    at::Tensor nx, ny;
    const at::Tensor C = chunk_cost(X.slice(0, k0, k1).to(dt), Y.slice(0, k0, k1).to(dt), kind, nx, ny).contiguous();
    const at::Tensor Ak = A.slice(0, k0, k1), Bk = Bw.slice(0, k0, k1);
    at::Tensor fk = f.slice(0, k0, k1), gk = g.slice(0, k0, k1), nk = n_iter.slice(0, k0, k1), ek = err.slice(0, k0, k1);
    solve_into(C, Ak, Bk, eps, max_iter, tol, tau_a, tau_b, max_smem, fk, gk, nk, ek, warm, "sinkhorn_embeddings");
    at::Tensor mk;
    tc.slice(0, k0, k1).copy_(plan_or_cost(C, Ak, Bk, fk, gk, eps, false, &mk));
    mass.slice(0, k0, k1).copy_(mk);
  }
  return {f, g, n_iter, err, tc, mass};
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_embeddings_bwd_both(const at::Tensor& x, const at::Tensor& y,
                                                                const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& f, const at::Tensor& g,
                                                                const at::Tensor& scale, int64_t kind, double eps);

std::tuple<at::Tensor, at::Tensor> sinkhorn_embeddings_bwd_cuda(const at::Tensor& x, const at::Tensor& y,
                                                                const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& f, const at::Tensor& g,
                                                                const at::Tensor& scale, int64_t kind, double eps,
                                                                bool need_dx, bool need_dy) {
  // The CUDA kernels compute both sides (not yet run on a GPU: left as they are); a side nobody needs is zeroed.
  auto [dx, dy] = sinkhorn_embeddings_bwd_both(x, y, a, b, f, g, scale, kind, eps);
  if (!need_dx) dx.zero_();
  if (!need_dy) dy.zero_();
  return {dx, dy};
}

std::tuple<at::Tensor, at::Tensor> sinkhorn_embeddings_bwd_both(const at::Tensor& x, const at::Tensor& y,
                                                                const at::Tensor& a, const at::Tensor& b,
                                                                const at::Tensor& f, const at::Tensor& g,
                                                                const at::Tensor& scale, int64_t kind, double eps) {
  check_embeddings_inputs(x, y, a, b, kind);
  check_potentials("sinkhorn_embeddings_bwd", f, g, x.size(0), x.size(1), y.size(1), x.device(), eps, &scale);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dt = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const auto [X, Y] = embeddings_data(x, y, dt);
  const at::Tensor A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const at::Tensor F = f.to(dt).contiguous(), G = g.to(dt).contiguous(), S = scale.to(dt).contiguous();
  const int64_t B = X.size(0), N = X.size(1), M = Y.size(1), d = X.size(2);
  at::Tensor dx = at::zeros({B, N, d}, A.options()), dy = at::zeros({B, M, d}, A.options());
  if (B == 0) return {dx, dy};
  const int64_t max_smem = max_smem_of(x.device());
  const EmbDtype edt = emb_dtype_of(X.scalar_type());
  if (on_chip_allowed() && sinkhorn_embeddings_bwd_smem(N, M, edt, max_smem) > 0) {
    auto stream = c10::cuda::getCurrentCUDAStream();
    cudaError_t e;
    if (dt == at::kDouble)
      e = launch_sinkhorn_embeddings_bwd(X.data_ptr(), Y.data_ptr(), edt, B, N, M, d, static_cast<int>(kind),
                                         A.data_ptr<double>(), Bw.data_ptr<double>(), F.data_ptr<double>(),
                                         G.data_ptr<double>(), S.data_ptr<double>(), dx.data_ptr<double>(),
                                         dy.data_ptr<double>(), eps, max_smem, stream);
    else
      e = launch_sinkhorn_embeddings_bwd(X.data_ptr(), Y.data_ptr(), edt, B, N, M, d, static_cast<int>(kind),
                                         A.data_ptr<float>(), Bw.data_ptr<float>(), F.data_ptr<float>(),
                                         G.data_ptr<float>(), S.data_ptr<float>(), dx.data_ptr<float>(),
                                         dy.data_ptr<float>(), eps, max_smem, stream);
    TORCH_CHECK(e == cudaSuccess, "sinkhorn_embeddings_bwd: CUDA launch failed: ", cudaGetErrorString(e));
    return {dx, dy};
  }
  // Chunked: the same formulas as the fused kernel (and the CPU backward) with ATen, on at most kChunkBytes.
  const int64_t step = chunk_of(B, 4 * N * M * (dt == at::kDouble ? 8 : 4));
  for (int64_t k0 = 0; k0 < B; k0 += step) {
    const int64_t k1 = std::min(B, k0 + step);
    const at::Tensor Ak = A.slice(0, k0, k1), Bk = Bw.slice(0, k0, k1);
    const at::Tensor live_x = (Ak > 0).unsqueeze(2), live_y = (Bk > 0).unsqueeze(2);
    // zero-weight rows are zeroed first, so that whatever they hold (NaN included) reaches no product
    const at::Tensor Xk = X.slice(0, k0, k1).to(dt).masked_fill(live_x.logical_not(), 0);
    const at::Tensor Yk = Y.slice(0, k0, k1).to(dt).masked_fill(live_y.logical_not(), 0);
    at::Tensor nx, ny;
    const at::Tensor C = chunk_cost(Xk, Yk, kind, nx, ny).contiguous();
    at::Tensor P = plan_or_cost(C, Ak, Bk, F.slice(0, k0, k1), G.slice(0, k0, k1), eps, true);
    P.mul_(S.slice(0, k0, k1).view({-1, 1, 1}));
    at::Tensor Q, rx, ry;
    if (kind == 2) {
      Q = P.neg();
    } else if (kind == 1) {
      P.masked_fill_(C == 0, 0);  // the clamp at 0 is active
      Q = P * -2;
      rx = P.sum(2) * 2;
      ry = P.sum(1) * 2;
    } else {
      const at::Tensor ix = nx.clamp_min(1e-12).reciprocal(), iy = ny.clamp_min(1e-12).reciprocal();
      const at::Tensor PC = P * (1 - C);
      rx = (PC.sum(2) * ix * ix).masked_fill_(nx <= 1e-12, 0);  // x / 1e-12 is linear where the clamp is active
      ry = (PC.sum(1) * iy * iy).masked_fill_(ny <= 1e-12, 0);
      Q = P.mul_(ix.unsqueeze(2)).mul_(iy.unsqueeze(1)).neg_();
    }
    at::Tensor gx = at::bmm(Q, Yk), gy = at::bmm(Q.transpose(1, 2), Xk);
    if (rx.defined()) {
      gx.add_(rx.unsqueeze(2) * Xk);
      gy.add_(ry.unsqueeze(2) * Yk);
    }
    dx.slice(0, k0, k1).copy_(gx.masked_fill_(live_x.logical_not(), 0));
    dy.slice(0, k0, k1).copy_(gy.masked_fill_(live_y.logical_not(), 0));
  }
  return {dx, dy};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastot, CUDA, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cuda);
  m.impl("sinkhorn_plan", &sinkhorn_plan_cuda);
  m.impl("sinkhorn_plan_sums", &sinkhorn_plan_sums_cuda);
  m.impl("sinkhorn_embeddings_fwd", &sinkhorn_embeddings_fwd_cuda);
  m.impl("sinkhorn_embeddings_bwd", &sinkhorn_embeddings_bwd_cuda);
}

}  // namespace fastot
