// CPU code-switch: rows in parallel (at::parallel_for over the batch). Per row, the shared code of
// common/codeswitch_row.h that the CUDA kernels run too: find_unit at every word start, then walk_row into the
// row's token list; a second pass cuts and writes the rows once the output width (the longest row, or
// max_length) is known.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include "checks.h"

#include <algorithm>
#include <tuple>
#include <vector>

#include "common/codeswitch_row.h"

namespace fastot {
namespace {

using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

Outputs codeswitch_cpu(const at::Tensor& input_ids, const at::Tensor& attention_mask, const at::Tensor& token_type_ids,
                       const at::Tensor& word_start, const at::Tensor& special, const at::Tensor& key_hash,
                       const at::Tensor& key_offsets, const at::Tensor& key_ids, const at::Tensor& entry_offsets,
                       const at::Tensor& trans_offsets, const at::Tensor& trans_ids, const at::Tensor& lang_ids, int64_t max_key_len, int64_t max_key_words,
                       int64_t prefix_switch, int64_t prefix_lang, int64_t prefix_trans, int64_t threshold,
                       int64_t max_length, int64_t pad_id, int64_t row_offset) {
  check_codeswitch_inputs(input_ids, attention_mask, token_type_ids, word_start, special, key_hash, key_offsets, key_ids,
                          entry_offsets, trans_offsets, trans_ids, lang_ids);
  check_codeswitch_values(input_ids, attention_mask, word_start, key_hash, entry_offsets, lang_ids, max_key_words);
  const at::Tensor ids = input_ids.to(at::kLong).contiguous();
  const at::Tensor mask = attention_mask.to(at::kLong).contiguous();
  const at::Tensor tt = token_type_ids.to(at::kLong).contiguous();
  const at::Tensor ws = word_start.to(at::kBool).contiguous(), spc = special.to(at::kBool).contiguous();
  const at::Tensor kh = key_hash.contiguous(), ko = key_offsets.contiguous(), ki = key_ids.contiguous();
  const at::Tensor eo = entry_offsets.contiguous(), to = trans_offsets.contiguous(), ti = trans_ids.contiguous();
  const at::Tensor li = lang_ids.to(at::kLong).contiguous();
  const int64_t B = ids.size(0), L = ids.size(1);
  const int64_t n_keys = kh.numel();
  LexiconView lex{kh.data_ptr<int64_t>(), ko.data_ptr<int64_t>(), ki.data_ptr<int64_t>(), eo.data_ptr<int64_t>(),
                  to.data_ptr<int64_t>(), ti.data_ptr<int64_t>(), n_keys,
                  n_keys > 0 ? (eo.numel() - 1) / n_keys : 1, max_key_len, max_key_words};
  SwitchParams sp{li.data_ptr<int64_t>(), li.numel(), static_cast<uint64_t>(prefix_switch),
                  static_cast<uint64_t>(prefix_lang), static_cast<uint64_t>(prefix_trans), threshold, row_offset};

  // Pass 1: each row walked once into its own token list; kept segment lengths after truncation.
  struct Tok {
    int64_t id, src, seg;
    bool special;
  };
  std::vector<std::vector<Tok>> rows(B);
  std::vector<int64_t> kept(B * 3);  // k0, k1, row length
  at::Tensor n_switched = at::zeros({B, sp.n_active}, ids.options()), n_words = at::zeros({B}, ids.options());
  auto *nsp = n_switched.data_ptr<int64_t>(), *nwp = n_words.data_ptr<int64_t>();
  const int64_t *idp = ids.data_ptr<int64_t>(), *mp = mask.data_ptr<int64_t>(), *tp = tt.data_ptr<int64_t>();
  const bool *wsp = ws.data_ptr<bool>(), *spp = spc.data_ptr<bool>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<Unit> units(L);
    for (int64_t r = begin; r < end; ++r) {
      std::vector<Tok>& toks = rows[r];
      toks.reserve(L);
      const int64_t *ri = idp + r * L, *rm = mp + r * L, *rt = tp + r * L;
      for (int64_t l = 0; l < L; ++l)
        if (is_word_start(ri, rm, rt, wsp, spp, l)) units[l] = find_unit(lex, ri, rm, rt, wsp, spp, L, l);
      int64_t n_sp = 0, l0 = 0, l1 = 0;
      walk_row(lex, sp, ri, rm, rt, spp, units.data(), L, r, nsp + r * sp.n_active, nwp[r],
               [&](int64_t src, int64_t tok, int64_t seg, bool is_sp) {
                 toks.push_back({tok, src, seg, is_sp});
                 if (is_sp) ++n_sp; else if (seg == 0) ++l0; else ++l1;
               });
      int64_t k0 = l0, k1 = l1;
      if (max_length >= 0) longest_first(l0, l1, max_length - n_sp, k0, k1);
      kept[r * 3 + 0] = k0;
      kept[r * 3 + 1] = k1;
      kept[r * 3 + 2] = n_sp + k0 + k1;
    }
  });
  int64_t width = max_length;
  if (width < 0) {
    width = 0;
    for (int64_t r = 0; r < B; ++r) width = std::max(width, kept[r * 3 + 2]);
  }
  at::Tensor out_ids = at::empty({B, width}, ids.options()), out_mask = at::empty({B, width}, ids.options());
  at::Tensor out_tt = at::empty({B, width}, ids.options()), out_src = at::empty({B, width}, ids.options());
  auto *oi = out_ids.data_ptr<int64_t>(), *om = out_mask.data_ptr<int64_t>(), *ot = out_tt.data_ptr<int64_t>(),
       *os = out_src.data_ptr<int64_t>();
  // Pass 2: write the kept tokens (segments cut from their ends), then the padding.
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      int64_t pos = 0, c0 = 0, c1 = 0;
      const int64_t k0 = kept[r * 3 + 0], k1 = kept[r * 3 + 1], o = r * width;
      for (const Tok& t : rows[r]) {
        const bool keep = t.special || (t.seg == 0 ? c0++ < k0 : c1++ < k1);
        if (!keep || pos >= width) continue;
        oi[o + pos] = t.id;
        om[o + pos] = 1;
        ot[o + pos] = t.seg;
        os[o + pos] = t.src;
        ++pos;
      }
      std::fill(oi + o + pos, oi + o + width, pad_id);
      std::fill(om + o + pos, om + o + width, 0);
      std::fill(ot + o + pos, ot + o + width, 0);
      std::fill(os + o + pos, os + o + width, -1);
      std::vector<Tok>().swap(rows[r]);
    }
  });
  return {out_ids, out_mask, out_tt, out_src, n_switched, n_words};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastot, CPU, m) { m.impl("codeswitch", &codeswitch_cpu); }

}  // namespace fastot
