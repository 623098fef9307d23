// fastot._C: every op schema, in one place. Implementations are registered per dispatch key
// in csrc/cpu/<op>.cpp (CPU) and csrc/cuda/<op>.cu (CUDA).
#include <Python.h>
#include <torch/library.h>

#include <string>

namespace fastot {
namespace cpu {
std::string cpu_isa();  // csrc/cpu/sinkhorn.cpp
}
}  // namespace fastot

extern "C" {
// The module itself is empty: importing it runs the static TORCH_LIBRARY registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(fastot, m) {
  // The fake (meta) implementations live in Python: torch imports this module when one is needed, also when the
  // library was loaded alone (torch.ops.load_library) rather than through `import fastot`.
  m.set_python_module("fastot._fakes");
  // Log-domain Sinkhorn solve. cost [B,N,M] (fp32/fp64; fp16/bf16 are solved in fp32), a [B,N], b [B,M]
  // nonnegative weights (0 = padded point). Returns potentials f [B,N], g [B,M] in the compute dtype,
  // iterations applied n_iter [B] (int32) and the final L1 marginal violation err [B]. f0 [B,N], g0 [B,M]: an
  // optional warm start (the potentials before the first iteration on the real points of problems with mass on
  // both sides; see fastot/reference/sinkhorn.py). Every forward below takes one too.
  m.def(
      "sinkhorn_fwd(Tensor cost, Tensor a, Tensor b, float eps, int max_iter, float? tol, float? tau_a, "
      "float? tau_b, Tensor? f0=None, Tensor? g0=None) -> (Tensor f, Tensor g, Tensor n_iter, Tensor err)");
  // The same solve by stabilized scaling iterations with absorption (same iterates, n_iter, stopping rule and err;
  // CPU only): scalings are absorbed into the potentials once one leaves [e^-absorb, e^absorb]. Also returns the
  // absorptions per problem [B] (int32) and whether a problem fell back to log-domain iterations [B] (bool).
  m.def(
      "sinkhorn_fwd_scaling(Tensor cost, Tensor a, Tensor b, float eps, int max_iter, float? tol, float? tau_a, "
      "float? tau_b, float absorb=20.0, Tensor? f0=None, Tensor? g0=None, float[]? eps_stages=None) -> (Tensor f, "
      "Tensor g, Tensor n_iter, Tensor err, Tensor absorptions, Tensor fell_back)");
  // eps_stages (on the CPU-only forwards: this one, sinkhorn_embeddings_fwd_scaling, the packed and the symmetric
  // ones): an eps schedule run inside the call before the solve at eps, one iteration at each value from the state the one before left (the
  // cost tile rescaled in place, not rebuilt); n_iter counts them. The same iterates as one call per stage
  // (max_iter 1, no tol) each warm-started from the last, to rounding.
  // The plan P_ij = a_i b_j exp((f_i + g_j - C_ij)/eps), recomputed from the potentials. [B,N,M]
  m.def("sinkhorn_plan(Tensor cost, Tensor a, Tensor b, Tensor f, Tensor g, float eps) -> Tensor");
  // (<P, C>, sum P) per problem, [B] each, without storing P; forbidden (+inf cost) pairs contribute 0.
  m.def(
      "sinkhorn_plan_sums(Tensor cost, Tensor a, Tensor b, Tensor f, Tensor g, float eps) -> (Tensor transport_cost, "
      "Tensor mass)");
  // Sinkhorn between token embeddings with the cost computed per problem from x [B,N,d], y [B,M,d] (never
  // stored as [B,N,M]). cost: 0 cosine, 1 sqeuclidean, 2 dot. Returns f, g, n_iter, err, <P,C>, sum P.
  m.def(
      "sinkhorn_embeddings_fwd(Tensor x, Tensor y, Tensor a, Tensor b, int cost, float eps, int max_iter, float? tol, "
      "float? tau_a, float? tau_b, Tensor? f0=None, Tensor? g0=None) -> (Tensor f, Tensor g, Tensor n_iter, "
      "Tensor err, Tensor transport_cost, Tensor mass)");
  // sinkhorn_embeddings_fwd by scaling iterations (as sinkhorn_fwd_scaling; CPU only), + absorptions, fell_back.
  m.def(
      "sinkhorn_embeddings_fwd_scaling(Tensor x, Tensor y, Tensor a, Tensor b, int cost, float eps, int max_iter, "
      "float? tol, float? tau_a, float? tau_b, float absorb=20.0, Tensor? f0=None, Tensor? g0=None, "
      "float[]? eps_stages=None) -> (Tensor f, Tensor g, Tensor n_iter, Tensor err, Tensor transport_cost, "
      "Tensor mass, Tensor absorptions, Tensor fell_back)");
  // The symmetric problems (x, x) with weights a [B,N] (the self-terms of the Sinkhorn divergence; CPU only): averaged
  // updates h <- (T(h) + T(T(h))) / 2 from h0 (or 0), T the c-transform, up to max_iter steps (tol as
  // sinkhorn_fwd, on the state (h, h)). Returns h [B,N], the steps n_iter [B] and the final error err [B].
  // With cu_seqlens [B+1]: packed x [T,d], a [T], h0 and h [T], as sinkhorn_embeddings_varlen_fwd.
  m.def(
      "sinkhorn_embeddings_symmetric_fwd(Tensor x, Tensor a, int cost, float eps, int max_iter, float? tol, "
      "Tensor? h0=None, Tensor? cu_seqlens=None, float[]? eps_stages=None) -> (Tensor h, Tensor n_iter, Tensor err)");
  // Envelope backward: dx, dy of sum_k scale_k <P*_k, C_k(x, y)> with P* recomputed from the potentials. A side
  // whose gradient is not needed (need_dx/need_dy false, e.g. the frozen teacher) is returned as zeros, not computed.
  m.def(
      "sinkhorn_embeddings_bwd(Tensor x, Tensor y, Tensor a, Tensor b, Tensor f, Tensor g, Tensor scale, int cost, "
      "float eps, bool need_dx=True, bool need_dy=True) -> (Tensor dx, Tensor dy)");
  // sinkhorn_embeddings on packed (varlen, as flash-attention's) inputs, read in place: x [Tx,d] and y [Ty,d] hold the
  // B problems' rows back to back, problem k's at cu_seqlens_x[k] .. cu_seqlens_x[k+1]-1 (int32/int64 [B+1], from 0
  // to Tx, nondecreasing) and likewise for y; weights a [Tx], b [Ty], warm start f0 [Tx], g0 [Ty]. The same solve as
  // the padded op on the padded equivalent; f [Tx], g [Ty]. absorb given: scaling iterations (as
  // sinkhorn_embeddings_fwd_scaling), else log-domain ones (absorptions 0, fell_back false). CPU only.
  m.def(
      "sinkhorn_embeddings_varlen_fwd(Tensor x, Tensor y, Tensor cu_seqlens_x, Tensor cu_seqlens_y, Tensor a, "
      "Tensor b, int cost, float eps, int max_iter, float? tol, float? tau_a, float? tau_b, float? absorb=None, "
      "Tensor? f0=None, Tensor? g0=None, float[]? eps_stages=None) -> (Tensor f, Tensor g, Tensor n_iter, Tensor err, "
      "Tensor transport_cost, Tensor mass, Tensor absorptions, Tensor fell_back)");
  // sinkhorn_embeddings_bwd on packed inputs (f [Tx], g [Ty], scale [B]): dx [Tx,d], dy [Ty,d]. CPU only.
  m.def(
      "sinkhorn_embeddings_varlen_bwd(Tensor x, Tensor y, Tensor cu_seqlens_x, Tensor cu_seqlens_y, Tensor a, "
      "Tensor b, Tensor f, Tensor g, Tensor scale, int cost, float eps, bool need_dx=True, bool need_dy=True) -> "
      "(Tensor dx, Tensor dy)");
  // The instruction set the CPU kernels were chosen for at run time ("base", "avx2", "avx512").
  m.def("cpu_isa() -> str", &fastot::cpu::cpu_isa);
  // Code-switch token substitution on a tokenized batch; see fastot/reference/codeswitch.py for the contract.
  m.def(
      "codeswitch(Tensor input_ids, Tensor attention_mask, Tensor token_type_ids, Tensor word_start, "
      "Tensor special, Tensor key_hash, Tensor key_offsets, Tensor key_ids, Tensor entry_offsets, "
      "Tensor trans_offsets, Tensor trans_ids, Tensor lang_ids, int max_key_len, int max_key_words, int prefix_switch, int prefix_lang, "
      "int prefix_trans, int threshold, int max_length, int pad_id, int row_offset=0) -> (Tensor input_ids, Tensor attention_mask, "
      "Tensor token_type_ids, Tensor source_index, Tensor n_switched, Tensor n_words)");
}
