// Thin-plate-spline point mapping on the CPU: points (B, M, 2) -> f_b(points) (B, M, 2).
//
// f(p) = a0 + x a_x + y a_y + sum_k w_k U(s_k), s_k = |p - c_k|^2, U(s) = s log s (U(0) = 0).
//
// Work split: OpenMP over (b, chunk of kChunk points) work items. Per item the control points
// and the weights of image b are de-interleaved into x / y arrays (a per-thread buffer), so that
// the loop over the N control points of one point is a vectorised reduction.
//   forward:  out = f(p).
//   backward: dL/dp = J_f(p)^T g, J_f = [a_x a_y] + sum_k w_k (dU/ds)(s_k) 2 (p - c_k)^T,
//             dU/ds = log s + 1 (the 2 (p - c_k) factor is 0 at s = 0);
//             dL/dcoef[b, k] += U(s_k) g, dL/da0 += g, dL/da_x += x g, dL/da_y += y g.
//   grad_points has one writer per point. grad_coef[b] is summed over the chunks of b: every
//   thread accumulates into a private zeroed copy, reduced into the output at the end (the copy
//   is B (N+3) 2 values, small); with the static schedule the result is deterministic for a
//   given number of threads.
#include <vector>

#include <omp.h>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"

namespace fastlmk {
namespace cpu {
namespace {

constexpr int64_t kChunk = 256;  // points per work item

// De-interleave (n, 2) into x[n], y[n].
template <typename T>
inline void split_xy(const T* __restrict src, int64_t n, T* __restrict x, T* __restrict y) {
  for (int64_t k = 0; k < n; ++k) {
    x[k] = src[2 * k];
    y[k] = src[2 * k + 1];
  }
}

template <typename T>
struct Buffers {
  explicit Buffers(int64_t N) : cx(N), cy(N), wx(N), wy(N), u(N) {}
  std::vector<T> cx, cy, wx, wy, u;
  int64_t ctrl_b = -1, coef_b = -1;  // which b the buffers hold
  void load(const T* ctrl, const T* coef, int64_t N, bool shared, int64_t b) {
    const int64_t cb = shared ? 0 : b;
    if (cb != ctrl_b) {
      split_xy(ctrl + cb * N * 2, N, cx.data(), cy.data());
      ctrl_b = cb;
    }
    if (b != coef_b) {
      split_xy(coef + b * (N + 3) * 2, N, wx.data(), wy.data());
      coef_b = b;
    }
  }
};

template <typename T>
void forward(const T* pts, const T* ctrl, const T* coef, T* out, int64_t B, int64_t M, int64_t N, bool shared,
             int nthreads) {
  const int64_t chunks = (M + kChunk - 1) / kChunk;
#pragma omp parallel num_threads(nthreads)
  {
    Buffers<T> buf(N);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < B * chunks; ++it) {
      const int64_t b = it / chunks, m0 = (it % chunks) * kChunk, m1 = std::min(M, m0 + kChunk);
      buf.load(ctrl, coef, N, shared, b);
      const T* __restrict cx = buf.cx.data();
      const T* __restrict cy = buf.cy.data();
      const T* __restrict wx = buf.wx.data();
      const T* __restrict wy = buf.wy.data();
      const T* a = coef + b * (N + 3) * 2 + 2 * N;  // a0, a_x, a_y (each (x, y))
      for (int64_t m = m0; m < m1; ++m) {
        const T x = pts[(b * M + m) * 2], y = pts[(b * M + m) * 2 + 1];
        T fx = 0, fy = 0;
#pragma omp simd reduction(+ : fx, fy)
        for (int64_t k = 0; k < N; ++k) {
          const T dx = x - cx[k], dy = y - cy[k];
          const T u = tps_u(dx * dx + dy * dy);
          fx += u * wx[k];
          fy += u * wy[k];
        }
        out[(b * M + m) * 2] = a[0] + x * a[2] + y * a[4] + fx;
        out[(b * M + m) * 2 + 1] = a[1] + x * a[3] + y * a[5] + fy;
      }
    }
  }
}

template <typename T>
void backward(const T* grad, const T* pts, const T* ctrl, const T* coef, T* grad_pts, T* grad_coef, int64_t B,
              int64_t M, int64_t N, bool shared, int nthreads) {
  const int64_t chunks = (M + kChunk - 1) / kChunk;
  const int64_t coef_size = B * (N + 3) * 2;
  std::vector<std::vector<T>> priv(static_cast<size_t>(nthreads));
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    T* gc = grad_coef;
    if (grad_coef != nullptr && tid > 0) {
      priv[tid].assign(static_cast<size_t>(coef_size), T(0));
      gc = priv[tid].data();
    }
    Buffers<T> buf(N);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < B * chunks; ++it) {
      const int64_t b = it / chunks, m0 = (it % chunks) * kChunk, m1 = std::min(M, m0 + kChunk);
      buf.load(ctrl, coef, N, shared, b);
      const T* __restrict cx = buf.cx.data();
      const T* __restrict cy = buf.cy.data();
      const T* __restrict wx = buf.wx.data();
      const T* __restrict wy = buf.wy.data();
      T* __restrict u = buf.u.data();
      const T* a = coef + b * (N + 3) * 2 + 2 * N;
      T* gcb = gc != nullptr ? gc + b * (N + 3) * 2 : nullptr;
      for (int64_t m = m0; m < m1; ++m) {
        const T x = pts[(b * M + m) * 2], y = pts[(b * M + m) * 2 + 1];
        const T gx = grad[(b * M + m) * 2], gy = grad[(b * M + m) * 2 + 1];
        if (grad_pts != nullptr) {
          // J^T g = (g . (a_x + sum_k w_k dU_k/dx), g . (a_y + sum_k w_k dU_k/dy))
          T jx = 0, jy = 0;
#pragma omp simd reduction(+ : jx, jy)
          for (int64_t k = 0; k < N; ++k) {
            const T dx = x - cx[k], dy = y - cy[k];
            const T d = T(2) * tps_du_ds(dx * dx + dy * dy) * (gx * wx[k] + gy * wy[k]);
            jx += d * dx;
            jy += d * dy;
          }
          grad_pts[(b * M + m) * 2] += gx * a[2] + gy * a[3] + jx;
          grad_pts[(b * M + m) * 2 + 1] += gx * a[4] + gy * a[5] + jy;
        }
        if (gcb != nullptr) {
#pragma omp simd
          for (int64_t k = 0; k < N; ++k) {
            const T dx = x - cx[k], dy = y - cy[k];
            u[k] = tps_u(dx * dx + dy * dy);
          }
          for (int64_t k = 0; k < N; ++k) {
            gcb[2 * k] += u[k] * gx;
            gcb[2 * k + 1] += u[k] * gy;
          }
          gcb[2 * N] += gx;
          gcb[2 * N + 1] += gy;
          gcb[2 * N + 2] += x * gx;
          gcb[2 * N + 3] += x * gy;
          gcb[2 * N + 4] += y * gx;
          gcb[2 * N + 5] += y * gy;
        }
      }
    }
    if (grad_coef != nullptr) {
      const int nth = omp_get_num_threads();
#pragma omp for schedule(static)
      for (int64_t e = 0; e < coef_size; ++e)
        for (int t = 1; t < nth; ++t) grad_coef[e] += priv[t][e];
    }
  }
}

}  // namespace

