// Helpers shared by the CUDA kernels: dtype load/store with float (double for float64)
// accumulation, grid coordinates, the TPS radial basis, warp/block reductions, launch checks.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <climits>
#include <cstring>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "fastlmk.h"

namespace fastlmk {
namespace cuda {

constexpr int kThreads = 256;  // threads per block of every kernel (a multiple of 32)
constexpr int kWarp = 32;

// ---- accumulation type ------------------------------------------------------------------------
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

// (x, y) pairs of the accumulation type, used for shared-memory staging (8/16-byte aligned).
template <typename A> struct Vec2Of;
template <> struct Vec2Of<float> { using type = float2; };
template <> struct Vec2Of<double> { using type = double2; };
template <typename A> using vec2_t = typename Vec2Of<A>::type;

template <typename T> struct Cvt;
template <> struct Cvt<float> {
  __device__ __forceinline__ static float to(float v) { return v; }
  __device__ __forceinline__ static float from(float v) { return v; }
};
template <> struct Cvt<double> {
  __device__ __forceinline__ static double to(double v) { return v; }
  __device__ __forceinline__ static double from(double v) { return v; }
};
template <> struct Cvt<__half> {
  __device__ __forceinline__ static float to(__half v) { return __half2float(v); }
  __device__ __forceinline__ static __half from(float v) { return __float2half_rn(v); }
};
template <> struct Cvt<__nv_bfloat16> {
  __device__ __forceinline__ static float to(__nv_bfloat16 v) { return __bfloat162float(v); }
  __device__ __forceinline__ static __nv_bfloat16 from(float v) { return __float2bfloat16_rn(v); }
};

// load one element as acc_t / store an acc_t rounded to T (round-to-nearest-even)
template <typename T> __device__ __forceinline__ acc_t<T> ld(const T* p) { return Cvt<T>::to(*p); }
template <typename T> __device__ __forceinline__ void st(T* p, acc_t<T> v) { *p = Cvt<T>::from(v); }

// VEC = 16 / sizeof(T) elements of T in one 16-byte access (p must be 16-byte aligned), converted
// to / from acc_t. Moved through a uint4 so the compiler keeps the elements in registers.
template <typename T> struct VecWidth { static constexpr int value = 16 / sizeof(T); };
template <typename T>
__device__ __forceinline__ void ld_vec16(const T* p, acc_t<T> (&out)[VecWidth<T>::value]) {
  constexpr int V = VecWidth<T>::value;
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  T tmp[V];
  memcpy(tmp, &raw, sizeof(raw));
#pragma unroll
  for (int u = 0; u < V; ++u) out[u] = Cvt<T>::to(tmp[u]);
}
template <typename T>
__device__ __forceinline__ void st_vec16(T* p, const acc_t<T> (&in)[VecWidth<T>::value]) {
  constexpr int V = VecWidth<T>::value;
  T tmp[V];
#pragma unroll
  for (int u = 0; u < V; ++u) tmp[u] = Cvt<T>::from(in[u]);
  uint4 raw;
  memcpy(&raw, tmp, sizeof(raw));
  *reinterpret_cast<uint4*>(p) = raw;
}

// ---- math in the accumulation type --------------------------------------------------------------
__device__ __forceinline__ float exp2_(float x) { return exp2f(x); }
__device__ __forceinline__ double exp2_(double x) { return exp2(x); }
__device__ __forceinline__ float log2_(float x) { return log2f(x); }
__device__ __forceinline__ double log2_(double x) { return log2(x); }
__device__ __forceinline__ float exp_(float x) { return expf(x); }
__device__ __forceinline__ double exp_(double x) { return exp(x); }
__device__ __forceinline__ float max_(float a, float b) { return fmaxf(a, b); }
__device__ __forceinline__ double max_(double a, double b) { return fmax(a, b); }
__device__ __forceinline__ float min_(float a, float b) { return fminf(a, b); }
__device__ __forceinline__ double min_(double a, double b) { return fmin(a, b); }
__device__ __forceinline__ float floor_(float a) { return floorf(a); }
__device__ __forceinline__ double floor_(double a) { return floor(a); }

template <typename A> struct Consts {
  static constexpr A ln2 = A(0.693147180559945309417232121458176568);
  static constexpr A log2e = A(1.44269504088896340735992468100189214);
  static constexpr A tiny = std::numeric_limits<A>::min();  // smallest normal, as torch.finfo.tiny
  static constexpr A inf = std::numeric_limits<A>::infinity();
  static constexpr A nan = std::numeric_limits<A>::quiet_NaN();
};

// Thin-plate radial basis divided by ln 2: U(s) / ln2 = s log2 s with s = r^2, 0 at s = 0
// (computed as s log2(max(s, tiny)), like the reference's s log(clamp_min(s, tiny))). Callers
// multiply their sums by ln 2 once. A NaN s (a NaN control point) stays NaN: s * anything.
template <typename A> __device__ __forceinline__ A tps_u_log2(A s) { return s * log2_(max_(s, Consts<A>::tiny)); }
// dU/ds = ln s + 1 (0 at s = 0, where the factor ds/dp = 2 (p - c) is 0 as well; NaN stays NaN)
template <typename A> __device__ __forceinline__ A tps_du_ds(A s) {
  return s > A(0) ? Consts<A>::ln2 * log2_(s) + A(1) : s;
}

// Normalised coordinate of pixel j on an axis of n pixels (align_corners=True): -1 ... +1, 0 when
// n == 1. Same formula as torch.linspace (symmetric halves, so both ends are exact).
template <typename A> struct GridAxis {
  A step;
  int n, half;
  GridAxis() = default;
  explicit GridAxis(int64_t n_) : step(n_ > 1 ? A(2) / A(n_ - 1) : A(0)), n(int(n_)), half(int(n_ / 2)) {}
  __device__ __forceinline__ A operator()(int j) const {
    if (n <= 1) return A(0);
    return j < half ? A(-1) + step * A(j) : A(1) - step * A(n - 1 - j);
  }
};

// Dynamic shared memory of the block (size given at launch), 16-byte aligned.
#ifndef FASTLMK_CUDA_EMULATION
__device__ __forceinline__ unsigned char* dynamic_smem() {
  extern __shared__ __align__(16) unsigned char fastlmk_dynamic_smem[];
  return fastlmk_dynamic_smem;
}
#else
inline unsigned char* dynamic_smem() { return fastlmk_emu_dynamic_smem(); }
#endif

// ---- reductions ---------------------------------------------------------------------------------
template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Sum of a and b over the whole block (blockDim a multiple of 32, at most 1024 threads); the
// totals are valid in linear thread 0. `red` holds 64 elements. Contains __syncthreads: every
// thread of the block must call it.
template <typename A> __device__ __forceinline__ void block_sum2(A& a, A& b, A* red) {
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  const int lane = tid % kWarp, warp = tid / kWarp;
  const int nwarps = (blockDim.x * blockDim.y) / kWarp;
  a = warp_sum(a);
  b = warp_sum(b);
  if (lane == 0) {
    red[warp] = a;
    red[kWarp + warp] = b;
  }
  __syncthreads();
  if (warp == 0) {
    a = lane < nwarps ? red[lane] : A(0);
    b = lane < nwarps ? red[kWarp + lane] : A(0);
    a = warp_sum(a);
    b = warp_sum(b);
  }
}

// ---- thin-plate-spline helpers ------------------------------------------------------------------
// ctrl and coef are acc_t arrays of (x, y) pairs: ctrl[Bc][N][2], coef[B][N + 3][2]. Kernels stage
// chunks of them in shared memory as vec2_t pairs: s_c[q] = c_{c0+q}, s_w[q * BT + bt] = w_{c0+q} of
// image b0 + bt (zero for images past the batch).
template <typename A, int BT>
__device__ __forceinline__ void tps_stage_chunk(const A* __restrict__ ctrl_b, const A* __restrict__ coef, int b0,
                                                int nb, int K, int c0, int cn, vec2_t<A>* s_c, vec2_t<A>* s_w) {
  const int nthreads = blockDim.x * blockDim.y;
  const int tid = threadIdx.y * blockDim.x + threadIdx.x;
  for (int q = tid; q < cn; q += nthreads) {
    const int k = c0 + q;
    s_c[q] = vec2_t<A>{ctrl_b[2 * k], ctrl_b[2 * k + 1]};
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
      vec2_t<A> w{A(0), A(0)};
      if (bt < nb) {
        const A* wk = coef + (int64_t(b0 + bt) * K + k) * 2;
        w = vec2_t<A>{wk[0], wk[1]};
      }
      s_w[q * BT + bt] = w;
    }
  }
}

// fx[bt] += sum_q U(|p - c_q|^2)/ln2 w_q,x (fy likewise) over a staged chunk of cn control points;
// the radial basis is evaluated once for the BT images.
template <typename A, int BT>
__device__ __forceinline__ void tps_radial_chunk(A px, A py, const vec2_t<A>* s_c, const vec2_t<A>* s_w, int cn,
                                                 A (&fx)[BT], A (&fy)[BT]) {
  for (int q = 0; q < cn; ++q) {
    const vec2_t<A> c = s_c[q];
    const A dx = px - c.x, dy = py - c.y;
    const A u = tps_u_log2(dx * dx + dy * dy);
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
      const vec2_t<A> w = s_w[q * BT + bt];
      fx[bt] += u * w.x;
      fy[bt] += u * w.y;
    }
  }
}

