// soft-argmax on the GPU: heatmap logits (M, H, W) -> points (M, 2) (x, y) in [-1, 1].
//
// Work split: a group of TPM threads (TPM = 32: one warp, up to 256: one block) per map; a block
// of 256 threads holds 256 / TPM maps. TPM grows with the map size and when there are few maps.
//
// spatial:  p = softmax(l * inv_t) over all H*W pixels, x = sum p gx, y = sum p gy.
//   forward: each thread streams its elements once (4 loads in flight), keeping an online
//     (max l, sum e, sum e gx, sum e gy) in base 2 (e = 2^((l - max) c), c = inv_t * log2 e); the
//     group merges the partial states (shuffles, then shared memory across warps).
//     stats = (max l, log2 sum e): kept apart, not summed into one lse, whose float32 rounding
//     (~0.01 at |l inv_t| ~ 1e5) would bias p.
//   backward: elementwise, dL/dl_ij = inv_t p_ij ((gx_j - x) gpx + (gy_i - y) gpy), p recomputed
//     from the saved (max, log-sum) as 2^((l - max) c - log2 s).
// Every exponent is formed as (l - max) * c (scaled_diff), never as l * c - max * c, which the
// compiler contracts into an FMA that keeps the product's rounding error (up to half an ulp of
// |l c|, 512 at 1e10): huge logits or tiny temperatures then lost the peak.
// marginal (IMM): colmean_j = mean_i l_ij, rowmean_i = mean_j l_ij,
//   q = softmax(colmean * inv_t) (W), r = softmax(rowmean * inv_t) (H), x = sum q gx, y = sum r gy.
//   forward: each warp of the group sums whole rows (coalesced; warp reduction), then each thread
//     sums whole columns (coalesced across threads; these re-reads hit L1/L2), both feeding online
//     softmax states. stats = (max, log2-sum) of the column softmax, then of the row softmax.
//   backward: dL/dl_ij = inv_t/H q_j (gx_j - x) gpx + inv_t/W r_i (gy_i - y) gpy: the row terms
//     go to shared memory (or, for very tall maps, are written into grad_logits first), then the
//     column owner writes (or adds) the column term.
#include "cuda/cuda_common.cuh"
#include "cuda/cuda_ops.h"

