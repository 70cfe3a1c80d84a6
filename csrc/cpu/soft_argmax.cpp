// soft-argmax on the CPU: heatmap logits (M, H, W) -> points (M, 2) (x, y) in [-1, 1].
//
// Work split: one OpenMP iteration per map (M = B*K maps); a map is at most a few KiB and stays
// in L1 between the two sweeps below, so the logits are read from memory once.
//
// spatial:  p = softmax(l * inv_t) over all H*W pixels, x = sum p gx, y = sum p gy.
//   forward  sweep 1: max; sweep 2: e = exp((l - max) inv_t) summed down the columns (sum e,
//            sum e gy per column, vectorised over the row), then sum e, sum e gx, sum e gy over
//            the W columns; stats = (max, log sum e): kept apart rather than summed into one
//            lse, whose float32 rounding (~0.01 when |l inv_t| ~ 1e5) would bias every p of the
//            backward.
//   backward dL/dl_ij = inv_t p_ij ((gx_j - x) gpx + (gy_i - y) gpy),
//            p = exp((l - max) inv_t - log sum e) recomputed from the stats.
// The exponent is always formed as (l - max) * inv_t (see scaled_diff), never as l * inv_t -
// max * inv_t: with the compiler's FMA contraction the latter keeps the rounding error of the
// product (up to half an ulp of |l inv_t|, 512 at 1e10), which for huge logits or tiny
// temperatures turned the peak's exponent from 0 into +-512 and lost the peak.
// marginal (IMM): colmean_j = mean_i l_ij, rowmean_i = mean_j l_ij,
//   q = softmax(colmean * inv_t) (W), r = softmax(rowmean * inv_t) (H), x = sum q gx, y = sum r gy.
//   stats = (max colmean, log sum_j exp((colmean_j - max) inv_t), the same for the row means).
//   backward dL/dl_ij = inv_t/H q_j (gx_j - x) gpx + inv_t/W r_i (gy_i - y) gpy.
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"

namespace fastlmk {
namespace cpu {
namespace {

// max of v[0..n) (vectorised: the reduction pragma lets the compiler reorder the comparisons).
template <typename T>
inline T max_of(const T* __restrict v, int64_t n) {
  T mx = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : mx)
  for (int64_t k = 0; k < n; ++k) mx = v[k] > mx ? v[k] : mx;
  return mx;
}

// (v - mx) * inv_t, the exponent of a softmax term shifted by the maximum mx >= v: exactly 0 at the
// maximum, also when inv_t overflowed to inf (a temperature below 1 / FLT_MAX).
template <typename T>
inline T scaled_diff(T v, T mx, T inv_t) {
  const T d = v - mx;
  return d == T(0) ? T(0) : d * inv_t;
}

template <typename T>
void spatial_forward(const T* __restrict l, T* __restrict pts, T* __restrict stats, int64_t M,
                     int64_t H, int64_t W, T inv_t, int nthreads) {
  std::vector<T> gx(W), gy(H);
  for (int64_t j = 0; j < W; ++j) gx[j] = grid_coord<T>(j, W);
  for (int64_t i = 0; i < H; ++i) gy[i] = grid_coord<T>(i, H);
  const int64_t n = H * W;
#pragma omp parallel num_threads(nthreads)
  {
    // Per-column partial sums: ce[j] = sum_i e_ij, cy[j] = sum_i e_ij gy_i. Summing down the
    // columns keeps the inner loop free of horizontal reductions (one per map at the end).
    std::vector<T> ce_buf(W), cy_buf(W);
    T* __restrict ce = ce_buf.data();
    T* __restrict cy = cy_buf.data();
    const T* __restrict gxp = gx.data();
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const T* __restrict lm = l + m * n;
      const T mx = max_of(lm, n);
      for (int64_t j = 0; j < W; ++j) ce[j] = cy[j] = T(0);
      for (int64_t i = 0; i < H; ++i) {
        const T* __restrict row = lm + i * W;
        const T yi = gy[i];
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
          const T e = fast_exp(scaled_diff(row[j], mx, inv_t));
          ce[j] += e;
          cy[j] += e * yi;
        }
      }
      T s = 0, sx = 0, sy = 0;
#pragma omp simd reduction(+ : s, sx, sy)
      for (int64_t j = 0; j < W; ++j) {
        s += ce[j];
        sx += ce[j] * gxp[j];
        sy += cy[j];
      }
      pts[2 * m] = sx / s;
      pts[2 * m + 1] = sy / s;
      stats[2 * m] = mx;
      stats[2 * m + 1] = std::log(s);
    }
  }
}

