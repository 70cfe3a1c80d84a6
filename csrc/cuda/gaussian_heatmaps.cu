// Gaussian heatmaps on the GPU: points (M, 2) -> maps (M, H, W), peak 1.
//
//   out[m, i, j] = exp(-((gx_j - x_m)^2 + (gy_i - y_m)^2) a) = ex_j * ey_i,   a = 1 / (2 std^2)
//   with ex_j = exp(-(gx_j - x_m)^2 a), ey_i = exp(-(gy_i - y_m)^2 a).
//   grad x_m = 2a sum_ij g_ij out_ij (gx_j - x_m),  grad y_m = 2a sum_ij g_ij out_ij (gy_i - y_m).
//
// Work split: one block of 256 threads per map (grid-stride over maps), as a TX x TY grid of
// threads; thread (tx, ty) owns VEC consecutive columns (VEC = 16 bytes of the dtype) and rows
// ty, ty + TY, ... Its VEC column factors are computed once in registers, each row costs one exp,
// and each output element is one multiply, written once with a 16-byte store where the rows are
// aligned. The backward reads the incoming gradient once (same layout) and reduces over the block.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"

namespace fastlmk {
namespace cuda {
namespace {

constexpr const char* kOp = "gaussian_heatmaps";

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    gaussian_forward_kernel(const T* __restrict__ points, T* __restrict__ out, int64_t M, int H, int W, acc_t<T> a,
                            GridAxis<acc_t<T>> ax, GridAxis<acc_t<T>> ay, bool vec_io) {
  using A = acc_t<T>;
  const int nvec = (W + VEC - 1) / VEC;
  const int64_t n = int64_t(H) * W;
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const A x = ld(points + 2 * m), y = ld(points + 2 * m + 1);
    T* __restrict__ om = out + m * n;
    for (int cv = threadIdx.x; cv < nvec; cv += blockDim.x) {
      const int j0 = cv * VEC;
      A ex[VEC];
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        const A d = ax(j0 + u) - x;
        ex[u] = j0 + u < W ? exp_(-(d * d) * a) : A(0);
      }
      for (int i = threadIdx.y; i < H; i += blockDim.y) {
        const A d = ay(i) - y;
        const A ey = exp_(-(d * d) * a);
        T* row = om + int64_t(i) * W + j0;
        if (vec_io) {  // W % VEC == 0 and out 16-byte aligned: the VEC elements are in this row
          A v[VEC];
#pragma unroll
          for (int u = 0; u < VEC; ++u) v[u] = ey * ex[u];
          st_vec16(row, v);
        } else {
#pragma unroll
          for (int u = 0; u < VEC; ++u) {
            if (j0 + u < W) st(row + u, ey * ex[u]);
          }
        }
      }
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
    gaussian_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ points,
                             T* __restrict__ grad_points, int64_t M, int H, int W, acc_t<T> a,
                             GridAxis<acc_t<T>> ax, GridAxis<acc_t<T>> ay, bool vec_io) {
  using A = acc_t<T>;
  __shared__ A red[2 * kWarp];
  const int nvec = (W + VEC - 1) / VEC;
  const int64_t n = int64_t(H) * W;
  const bool first = threadIdx.x == 0 && threadIdx.y == 0;
  for (int64_t m = blockIdx.x; m < M; m += gridDim.x) {
    const A x = ld(points + 2 * m), y = ld(points + 2 * m + 1);
    const T* __restrict__ gm = grad_out + m * n;
    A accx = 0, accy = 0;  // sum g e (gx - x), sum g e (gy - y)
    for (int cv = threadIdx.x; cv < nvec; cv += blockDim.x) {
      const int j0 = cv * VEC;
      A ex[VEC], exdx[VEC];
#pragma unroll
      for (int u = 0; u < VEC; ++u) {
        const A d = ax(j0 + u) - x;
        ex[u] = j0 + u < W ? exp_(-(d * d) * a) : A(0);
        exdx[u] = ex[u] * d;
      }
      for (int i = threadIdx.y; i < H; i += blockDim.y) {
        const A d = ay(i) - y;
        const A ey = exp_(-(d * d) * a);
        const T* row = gm + int64_t(i) * W + j0;
        A g[VEC];
        if (vec_io) {
          ld_vec16(row, g);
        } else {
#pragma unroll
          for (int u = 0; u < VEC; ++u) g[u] = j0 + u < W ? ld(row + u) : A(0);
        }
        A r1 = 0, r2 = 0;
#pragma unroll
        for (int u = 0; u < VEC; ++u) {
          r1 += g[u] * exdx[u];
          r2 += g[u] * ex[u];
        }
        accx += ey * r1;
        accy += ey * d * r2;
      }
    }
    block_sum2(accx, accy, red);
    if (first) {
      st(grad_points + 2 * m, A(2) * a * accx);
      st(grad_points + 2 * m + 1, A(2) * a * accy);
    }
    __syncthreads();  // `red` is reused by the next map
  }
}

struct Launch {
  dim3 block, grid;
};

// TX threads across the VEC-column chunks (a power of two, <= 256), TY = 256 / TX down the rows.
Launch launch_shape(int64_t M, int64_t W, int vec) {
  const int64_t nvec = (W + vec - 1) / vec;
  int tx = 1;
  while (tx < nvec && tx < kThreads) tx *= 2;
  Launch l;
  l.block = dim3(unsigned(tx), unsigned(kThreads / tx));
  l.grid = dim3(unsigned(M < INT_MAX ? M : INT_MAX));
  return l;
}

void check_args(int64_t M, int64_t H, int64_t W) {
  check_size(kOp, "M (maps)", M, int64_t(1) << 40);
  check_size(kOp, "H", H, INT_MAX);
  check_size(kOp, "W", W, INT_MAX - 64);
}

}  // namespace

void gaussian_heatmaps_forward(int dtype, const void* points, void* out, int64_t M, int64_t H, int64_t W,
                               double inv_two_var, void* stream) {
  check_args(M, H, W);
  if (M == 0 || H == 0 || W == 0) return;
  const cudaStream_t st = as_stream(stream);
  dispatch_dtype(dtype, kOp, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    constexpr int VEC = VecWidth<T>::value;
    const bool vec_io = W % VEC == 0 && reinterpret_cast<std::uintptr_t>(out) % 16 == 0;
    const Launch l = launch_shape(M, W, VEC);
    FASTLMK_LAUNCH(l.grid, l.block, 0, st, gaussian_forward_kernel<T, VEC>)(
        static_cast<const T*>(points), static_cast<T*>(out), M, int(H), int(W), A(inv_two_var), GridAxis<A>(W),
        GridAxis<A>(H), vec_io);
    FASTLMK_CUDA_CHECK_LAUNCH(kOp);
  });
}

void gaussian_heatmaps_backward(int dtype, const void* grad_out, const void* points, void* grad_points, int64_t M,
                                int64_t H, int64_t W, double inv_two_var, void* stream) {
  check_args(M, H, W);
  if (M == 0) return;
  const cudaStream_t st = as_stream(stream);
  dispatch_dtype(dtype, kOp, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    if (H == 0 || W == 0) {  // empty maps: the gradient is 0
      check_cuda(cudaMemsetAsync(grad_points, 0, size_t(M) * 2 * sizeof(T), st), kOp);
      return;
    }
    constexpr int VEC = VecWidth<T>::value;
    const bool vec_io = W % VEC == 0 && reinterpret_cast<std::uintptr_t>(grad_out) % 16 == 0;
    const Launch l = launch_shape(M, W, VEC);
    FASTLMK_LAUNCH(l.grid, l.block, 0, st, gaussian_backward_kernel<T, VEC>)(
        static_cast<const T*>(grad_out), static_cast<const T*>(points), static_cast<T*>(grad_points), M, int(H),
        int(W), A(inv_two_var), GridAxis<A>(W), GridAxis<A>(H), vec_io);
    FASTLMK_CUDA_CHECK_LAUNCH(kOp);
  });
}

}  // namespace cuda
}  // namespace fastlmk