namespace fastlmk {
namespace cuda {
namespace {

constexpr const char* kOp = "soft_argmax";
constexpr int kUnroll = 4;

// (a - m) * c for m >= a: exactly 0 at the maximum, also for an infinite c.
template <typename A> __device__ __forceinline__ A scaled_diff(A a, A m, A c) {
  const A d = a - m;
  return d == A(0) ? A(0) : d * c;
}

// 2^((a - m) c) for the online softmax, where m >= a; 0 for a = -inf (also when m = -inf).
template <typename A> __device__ __forceinline__ A exp2_shift(A a, A m, A c) {
  return a == -Consts<A>::inf ? A(0) : exp2_(scaled_diff(a, m, c));
}

// Merge the online-softmax state (m, s, w1, w2) with (m2, s2, v1, v2): both rescaled to the
// larger max. An empty state has m = -inf and zero sums.
template <typename A>
__device__ __forceinline__ void merge_state(A& m, A& s, A& w1, A& w2, A m2, A s2, A v1, A v2, A c) {
  const A mn = max_(m, m2);
  const A a = exp2_shift(m, mn, c), b = exp2_shift(m2, mn, c);
  s = s * a + s2 * b;
  w1 = w1 * a + v1 * b;
  w2 = w2 * a + v2 * b;
  m = mn;
}

// Add one element t (a logit) with weights g1, g2 to the state.
template <typename A>
__device__ __forceinline__ void push_state(A& m, A& s, A& w1, A& w2, A t, A g1, A g2, A c) {
  const A mn = max_(m, t);
  const A a = exp2_shift(m, mn, c), e = exp2_shift(t, mn, c);
  s = s * a + e;
  w1 = w1 * a + e * g1;
  w2 = w2 * a + e * g2;
  m = mn;
}

template <typename A> __device__ __forceinline__ void warp_merge(A& m, A& s, A& w1, A& w2, A c) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const A m2 = __shfl_xor_sync(0xffffffffu, m, o);
    const A s2 = __shfl_xor_sync(0xffffffffu, s, o);
    const A v1 = __shfl_xor_sync(0xffffffffu, w1, o);
    const A v2 = __shfl_xor_sync(0xffffffffu, w2, o);
    merge_state(m, s, w1, w2, m2, s2, v1, v2, c);
  }
}

// ---------------------------------------------------------------------------------------------
// spatial forward. c = inv_t * log2(e).
template <typename T, int TPM>
__global__ void __launch_bounds__(kThreads)
    spatial_forward_kernel(const T* __restrict__ logits, T* __restrict__ points, acc_t<T>* __restrict__ stats,
                           int64_t M, int H, int W, acc_t<T> c, GridAxis<acc_t<T>> ax, GridAxis<acc_t<T>> ay) {
  using A = acc_t<T>;
  constexpr int G = kThreads / TPM;  // maps per block
  constexpr int NW = TPM / kWarp;    // warps per map
  __shared__ A red[kThreads / kWarp][4];
  const int grp = threadIdx.x / TPM, r = threadIdx.x % TPM;
  const int64_t m = int64_t(blockIdx.x) * G + grp;
  const int n = H * W;

  A mx = -Consts<A>::inf, s = 0, sx = 0, sy = 0;
  if (m < M) {
    const T* __restrict__ lm = logits + m * n;
    // (i, j) of flat index k, advanced incrementally by TPM per step
    int i = r / W, j = r - (r / W) * W;
    const int di = TPM / W, dj = TPM - (TPM / W) * W;
    for (int k = r; k < n; k += kUnroll * TPM) {
      A t[kUnroll], px[kUnroll], py[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int ku = k + u * TPM;
        t[u] = ku < n ? ld(lm + ku) : -Consts<A>::inf;
        px[u] = ax(j);
        py[u] = ay(i);
        j += dj;
        i += di;
        if (j >= W) {
          j -= W;
          ++i;
        }
      }
      const A mn = max_(mx, max_(max_(t[0], t[1]), max_(t[2], t[3])));
      const A a = exp2_shift(mx, mn, c);
      s *= a;
      sx *= a;
      sy *= a;
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const A e = exp2_shift(t[u], mn, c);
        s += e;
        sx += e * px[u];
        sy += e * py[u];
      }
      mx = mn;
    }
  }
  warp_merge(mx, s, sx, sy, c);  // all 32 lanes of a warp belong to the same map
  if constexpr (NW > 1) {
    const int warp = threadIdx.x / kWarp, lane = threadIdx.x % kWarp;
    if (lane == 0) {
      red[warp][0] = mx;
      red[warp][1] = s;
      red[warp][2] = sx;
      red[warp][3] = sy;
    }
    __syncthreads();
    if (r == 0) {
      for (int w = 1; w < NW; ++w) {
        const int q = warp + w;  // warp == grp * NW here
        merge_state(mx, s, sx, sy, red[q][0], red[q][1], red[q][2], red[q][3], c);
      }
    }
  }
  if (r == 0 && m < M) {
    st(points + 2 * m, sx / s);
    st(points + 2 * m + 1, sy / s);
    stats[2 * m] = mx;
    stats[2 * m + 1] = log2_(s);
  }
}

