// Gaussian heatmaps on the CPU: points (M, 2) (x, y) in [-1, 1] -> maps (M, H, W), peak 1.
//
// Work split: one OpenMP iteration per map (M = B*K maps), static schedule; a map is written
// (forward) or read (backward) exactly once, as whole contiguous rows.
//
// The map factorises into 1-D terms, a = inv_two_var = 1 / (2 std^2):
//   G_ij = exp(-((gx_j - x)^2 + (gy_i - y)^2) a) = ey_i ex_j,
//   ex_j = exp(-(gx_j - x)^2 a), ey_i = exp(-(gy_i - y)^2 a),
// so a map costs W + H exponentials and one multiply per pixel.
//   forward   out_ij = ey_i ex_j.
//   backward  dG_ij/dx = 2a (gx_j - x) G_ij, dG_ij/dy = 2a (gy_i - y) G_ij, hence with g = dL/dG
//             dL/dx = 2a sum_i ey_i sum_j g_ij ex_j (gx_j - x),
//             dL/dy = 2a sum_i ey_i (gy_i - y) sum_j g_ij ex_j;
//             computed by summing g down the columns weighted by ey_i and ey_i (gy_i - y) (two
//             FMAs per pixel, vectorised along the row), then two W-term dot products.
// 1-D factors below `kFlush` (1e-19 in float32, 1e-150 in float64) are set to 0, so that a
// product of two factors is either 0 or a normal number (no denormal arithmetic, which is slow);
// the pixel values changed that way are below kFlush, far under the dtype's resolution at the
// peak (1.0).
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"

namespace fastlmk {
namespace cpu {
namespace {

template <typename T>
constexpr T flush_threshold();
template <>
constexpr float flush_threshold<float>() { return 1e-19f; }
template <>
constexpr double flush_threshold<double>() { return 1e-150; }

// e[j] = exp(-(g[j] - c)^2 a) (flushed to 0 below the threshold); d[j] = g[j] - c.
template <typename T>
inline void factor_1d(const T* __restrict g, T c, T a, T* __restrict e, T* __restrict d, int64_t n) {
  const T lo = flush_threshold<T>();
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) {
    const T dj = g[j] - c;
    const T v = fast_exp(-dj * dj * a);
    e[j] = v < lo ? T(0) : v;
    d[j] = dj;
  }
}

template <typename T>
void forward(const T* __restrict pts, T* __restrict out, int64_t M, int64_t H, int64_t W, T a, int nthreads) {
  std::vector<T> gx(W), gy(H);
  for (int64_t j = 0; j < W; ++j) gx[j] = grid_coord<T>(j, W);
  for (int64_t i = 0; i < H; ++i) gy[i] = grid_coord<T>(i, H);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> ex(W), ey(H), dx(W), dy(H);
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      factor_1d(gx.data(), pts[2 * m], a, ex.data(), dx.data(), W);
      factor_1d(gy.data(), pts[2 * m + 1], a, ey.data(), dy.data(), H);
      T* __restrict om = out + m * H * W;
      const T* __restrict exp_x = ex.data();
      for (int64_t i = 0; i < H; ++i) {
        const T e = ey[i];
        T* __restrict row = om + i * W;
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) row[j] = e * exp_x[j];
      }
    }
  }
}

template <typename T>
void backward(const T* __restrict grad, const T* __restrict pts, T* __restrict gpts, int64_t M, int64_t H,
              int64_t W, T a, int nthreads) {
  std::vector<T> gx(W), gy(H);
  for (int64_t j = 0; j < W; ++j) gx[j] = grid_coord<T>(j, W);
  for (int64_t i = 0; i < H; ++i) gy[i] = grid_coord<T>(i, H);
#pragma omp parallel num_threads(nthreads)
  {
    std::vector<T> ex(W), ey(H), dx(W), dy(H), c0_buf(W), c1_buf(W);
    T* __restrict c0 = c0_buf.data();
    T* __restrict c1 = c1_buf.data();
#pragma omp for schedule(static)
    for (int64_t m = 0; m < M; ++m) {
      factor_1d(gx.data(), pts[2 * m], a, ex.data(), dx.data(), W);
      factor_1d(gy.data(), pts[2 * m + 1], a, ey.data(), dy.data(), H);
      // Column sums c0_j = sum_i ey_i g_ij, c1_j = sum_i ey_i (gy_i - y) g_ij (vectorised over the
      // row, no horizontal reduction per row), then
      // dL/dx = 2a sum_j c0_j ex_j (gx_j - x), dL/dy = 2a sum_j c1_j ex_j.
      for (int64_t j = 0; j < W; ++j) c0[j] = c1[j] = T(0);
      const T* __restrict gm = grad + m * H * W;
      for (int64_t i = 0; i < H; ++i) {
        const T* __restrict row = gm + i * W;
        const T wy = ey[i], wyd = ey[i] * dy[i];
#pragma omp simd
        for (int64_t j = 0; j < W; ++j) {
          c0[j] += wy * row[j];
          c1[j] += wyd * row[j];
        }
      }
      T sx = 0, sy = 0;
#pragma omp simd reduction(+ : sx, sy)
      for (int64_t j = 0; j < W; ++j) {
        sx += c0[j] * ex[j] * dx[j];
        sy += c1[j] * ex[j];
      }
      gpts[2 * m] = T(2) * a * sx;
      gpts[2 * m + 1] = T(2) * a * sy;
    }
  }
}

}  // namespace

void gaussian_heatmaps_forward(int dtype, const void* points, void* out, int64_t M, int64_t H, int64_t W,
                               double inv_two_var, int num_threads) {
  const int nt = threads_for(M * H * W, num_threads);
  if (dtype == kFloat32) {
    forward<float>(static_cast<const float*>(points), static_cast<float*>(out), M, H, W,
                   static_cast<float>(inv_two_var), nt);
  } else if (dtype == kFloat64) {
    forward<double>(static_cast<const double*>(points), static_cast<double*>(out), M, H, W, inv_two_var, nt);
  } else {
    unsupported_dtype("gaussian_heatmaps", dtype);
  }
}

void gaussian_heatmaps_backward(int dtype, const void* grad_out, const void* points, void* grad_points,
                                int64_t M, int64_t H, int64_t W, double inv_two_var, int num_threads) {
  const int nt = threads_for(M * H * W, num_threads);
  if (dtype == kFloat32) {
    backward<float>(static_cast<const float*>(grad_out), static_cast<const float*>(points),
                    static_cast<float*>(grad_points), M, H, W, static_cast<float>(inv_two_var), nt);
  } else if (dtype == kFloat64) {
    backward<double>(static_cast<const double*>(grad_out), static_cast<const double*>(points),
                     static_cast<double*>(grad_points), M, H, W, inv_two_var, nt);
  } else {
    unsupported_dtype("gaussian_heatmaps", dtype);
  }
}

}  // namespace cpu
}  // namespace fastlmk