void tps_transform_points_forward(int dtype, const void* points, const void* ctrl, const void* coef, void* out,
                                  int64_t B, int64_t M, int64_t N, bool shared_ctrl, int num_threads) {
  const int nt = threads_for(B * M * N, num_threads);
  if (dtype == kFloat32) {
    forward<float>(static_cast<const float*>(points), static_cast<const float*>(ctrl), static_cast<const float*>(coef),
                   static_cast<float*>(out), B, M, N, shared_ctrl, nt);
  } else if (dtype == kFloat64) {
    forward<double>(static_cast<const double*>(points), static_cast<const double*>(ctrl),
                    static_cast<const double*>(coef), static_cast<double*>(out), B, M, N, shared_ctrl, nt);
  } else {
    unsupported_dtype("tps_transform_points", dtype);
  }
}

void tps_transform_points_backward(int dtype, const void* grad_out, const void* points, const void* ctrl,
                                   const void* coef, void* grad_points, void* grad_coef, int64_t B, int64_t M,
                                   int64_t N, bool shared_ctrl, int num_threads) {
  if (grad_points == nullptr && grad_coef == nullptr) return;
  const int nt = threads_for(B * M * N, num_threads);
  if (dtype == kFloat32) {
    backward<float>(static_cast<const float*>(grad_out), static_cast<const float*>(points),
                    static_cast<const float*>(ctrl), static_cast<const float*>(coef), static_cast<float*>(grad_points),
                    static_cast<float*>(grad_coef), B, M, N, shared_ctrl, nt);
  } else if (dtype == kFloat64) {
    backward<double>(static_cast<const double*>(grad_out), static_cast<const double*>(points),
                     static_cast<const double*>(ctrl), static_cast<const double*>(coef),
                     static_cast<double*>(grad_points), static_cast<double*>(grad_coef), B, M, N, shared_ctrl, nt);
  } else {
    unsupported_dtype("tps_transform_points", dtype);
  }
}

}  // namespace cpu
}  // namespace fastlmk