// spatial backward: elementwise given the per-map scalars. c = inv_t * log2(e).
template <typename T, int TPM>
__global__ void __launch_bounds__(kThreads)
    spatial_backward_kernel(const T* __restrict__ grad_points, const T* __restrict__ logits,
                            const acc_t<T>* __restrict__ stats, const T* __restrict__ points,
                            T* __restrict__ grad_logits, int64_t M, int H, int W, acc_t<T> c, acc_t<T> inv_t,
                            GridAxis<acc_t<T>> ax, GridAxis<acc_t<T>> ay) {
  using A = acc_t<T>;
  constexpr int G = kThreads / TPM;
  const int grp = threadIdx.x / TPM, r = threadIdx.x % TPM;
  const int64_t m = int64_t(blockIdx.x) * G + grp;
  if (m >= M) return;  // no barriers in this kernel
  const int n = H * W;
  const T* __restrict__ lm = logits + m * n;
  T* __restrict__ gm = grad_logits + m * n;
  const A mx = stats[2 * m], log2s = stats[2 * m + 1];
  const A gpx = ld(grad_points + 2 * m) * inv_t, gpy = ld(grad_points + 2 * m + 1) * inv_t;
  const A x = ld(points + 2 * m), y = ld(points + 2 * m + 1);
  int i = r / W, j = r - (r / W) * W;
  const int di = TPM / W, dj = TPM - (TPM / W) * W;
  for (int k = r; k < n; k += kUnroll * TPM) {
    A l[kUnroll], wgt[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int ku = k + u * TPM;
      l[u] = ku < n ? ld(lm + ku) : A(0);
      wgt[u] = gpx * (ax(j) - x) + gpy * (ay(i) - y);
      j += dj;
      i += di;
      if (j >= W) {
        j -= W;
        ++i;
      }
    }
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int ku = k + u * TPM;
      if (ku < n) st(gm + ku, exp2_(scaled_diff(l[u], mx, c) - log2s) * wgt[u]);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// marginal forward. c = inv_t * log2(e).
template <typename T, int TPM>
__global__ void __launch_bounds__(kThreads)
    marginal_forward_kernel(const T* __restrict__ logits, T* __restrict__ points, acc_t<T>* __restrict__ stats,
                            int64_t M, int H, int W, acc_t<T> c, GridAxis<acc_t<T>> ax, GridAxis<acc_t<T>> ay) {
  using A = acc_t<T>;
  constexpr int G = kThreads / TPM;
  constexpr int NW = TPM / kWarp;
  __shared__ A red[kThreads / kWarp][6];
  const int grp = threadIdx.x / TPM, r = threadIdx.x % TPM;
  const int wig = r / kWarp, lane = r % kWarp;  // warp in group, lane
  const int64_t m = int64_t(blockIdx.x) * G + grp;
  const int n = H * W;

  // column softmax state (gives x) and row softmax state (gives y)
  A mc = -Consts<A>::inf, sc = 0, scx = 0, ucx = 0;
  A mr = -Consts<A>::inf, sr = 0, sry = 0, ury = 0;
  if (m < M) {
    const T* __restrict__ lm = logits + m * n;
    // rows: warp wig of the group takes rows wig, wig + NW, ...; the whole warp shares the row
    for (int i = wig; i < H; i += NW) {
      const T* __restrict__ row = lm + i * W;
      A rs = 0;
      for (int j = lane; j < W; j += kWarp) rs += ld(row + j);
      rs = warp_sum(rs);  // uniform across the warp: same map, same row
      push_state(mr, sr, sry, ury, rs / A(W), ay(i), A(0), c);
    }
    // columns: thread r takes columns r, r + TPM, ...
    for (int j = r; j < W; j += TPM) {
      A cs = 0;
#pragma unroll 4
      for (int i = 0; i < H; ++i) cs += ld(lm + i * W + j);
      push_state(mc, sc, scx, ucx, cs / A(H), ax(j), A(0), c);
    }
  }
  // row states are identical across the lanes of a warp: merge them across warps only
  warp_merge(mc, sc, scx, ucx, c);
  if constexpr (NW > 1) {
    const int warp = threadIdx.x / kWarp;
    if (lane == 0) {
      red[warp][0] = mc;
      red[warp][1] = sc;
      red[warp][2] = scx;
      red[warp][3] = mr;
      red[warp][4] = sr;
      red[warp][5] = sry;
    }
    __syncthreads();
    if (r == 0) {
      for (int w = 1; w < NW; ++w) {
        const int q = warp + w;
        merge_state(mc, sc, scx, ucx, red[q][0], red[q][1], red[q][2], A(0), c);
        merge_state(mr, sr, sry, ury, red[q][3], red[q][4], red[q][5], A(0), c);
      }
    }
  }
  if (r == 0 && m < M) {
    st(points + 2 * m, scx / sc);
    st(points + 2 * m + 1, sry / sr);
    stats[4 * m] = mc;
    stats[4 * m + 1] = log2_(sc);
    stats[4 * m + 2] = mr;
    stats[4 * m + 3] = log2_(sr);
  }
}

// marginal backward. ROWS_IN_SMEM: the row terms of the group's map live in dynamic shared memory
// (G * H acc_t); otherwise they are first written into grad_logits and the column pass adds to them.
template <typename T, int TPM, bool ROWS_IN_SMEM>
__global__ void __launch_bounds__(kThreads)
    marginal_backward_kernel(const T* __restrict__ grad_points, const T* __restrict__ logits,
                             const acc_t<T>* __restrict__ stats, const T* __restrict__ points,
                             T* __restrict__ grad_logits, int64_t M, int H, int W, acc_t<T> c, acc_t<T> inv_t,
                             GridAxis<acc_t<T>> ax, GridAxis<acc_t<T>> ay) {
  using A = acc_t<T>;
  constexpr int G = kThreads / TPM;
  constexpr int NW = TPM / kWarp;
    const int grp = threadIdx.x / TPM, r = threadIdx.x % TPM;
  const int wig = r / kWarp, lane = r % kWarp;
  const int64_t m = int64_t(blockIdx.x) * G + grp;
  const int n = H * W;
  A* rowterm = reinterpret_cast<A*>(dynamic_smem()) + grp * H;  // used only when ROWS_IN_SMEM
  const bool valid = m < M;
  const T* __restrict__ lm = logits + (valid ? m : 0) * n;
  T* gm = grad_logits + (valid ? m : 0) * n;

  A mc = 0, log2sc = 0, mr = 0, log2sr = 0, gx_scale = 0, gy_scale = 0, x = 0, y = 0;
  if (valid) {
    mc = stats[4 * m];
    log2sc = stats[4 * m + 1];
    mr = stats[4 * m + 2];
    log2sr = stats[4 * m + 3];
    gx_scale = ld(grad_points + 2 * m) * inv_t / A(H);
    gy_scale = ld(grad_points + 2 * m + 1) * inv_t / A(W);
    x = ld(points + 2 * m);
    y = ld(points + 2 * m + 1);
    for (int i = wig; i < H; i += NW) {
      const T* __restrict__ row = lm + i * W;
      A rs = 0;
      for (int j = lane; j < W; j += kWarp) rs += ld(row + j);
      rs = warp_sum(rs);
      const A term = gy_scale * exp2_(scaled_diff(rs / A(W), mr, c) - log2sr) * (ay(i) - y);
      if constexpr (ROWS_IN_SMEM) {
        if (lane == 0) rowterm[i] = term;
      } else {
        for (int j = lane; j < W; j += kWarp) st(gm + i * W + j, term);
      }
    }
  }
  __syncthreads();  // row terms (shared or global) visible to the whole block
  if (valid) {
    for (int j = r; j < W; j += TPM) {
      A cs = 0;
#pragma unroll 4
      for (int i = 0; i < H; ++i) cs += ld(lm + i * W + j);
      const A term = gx_scale * exp2_(scaled_diff(cs / A(H), mc, c) - log2sc) * (ax(j) - x);
      for (int i = 0; i < H; ++i) {
        T* g = gm + i * W + j;
        if constexpr (ROWS_IN_SMEM) {
          st(g, term + rowterm[i]);
        } else {
          st(g, term + ld(g));
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
constexpr int64_t kMaxMapElems = INT_MAX - kUnroll * kThreads;  // flat in-map indices stay in int
constexpr size_t kSmemBudget = 48 * 1024;

// threads per map: ~8-32 elements per thread, more threads when there are few maps
int threads_per_map(int64_t M, int64_t n) {
  int tpm = n <= 1024 ? 32 : n <= 4096 ? 64 : n <= 16384 ? 128 : 256;
  while (tpm < kThreads && M * tpm < 64 * 1024 && n >= int64_t(16) * tpm) tpm *= 2;
  return tpm;
}

template <typename F> void with_tpm(int tpm, F&& f) {
  switch (tpm) {
    case 32: f(IntTag<32>{}); break;
    case 64: f(IntTag<64>{}); break;
    case 128: f(IntTag<128>{}); break;
    default: f(IntTag<256>{}); break;
  }
}

void check_map(int64_t M, int64_t H, int64_t W) {
  check_size(kOp, "M (maps)", M, INT_MAX);
  check_size(kOp, "H", H, kMaxMapElems);
  check_size(kOp, "W", W, kMaxMapElems);
  if (H > 0 && W > 0) check_size(kOp, "H * W", H * W, kMaxMapElems);
}

}  // namespace

void soft_argmax_forward(int dtype, const void* logits, void* points, void* stats, int64_t M, int64_t H,
                         int64_t W, double inv_temperature, bool marginal, void* stream) {
  check_map(M, H, W);
  if (M == 0 || H == 0 || W == 0) return;
  const int tpm = threads_per_map(M, H * W);
  const cudaStream_t st = as_stream(stream);
  dispatch_dtype(dtype, kOp, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    const A c = A(inv_temperature * 1.44269504088896340735992468100189214);
    const GridAxis<A> ax(W), ay(H);
    with_tpm(tpm, [&](auto tag) {
      constexpr int TPM = decltype(tag)::value;
      const int64_t blocks = (M + kThreads / TPM - 1) / (kThreads / TPM);
      auto kernel = marginal ? marginal_forward_kernel<T, TPM> : spatial_forward_kernel<T, TPM>;
      FASTLMK_LAUNCH(unsigned(blocks), kThreads, 0, st, kernel)(
          static_cast<const T*>(logits), static_cast<T*>(points), static_cast<A*>(stats), M, int(H), int(W), c, ax, ay);
      FASTLMK_CUDA_CHECK_LAUNCH(kOp);
    });
  });
}

void soft_argmax_backward(int dtype, const void* grad_points, const void* logits, const void* stats,
                          const void* points, void* grad_logits, int64_t M, int64_t H, int64_t W,
                          double inv_temperature, bool marginal, void* stream) {
  check_map(M, H, W);
  if (M == 0 || H == 0 || W == 0) return;
  int tpm = threads_per_map(M, H * W);
  const cudaStream_t st = as_stream(stream);
  dispatch_dtype(dtype, kOp, [&](auto tt) {
    using T = typename decltype(tt)::type;
    using A = acc_t<T>;
    const A c = A(inv_temperature * 1.44269504088896340735992468100189214);
    const A inv_t = A(inv_temperature);
    const GridAxis<A> ax(W), ay(H);
    const T* gp = static_cast<const T*>(grad_points);
    const T* l = static_cast<const T*>(logits);
    const A* sts = static_cast<const A*>(stats);
    const T* pts = static_cast<const T*>(points);
    T* gl = static_cast<T*>(grad_logits);
    if (!marginal) {
      with_tpm(tpm, [&](auto tag) {
        constexpr int TPM = decltype(tag)::value;
        const int64_t blocks = (M + kThreads / TPM - 1) / (kThreads / TPM);
        FASTLMK_LAUNCH(unsigned(blocks), kThreads, 0, st, spatial_backward_kernel<T, TPM>)(
            gp, l, sts, pts, gl, M, int(H), int(W), c, inv_t, ax, ay);
        FASTLMK_CUDA_CHECK_LAUNCH(kOp);
      });
      return;
    }
    // the row terms of every map of a block must fit in shared memory; else fewer maps per block,
    // and for very tall maps the grad_logits buffer holds them
    while (tpm < kThreads && size_t(kThreads / tpm) * size_t(H) * sizeof(A) > kSmemBudget) tpm *= 2;
    const bool rows_in_smem = size_t(kThreads / tpm) * size_t(H) * sizeof(A) <= kSmemBudget;
    with_tpm(tpm, [&](auto tag) {
      constexpr int TPM = decltype(tag)::value;
      const int64_t blocks = (M + kThreads / TPM - 1) / (kThreads / TPM);
      if (rows_in_smem) {
        const size_t smem = size_t(kThreads / TPM) * size_t(H) * sizeof(A);
        FASTLMK_LAUNCH(unsigned(blocks), kThreads, smem, st, marginal_backward_kernel<T, TPM, true>)(
            gp, l, sts, pts, gl, M, int(H), int(W), c, inv_t, ax, ay);
      } else {
        FASTLMK_LAUNCH(unsigned(blocks), kThreads, 0, st, marginal_backward_kernel<T, TPM, false>)(
            gp, l, sts, pts, gl, M, int(H), int(W), c, inv_t, ax, ay);
      }
      FASTLMK_CUDA_CHECK_LAUNCH(kOp);
    });
  });
}

}  // namespace cuda
}  // namespace fastlmk