// Spline value from the accumulated radial sums (in units of 1/ln2) and the affine rows of coef_b
// (coef_b = coef + b * (N + 3) * 2): f = a0 + a_x x + a_y y + ln2 * radial.
template <typename A>
__device__ __forceinline__ void tps_affine(const A* __restrict__ coef_b, int N, A px, A py, A fx, A fy, A& sx,
                                           A& sy) {
  const A* aff = coef_b + 2 * N;  // rows N, N+1, N+2: a0, a_x, a_y; each (x, y)
  sx = aff[0] + aff[2] * px + aff[4] * py + Consts<A>::ln2 * fx;
  sy = aff[1] + aff[3] * px + aff[5] * py + Consts<A>::ln2 * fy;
}

// Coefficient gradient of one tile of tp points for coefficient row k (the calling thread owns k):
//   acc[bt][d] = sum_{p < tp} phi_k(p) gs[p][bt][d],  phi = [U(|p - c_0|^2), ..., U(|p - c_{N-1}|^2), 1, x, y]
// s_p[p] = point p, s_gs[p * BT + bt] = dL/df at p for image bt (shared memory, read as broadcasts).
template <typename A, int BT>
__device__ __forceinline__ void tps_coef_grad_tile(int k, int N, const A* __restrict__ ctrl_b,
                                                   const vec2_t<A>* s_p, const vec2_t<A>* s_gs, int tp,
                                                   A (&acc)[BT][2]) {
#pragma unroll
  for (int bt = 0; bt < BT; ++bt) acc[bt][0] = acc[bt][1] = A(0);
  if (k < N) {
    const A cx = ctrl_b[2 * k], cy = ctrl_b[2 * k + 1];
    for (int p = 0; p < tp; ++p) {
      const vec2_t<A> q = s_p[p];
      const A dx = q.x - cx, dy = q.y - cy;
      const A u = tps_u_log2(dx * dx + dy * dy);
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        const vec2_t<A> g = s_gs[p * BT + bt];
        acc[bt][0] += u * g.x;
        acc[bt][1] += u * g.y;
      }
    }
#pragma unroll
    for (int bt = 0; bt < BT; ++bt) {
      acc[bt][0] *= Consts<A>::ln2;
      acc[bt][1] *= Consts<A>::ln2;
    }
  } else {
    const int which = k - N;  // 0: a0 (phi = 1), 1: a_x (phi = x), 2: a_y (phi = y)
    for (int p = 0; p < tp; ++p) {
      const vec2_t<A> q = s_p[p];
      const A phi = which == 0 ? A(1) : (which == 1 ? q.x : q.y);
#pragma unroll
      for (int bt = 0; bt < BT; ++bt) {
        const vec2_t<A> g = s_gs[p * BT + bt];
        acc[bt][0] += phi * g.x;
        acc[bt][1] += phi * g.y;
      }
    }
  }
}

