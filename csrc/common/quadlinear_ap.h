// Per-element math of QuadLinear-AP (paper eqs. 9-11), shared by the CPU and CUDA kernels.
//
// For one query with positive scores P and negative scores N (both sorted ascending):
//   num_i = sum_{j in N} R-(s_j - s_i; delta)                       (eq. 10 terms)
//   den_i = 1 + rho * #{j in P : s_j > s_i}                          (eq. 9, R+ = Heaviside)
//   risk  = 1/|P| sum_{i in P} h(num_i / den_i),  h(x) = x / (1 + x)  (eq. 11)
// R- is piecewise polynomial in s_j, so each num_i is a difference of prefix sums of 1, s and s^2
// over the sorted negatives: O(log |N|) per positive after one sort. The gradient reaches a
// negative j through the positives i with s_i <= s_j + delta, again a window of the sorted
// positives, so prefix sums of the weights w_i and w_i * s_i give it in O(log |P|).
//
// Everything here works on already sorted, already accumulated arrays, so the same code runs on
// the host (the tested CPU kernel) and on the device (the CUDA kernel). Values are centred on a
// per-query constant c before squaring: the window sums are differences of large prefix sums,
// and centring keeps their magnitude, hence the cancellation, at the scale of the score range.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace hapvr {
namespace qlap {

// R-(d; delta) of eq. 10: 0 below -delta, quadratic on [-delta, 0), linear from 0 on.
template <typename T>
HAPVR_HD T r_minus(T d, T delta) {
  if (d >= T(0)) return T(2) * d / delta + T(1);
  if (d >= -delta) {
    const T u = d / delta + T(1);
    return u * u;
  }
  return T(0);
}

// dR-/dd; continuous (R- is C1), so the side taken at the kinks does not matter.
template <typename T>
HAPVR_HD T r_minus_grad(T d, T delta) {
  if (d >= T(0)) return T(2) / delta;
  if (d >= -delta) return T(2) * (d / delta + T(1)) / delta;
  return T(0);
}

// First index k in [0, n) with a[k] >= v, n if none (a ascending).
template <typename T>
HAPVR_HD int64_t lower_bound(const T* a, int64_t n, T v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (a[mid] < v) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// First index k in [0, n) with a[k] > v, n if none (a ascending).
template <typename T>
HAPVR_HD int64_t upper_bound(const T* a, int64_t n, T v) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (!(v < a[mid])) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// Centre of the sorted values a[0..n): the midrange (n >= 1).
template <typename T>
HAPVR_HD T centre(const T* a, int64_t n) {
  return T(0.5) * (a[0] + a[n - 1]);
}

// --- prefix sums as a two-level scan ------------------------------------------------------
// Both prefixes below are built the same way on the host and on the device: [0, n) is cut into
// scan_parts(n) contiguous chunks (scan_chunk); each chunk's totals are summed (*_partial), the
// totals are exclusive-scanned into per-chunk offsets, and each chunk writes its prefix entries
// starting from its offset (*_prefix_range). The CPU kernel runs the chunks one after another
// (build_*_prefix). For rows longer than 256 the CUDA kernel gives each chunk to one thread of a
// block (one block per query) and scans the chunk totals across the block, so a row of M = 4096
// entries takes 2 x 16 dependent steps per thread instead of 4096; shorter rows run
// build_*_prefix itself, one thread per row. Chunk boundaries are the same on both sides; only
// the order in which the chunk totals are added differs (rounding only).

// Fewest entries per chunk (below that a thread's work is smaller than the scan's), and most
// chunks per row (the CUDA kernel's largest block).
constexpr int64_t kScanMinChunk = 16;
constexpr int64_t kScanMaxParts = 256;

// Number of chunks for a row of n entries: ceil(n / kScanMinChunk), clamped to [1, max_parts].
HAPVR_HD int64_t scan_parts(int64_t n, int64_t max_parts) {
  int64_t parts = (n + kScanMinChunk - 1) / kScanMinChunk;
  if (parts > max_parts) parts = max_parts;
  return parts < 1 ? 1 : parts;
}

// Chunk `part` of `parts` over [0, n): [*begin, *end), sizes differing by at most one.
HAPVR_HD void scan_chunk(int64_t n, int64_t parts, int64_t part, int64_t* begin, int64_t* end) {
  const int64_t base = n / parts, rem = n % parts;
  *begin = part * base + (part < rem ? part : rem);
  *end = *begin + base + (part < rem ? 1 : 0);
}

// Summands of the moment prefix for value a: (a - c, (a - c)^2).
template <typename T>
HAPVR_HD void moment_term(T a, T c, T* t1, T* t2) {
  const T x = a - c;
  *t1 = x;
  *t2 = x * x;
}

// Summands of the weight prefix for value a with weight w: (w, w * (a - c)).
template <typename T>
HAPVR_HD void weight_term(T a, T w, T c, T* t1, T* t2) {
  *t1 = w;
  *t2 = w * (a - c);
}

// Totals of the moment summands over [begin, end).
template <typename T>
HAPVR_HD void moment_partial(const T* a, int64_t begin, int64_t end, T c, T* s1, T* s2) {
  T u1 = 0, u2 = 0;
  for (int64_t k = begin; k < end; ++k) {
    T t1, t2;
    moment_term(a[k], c, &t1, &t2);
    u1 += t1;
    u2 += t2;
  }
  *s1 = u1;
  *s2 = u2;
}

// Totals of the weight summands over [begin, end).
template <typename T>
HAPVR_HD void weight_partial(const T* a, const T* w, int64_t begin, int64_t end, T c, T* s1, T* s2) {
  T u1 = 0, u2 = 0;
  for (int64_t k = begin; k < end; ++k) {
    T t1, t2;
    weight_term(a[k], w[k], c, &t1, &t2);
    u1 += t1;
    u2 += t2;
  }
  *s1 = u1;
  *s2 = u2;
}

// p1[k + 1] = o1 + sum_{begin <= t <= k} (a[t] - c), p2 likewise with squares, k in [begin, end).
template <typename T>
HAPVR_HD void moment_prefix_range(const T* a, int64_t begin, int64_t end, T c, T o1, T o2, T* p1,
                                  T* p2) {
  for (int64_t k = begin; k < end; ++k) {
    T t1, t2;
    moment_term(a[k], c, &t1, &t2);
    o1 += t1;
    o2 += t2;
    p1[k + 1] = o1;
    p2[k + 1] = o2;
  }
}

// pw[k + 1] = o1 + sum_{begin <= t <= k} w[t], pws likewise with w[t] (a[t] - c), k in [begin, end).
template <typename T>
HAPVR_HD void weight_prefix_range(const T* a, const T* w, int64_t begin, int64_t end, T c, T o1,
                                  T o2, T* pw, T* pws) {
  for (int64_t k = begin; k < end; ++k) {
    T t1, t2;
    weight_term(a[k], w[k], c, &t1, &t2);
    o1 += t1;
    o2 += t2;
    pw[k + 1] = o1;
    pws[k + 1] = o2;
  }
}

// p1[k] = sum_{t<k} (a[t] - c), p2[k] = sum_{t<k} (a[t] - c)^2 for k in [0, n]: the chunks of
// the two-level scan one after another (the host path; the CUDA kernel runs them in parallel).
template <typename T>
HAPVR_HD void build_moment_prefix(const T* a, int64_t n, T c, T* p1, T* p2) {
  p1[0] = 0;
  p2[0] = 0;
  const int64_t parts = scan_parts(n, kScanMaxParts);
  T o1 = 0, o2 = 0;
  for (int64_t part = 0; part < parts; ++part) {
    int64_t begin, end;
    scan_chunk(n, parts, part, &begin, &end);
    moment_prefix_range(a, begin, end, c, o1, o2, p1, p2);
    T s1, s2;
    moment_partial(a, begin, end, c, &s1, &s2);
    o1 += s1;
    o2 += s2;
  }
}

// pw[k] = sum_{t<k} w[t], pws[k] = sum_{t<k} w[t] * (a[t] - c) for k in [0, n] (same scheme).
template <typename T>
HAPVR_HD void build_weight_prefix(const T* a, const T* w, int64_t n, T c, T* pw, T* pws) {
  pw[0] = 0;
  pws[0] = 0;
  const int64_t parts = scan_parts(n, kScanMaxParts);
  T o1 = 0, o2 = 0;
  for (int64_t part = 0; part < parts; ++part) {
    int64_t begin, end;
    scan_chunk(n, parts, part, &begin, &end);
    weight_prefix_range(a, w, begin, end, c, o1, o2, pw, pws);
    T s1, s2;
    weight_partial(a, w, begin, end, c, &s1, &s2);
    o1 += s1;
    o2 += s2;
  }
}

// For a positive of score s: its numerator num = sum_j R-(s_j - s) over the nn sorted negatives
// neg (prefix sums p1/p2 centred on c), and slope = sum_j R-'(s_j - s), the magnitude of
// d num / d s (d num / d s = -slope).
template <typename T>
HAPVR_HD void positive_terms(T s, T delta, const T* neg, const T* p1, const T* p2, int64_t nn, T c,
                             T* num, T* slope) {
  // Negatives with s_j >= s: linear branch 2 (s_j - s) / delta + 1.
  const int64_t b = lower_bound(neg, nn, s);
  const T n_lin = static_cast<T>(nn - b);
  const T sum_lin = (p1[nn] - p1[b]) - n_lin * (s - c);  // sum (s_j - s)
  // Negatives with s - delta <= s_j < s: quadratic branch ((s_j - s + delta) / delta)^2.
  const int64_t a = lower_bound(neg, nn, s - delta);
  const T n_quad = static_cast<T>(b - a);
  const T e = s - delta - c;  // u_j = (s_j - c) - e
  const T s1 = p1[b] - p1[a], s2 = p2[b] - p2[a];
  const T sum_u = s1 - n_quad * e;
  T sum_u2 = s2 - T(2) * e * s1 + n_quad * e * e;
  if (sum_u2 < T(0)) sum_u2 = T(0);  // rounding of an (exactly) empty or zero-width window
  *num = T(2) * sum_lin / delta + n_lin + sum_u2 / (delta * delta);
  *slope = T(2) * n_lin / delta + T(2) * sum_u / (delta * delta);
}

// den_i of eq. 11 for a positive of score s among the np sorted positive scores pos.
template <typename T>
HAPVR_HD T positive_denominator(T s, T rho, const T* pos, int64_t np) {
  return T(1) + rho * static_cast<T>(np - upper_bound(pos, np, s));
}

// The risk term h(num / den) = num / (den + num) of one positive, and its weight in the gradient:
// w = d h(num / den) / d num = den / (den + num)^2 (times scale = grad_risk / |P|).
template <typename T>
HAPVR_HD T positive_ratio(T num, T den) {
  return num / (den + num);
}

template <typename T>
HAPVR_HD T positive_weight(T num, T den, T scale) {
  const T t = den + num;
  return scale * den / (t * t);
}

// d risk / d s_j for a negative of score s: sum_i w_i R-'(s - s_i) over the np sorted positives
// pos with weights in prefix sums pw / pws (centred on c).
template <typename T>
HAPVR_HD T negative_gradient(T s, T delta, const T* pos, const T* pw, const T* pws, int64_t np, T c) {
  // Positives with s_i <= s: linear branch, R-' = 2 / delta.
  const int64_t b = upper_bound(pos, np, s);
  // Positives with s < s_i <= s + delta: quadratic branch, R-' = 2 (s - s_i + delta) / delta^2.
  const int64_t a2 = upper_bound(pos, np, s + delta);
  const T w_quad = pw[a2] - pw[b];
  const T ws_quad = pws[a2] - pws[b];  // sum w_i (s_i - c)
  const T quad = (s + delta - c) * w_quad - ws_quad;
  return T(2) * pw[b] / delta + T(2) * quad / (delta * delta);
}

}  // namespace qlap
}  // namespace hapvr
