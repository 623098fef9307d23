// CUDA code-switch kernels. The code is common/codeswitch_row.h, shared with the CPU kernel (so the CPU tests
// check the same functions): the lexicon lookups, the costly part, run one thread per (row, position); the
// greedy chaining of units, truncation and writing then run one thread per row over the precomputed units,
// which is a handful of cached loads per token.
#include "cuda/codeswitch_kernel.h"

namespace fastot {
namespace {

// Threads per block of the per-position kernel: 256 (8 warps) is the usual choice for an independent,
// load-latency-bound kernel. The per-row kernels use 64-thread blocks so that B = 1024 rows spread over 16
// blocks rather than 8 (a row is one thread). Neither is tuned on a GPU yet: none was lent.
constexpr int kUnitThreads = 256;
constexpr int kRowThreads = 64;

__global__ void codeswitch_units_kernel(CodeswitchRows rows, LexiconView lex, Unit* __restrict__ units) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;  // flat (row, position)
  if (i >= rows.B * rows.L) return;
  const int64_t l = i % rows.L, off = i - l;
  if (is_word_start(rows.ids + off, rows.mask + off, rows.tt + off, rows.word_start, rows.special, l))
    units[off + l] = find_unit(lex, rows.ids + off, rows.mask + off, rows.tt + off, rows.word_start, rows.special,
                               rows.L, l);
}

__global__ void codeswitch_count_kernel(CodeswitchRows rows, LexiconView lex, SwitchParams sp,
                                        const Unit* __restrict__ units, int64_t max_length,
                                        int64_t* __restrict__ kept) {  // [B,3] out
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows.B) return;
  int64_t n_sp = 0, l0 = 0, l1 = 0, nw;
  const int64_t off = r * rows.L;
  walk_row(lex, sp, rows.ids + off, rows.mask + off, rows.tt + off, rows.special, units + off, rows.L, r,
           static_cast<int64_t*>(nullptr), nw, [&](int64_t, int64_t, int64_t seg, bool is_sp) {
             if (is_sp) ++n_sp; else if (seg == 0) ++l0; else ++l1;
           });
  int64_t k0 = l0, k1 = l1;
  if (max_length >= 0) longest_first(l0, l1, max_length - n_sp, k0, k1);
  kept[r * 3 + 0] = k0;
  kept[r * 3 + 1] = k1;
  kept[r * 3 + 2] = n_sp + k0 + k1;
}

__global__ void codeswitch_write_kernel(CodeswitchRows rows, LexiconView lex, SwitchParams sp,
                                        const Unit* __restrict__ units,
                                        const int64_t* __restrict__ kept,  // [B,3] from the count pass
                                        int64_t width,                     // output row width
                                        int64_t* __restrict__ out_ids, int64_t* __restrict__ out_mask,
                                        int64_t* __restrict__ out_tt, int64_t* __restrict__ out_src,
                                        int64_t* __restrict__ n_switched,  // [B, n_active]
                                        int64_t* __restrict__ n_words) {
  const int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (r >= rows.B) return;
  const int64_t off = r * rows.L, k0 = kept[r * 3 + 0], k1 = kept[r * 3 + 1];
  int64_t pos = 0, c0 = 0, c1 = 0;
  walk_row(lex, sp, rows.ids + off, rows.mask + off, rows.tt + off, rows.special, units + off, rows.L, r,
           n_switched + r * sp.n_active, n_words[r], [&](int64_t src, int64_t tok, int64_t seg, bool is_sp) {
             const bool keep = is_sp || (seg == 0 ? c0++ < k0 : c1++ < k1);
             if (!keep || pos >= width) return;
             const int64_t o = r * width + pos;
             out_ids[o] = tok;
             out_mask[o] = 1;
             out_tt[o] = seg;
             out_src[o] = src;
             ++pos;
           });
}

unsigned row_blocks(int64_t B) { return static_cast<unsigned>((B + kRowThreads - 1) / kRowThreads); }

}  // namespace

cudaError_t launch_codeswitch_units(const CodeswitchRows& rows, const LexiconView& lex, Unit* units,
                                    cudaStream_t stream) {
  if (rows.B == 0 || rows.L == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((rows.B * rows.L + kUnitThreads - 1) / kUnitThreads);
  codeswitch_units_kernel<<<blocks, kUnitThreads, 0, stream>>>(rows, lex, units);
  return cudaGetLastError();
}

cudaError_t launch_codeswitch_count(const CodeswitchRows& rows, const LexiconView& lex, const SwitchParams& sp,
                                    const Unit* units, int64_t max_length, int64_t* kept, cudaStream_t stream) {
  if (rows.B == 0) return cudaSuccess;
  codeswitch_count_kernel<<<row_blocks(rows.B), kRowThreads, 0, stream>>>(rows, lex, sp, units, max_length, kept);
  return cudaGetLastError();
}

cudaError_t launch_codeswitch_write(const CodeswitchRows& rows, const LexiconView& lex, const SwitchParams& sp,
                                    const Unit* units, const int64_t* kept, int64_t width, int64_t* out_ids,
                                    int64_t* out_mask, int64_t* out_tt, int64_t* out_src, int64_t* n_switched,
                                    int64_t* n_words, cudaStream_t stream) {
  if (rows.B == 0) return cudaSuccess;
  codeswitch_write_kernel<<<row_blocks(rows.B), kRowThreads, 0, stream>>>(rows, lex, sp, units, kept, width, out_ids,
                                                                         out_mask, out_tt, out_src, n_switched,
                                                                         n_words);
  return cudaGetLastError();
}

}  // namespace fastot
