// Argument checks shared by the CPU and CUDA torch glue (csrc/cpu/<op>.cpp, csrc/cuda/<op>.cu), so both devices
// reject bad input with the same messages. Torch headers: glue only, never kernel files.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/_assert_async.h>
#include <c10/util/Exception.h>

#include <string>

namespace fastot {

// cost [B,N,M], a [B,N], b [B,M] on one device.
inline void check_sinkhorn_inputs(const at::Tensor& cost, const at::Tensor& a, const at::Tensor& b) {
  TORCH_CHECK(cost.dim() == 3, "sinkhorn: cost must be [B, N, M], got ", cost.sizes());
  TORCH_CHECK(a.dim() == 2 && a.size(0) == cost.size(0) && a.size(1) == cost.size(1), "sinkhorn: a must be [B, N] = ",
              cost.size(0), "x", cost.size(1), ", got ", a.sizes());
  TORCH_CHECK(b.dim() == 2 && b.size(0) == cost.size(0) && b.size(1) == cost.size(2), "sinkhorn: b must be [B, M] = ",
              cost.size(0), "x", cost.size(2), ", got ", b.sizes());
  TORCH_CHECK(a.device() == cost.device() && b.device() == cost.device(), "sinkhorn: cost, a, b must be on one device");
}

// x [B,N,d], y [B,M,d], a [B,N], b [B,M] of sinkhorn_embeddings; kind 0 cosine, 1 sqeuclidean, 2 dot.
inline void check_embeddings_inputs(const at::Tensor& x, const at::Tensor& y, const at::Tensor& a, const at::Tensor& b,
                                    int64_t kind) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 3 && x.size(0) == y.size(0) && x.size(2) == y.size(2),
              "sinkhorn_embeddings: x and y must be [B, N, d] and [B, M, d], got ", x.sizes(), " and ", y.sizes());
  TORCH_CHECK(a.dim() == 2 && a.size(0) == x.size(0) && a.size(1) == x.size(1), "sinkhorn_embeddings: a must be [B, N]");
  TORCH_CHECK(b.dim() == 2 && b.size(0) == y.size(0) && b.size(1) == y.size(1), "sinkhorn_embeddings: b must be [B, M]");
  TORCH_CHECK(kind >= 0 && kind <= 2, "sinkhorn_embeddings: cost must be 0 (cosine), 1 (sqeuclidean) or 2 (dot)");
  TORCH_CHECK(y.device() == x.device() && a.device() == x.device() && b.device() == x.device(),
              "sinkhorn_embeddings: x, y, a, b must be on one device");
}

// The potentials (and, for the embeddings backward, the per-problem gradient scale) handed back to the plan and
// backward ops: f [B,N], g [B,M], scale [B] (when given) on `device`, eps > 0. The kernels index them per problem,
// so a wrong shape would read out of bounds; direct torch.ops calls get an error instead.
inline void check_potentials(const char* op, const at::Tensor& f, const at::Tensor& g, int64_t B, int64_t N, int64_t M,
                             const at::Device& device, double eps, const at::Tensor* scale = nullptr) {
  TORCH_CHECK(f.dim() == 2 && f.size(0) == B && f.size(1) == N, op, ": f must be [B, N] = ", B, "x", N, ", got ",
              f.sizes());
  TORCH_CHECK(g.dim() == 2 && g.size(0) == B && g.size(1) == M, op, ": g must be [B, M] = ", B, "x", M, ", got ",
              g.sizes());
  TORCH_CHECK(f.device() == device && g.device() == device, op, ": f and g must be on ", device);
  if (scale)
    TORCH_CHECK(scale->dim() == 1 && scale->size(0) == B && scale->device() == device, op, ": scale must be [B] = ", B,
                " on ", device, ", got ", scale->sizes());
  TORCH_CHECK(eps > 0, op, ": eps must be > 0, got ", eps);
}

// A warm start f0 [B, N] / g0 [B, M] (name says which) as the kernels read it: floating, on `device`, cast to the
// compute dtype `dt` and contiguous; an undefined tensor when none is given.
inline at::Tensor warm_start_data(const char* op, const c10::optional<at::Tensor>& w, const char* name, int64_t B,
                                  int64_t len, const at::Device& device, at::ScalarType dt) {
  if (!w.has_value() || !w->defined()) return at::Tensor();
  TORCH_CHECK(w->dim() == 2 && w->size(0) == B && w->size(1) == len, op, ": ", name, " must be [", B, ", ", len,
              "], got ", w->sizes());
  TORCH_CHECK(at::isFloatingType(w->scalar_type()), op, ": ", name, " must be floating point, got ", w->scalar_type());
  TORCH_CHECK(w->device() == device, op, ": ", name, " is on ", w->device(), " but the inputs are on ", device);
  return w->detach().to(dt).contiguous();
}

