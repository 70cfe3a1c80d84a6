// Fused thin-plate-spline image warp on the GPU (spline evaluation + bilinear sampling).
//
//   out[b, c, p] = bilinear(image[b, c], f_b(p)) for every output pixel centre p in [-1, 1]^2,
//   exactly F.grid_sample(image, f(grid), mode="bilinear", padding_mode=zeros|border,
//   align_corners=True): ix = (sx + 1) / 2 (Win - 1), iy likewise; border clamps ix to
//   [0, Win - 1] (gradient 0 where clamped, and at the borders themselves, as torch does).
//
// Work split: one thread per output pixel (x fastest, so loads of grad_out and stores of out are
// coalesced), 256 pixels per block; blockIdx.y walks groups of BT images. With one control lattice
// shared by the batch (shared_ctrl) a thread serves BT = 4 or 8 images: the radial basis
// U(|p - c_i|^2) is evaluated once per pixel and control point, and only the weights differ.
// Control points and weights are staged in shared memory in chunks (broadcast reads). Neither the
// (B, P, N) basis nor the sampling grid is ever written to memory.
//
// Backward, per output pixel and image (the spline recomputed as in the forward):
//   grad_image: each grad_out value scattered to its (up to) four valid taps with atomicAdd.
//   dL/ds (s = f(p), the sampling position) = sum_c go_c d bilinear_c / d(ix, iy) * d(ix, iy)/ds.
//   grad_coef[b, k] = sum_p phi_k(p) dL/ds_b(p), phi = [U..., 1, x, y]: the block writes dL/ds of its
//   256 pixels to shared memory, then thread k accumulates coefficient k over that tile (again
//   evaluating the basis once for the BT images). Blocks are sized to be resident together and loop
//   over tiles, keeping the per-coefficient sums in registers (N + 3 <= 256), so each block ends
//   with one atomicAdd per coefficient.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"