template <typename T>
void spatial_backward(const T* __restrict gp, const T* __restrict l, const T* __restrict stats,
                      const T* __restrict pts, T* __restrict gl, int64_t M, int64_t H, int64_t W,
                      T inv_t, int nthreads) {
  std::vector<T> gx(W), gy(H);
  for (int64_t j = 0; j < W; ++j) gx[j] = grid_coord<T>(j, W);
  for (int64_t i = 0; i < H; ++i) gy[i] = grid_coord<T>(i, H);
  const int64_t n = H * W;
#pragma omp parallel for num_threads(nthreads) schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const T* __restrict lm = l + m * n;
    T* __restrict gm = gl + m * n;
    const T mx = stats[2 * m], log_s = stats[2 * m + 1];
    const T gpx = gp[2 * m] * inv_t, gpy = gp[2 * m + 1] * inv_t;
    // dL/dl_ij = p_ij (a_j + b_i) with a_j = gpx (gx_j - x), b_i = gpy (gy_i - y); the differences
    // are taken first (not gpx gx_j - gpx x): with gpx ~ inv_t ~ 1e10 the latter cancels to ~1e3.
    const T x = pts[2 * m], y = pts[2 * m + 1];
    for (int64_t i = 0; i < H; ++i) {
      const T bi = gpy * (gy[i] - y);
      const T* __restrict row = lm + i * W;
      T* __restrict grow = gm + i * W;
#pragma omp simd
      for (int64_t j = 0; j < W; ++j) {
        const T p = fast_exp(scaled_diff(row[j], mx, inv_t) - log_s);
        grow[j] = p * (gpx * (gx[j] - x) + bi);
      }
    }
  }
}

// softmax of v * inv_t (length n) -> q; writes the expectation of g under q and the stats
// (max v, log sum exp((v - max) inv_t)). q and qg are scratch of length n.
template <typename T>
inline void softmax_1d(const T* __restrict v, T* __restrict q, T* __restrict qg, const T* __restrict g, int64_t n,
                       T inv_t, T* expect, T* stats) {
  const T mx = max_of(v, n);
#pragma omp simd
  for (int64_t k = 0; k < n; ++k) {
    q[k] = fast_exp(scaled_diff(v[k], mx, inv_t));
    qg[k] = q[k] * g[k];
  }
  const T s = row_sum(q, n);
  *expect = row_sum(qg, n) / s;
  stats[0] = mx;
  stats[1] = std::log(s);
}

// column means (W) and row means (H) of one map
template <typename T>
inline void marginals(const T* __restrict lm, T* __restrict col, T* __restrict row, int64_t H, int64_t W) {
  for (int64_t j = 0; j < W; ++j) col[j] = 0;
  for (int64_t i = 0; i < H; ++i) {
    const T* __restrict r = lm + i * W;
#pragma omp simd
    for (int64_t j = 0; j < W; ++j) col[j] += r[j];
    row[i] = row_sum(r, W) / T(W);
  }
  const T inv_h = T(1) / T(H);
  for (int64_t j = 0; j < W; ++j) col[j] *= inv_h;
}

template <typename T>
void marginal_forward(const T* __restrict l, T* __restrict pts, T* __restrict stats, int64_t M,
                      int64_t H, int64_t W, T inv_t, int nthreads) {
  std::vector<T> gx(W), gy(H);
  for (int64_t j = 0; j < W; ++j) gx[j] = grid_coord<T>(j, W);
  for (int64_t i = 0; i < H; ++i) gy[i] = grid_coord<T>(i, H);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> col(W), row(H), q(std::max(H, W)), qg(std::max(H, W));
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      marginals(l + m * H * W, col.data(), row.data(), H, W);
      softmax_1d(col.data(), q.data(), qg.data(), gx.data(), W, inv_t, &pts[2 * m], &stats[4 * m]);
      softmax_1d(row.data(), q.data(), qg.data(), gy.data(), H, inv_t, &pts[2 * m + 1], &stats[4 * m + 2]);
    }
  }
}

