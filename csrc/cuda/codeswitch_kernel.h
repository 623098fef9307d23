// Launchers for the CUDA code-switch kernels: raw pointers + stream, no torch headers.
#pragma once
#include <cuda_runtime.h>
#include <cstdint>

#include "common/codeswitch_row.h"

namespace fastot {

struct CodeswitchRows {
  const int64_t* ids;       // [B,L] input ids
  const int64_t* mask;      // [B,L] attention mask (0/1)
  const int64_t* tt;        // [B,L] token type ids
  const bool* word_start;   // [V] vocabulary word-start table
  const bool* special;      // [V] vocabulary special-token table
  int64_t B, L;
};

// Pass 0: units[r*L + l] = find_unit(...) at every word start (one thread per position).
cudaError_t launch_codeswitch_units(const CodeswitchRows& rows, const LexiconView& lex, Unit* units,
                                    cudaStream_t stream);
// Pass 1: kept [B,3] = (segment-0 tokens kept, segment-1 tokens kept, row length) after truncation
// to max_length (< 0: none).
cudaError_t launch_codeswitch_count(const CodeswitchRows& rows, const LexiconView& lex, const SwitchParams& sp,
                                    const Unit* units, int64_t max_length, int64_t* kept, cudaStream_t stream);
// Pass 2: writes the [B,width] outputs (pre-filled with padding), n_switched [B,n_active] and n_words [B].
cudaError_t launch_codeswitch_write(const CodeswitchRows& rows, const LexiconView& lex, const SwitchParams& sp,
                                    const Unit* units, const int64_t* kept, int64_t width, int64_t* out_ids, int64_t* out_mask,
                                    int64_t* out_tt, int64_t* out_src, int64_t* n_switched, int64_t* n_words,
                                    cudaStream_t stream);

}  // namespace fastot