namespace fastlmk {
namespace cuda {
namespace {

constexpr const char* kOp = "tps_warp";

// Bilinear taps of sampling position (sx, sy) in an H x W image, grid_sample semantics
// (align_corners=True). Tap (y0 + dy, x0 + dx) is read only when its flag is set; the integer
// corner is clamped first, so no invalid address is ever formed (huge positions sample nothing in
// zeros mode). A NaN position samples NaN in zeros mode and the border pixel 0 in border mode, as
// grid_sample does.
template <typename A> struct Bilinear {
  A wx0, wx1, wy0, wy1;  // weights: (x0 + 1 - ix, ix - x0), (y0 + 1 - iy, iy - y0)
  A gmx, gmy;            // d ix / d sx and d iy / d sy, including the border clamp
  int x0, y0;
  bool vx0, vx1, vy0, vy1;
  bool nan_pt;  // zeros mode and a NaN sample position: the sample is NaN

  __device__ __forceinline__ Bilinear(A sx, A sy, int H, int W, bool border) {
    nan_pt = !border && !(sx == sx && sy == sy);
    const A wm1 = A(W - 1), hm1 = A(H - 1);
    A ix = (sx + A(1)) * A(0.5) * wm1;
    A iy = (sy + A(1)) * A(0.5) * hm1;
    gmx = A(0.5) * wm1;
    gmy = A(0.5) * hm1;
    if (border) {
      if (!(ix > A(0) && ix < wm1)) gmx = A(0);
      if (!(iy > A(0) && iy < hm1)) gmy = A(0);
      ix = min_(max_(ix, A(0)), wm1);  // NaN -> 0
      iy = min_(max_(iy, A(0)), hm1);
    }
    const A fx0 = floor_(ix), fy0 = floor_(iy);
    vx0 = fx0 >= A(0) && fx0 <= wm1;  // false for NaN
    vx1 = fx0 >= A(-1) && fx0 <= wm1 - A(1);
    vy0 = fy0 >= A(0) && fy0 <= hm1;
    vy1 = fy0 >= A(-1) && fy0 <= hm1 - A(1);
    x0 = int(min_(max_(fx0, A(-1)), A(W)));
    y0 = int(min_(max_(fy0, A(-1)), A(H)));
    wx1 = ix - fx0;
    wx0 = (fx0 + A(1)) - ix;
    wy1 = iy - fy0;
    wy0 = (fy0 + A(1)) - iy;
  }

  template <typename T> __device__ __forceinline__ void taps(const T* __restrict__ plane, int W, A& v00, A& v01,
                                                             A& v10, A& v11) const {
    const T* r0 = plane + int64_t(y0) * W + x0;  // only dereferenced where the taps are valid
    const T* r1 = r0 + W;
    v00 = vy0 && vx0 ? ld(r0) : A(0);
    v01 = vy0 && vx1 ? ld(r0 + 1) : A(0);
    v10 = vy1 && vx0 ? ld(r1) : A(0);
    v11 = vy1 && vx1 ? ld(r1 + 1) : A(0);
  }

  template <typename T> __device__ __forceinline__ A sample(const T* __restrict__ plane, int W) const {
    A v00, v01, v10, v11;
    taps(plane, W, v00, v01, v10, v11);
    return nan_pt ? Consts<A>::nan : v00 * (wx0 * wy0) + v01 * (wx1 * wy0) + v10 * (wx0 * wy1) + v11 * (wx1 * wy1);
  }
};

// Shared-memory layout of both kernels (all vec2_t, so every array is aligned):
//   s_w[chunk * BT], s_c[chunk]                      staged weights and control points
//   s_p[kThreads], s_gs[kThreads * BT] (backward)    pixel positions and dL/ds of the tile
template <typename A, int BT> struct Smem {
  vec2_t<A>*s_w, *s_c, *s_p, *s_gs;
  __device__ __forceinline__ Smem(unsigned char* raw, int chunk) {
    s_w = reinterpret_cast<vec2_t<A>*>(raw);
    s_c = s_w + chunk * BT;
    s_p = s_c + chunk;
    s_gs = s_p + kThreads;
  }
  static size_t bytes(int chunk, bool backward) {
    return sizeof(vec2_t<A>) * (size_t(chunk) * (BT + 1) + (backward ? size_t(kThreads) * (BT + 1) : 0));
  }
};

template <typename T, int BT>
__global__ void __launch_bounds__(kThreads)
    tps_warp_forward_kernel(const T* __restrict__ image, const acc_t<T>* __restrict__ ctrl,
                            const acc_t<T>* __restrict__ coef, T* __restrict__ out, int B, int C, int Hin, int Win,
                            int Ho, int Wo, int N, bool shared_ctrl, bool border, int chunk, GridAxis<acc_t<T>> axo,
                            GridAxis<acc_t<T>> ayo) {
  using A = acc_t<T>;
    const Smem<A, BT> sm(dynamic_smem(), chunk);
  const int P = Ho * Wo, K = N + 3;
  const int64_t plane_in = int64_t(Hin) * Win;
  const int pix = blockIdx.x * kThreads + threadIdx.x;
  const bool valid = pix < P;
  const int oi = valid ? pix / Wo : 0, oj = valid ? pix - (pix / Wo) * Wo : 0;
  const A px = axo(oj), py = ayo(oi);
  const int ngroups = (B + BT - 1) / BT;

  for (int g = blockIdx.y; g < ngroups; g += gridDim.y) {
    const int b0 = g * BT, nb = min(BT, B - b0);
    const A* ctrl_b = ctrl + (shared_ctrl ? 0 : int64_t(b0) * N * 2);  // BT == 1 unless shared_ctrl
    A fx[BT], fy[BT];
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) fx[bt] = fy[bt] = A(0);
    for (int c0 = 0; c0 < N; c0 += chunk) {
      const int cn = min(chunk, N - c0);
      __syncthreads();  // the previous chunk is consumed
      tps_stage_chunk<A, BT>(ctrl_b, coef, b0, nb, K, c0, cn, sm.s_c, sm.s_w);
      __syncthreads();
      if (valid) tps_radial_chunk<A, BT>(px, py, sm.s_c, sm.s_w, cn, fx, fy);
    }
    if (valid) {
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        if (bt < nb) {
          const int b = b0 + bt;
          A sx, sy;
          tps_affine(coef + int64_t(b) * K * 2, N, px, py, fx[bt], fy[bt], sx, sy);
          const Bilinear<A> bl(sx, sy, Hin, Win, border);
          const T* img = image + int64_t(b) * C * plane_in;
          T* o = out + int64_t(b) * C * P + pix;
          for (int c = 0; c < C; ++c) st(o + int64_t(c) * P, bl.sample(img + int64_t(c) * plane_in, Win));
        }
      }
    }
  }
}

template <typename T, int BT>
__global__ void __launch_bounds__(kThreads)
    tps_warp_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ image,
                             const acc_t<T>* __restrict__ ctrl, const acc_t<T>* __restrict__ coef,
                             acc_t<T>* __restrict__ grad_image, acc_t<T>* __restrict__ grad_coef, int B, int C,
                             int Hin, int Win, int Ho, int Wo, int N, bool shared_ctrl, bool border, int chunk,
                             GridAxis<acc_t<T>> axo, GridAxis<acc_t<T>> ayo) {
  using A = acc_t<T>;
    const Smem<A, BT> sm(dynamic_smem(), chunk);
  const bool need_image = grad_image != nullptr, need_coef = grad_coef != nullptr;
  const int P = Ho * Wo, K = N + 3;
  const int64_t plane_in = int64_t(Hin) * Win;
  const int ntiles = (P + kThreads - 1) / kThreads;
  const int ngroups = (B + BT - 1) / BT;
  const int tid = threadIdx.x;
  const bool keep_in_regs = K <= kThreads;  // thread tid owns coefficient row tid for all tiles

  for (int g = blockIdx.y; g < ngroups; g += gridDim.y) {
    const int b0 = g * BT, nb = min(BT, B - b0);
    const A* ctrl_b = ctrl + (shared_ctrl ? 0 : int64_t(b0) * N * 2);
    A keep[BT][2];
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) keep[bt][0] = keep[bt][1] = A(0);

    for (int tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
      const int pix = tile * kThreads + tid;
      const bool valid = pix < P;
      const int oi = valid ? pix / Wo : 0, oj = valid ? pix - (pix / Wo) * Wo : 0;
      const A px = axo(oj), py = ayo(oi);

      // stage 1: spline at this pixel for the BT images
      A fx[BT], fy[BT];
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) fx[bt] = fy[bt] = A(0);
      for (int c0 = 0; c0 < N; c0 += chunk) {
        const int cn = min(chunk, N - c0);
        __syncthreads();
        tps_stage_chunk<A, BT>(ctrl_b, coef, b0, nb, K, c0, cn, sm.s_c, sm.s_w);
        __syncthreads();
        if (valid) tps_radial_chunk<A, BT>(px, py, sm.s_c, sm.s_w, cn, fx, fy);
      }
      // stage 2: scatter to grad_image, dL/ds to shared memory
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        A gsx = 0, gsy = 0;
        if (valid && bt < nb) {
          const int b = b0 + bt;
          A sx, sy;
          tps_affine(coef + int64_t(b) * K * 2, N, px, py, fx[bt], fy[bt], sx, sy);
          const Bilinear<A> bl(sx, sy, Hin, Win, border);
          const int64_t ob = int64_t(b) * C;
          const int64_t o00 = int64_t(bl.y0) * Win + bl.x0;  // used only for valid taps
          A gix = 0, giy = 0;
          for (int c = 0; c < C; ++c) {
            const A go = ld(grad_out + (ob + c) * P + pix);
            if (need_coef) {
              A v00, v01, v10, v11;
              bl.taps(image + (ob + c) * plane_in, Win, v00, v01, v10, v11);
              gix += go * ((v01 - v00) * bl.wy0 + (v11 - v10) * bl.wy1);
              giy += go * ((v10 - v00) * bl.wx0 + (v11 - v01) * bl.wx1);
            }
            if (need_image) {
              A* gp = grad_image + (ob + c) * plane_in + o00;
              if (bl.vy0 && bl.vx0) atomicAdd(gp, go * (bl.wx0 * bl.wy0));
              if (bl.vy0 && bl.vx1) atomicAdd(gp + 1, go * (bl.wx1 * bl.wy0));
              if (bl.vy1 && bl.vx0) atomicAdd(gp + Win, go * (bl.wx0 * bl.wy1));
              if (bl.vy1 && bl.vx1) atomicAdd(gp + Win + 1, go * (bl.wx1 * bl.wy1));
            }
          }
          gsx = gix * bl.gmx;
          gsy = giy * bl.gmy;
        }
        if (need_coef) sm.s_gs[tid * BT + bt] = vec2_t<A>{gsx, gsy};
      }
      if (need_coef) {
        sm.s_p[tid] = vec2_t<A>{px, py};  // invalid pixels carry dL/ds = 0
        __syncthreads();
        // stage 3: thread k accumulates coefficient row k over the tile
        const int tp = min(kThreads, P - tile * kThreads);
        for (int k = tid; k < K; k += kThreads) {
          A acc[BT][2];
          tps_coef_grad_tile<A, BT>(k, N, ctrl_b, sm.s_p, sm.s_gs, tp, acc);
          if (keep_in_regs) {
#pragma unroll
            for (int bt = 0; bt < BT; ++bt) {
              keep[bt][0] += acc[bt][0];
              keep[bt][1] += acc[bt][1];
            }
          } else {
#pragma unroll
            for (int bt = 0; bt < BT; ++bt) {
              if (bt < nb) {
                A* gc = grad_coef + (int64_t(b0 + bt) * K + k) * 2;
                atomicAdd(gc, acc[bt][0]);
                atomicAdd(gc + 1, acc[bt][1]);
              }
            }
          }
        }
        __syncthreads();  // s_p / s_gs are rewritten by the next tile
      }
    }
    if (need_coef && keep_in_regs && tid < K) {
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        if (bt < nb) {
          A* gc = grad_coef + (int64_t(b0 + bt) * K + tid) * 2;
          atomicAdd(gc, keep[bt][0]);
          atomicAdd(gc + 1, keep[bt][1]);
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
constexpr size_t kSmemBudget = 48 * 1024;
constexpr int kMaxChunk = 512;

// images per thread: the shared-lattice fast path needs one control lattice for the whole batch
int images_per_thread(bool shared_ctrl, int64_t B) {
  if (!shared_ctrl) return 1;
  return B >= 6 ? 8 : B >= 2 ? 4 : 1;
}

template <typename F> void with_bt(int bt, F&& f) {
  switch (bt) {
    case 8: f(IntTag<8>{}); break;
    case 4: f(IntTag<4>{}); break;
    default: f(IntTag<1>{}); break;
  }
}

template <typename A, int BT> int chunk_size(int64_t N, bool backward) {
  const size_t fixed = Smem<A, BT>::bytes(0, backward);
  const size_t per = Smem<A, BT>::bytes(1, false);
  int cap = int((kSmemBudget - fixed) / per);
  cap = cap < 1 ? 1 : cap > kMaxChunk ? kMaxChunk : cap;
  return N < cap ? (N > 0 ? int(N) : 1) : cap;
}

void check_args(int64_t B, int64_t C, int64_t Hin, int64_t Win, int64_t Ho, int64_t Wo, int64_t N) {
  constexpr int64_t kMaxSide = int64_t(1) << 24;  // pixel indices exact in float
  check_size(kOp, "B", B, INT_MAX);
  check_size(kOp, "C", C, INT_MAX);
  check_size(kOp, "H_in", Hin, kMaxSide);
  check_size(kOp, "W_in", Win, kMaxSide);
  check_size(kOp, "H_out", Ho, kMaxSide);
  check_size(kOp, "W_out", Wo, kMaxSide);
  check_size(kOp, "H_in * W_in", Hin * Win, INT_MAX);
  check_size(kOp, "H_out * W_out", Ho * Wo, INT_MAX - kThreads);
  check_size(kOp, "N (control points)", N, INT_MAX / 4);
}

}  // namespace

void tps_warp_forward(int dtype, const void* image, const void* ctrl, const void* coef, void* out, int64_t B,
                      int64_t C, int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout, int64_t N,
                      bool shared_ctrl, bool border, void* stream) {
  check_args(B, C, Hin, Win, Hout, Wout, N);
  if (B == 0 || C == 0 || Hout == 0 || Wout == 0) return;
  const cudaStream_t st = as_stream(stream);
  dispatch_dtype(dtype, kOp, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    with_bt(images_per_thread(shared_ctrl, B), [&](auto tag) {
      constexpr int BT = decltype(tag)::value;
      const int chunk = chunk_size<A, BT>(N, false);
      const size_t smem = N > 0 ? Smem<A, BT>::bytes(chunk, false) : 0;
      const int64_t ngroups = (B + BT - 1) / BT;
      const dim3 grid(unsigned((Hout * Wout + kThreads - 1) / kThreads), unsigned(ngroups < 65535 ? ngroups : 65535));
      FASTLMK_LAUNCH(grid, kThreads, smem, st, tps_warp_forward_kernel<T, BT>)(
          static_cast<const T*>(image), static_cast<const A*>(ctrl), static_cast<const A*>(coef), static_cast<T*>(out),
          int(B), int(C), int(Hin), int(Win), int(Hout), int(Wout), int(N), shared_ctrl, border, chunk,
          GridAxis<A>(Wout), GridAxis<A>(Hout));
      FASTLMK_CUDA_CHECK_LAUNCH(kOp);
    });
  });
}

