// Torch glue for the CUDA Sinkhorn kernels: checks, device guard, stream, launch.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"
#include "cuda/sinkhorn_kernel.h"

namespace fastot {
namespace {


std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> sinkhorn_fwd_cuda(
    const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, double eps, int64_t max_iter,
    c10::optional<double> tol, c10::optional<double> tau_a, c10::optional<double> tau_b) {
  check_sinkhorn_inputs(cost, a, b);
  TORCH_CHECK(eps > 0, "sinkhorn: eps must be > 0, got ", eps);
  TORCH_CHECK(max_iter >= 0, "sinkhorn: max_iter must be >= 0, got ", max_iter);
  const c10::cuda::CUDAGuard guard(cost.device());
  const auto dt = sinkhorn_compute_dtype(cost);
  const at::Tensor C = cost.to(dt).contiguous(), A = a.to(dt).contiguous(), Bw = b.to(dt).contiguous();
  const int64_t B = C.size(0), N = C.size(1), M = C.size(2);
  int max_smem = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&max_smem, cudaDevAttrMaxSharedMemoryPerBlockOptin, cost.device().index()));
  TORCH_CHECK(sinkhorn_fwd_smem_bytes(N, M, C.element_size()) <= static_cast<size_t>(max_smem),
              "sinkhorn (cuda): N=", N, ", M=", M, " in ", C.scalar_type(), " needs more shared memory per block than ",
              "the device has (", max_smem, " bytes); the triton backend streams problems this large");
  at::Tensor f = at::empty({B, N}, C.options()), g = at::empty({B, M}, C.options());
  at::Tensor n_iter = at::empty({B}, C.options().dtype(at::kInt)), err = at::empty({B}, C.options());
  SinkhornArgs args{B, N, M, eps, max_iter, tol.value_or(0.0), tol.has_value(), tau_a.value_or(0.0),
                    tau_b.value_or(0.0), tau_a.has_value(), tau_b.has_value(), max_smem};
  auto stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t e;
  if (dt == at::kDouble)
    e = launch_sinkhorn_fwd<double>(C.data_ptr<double>(), A.data_ptr<double>(), Bw.data_ptr<double>(),
                                    f.data_ptr<double>(), g.data_ptr<double>(), n_iter.data_ptr<int32_t>(),
                                    err.data_ptr<double>(), args, stream);
  else
    e = launch_sinkhorn_fwd<float>(C.data_ptr<float>(), A.data_ptr<float>(), Bw.data_ptr<float>(), f.data_ptr<float>(),
                                   g.data_ptr<float>(), n_iter.data_ptr<int32_t>(), err.data_ptr<float>(), args, stream);
  TORCH_CHECK(e == cudaSuccess, "sinkhorn_fwd: CUDA launch failed: ", cudaGetErrorString(e));
  return {f, g, n_iter, err};
}

// want_plan: return P [B,N,M]; otherwise <P,C> [B] (and sum P into *mass_out).
at::Tensor plan_or_cost(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b, const at::Tensor& f,
                        const at::Tensor& g, double eps, bool want_plan, at::Tensor* mass_out = nullptr) {
  check_sinkhorn_inputs(cost, a, b);
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

}  // namespace

TORCH_LIBRARY_IMPL(fastot, CUDA, m) {
  m.impl("sinkhorn_fwd", &sinkhorn_fwd_cuda);
  m.impl("sinkhorn_plan", &sinkhorn_plan_cuda);
  m.impl("sinkhorn_plan_sums", &sinkhorn_plan_sums_cuda);
}

}  // namespace fastot
