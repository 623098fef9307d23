// The code-switch algorithm, written once for the CPU kernel and the CUDA kernel: find_unit per word start
// (parallel over positions), then walk_row per row. Raw pointers only; no torch headers.
#pragma once
#include <cstdint>

#include "common/hash.h"

namespace fastot {

struct LexiconView {
  const int64_t* key_hash;       // [K] sorted hashes of the source words' subword-id sequences
  const int64_t* key_offsets;    // [K+1] CSR offsets into key_ids
  const int64_t* key_ids;        // the source words' subword ids
  const int64_t* entry_offsets;  // [K*n_lang+1] translation index range per (key, language)
  const int64_t* trans_offsets;  // [T+1] CSR offsets into trans_ids
  const int64_t* trans_ids;      // the translations' subword ids
  int64_t n_keys;
  int64_t n_lang;                // languages stored in the lexicon
  int64_t max_key_len;
  int64_t max_key_words;         // most words a key spans (adjacent words, "longest match first")
};

struct SwitchParams {
  const int64_t* lang_ids;  // [n_active] indices into the lexicon's languages
  int64_t n_active;
  uint64_t prefix_switch, prefix_lang, prefix_trans;
  int64_t threshold;        // switch when (rand >> 8) < threshold, threshold = round(p * 2^24)
  int64_t row_offset;       // row r draws as row r + row_offset (its index in the global batch, under torchrun)
};

// Index of the lexicon entry for ids[0:len), or -1.
FASTOT_HD int64_t lexicon_find(const LexiconView& lex, const int64_t* ids, int64_t len) {
  if (len > lex.max_key_len || lex.n_keys == 0) return -1;
  int64_t h1 = 0, h2 = 0;
  for (int64_t k = 0; k < len; ++k) key_hash_step(h1, h2, ids[k]);
  const int64_t key = key_hash_final(h1, h2);
  int64_t lo = 0, hi = lex.n_keys;  // lower_bound
  while (lo < hi) {
    int64_t mid = (lo + hi) >> 1;
    if (lex.key_hash[mid] < key) lo = mid + 1; else hi = mid;
  }
  if (lo >= lex.n_keys || lex.key_hash[lo] != key) return -1;
  const int64_t s = lex.key_offsets[lo], e = lex.key_offsets[lo + 1];
  if (e - s != len) return -1;
  for (int64_t k = 0; k < len; ++k)
    if (lex.key_ids[s + k] != ids[k]) return -1;
  return lo;
}

// Translation index chosen for the unit whose first word is word `word` of row `row` and whose lexicon entry is
// `entry`, or -1 (kept); `active` receives the drawn active-language index.
FASTOT_HD int64_t choose_translation(const LexiconView& lex, const SwitchParams& sp, int64_t entry, int64_t row,
                                     int64_t word, int64_t& active) {
  active = 0;
  if (entry < 0) return -1;
  row += sp.row_offset;
  if (static_cast<int64_t>(word_rand(sp.prefix_switch, row, word) >> 8) >= sp.threshold) return -1;
  if (sp.n_active > 1) active = rand_below(word_rand(sp.prefix_lang, row, word), sp.n_active);
  const int64_t lang = sp.lang_ids[active];
  const int64_t s = lex.entry_offsets[entry * lex.n_lang + lang];
  const int64_t n = lex.entry_offsets[entry * lex.n_lang + lang + 1] - s;
  if (n <= 0) return -1;
  return s + rand_below(word_rand(sp.prefix_trans, row, word), n);
}

// Final per-segment lengths after `longest_first` truncation to `budget` content tokens, as Hugging Face's
// fast (Rust) tokenizers do it: if the shorter segment fits in half the budget only the longer one is cut;
// otherwise the shorter keeps budget/2 and the longer the rest (the second segment on a tie).
FASTOT_HD void longest_first(int64_t l0, int64_t l1, int64_t budget, int64_t& k0, int64_t& k1) {
  if (budget < 0) budget = 0;
  k0 = l0; k1 = l1;
  if (l0 + l1 <= budget) return;
  const bool swap = l0 > l1;
  int64_t n1 = swap ? l1 : l0, n2;  // n1: the shorter segment
  n2 = n1 > budget ? n1 : (n1 > budget - n1 ? n1 : budget - n1);
  if (n1 + n2 > budget) {
    n1 = budget / 2;
    n2 = n1 + budget % 2;
  }
  k0 = swap ? n2 : n1;
  k1 = swap ? n1 : n2;
  k0 = k0 < l0 ? k0 : l0;
  k1 = k1 < l1 ? k1 : l1;
}

// End (exclusive) of the word that starts at position l: the following attended, non-special,
// non-word-start tokens of the same segment.
FASTOT_HD int64_t word_end(const int64_t* ids, const int64_t* mask, const int64_t* tt, const bool* word_start,
                           const bool* special, int64_t L, int64_t l) {
  int64_t e = l + 1;
  while (e < L && mask[e] && !special[ids[e]] && !word_start[ids[e]] && tt[e] == tt[l]) ++e;
  return e;
}

// Whether position l starts a word: an attended, non-special token that is a word start, or follows no
// content token of its segment.
FASTOT_HD bool is_word_start(const int64_t* ids, const int64_t* mask, const int64_t* tt, const bool* word_start,
                             const bool* special, int64_t l) {
  if (!mask[l] || special[ids[l]]) return false;
  return l == 0 || word_start[ids[l]] || !mask[l - 1] || special[ids[l - 1]] || tt[l - 1] != tt[l];
}

// The unit that would start at a word start: the longest run of 1..max_key_words adjacent words of its
// segment whose ids are a lexicon key (entry >= 0), else the one word (entry -1).
struct Unit {
  int64_t entry;
  int32_t end;    // exclusive end position
  int32_t words;  // words it spans
};

FASTOT_HD Unit find_unit(const LexiconView& lex, const int64_t* ids, const int64_t* mask, const int64_t* tt,
                         const bool* word_start, const bool* special, int64_t L, int64_t l) {
  int64_t e = word_end(ids, mask, tt, word_start, special, L, l);
  Unit u{lexicon_find(lex, ids + l, e - l), static_cast<int32_t>(e), 1};
  for (int32_t n = 2; n <= lex.max_key_words; ++n) {
    if (e >= L || !mask[e] || special[ids[e]] || tt[e] != tt[l]) break;
    e = word_end(ids, mask, tt, word_start, special, L, e);
    if (e - l > lex.max_key_len) break;
    const int64_t found = lexicon_find(lex, ids + l, e - l);
    if (found >= 0) u = Unit{found, static_cast<int32_t>(e), n};
  }
  return u;
}

// Walks one row and calls visit(src_pos, token_id, segment, is_special) for every output token in order.
// units[l] must hold find_unit(l) for every word start l of the row (the lookups, the costly part, are
// done beforehand, in parallel over positions); the walk only chains units greedily from the left.
// Two passes use it: one to count per-segment lengths, one to write. n_switched_lang ([n_active], may be
// null) receives the switched words per active language.
template <typename Visit>
FASTOT_HD void walk_row(const LexiconView& lex, const SwitchParams& sp, const int64_t* ids, const int64_t* mask,
                        const int64_t* tt, const bool* special, const Unit* units, int64_t L, int64_t row,
                        int64_t* n_switched_lang, int64_t& n_words, Visit visit) {
  if (n_switched_lang)
    for (int64_t a = 0; a < sp.n_active; ++a) n_switched_lang[a] = 0;
  n_words = 0;
  int64_t l = 0;
  while (l < L) {
    if (!mask[l]) { ++l; continue; }
    const int64_t id = ids[l];
    if (special[id]) { visit(l, id, tt[l], true); ++l; continue; }
    const Unit u = units[l];  // l starts a word here: the row's first content token or the end of a unit
    int64_t active;
    const int64_t t = choose_translation(lex, sp, u.entry, row, n_words, active);
    if (t >= 0) {
      if (n_switched_lang) n_switched_lang[active] += u.words;
      for (int64_t q = lex.trans_offsets[t]; q < lex.trans_offsets[t + 1]; ++q) visit(l, lex.trans_ids[q], tt[l], false);
    } else {
      for (int64_t q = l; q < u.end; ++q) visit(q, ids[q], tt[q], false);
    }
    n_words += u.words;
    l = u.end;
  }
}

}  // namespace fastot