void tps_warp_backward(int dtype, const void* grad_out, const void* image, const void* ctrl, const void* coef,
                       void* grad_image, void* grad_coef, int64_t B, int64_t C, int64_t Hin, int64_t Win,
                       int64_t Hout, int64_t Wout, int64_t N, bool shared_ctrl, bool border, void* stream) {
  check_args(B, C, Hin, Win, Hout, Wout, N);
  // the gradients are accumulated into zero-filled buffers: nothing to add for empty work
  if (B == 0 || C == 0 || Hout == 0 || Wout == 0 || (grad_image == nullptr && grad_coef == nullptr)) return;
  const cudaStream_t st = as_stream(stream);
  dispatch_dtype(dtype, kOp, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    with_bt(images_per_thread(shared_ctrl, B), [&](auto tag) {
      constexpr int BT = decltype(tag)::value;
      const int chunk = chunk_size<A, BT>(N, true);
      const size_t smem = Smem<A, BT>::bytes(chunk, true);
      const int64_t ngroups = (B + BT - 1) / BT;
      const int64_t ntiles = (Hout * Wout + kThreads - 1) / kThreads;
      const unsigned gy = unsigned(ngroups < 65535 ? ngroups : 65535);
      // as many blocks as can be resident at once, spread over the image groups; each loops over
      // its tiles and issues its coefficient atomics once
      auto kernel = tps_warp_backward_kernel<T, BT>;
      int per_sm = 0;
      check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads, smem), kOp);
      const int64_t resident = int64_t(per_sm > 0 ? per_sm : 1) * sm_count(kOp);
      int64_t gx = resident / gy;
      gx = gx < 1 ? 1 : gx > ntiles ? ntiles : gx;
      FASTLMK_LAUNCH(dim3(unsigned(gx), gy), kThreads, smem, st, kernel)(
          static_cast<const T*>(grad_out), static_cast<const T*>(image), static_cast<const A*>(ctrl),
          static_cast<const A*>(coef), static_cast<A*>(grad_image), static_cast<A*>(grad_coef), int(B), int(C),
          int(Hin), int(Win), int(Hout), int(Wout), int(N), shared_ctrl, border, chunk, GridAxis<A>(Wout),
          GridAxis<A>(Hout));
      FASTLMK_CUDA_CHECK_LAUNCH(kOp);
    });
  });
}

}  // namespace cuda
}  // namespace fastlmk
