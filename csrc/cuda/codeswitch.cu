// Torch glue for the CUDA code-switch kernels: checks, device guard, stream, launch.
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "checks.h"

#include "cuda/codeswitch_kernel.h"

namespace fastot {
namespace {

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs codeswitch_cuda(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                        const at::Tensor& token_type_ids, const at::Tensor& word_start, const at::Tensor& special,
                        const at::Tensor& key_hash, const at::Tensor& key_offsets, const at::Tensor& key_ids,
                        const at::Tensor& entry_offsets, const at::Tensor& trans_offsets, const at::Tensor& trans_ids,
                        const at::Tensor& lang_ids, int64_t max_key_len, int64_t max_key_words, int64_t prefix_switch, int64_t prefix_lang, int64_t prefix_trans,
                        int64_t threshold, int64_t max_length, int64_t pad_id, int64_t row_offset) {
  check_codeswitch_inputs(input_ids, attention_mask, token_type_ids, word_start, special, key_hash, key_offsets, key_ids,
                          entry_offsets, trans_offsets, trans_ids, lang_ids);
  check_codeswitch_values(input_ids, attention_mask, word_start, key_hash, entry_offsets, lang_ids, max_key_words);
  const c10::cuda::CUDAGuard guard(input_ids.device());
  const at::Tensor ids = input_ids.to(at::kLong).contiguous(), mask = attention_mask.to(at::kLong).contiguous();
  const at::Tensor tt = token_type_ids.to(at::kLong).contiguous();
  const at::Tensor ws = word_start.to(at::kBool).contiguous(), spc = special.to(at::kBool).contiguous();
  const at::Tensor kh = key_hash.contiguous(), ko = key_offsets.contiguous(), ki = key_ids.contiguous();
  const at::Tensor eo = entry_offsets.contiguous(), to = trans_offsets.contiguous(), ti = trans_ids.contiguous();
  const at::Tensor li = lang_ids.to(at::kLong).contiguous();
  const int64_t B = ids.size(0), L = ids.size(1), n_keys = kh.numel();
  LexiconView lex{kh.data_ptr<int64_t>(), ko.data_ptr<int64_t>(), ki.data_ptr<int64_t>(), eo.data_ptr<int64_t>(),
                  to.data_ptr<int64_t>(), ti.data_ptr<int64_t>(), n_keys,
                  n_keys > 0 ? (eo.numel() - 1) / n_keys : 1, max_key_len, max_key_words};
  SwitchParams sp{li.data_ptr<int64_t>(), li.numel(), static_cast<uint64_t>(prefix_switch),
                  static_cast<uint64_t>(prefix_lang), static_cast<uint64_t>(prefix_trans), threshold, row_offset};
  CodeswitchRows rows{ids.data_ptr<int64_t>(), mask.data_ptr<int64_t>(), tt.data_ptr<int64_t>(), ws.data_ptr<bool>(),
                      spc.data_ptr<bool>(), B, L};
  auto stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor kept = at::zeros({B, 3}, ids.options());
  // Scratch for the units found at word starts: B*L of them (16 bytes each), never read elsewhere.
  at::Tensor unit_buf = at::empty({B * L * static_cast<int64_t>(sizeof(Unit))}, ids.options().dtype(at::kByte));
  Unit* units = reinterpret_cast<Unit*>(unit_buf.data_ptr<uint8_t>());
  cudaError_t e = launch_codeswitch_units(rows, lex, units, stream);
  TORCH_CHECK(e == cudaSuccess, "codeswitch: CUDA launch failed: ", cudaGetErrorString(e));
  e = launch_codeswitch_count(rows, lex, sp, units, max_length, kept.data_ptr<int64_t>(), stream);
  TORCH_CHECK(e == cudaSuccess, "codeswitch: CUDA launch failed: ", cudaGetErrorString(e));
  // With max_length the width is static and nothing synchronises; without it, sizing the output needs one sync.
  const int64_t width = max_length >= 0 ? max_length : (B > 0 ? kept.select(1, 2).max().item<int64_t>() : 0);
  at::Tensor out_ids = at::full({B, width}, pad_id, ids.options());
  at::Tensor out_mask = at::zeros({B, width}, ids.options()), out_tt = at::zeros({B, width}, ids.options());
  at::Tensor out_src = at::full({B, width}, -1, ids.options());
  at::Tensor n_switched = at::zeros({B, li.numel()}, ids.options()), n_words = at::zeros({B}, ids.options());
  e = launch_codeswitch_write(rows, lex, sp, units, kept.data_ptr<int64_t>(), width, out_ids.data_ptr<int64_t>(),
                              out_mask.data_ptr<int64_t>(), out_tt.data_ptr<int64_t>(), out_src.data_ptr<int64_t>(),
                              n_switched.data_ptr<int64_t>(), n_words.data_ptr<int64_t>(), stream);
  TORCH_CHECK(e == cudaSuccess, "codeswitch: CUDA launch failed: ", cudaGetErrorString(e));
  return {out_ids, out_mask, out_tt, out_src, n_switched, n_words};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastot, CUDA, m) { m.impl("codeswitch", &codeswitch_cuda); }

}  // namespace fastot
