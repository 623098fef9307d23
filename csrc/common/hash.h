// Bit-exact integer hashes shared by every backend of the code-switch op.
// The same functions exist in Python (fastot/reference/codeswitch.py); all arithmetic stays
// below 2^63 so that the torch reference can do it in int64 without overflow.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define FASTOT_HD __host__ __device__ __forceinline__
#else
#define FASTOT_HD inline
#endif

namespace fastot {

constexpr uint64_t kMask32 = 0xFFFFFFFFull;
// Polynomial hashes of a subword-id sequence, two moduli (Mersenne prime 2^31-1 and 2^31-19).
constexpr int64_t kKeyMod1 = 2147483647LL;
constexpr int64_t kKeyMod2 = 2147483629LL;
constexpr int64_t kKeyBase1 = 1000003LL;
constexpr int64_t kKeyBase2 = 999983LL;

// 32-bit integer mixer; multipliers < 2^31 keep every product below 2^63.
FASTOT_HD uint64_t mix32(uint64_t x) {
  x &= kMask32;
  x ^= x >> 16;
  x = (x * 0x7feb352dULL) & kMask32;
  x ^= x >> 15;
  x = (x * 0x2c1b3c6dULL) & kMask32;
  x ^= x >> 12;
  x = (x * 0x297a2d39ULL) & kMask32;
  x ^= x >> 15;
  return x;
}

// Counter-based random 32-bit value for (prefix(seed, step, salt), row, word).
FASTOT_HD uint64_t word_rand(uint64_t prefix, int64_t row, int64_t word) {
  return mix32(mix32(prefix ^ (static_cast<uint64_t>(row) & kMask32)) ^ (static_cast<uint64_t>(word) & kMask32));
}

// Uniform integer in [0, n) from the top 24 bits of a 32-bit random value (exact, no floats).
FASTOT_HD int64_t rand_below(uint64_t r, int64_t n) {
  return static_cast<int64_t>(((r >> 8) * static_cast<uint64_t>(n)) >> 24);
}

FASTOT_HD void key_hash_step(int64_t& h1, int64_t& h2, int64_t id) {
  h1 = (h1 * kKeyBase1 + id + 1) % kKeyMod1;
  h2 = (h2 * kKeyBase2 + id + 1) % kKeyMod2;
}

FASTOT_HD int64_t key_hash_final(int64_t h1, int64_t h2) { return (h1 << 31) | h2; }

}  // namespace fastot
