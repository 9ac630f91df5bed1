// Top-k selection over the R target regions of one (query region, target frame) pair.
//
// Semantics shared by every backend: the k largest values are selected; among equal values the
// lower region index wins. The selection is returned as a bit mask (bit j set <=> region j is
// selected) so that the backward pass needs only R bits per entry, never the patch similarities.
#pragma once

#include <cstdint>
#include <type_traits>

#include "common/macros.h"

namespace hapvr {

// Largest R that the compiled kernels accept (one bit per target region in a 64-bit mask).
constexpr int kMaxRegions = 64;

// Selects the top-k of vals[0], vals[stride], ..., vals[(n-1)*stride].
// Writes the sum of the selected values to *sum and returns their bit mask. 1 <= k <= n <= 64.
template <typename acc_t, typename scalar_t>
HAPVR_HD uint64_t topk_select(const scalar_t* vals, int64_t stride, int n, int k, acc_t* sum) {
  if (k == 1) {
    // Plain Chamfer (the paper's default K = 1): a running maximum, strict '>' keeps the first.
    acc_t best = static_cast<acc_t>(vals[0]);
    int best_j = 0;
    for (int j = 1; j < n; ++j) {
      const acc_t v = static_cast<acc_t>(vals[j * stride]);
      if (v > best) {
        best = v;
        best_j = j;
      }
    }
    *sum = best;
    return uint64_t{1} << best_j;
  }
  if (k == n) {
    // Plain average: every region is selected.
    acc_t s = 0;
    for (int j = 0; j < n; ++j) s += static_cast<acc_t>(vals[j * stride]);
    *sum = s;
    return n == 64 ? ~uint64_t{0} : ((uint64_t{1} << n) - 1);
  }
  // General k: keep the k best in descending order by insertion. A new value moves ahead of an
  // earlier one only when strictly larger, which gives the lower index precedence on ties.
  acc_t top_v[kMaxRegions];
  int top_j[kMaxRegions];
  int filled = 0;
  for (int j = 0; j < n; ++j) {
    const acc_t v = static_cast<acc_t>(vals[j * stride]);
    if (filled == k && !(v > top_v[k - 1])) continue;
    int pos = filled < k ? filled++ : k - 1;
    while (pos > 0 && v > top_v[pos - 1]) {
      top_v[pos] = top_v[pos - 1];
      top_j[pos] = top_j[pos - 1];
      --pos;
    }
    top_v[pos] = v;
    top_j[pos] = j;
  }
  acc_t s = 0;
  uint64_t mask = 0;
  for (int p = 0; p < k; ++p) {
    s += top_v[p];
    mask |= uint64_t{1} << top_j[p];
  }
  *sum = s;
  return mask;
}

HAPVR_HD int lowest_bit(uint64_t bits) {
#if defined(__CUDA_ARCH__)
  return __ffsll(static_cast<long long>(bits)) - 1;
#else
  return __builtin_ctzll(bits);
#endif
}

// The saved selection comes in two encodings, told apart by the storage type:
//  - int8 (k == 1, the paper's default): the index of the selected region, 1 byte per entry;
//  - int16/int32/int64 (k > 1): the bit mask itself, stored in a signed type of >= R bits.
template <typename mask_t>
HAPVR_HD mask_t store_selection(uint64_t bits) {
  if constexpr (sizeof(mask_t) == 1) {
    return static_cast<mask_t>(lowest_bit(bits));
  } else {
    return static_cast<mask_t>(bits);
  }
}

template <typename mask_t>
HAPVR_HD uint64_t load_mask(mask_t m) {
  if constexpr (sizeof(mask_t) == 1) {
    return uint64_t{1} << static_cast<int>(m);
  } else {
    return static_cast<uint64_t>(static_cast<std::make_unsigned_t<mask_t>>(m));
  }
}

HAPVR_HD bool mask_has(uint64_t mask, int j) { return (mask >> j) & uint64_t{1}; }

// Frame validity under per-video lengths: frames at or beyond a video's length are padding.
HAPVR_HD bool frame_valid(int64_t frame, int64_t length) { return frame < length; }

}  // namespace hapvr