template <typename T>
void marginal_backward(const T* __restrict gp, const T* __restrict l, const T* __restrict stats,
                       const T* __restrict pts, T* __restrict gl, int64_t M, int64_t H, int64_t W,
                       T inv_t, int nthreads) {
  std::vector<T> gx(W), gy(H);
  for (int64_t j = 0; j < W; ++j) gx[j] = grid_coord<T>(j, W);
  for (int64_t i = 0; i < H; ++i) gy[i] = grid_coord<T>(i, H);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> col(W), row(H);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      const T* lm = l + m * H * W;
      T* __restrict gm = gl + m * H * W;
      marginals(lm, col.data(), row.data(), H, W);
      const T ax = gp[2 * m] * inv_t / T(H), ay = gp[2 * m + 1] * inv_t / T(W);
      const T x = pts[2 * m], y = pts[2 * m + 1];
      // col[] <- dL/dl contribution of column j, row[] <- of row i
      const T* st = stats + 4 * m;  // (max, log sum) of the column softmax, then of the row softmax
      for (int64_t j = 0; j < W; ++j) col[j] = ax * fast_exp(scaled_diff(col[j], st[0], inv_t) - st[1]) * (gx[j] - x);
      for (int64_t i = 0; i < H; ++i) row[i] = ay * fast_exp(scaled_diff(row[i], st[2], inv_t) - st[3]) * (gy[i] - y);
      for (int64_t i = 0; i < H; ++i) {
        T* __restrict grow = gm + i * W;
        const T bi = row[i];
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) grow[j] = col[j] + bi;
      }
    }
  }
}

}  // namespace

void soft_argmax_forward(int dtype, const void* logits, void* points, void* stats, int64_t M,
                         int64_t H, int64_t W, double inv_temperature, bool marginal, int num_threads) {
  const int nt = threads_for(M * H * W, num_threads);
  if (dtype == kFloat32) {
    auto f = marginal ? marginal_forward<float> : spatial_forward<float>;
    f(static_cast<const float*>(logits), static_cast<float*>(points), static_cast<float*>(stats), M, H, W,
      static_cast<float>(inv_temperature), nt);
  } else if (dtype == kFloat64) {
    auto f = marginal ? marginal_forward<double> : spatial_forward<double>;
    f(static_cast<const double*>(logits), static_cast<double*>(points), static_cast<double*>(stats), M, H, W,
      inv_temperature, nt);
  } else {
    unsupported_dtype("soft_argmax", dtype);
  }
}

void soft_argmax_backward(int dtype, const void* grad_points, const void* logits, const void* stats,
                          const void* points, void* grad_logits, int64_t M, int64_t H, int64_t W,
                          double inv_temperature, bool marginal, int num_threads) {
  const int nt = threads_for(M * H * W, num_threads);
  if (dtype == kFloat32) {
    auto f = marginal ? marginal_backward<float> : spatial_backward<float>;
    f(static_cast<const float*>(grad_points), static_cast<const float*>(logits), static_cast<const float*>(stats),
      static_cast<const float*>(points), static_cast<float*>(grad_logits), M, H, W,
      static_cast<float>(inv_temperature), nt);
  } else if (dtype == kFloat64) {
    auto f = marginal ? marginal_backward<double> : spatial_backward<double>;
    f(static_cast<const double*>(grad_points), static_cast<const double*>(logits), static_cast<const double*>(stats),
      static_cast<const double*>(points), static_cast<double*>(grad_logits), M, H, W, inv_temperature, nt);
  } else {
    unsupported_dtype("soft_argmax", dtype);
  }
}

}  // namespace cpu
}  // namespace fastlmk
