// Helpers shared by the CPU kernels: grid coordinates, a vectorisable exp, OpenMP loops.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "fastlmk.h"

namespace fastlmk {
namespace cpu {

// x-coordinate of pixel j on a grid of n pixels, align_corners=True convention.
template <typename T>
inline T grid_coord(int64_t j, int64_t n) {
  return n > 1 ? T(-1) + T(2) * T(j) / T(n - 1) : T(0);
}

// exp(x) for float with ~3 ulp error (measured max 2.7 ulp on [-87, 88]), written so that GCC
// vectorises loops calling it (no libm call, no branches). NaN stays NaN; x is clamped to
// [-87, 88] (so exp(-inf) is ~1.6e-38, not 0). Cody-Waite range reduction x = n ln2 + r,
// |r| <= ln2/2, with n rounded by the 1.5 * 2^23 trick (n lands in the low mantissa bits of t,
// so 2^n is a shift of t's bits), then a degree-6 polynomial.
inline float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;  // one vmaxps / vminps each (the comparison keeps NaN)
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23
  const float t = std::fma(x, 1.44269504088896341f, magic);
  const float n = t - magic;
  float r = std::fma(n, -0.693145751953125f, x);
  r = std::fma(n, -1.428606765330187045e-06f, r);
  float p = 1.0f / 720.0f;
  p = std::fma(p, r, 1.0f / 120.0f);
  p = std::fma(p, r, 1.0f / 24.0f);
  p = std::fma(p, r, 1.0f / 6.0f);
  p = std::fma(p, r, 0.5f);
  p = std::fma(p, r, 1.0f);
  p = std::fma(p, r, 1.0f);
  // t's bits are 0x4B400000 + n; shifted left by 23 only n << 23 survives: add n to p's exponent
  uint32_t tb, pb;
  std::memcpy(&tb, &t, sizeof(tb));
  std::memcpy(&pb, &p, sizeof(pb));
  pb += tb << 23;
  float out;
  std::memcpy(&out, &pb, sizeof(out));
  return out;
}
inline double fast_exp(double x) { return std::exp(x); }

// ln(x) for x > 0 (float), vectorisable: x = m 2^e with m in [sqrt(1/2), sqrt(2)),
// ln x = e ln2 + 2 atanh((m-1)/(m+1)) by an odd polynomial; ~2 ulp.
inline float fast_log(float x) {
  int32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
  int32_t e = ((bits >> 23) & 0xff) - 127;
  int32_t mbits = (bits & 0x007fffff) | 0x3f800000;
  float m;
  std::memcpy(&m, &mbits, sizeof(m));
  const bool big = m > 1.41421356f;
  m = big ? m * 0.5f : m;
  e = big ? e + 1 : e;
  const float s = (m - 1.0f) / (m + 1.0f);
  const float s2 = s * s;
  float p = 2.0f / 9.0f;
  p = std::fma(p, s2, 2.0f / 7.0f);
  p = std::fma(p, s2, 2.0f / 5.0f);
  p = std::fma(p, s2, 2.0f / 3.0f);
  p = std::fma(p, s2, 2.0f);
  return std::fma(static_cast<float>(e), 0.693147180559945309f, s * p);
}
inline double fast_log(double x) { return std::log(x); }

// Thin-plate radial basis U(r) = r^2 log r^2 written in s = r^2: U = s log s, U(0) = 0. s is a
// squared distance (>= 0 or NaN): "s > 0 ? .. : s" gives 0 at s = 0 and keeps a NaN (a NaN control
// point must give a NaN spline, as in the reference, not the affine part alone).
template <typename T>
inline T tps_u(T s) {
  return s > T(0) ? s * fast_log(s) : s;
}
// dU/ds = log s + 1; the caller multiplies by ds/dp = 2 (p - c), which is 0 at s = 0. NaN stays NaN.
template <typename T>
inline T tps_du_ds(T s) {
  return s > T(0) ? fast_log(s) + T(1) : s;
}

// Sum of v[0..n) for a short row. GCC vectorises a plain reduction only under -ffast-math, and
// `#pragma omp simd reduction` ends in a serial chain of scalar adds over the lanes, which
// dominates for rows of a few dozen elements; so float rows use explicit vector adds and one
// horizontal reduction where AVX2 is available (the generic loop elsewhere).
template <typename T>
inline T row_sum(const T* __restrict v, int64_t n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < n; ++j) s += v[j];
  return s;
}
#if defined(__AVX2__)
template <>
inline float row_sum<float>(const float* __restrict v, int64_t n) {
  __m256 acc = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps();
  int64_t j = 0;
  for (; j + 16 <= n; j += 16) {
    acc = _mm256_add_ps(acc, _mm256_loadu_ps(v + j));
    acc2 = _mm256_add_ps(acc2, _mm256_loadu_ps(v + j + 8));
  }
  for (; j + 8 <= n; j += 8) acc = _mm256_add_ps(acc, _mm256_loadu_ps(v + j));
  acc = _mm256_add_ps(acc, acc2);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float s = _mm_cvtss_f32(h);
  for (; j < n; ++j) s += v[j];
  return s;
}
#endif

inline int clamp_threads(int num_threads) { return num_threads < 1 ? 1 : num_threads; }

// Threads worth waking for `work` units (roughly one cheap operation on one element each): one
// per kGrainSize units, at most num_threads, at least 1. Like ATen's grain size, this keeps small
// calls on the calling thread, where a fork/join would cost more than the work saved.
constexpr int64_t kGrainSize = 32768;
inline int threads_for(int64_t work, int num_threads) {
  const int64_t useful = std::max<int64_t>(1, work / kGrainSize);
  return static_cast<int>(std::min<int64_t>(clamp_threads(num_threads), useful));
}

}  // namespace cpu
}  // namespace fastlmk