// fp64 stays fp64; every other floating dtype is solved in fp32.
inline at::ScalarType sinkhorn_compute_dtype(const at::Tensor& cost) {
  return cost.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// Shapes and dtypes of a code-switch call (the lexicon's contents are validated once by fastot.Lexicon).
inline void check_codeswitch_inputs(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                    const at::Tensor& token_type_ids, const at::Tensor& word_start,
                                    const at::Tensor& special, const at::Tensor& key_hash,
                                    const at::Tensor& key_offsets, const at::Tensor& key_ids,
                                    const at::Tensor& entry_offsets, const at::Tensor& trans_offsets,
                                    const at::Tensor& trans_ids, const at::Tensor& lang_ids) {
  TORCH_CHECK(input_ids.dim() == 2, "codeswitch: input_ids must be [B, L], got ", input_ids.sizes());
  TORCH_CHECK(attention_mask.sizes() == input_ids.sizes() && token_type_ids.sizes() == input_ids.sizes(),
              "codeswitch: attention_mask and token_type_ids must match input_ids ", input_ids.sizes());
  TORCH_CHECK(lang_ids.numel() >= 1, "codeswitch: lang_ids must name at least one language");
  TORCH_CHECK(word_start.dim() == 1 && special.numel() == word_start.numel(), "codeswitch: word_start/special must be [V]");
  TORCH_CHECK(key_offsets.numel() == key_hash.numel() + 1, "codeswitch: key_offsets must have K+1 entries");
  TORCH_CHECK(key_hash.numel() > 0 && (entry_offsets.numel() - 1) % key_hash.numel() == 0 && entry_offsets.numel() > 1,
              "codeswitch: entry_offsets must have K*n_lang+1 entries");
  TORCH_CHECK(trans_offsets.numel() >= 1, "codeswitch: trans_offsets must have T+1 entries");
  for (const at::Tensor* t : {&key_hash, &key_offsets, &key_ids, &entry_offsets, &trans_offsets, &trans_ids})
    TORCH_CHECK(t->scalar_type() == at::kLong, "codeswitch: lexicon tensors must be int64");
}

// A condition on tensor values ([] bool, true = fine): raised here on CPU; on an accelerator checked on the device
// (torch._assert_async: the stream fails with the message, no host synchronisation).
inline void check_on_device(const at::Tensor& ok, const std::string& msg) {
  if (ok.device().is_cpu()) {
    TORCH_CHECK(ok.item<bool>(), msg);
  } else {
    at::_assert_async(ok, msg);
  }
}

// The values the kernels index with: input ids in [0, V) (word_start/special), 0/1 attention masks, active languages
// in [0, n_lang) (entry_offsets). Direct torch.ops.fastot.codeswitch calls get an error instead of a read out of bounds.
inline void check_codeswitch_values(const at::Tensor& input_ids, const at::Tensor& attention_mask,
                                    const at::Tensor& word_start, const at::Tensor& key_hash,
                                    const at::Tensor& entry_offsets, const at::Tensor& lang_ids,
                                    int64_t max_key_words) {
  const int64_t V = word_start.numel(), n_lang = (entry_offsets.numel() - 1) / key_hash.numel();
  TORCH_CHECK(max_key_words >= 1 && max_key_words <= 8, "codeswitch: max_key_words must be in [1, 8], got ",
              max_key_words);
  TORCH_CHECK(lang_ids.device() == input_ids.device() && word_start.device() == input_ids.device() &&
                  key_hash.device() == input_ids.device(),
              "codeswitch: input_ids, the lexicon tensors and lang_ids must be on one device");
  check_on_device(lang_ids.ge(0).logical_and(lang_ids.lt(n_lang)).all(),
                  "codeswitch: lang_ids must be in [0, " + std::to_string(n_lang) + ") (the lexicon's languages)");
  if (input_ids.numel() == 0) return;
  check_on_device(input_ids.ge(0).logical_and(input_ids.lt(V)).all(),
                  "codeswitch: input_ids must be in [0, " + std::to_string(V) +
                      ") (the lexicon's vocabulary: was it built for another tokenizer?)");
  check_on_device(attention_mask.eq(0).logical_or(attention_mask.eq(1)).all(),
                  "codeswitch: attention_mask must be 0 or 1");
}

}  // namespace fastot