// ---- host side ----------------------------------------------------------------------------------
// Throws std::runtime_error("fastlmk.<op> (CUDA): <reason>") (RuntimeError in Python).
inline void check_cuda(cudaError_t err, const char* op) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("fastlmk.") + op + " (CUDA): " + cudaGetErrorString(err));
  }
}
// After every kernel launch: a bad configuration, a missing device or a kernel image the device
// cannot run is reported here, naming the op.
#define FASTLMK_CUDA_CHECK_LAUNCH(op) ::fastlmk::cuda::check_cuda(cudaGetLastError(), op)

// FASTLMK_LAUNCH(grid, block, smem, stream, kernel)(args...) is kernel<<<grid, block, smem, stream>>>(args...)
// (a macro so that tools/cuda_emu can run the same kernels on the CPU).
#ifndef FASTLMK_LAUNCH
#define FASTLMK_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

[[noreturn]] inline void bad_size(const char* op, const std::string& what) {
  throw std::invalid_argument(std::string("fastlmk.") + op + " (CUDA): " + what);
}
inline void check_size(const char* op, const char* name, int64_t v, int64_t max_value) {
  if (v < 0) bad_size(op, std::string(name) + " must be >= 0, got " + std::to_string(v));
  if (v > max_value) {
    bad_size(op, std::string(name) + " = " + std::to_string(v) + " is larger than this kernel supports (" +
                     std::to_string(max_value) + ")");
  }
}

inline int sm_count(const char* op) {
  int dev = 0, n = 0;
  check_cuda(cudaGetDevice(&dev), op);
  check_cuda(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev), op);
  return n > 0 ? n : 1;
}

inline cudaStream_t as_stream(void* stream) { return static_cast<cudaStream_t>(stream); }

template <typename T> struct TypeTag { using type = T; };

// Calls f(TypeTag<T>{}) for the element type of `dtype` (a fastlmk::DType code).
template <typename F> void dispatch_dtype(int dtype, const char* op, F&& f) {
  switch (dtype) {
    case kFloat32: f(TypeTag<float>{}); break;
    case kFloat64: f(TypeTag<double>{}); break;
    case kFloat16: f(TypeTag<__half>{}); break;
    case kBFloat16: f(TypeTag<__nv_bfloat16>{}); break;
    default: unsupported_dtype(op, dtype);
  }
}

template <int V> using IntTag = std::integral_constant<int, V>;

}  // namespace cuda
}  // namespace fastlmk
