// Thin-plate-spline point transform on the GPU: points (B, M, 2) -> f_b(points) (B, M, 2).
//
//   f_d(p) = a0_d + a_x,d x + a_y,d y + sum_n w_n,d U(|p - c_n|^2),  U(s) = s log s
//   grad p = J_f(p)^T g:  grad x = g . a_x + sum_n (g . w_n) (ln s_n + 1) 2 (x - cx_n)   (0 at s_n = 0),
//                         grad y likewise with a_y and (y - cy_n)
//   grad coef[b, k, d] = sum_m phi_k(p_m) g_m,d,  phi = [U(s_0), ..., U(s_{N-1}), 1, x, y]
//
// Work split: forward, one thread per point (grid-stride over B * M), control points and weights
// read through the read-only cache (threads of a warp mostly share them). Backward: blocks of 256
// points of one batch element (blockIdx.y); each thread writes the gradient of its own point
// (no atomics), then the block stores (p, g) of its points in shared memory and thread k sums
// coefficient row k over them: one atomicAdd per coefficient per block. No (B, M, N, 2) temporary.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"

namespace fastlmk {
namespace cuda {
namespace {

constexpr const char* kOp = "tps_transform_points";

template <typename T>
__global__ void __launch_bounds__(kThreads)
    tps_points_forward_kernel(const T* __restrict__ points, const acc_t<T>* __restrict__ ctrl,
                              const acc_t<T>* __restrict__ coef, T* __restrict__ out, int64_t B, int M, int N,
                              bool shared_ctrl) {
  using A = acc_t<T>;
  const int K = N + 3;
  const int64_t total = B * M;
  for (int64_t idx = int64_t(blockIdx.x) * kThreads + threadIdx.x; idx < total;
       idx += int64_t(gridDim.x) * kThreads) {
    const int64_t b = idx / M;
    const A px = ld(points + 2 * idx), py = ld(points + 2 * idx + 1);
    const A* __restrict__ cb = ctrl + (shared_ctrl ? 0 : b * N * 2);
    const A* __restrict__ wb = coef + b * K * 2;
    A fx = 0, fy = 0;
    for (int n = 0; n < N; ++n) {
      const A dx = px - cb[2 * n], dy = py - cb[2 * n + 1];
      const A u = tps_u_log2(dx * dx + dy * dy);
      fx += u * wb[2 * n];
      fy += u * wb[2 * n + 1];
    }
    A sx, sy;
    tps_affine(wb, N, px, py, fx, fy, sx, sy);
    st(out + 2 * idx, sx);
    st(out + 2 * idx + 1, sy);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    tps_points_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ points,
                               const acc_t<T>* __restrict__ ctrl, const acc_t<T>* __restrict__ coef,
                               T* __restrict__ grad_points, acc_t<T>* __restrict__ grad_coef, int B, int M, int N,
                               bool shared_ctrl) {
  using A = acc_t<T>;
  __shared__ vec2_t<A> s_p[kThreads], s_gs[kThreads];
  const int K = N + 3;
  const int ntiles = (M + kThreads - 1) / kThreads;
  const int tid = threadIdx.x;
  const bool keep_in_regs = K <= kThreads;  // thread tid owns coefficient row tid for all tiles

  for (int b = blockIdx.y; b < B; b += gridDim.y) {
    const A* __restrict__ cb = ctrl + (shared_ctrl ? 0 : int64_t(b) * N * 2);
    const A* __restrict__ wb = coef + int64_t(b) * K * 2;
    A keep[1][2] = {{A(0), A(0)}};
    for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
      const int m = tile * kThreads + tid;
      const bool valid = m < M;
      const int64_t idx = int64_t(b) * M + m;
      A px = 0, py = 0, g0 = 0, g1 = 0;
      if (valid) {
        px = ld(points + 2 * idx);
        py = ld(points + 2 * idx + 1);
        g0 = ld(grad_out + 2 * idx);
        g1 = ld(grad_out + 2 * idx + 1);
        if (grad_points != nullptr) {
          const A* aff = wb + 2 * N;  // a0, a_x, a_y rows
          A gx = g0 * aff[2] + g1 * aff[3];
          A gy = g0 * aff[4] + g1 * aff[5];
          for (int n = 0; n < N; ++n) {
            const A dx = px - cb[2 * n], dy = py - cb[2 * n + 1];
            const A f = A(2) * (g0 * wb[2 * n] + g1 * wb[2 * n + 1]) * tps_du_ds(dx * dx + dy * dy);
            gx += f * dx;
            gy += f * dy;
          }
          // this thread owns the point: accumulate without atomics
          st(grad_points + 2 * idx, ld(grad_points + 2 * idx) + gx);
          st(grad_points + 2 * idx + 1, ld(grad_points + 2 * idx + 1) + gy);
        }
      }
      if (grad_coef != nullptr) {
        s_p[tid] = vec2_t<A>{px, py};  // invalid points carry g = 0
        s_gs[tid] = vec2_t<A>{g0, g1};
        __syncthreads();
        const int tp = min(kThreads, M - tile * kThreads);
        for (int k = tid; k < K; k += kThreads) {
          A acc[1][2];
          tps_coef_grad_tile<A, 1>(k, N, cb, s_p, s_gs, tp, acc);
          if (keep_in_regs) {
            keep[0][0] += acc[0][0];
            keep[0][1] += acc[0][1];
          } else {
            A* gc = grad_coef + (int64_t(b) * K + k) * 2;
            atomicAdd(gc, acc[0][0]);
            atomicAdd(gc + 1, acc[0][1]);
          }
        }
        __syncthreads();  // s_p / s_gs are rewritten by the next tile
      }
    }
    if (grad_coef != nullptr && keep_in_regs && tid < K) {
      A* gc = grad_coef + (int64_t(b) * K + tid) * 2;
      atomicAdd(gc, keep[0][0]);
      atomicAdd(gc + 1, keep[0][1]);
    }
  }
}

void check_args(int64_t B, int64_t M, int64_t N) {
  check_size(kOp, "B", B, INT_MAX);
  check_size(kOp, "M (points)", M, INT_MAX - kThreads);
  check_size(kOp, "N (control points)", N, INT_MAX / 4);
}

}  // namespace

void tps_transform_points_forward(int dtype, const void* points, const void* ctrl, const void* coef, void* out,
                                  int64_t B, int64_t M, int64_t N, bool shared_ctrl, void* stream) {
  check_args(B, M, N);
  if (B == 0 || M == 0) return;
  const cudaStream_t st = as_stream(stream);
  dispatch_dtype(dtype, kOp, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    const int64_t blocks = (B * M + kThreads - 1) / kThreads;
    const unsigned grid = unsigned(blocks < (int64_t(1) << 30) ? blocks : (int64_t(1) << 30));
    FASTLMK_LAUNCH(grid, kThreads, 0, st, tps_points_forward_kernel<T>)(
        static_cast<const T*>(points), static_cast<const A*>(ctrl), static_cast<const A*>(coef), static_cast<T*>(out),
        B, int(M), int(N), shared_ctrl);
    FASTLMK_CUDA_CHECK_LAUNCH(kOp);
  });
}

void tps_transform_points_backward(int dtype, const void* grad_out, const void* points, const void* ctrl,
                                   const void* coef, void* grad_points, void* grad_coef, int64_t B, int64_t M,
                                   int64_t N, bool shared_ctrl, void* stream) {
  check_args(B, M, N);
  // the gradients are accumulated into zero-filled buffers: nothing to add for empty work
  if (B == 0 || M == 0 || (grad_points == nullptr && grad_coef == nullptr)) return;
  const cudaStream_t st = as_stream(stream);
  dispatch_dtype(dtype, kOp, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    const int64_t ntiles = (M + kThreads - 1) / kThreads;
    const dim3 grid(unsigned(ntiles), unsigned(B < 65535 ? B : 65535));
    FASTLMK_LAUNCH(grid, kThreads, 0, st, tps_points_backward_kernel<T>)(
        static_cast<const T*>(grad_out), static_cast<const T*>(points), static_cast<const A*>(ctrl),
        static_cast<const A*>(coef), static_cast<T*>(grad_points), static_cast<A*>(grad_coef), int(B), int(M), int(N),
        shared_ctrl);
    FASTLMK_CUDA_CHECK_LAUNCH(kOp);
  });
}

}  // namespace cuda
}  // namespace fastlmk
