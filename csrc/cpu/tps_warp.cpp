// Thin-plate-spline image warp on the CPU, fused: spline evaluation + bilinear sampling.
//
// out[b, c, p] = bilinear(image[b, c], s_b(p)), s_b(p) = f_b(p) = sum_k phi_k(p) coef[b, k] for
// every output pixel centre p, phi(p) = [U(|p - c_1|^2) .. U(|p - c_N|^2), 1, x, y]; this is
// F.grid_sample(image, f(grid), mode="bilinear", align_corners=True, padding_mode="zeros" or
// "border"), without the grid or the (B, P, N) basis ever being materialised.
//
// Work split. Output pixels (P = Hout*Wout, row-major) are cut into tiles of kTile pixels. A
// thread takes a tile, computes the radial basis phi (N x kTile values, a per-thread buffer in
// L1/L2) and then, when the lattice is shared (Bc = 1), reuses it for every image b: the sample
// points of the tile are a small product s = phi^T coef[b] (2 (N+3) FMAs per pixel, vectorised
// over pixels), then the C channels are sampled with gathers. With per-sample lattices the basis
// is computed per (b, tile) work item.
//   forward: OpenMP over tiles (shared lattice) or over (b, tile) pairs; every output written once.
//   backward, B >= threads: OpenMP over images b (each thread owns a contiguous range of b and
//     walks all tiles, computing a shared basis once per tile for its range), so the scatter into
//     grad_image[b] and the sums into grad_coef[b] are race-free.
//   backward, B < threads: OpenMP over tiles / (b, tile) pairs; threads other than 0 accumulate
//     into private zeroed copies of grad_image / grad_coef, summed into the outputs at the end.
//
// Sampling (align_corners=True): ix = (sx + 1) (Win - 1)/2, x0 = floor(ix), fx = ix - x0, taps
// (y0|y1, x0|x1) with weights (1-fy|fy)(1-fx|fx); taps outside the image contribute 0 (zeros).
// border: ix is first clamped to [0, Win-1]; like PyTorch, the clamp has zero derivative outside
// and AT the borders (ix <= 0 or ix >= Win-1). zeros: ix is clamped to [-2, Win+1], which changes
// nothing (all taps are outside beyond -1 / Win) but keeps floor() in int range; a NaN sample
// point gets in-range taps and NaN weights, so its output is NaN like grid_sample's (border: the
// border pixel 0, like grid_sample's).
// Backward, g = dL/dout[b, :, p], v_t = image value at tap t (0 outside):
//   dL/dimage[b, c, tap t] += w_t g_c                                    (scatter)
//   dL/dix = sum_c g_c ((1-fy)(v01 - v00) + fy (v11 - v10)),  dL/dsx = dL/dix (Win-1)/2 [mask]
//   dL/diy = sum_c g_c ((1-fx)(v10 - v00) + fx (v11 - v01)),  dL/dsy = dL/diy (Hin-1)/2 [mask]
//   dL/dcoef[b, k] += sum_p phi_k(p) (dL/dsx(p), dL/dsy(p))              (N+3 dot products / tile)
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <omp.h>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"

namespace fastlmk {
namespace cpu {
namespace {

constexpr int64_t kTile = 64;   // output pixels per tile
constexpr int64_t kLanes = 16;  // per-lane partial sums of the grad_coef dot products

template <typename T>
struct Scratch {
  explicit Scratch(int64_t N) : phi(static_cast<size_t>((N + 3) * kTile)) {}
  std::vector<T> phi;                         // phi[k * kTile + p], k < N + 3 (rows N.. = 1, x, y)
  alignas(64) T px[kTile], py[kTile];         // output pixel coordinates
  alignas(64) T sx[kTile], sy[kTile];         // sample points f(p)
  alignas(64) int32_t i00[kTile], i01[kTile], i10[kTile], i11[kTile];  // tap offsets (clamped)
  alignas(64) T m00[kTile], m01[kTile], m10[kTile], m11[kTile];        // tap inside the image
  alignas(64) T w00[kTile], w01[kTile], w10[kTile], w11[kTile];        // bilinear weight * inside
  alignas(64) T fx[kTile], fy[kTile];         // fractional parts
  alignas(64) T hx[kTile], hy[kTile];         // d ix / d sx (0 where the border clamp is active)
  alignas(64) T dix[kTile], diy[kTile];       // dL/dix, then dL/dsx
};

struct Geometry {
  int64_t B, C, Hin, Win, Hout, Wout, N;
  bool shared;
  int64_t P() const { return Hout * Wout; }
  int64_t ntiles() const { return (P() + kTile - 1) / kTile; }
};

// Coordinates of the pixels of tile t; returns the number of pixels in it.
template <typename T>
inline int64_t tile_coords(const Geometry& g, int64_t t, const T* gxo, const T* gyo, Scratch<T>& s) {
  const int64_t p0 = t * kTile;
  const int64_t n = std::min(kTile, g.P() - p0);
  int64_t i = p0 / g.Wout, j = p0 - i * g.Wout;
  for (int64_t p = 0; p < n; ++p) {
    s.px[p] = gxo[j];
    s.py[p] = gyo[i];
    if (++j == g.Wout) {
      j = 0;
      ++i;
    }
  }
  // A last, partial tile is padded with the point (0, 0): the per-tile loops below then always
  // run over kTile pixels (a compile-time trip count), and only the n real ones are written out.
  for (int64_t p = n; p < kTile; ++p) s.px[p] = s.py[p] = T(0);
  return n;
}

// phi[k][p] = U(|p - c_k|^2) for k < N, then the affine rows 1, x, y.
template <typename T>
inline void tile_basis(const T* __restrict ctrl, int64_t N, Scratch<T>& s) {
  const T* __restrict px = s.px;
  const T* __restrict py = s.py;
  T* __restrict phi = s.phi.data();
  for (int64_t k = 0; k < N; ++k) {
    const T cx = ctrl[2 * k], cy = ctrl[2 * k + 1];
    T* __restrict row = phi + k * kTile;
#pragma omp simd
    for (int64_t p = 0; p < kTile; ++p) {
      const T dx = px[p] - cx, dy = py[p] - cy;
      row[p] = tps_u(dx * dx + dy * dy);
    }
  }
  for (int64_t p = 0; p < kTile; ++p) {
    phi[N * kTile + p] = T(1);
    phi[(N + 1) * kTile + p] = px[p];
    phi[(N + 2) * kTile + p] = py[p];
  }
}

// s = phi^T coef_b: sample points of the tile for one image. The tile's 2 x kTile sums stay in
// registers across the loop over the N + 3 basis rows (8 zmm for float).
template <typename T>
inline void tile_eval(const T* __restrict coef, int64_t N, Scratch<T>& s) {
  alignas(64) T sx[kTile] = {}, sy[kTile] = {};
  const T* __restrict phi = s.phi.data();
  for (int64_t k = 0; k < N + 3; ++k) {
    const T wx = coef[2 * k], wy = coef[2 * k + 1];
    const T* __restrict row = phi + k * kTile;
#pragma omp simd
    for (int64_t p = 0; p < kTile; ++p) {
      sx[p] += row[p] * wx;
      sy[p] += row[p] * wy;
    }
  }
  std::memcpy(s.sx, sx, sizeof(sx));
  std::memcpy(s.sy, sy, sizeof(sy));
}

// One axis of the bilinear taps: position -> (lower tap, fraction, inside masks, derivative).
template <typename T, bool Border>
inline void axis(T sv, T half, int64_t size, int32_t& c0, int32_t& c1, T& frac, T& in0, T& in1, T& deriv) {
  const T hi = T(size - 1);
  T v = (sv + T(1)) * half;
  if (Border) {
    deriv = (v > T(0) && v < hi) ? half : T(0);
    v = v > T(0) ? v : T(0);  // NaN -> 0
    v = v < hi ? v : hi;
  } else {
    deriv = half;
    v = v > T(-2) ? v : T(-2);  // NaN -> -2
    v = v < hi + T(2) ? v : hi + T(2);
  }
  const T f0 = std::floor(v);
  // zeros: a NaN sample point gets NaN weights, so a NaN sample (as grid_sample); border: the clamp
  // took NaN to pixel 0, which is sampled with weight 1 (grid_sample clips NaN to 0 as well)
  frac = (Border || sv == sv) ? v - f0 : sv;
  const int32_t i0 = static_cast<int32_t>(f0);
  const int32_t i1 = i0 + 1;
  const int32_t last = static_cast<int32_t>(size - 1);
  in0 = (i0 >= 0 && i0 <= last) ? T(1) : T(0);
  in1 = (i1 >= 0 && i1 <= last) ? T(1) : T(0);
  c0 = std::min(std::max(i0, 0), last);
  c1 = std::min(std::max(i1, 0), last);
}

template <typename T, bool Border>
inline void tile_taps(const Geometry& g, Scratch<T>& s) {
  const T halfx = T(g.Win - 1) / T(2), halfy = T(g.Hin - 1) / T(2);
  const int32_t W = static_cast<int32_t>(g.Win);
#pragma omp simd
  for (int64_t p = 0; p < kTile; ++p) {
    int32_t x0, x1, y0, y1;
    T fx, fy, vx0, vx1, vy0, vy1, hx, hy;
    axis<T, Border>(s.sx[p], halfx, g.Win, x0, x1, fx, vx0, vx1, hx);
    axis<T, Border>(s.sy[p], halfy, g.Hin, y0, y1, fy, vy0, vy1, hy);
    s.i00[p] = y0 * W + x0;
    s.i01[p] = y0 * W + x1;
    s.i10[p] = y1 * W + x0;
    s.i11[p] = y1 * W + x1;
    s.m00[p] = vy0 * vx0;
    s.m01[p] = vy0 * vx1;
    s.m10[p] = vy1 * vx0;
    s.m11[p] = vy1 * vx1;
    s.w00[p] = (T(1) - fy) * (T(1) - fx) * s.m00[p];
    s.w01[p] = (T(1) - fy) * fx * s.m01[p];
    s.w10[p] = fy * (T(1) - fx) * s.m10[p];
    s.w11[p] = fy * fx * s.m11[p];
    s.fx[p] = fx;
    s.fy[p] = fy;
    s.hx[p] = hx;
    s.hy[p] = hy;
  }
}

// The value of a tap: the (clamped-index) pixel if the tap is inside, else 0. A select, not
// inside * value: an inf or NaN border pixel must not leak 0 * inf = NaN into the padding.
template <typename T>
inline T tap(T inside, T value) {
  return inside != T(0) ? value : T(0);
}

// out[b, :, tile] from the taps.
template <typename T>
inline void tile_sample(const Geometry& g, const T* __restrict img_b, T* __restrict out_b, int64_t p0, int64_t n,
                        const Scratch<T>& s) {
  const int64_t plane_in = g.Hin * g.Win, P = g.P();
  for (int64_t c = 0; c < g.C; ++c) {
    const T* __restrict im = img_b + c * plane_in;
    T* __restrict o = out_b + c * P + p0;
#pragma omp simd
    for (int64_t p = 0; p < n; ++p)
      o[p] = s.w00[p] * tap(s.m00[p], im[s.i00[p]]) + s.w01[p] * tap(s.m01[p], im[s.i01[p]]) +
             s.w10[p] * tap(s.m10[p], im[s.i10[p]]) + s.w11[p] * tap(s.m11[p], im[s.i11[p]]);
  }
}

template <typename T>
struct Ptrs {
  const T* grad_out;
  const T* image;
  const T* ctrl;
  const T* coef;
};

// Backward of one (b, tile): scatter into gi_b (if non-null); per-lane partial sums of
// dL/dcoef[b] into acc_b[(2k + xy) * kLanes + lane] (if non-null), see flush_lanes.
template <typename T, bool Border>
inline void tile_backward(const Geometry& g, const Ptrs<T>& ptr, int64_t b, int64_t p0, int64_t n, T* gi_b, T* acc_b,
                          Scratch<T>& s) {
  const int64_t N = g.N, plane_in = g.Hin * g.Win, P = g.P();
  tile_eval(ptr.coef + b * (N + 3) * 2, N, s);
  tile_taps<T, Border>(g, s);
  const T* img_b = ptr.image + b * g.C * plane_in;
  const T* go_b = ptr.grad_out + b * g.C * P + p0;
  if (gi_b != nullptr) {
    for (int64_t c = 0; c < g.C; ++c) {
      const T* __restrict go = go_b + c * P;
      T* __restrict gi = gi_b + c * plane_in;
      for (int64_t p = 0; p < n; ++p) {
        const T v = go[p];
        gi[s.i00[p]] += s.w00[p] * v;
        gi[s.i01[p]] += s.w01[p] * v;
        gi[s.i10[p]] += s.w10[p] * v;
        gi[s.i11[p]] += s.w11[p] * v;
      }
    }
  }
  if (acc_b == nullptr) return;
  T* __restrict dix = s.dix;
  T* __restrict diy = s.diy;
  for (int64_t p = 0; p < kTile; ++p) dix[p] = diy[p] = T(0);  // padding pixels stay 0
  for (int64_t c = 0; c < g.C; ++c) {
    const T* __restrict im = img_b + c * plane_in;
    const T* __restrict go = go_b + c * P;
#pragma omp simd
    for (int64_t p = 0; p < n; ++p) {
      const T v00 = tap(s.m00[p], im[s.i00[p]]), v01 = tap(s.m01[p], im[s.i01[p]]);
      const T v10 = tap(s.m10[p], im[s.i10[p]]), v11 = tap(s.m11[p], im[s.i11[p]]);
      const T fx = s.fx[p], fy = s.fy[p], gv = go[p];
      dix[p] += gv * ((T(1) - fy) * (v01 - v00) + fy * (v11 - v10));
      diy[p] += gv * ((T(1) - fx) * (v10 - v00) + fx * (v11 - v01));
    }
  }
#pragma omp simd
  for (int64_t p = 0; p < kTile; ++p) {
    dix[p] *= s.hx[p];  // dL/dsx
    diy[p] *= s.hy[p];
  }
  // dL/dcoef[k] = sum_p phi[k][p] dL/ds(p): vector FMAs into kLanes partial sums, no horizontal
  // reduction per tile.
  const T* __restrict phi = s.phi.data();
  for (int64_t k = 0; k < N + 3; ++k) {
    const T* __restrict row = phi + k * kTile;
    T* __restrict ax = acc_b + 2 * k * kLanes;
    T* __restrict ay = ax + kLanes;
    for (int64_t q = 0; q < kTile; q += kLanes) {
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) {
        ax[l] += row[q + l] * dix[q + l];
        ay[l] += row[q + l] * diy[q + l];
      }
    }
  }
}

// gc_b[j] += sum of the kLanes partial sums acc_b[j * kLanes ..], j < 2 (N + 3).
template <typename T>
inline void flush_lanes(const T* acc_b, T* gc_b, int64_t N) {
  for (int64_t j = 0; j < 2 * (N + 3); ++j) {
    T sum = 0;
    for (int64_t l = 0; l < kLanes; ++l) sum += acc_b[j * kLanes + l];
    gc_b[j] += sum;
  }
}

template <typename T>
void output_coords(const Geometry& g, std::vector<T>& gxo, std::vector<T>& gyo) {
  gxo.resize(g.Wout);
  gyo.resize(g.Hout);
  for (int64_t j = 0; j < g.Wout; ++j) gxo[j] = grid_coord<T>(j, g.Wout);
  for (int64_t i = 0; i < g.Hout; ++i) gyo[i] = grid_coord<T>(i, g.Hout);
}

template <typename T, bool Border>
void forward(const Geometry& g, const T* image, const T* ctrl, const T* coef, T* out, int nthreads) {
  std::vector<T> gxo, gyo;
  output_coords(g, gxo, gyo);
  const int64_t nt = g.ntiles(), N = g.N;
  const int64_t items = g.shared ? nt : g.B * nt;
  const int64_t in_b = g.C * g.Hin * g.Win, out_b = g.C * g.P();
#pragma omp parallel num_threads(nthreads)
  {
    Scratch<T> s(N);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t t = g.shared ? it : it % nt;
      const int64_t b0 = g.shared ? 0 : it / nt, b1 = g.shared ? g.B : b0 + 1;
      const int64_t n = tile_coords(g, t, gxo.data(), gyo.data(), s);
      tile_basis(ctrl + (g.shared ? 0 : b0 * N * 2), N, s);
      for (int64_t b = b0; b < b1; ++b) {
        tile_eval(coef + b * (N + 3) * 2, N, s);
        tile_taps<T, Border>(g, s);
        tile_sample(g, image + b * in_b, out + b * out_b, t * kTile, n, s);
      }
    }
  }
}

template <typename T, bool Border>
void backward(const Geometry& g, const Ptrs<T>& ptr, T* grad_image, T* grad_coef, int nthreads) {
  std::vector<T> gxo, gyo;
  output_coords(g, gxo, gyo);
  const int64_t nt = g.ntiles(), N = g.N;
  const int64_t in_b = g.C * g.Hin * g.Win, coef_b = (N + 3) * 2, acc_per_b = coef_b * kLanes;
  if (g.B >= nthreads) {
    // Each thread owns images [b_lo, b_hi): no two threads write the same gradient element.
#pragma omp parallel num_threads(nthreads)
    {
      const int64_t tid = omp_get_thread_num(), nth = omp_get_num_threads();
      const int64_t b_lo = g.B * tid / nth, b_hi = g.B * (tid + 1) / nth;
      Scratch<T> s(N);
      std::vector<T> acc(grad_coef ? static_cast<size_t>((b_hi - b_lo) * acc_per_b) : 0, T(0));
      for (int64_t t = 0; t < nt && b_lo < b_hi; ++t) {
        const int64_t n = tile_coords(g, t, gxo.data(), gyo.data(), s);
        if (g.shared) tile_basis(ptr.ctrl, N, s);
        for (int64_t b = b_lo; b < b_hi; ++b) {
          if (!g.shared) tile_basis(ptr.ctrl + b * N * 2, N, s);
          tile_backward<T, Border>(g, ptr, b, t * kTile, n, grad_image ? grad_image + b * in_b : nullptr,
                                   grad_coef ? acc.data() + (b - b_lo) * acc_per_b : nullptr, s);
        }
      }
      if (grad_coef)
        for (int64_t b = b_lo; b < b_hi; ++b) flush_lanes(acc.data() + (b - b_lo) * acc_per_b, grad_coef + b * coef_b, N);
    }
    return;
  }
  // Few images: split the tiles; threads > 0 accumulate into private zeroed buffers.
  const int64_t gi_size = grad_image ? g.B * in_b : 0, gc_size = grad_coef ? g.B * coef_b : 0;
  const int64_t items = g.shared ? nt : g.B * nt;
  std::vector<std::vector<T>> priv(static_cast<size_t>(nthreads));
#pragma omp parallel num_threads(nthreads)
  {
    const int tid = omp_get_thread_num();
    T* gi = grad_image;
    T* gc = grad_coef;
    if (tid > 0) {
      priv[tid].assign(static_cast<size_t>(gi_size + gc_size), T(0));
      if (grad_image) gi = priv[tid].data();
      if (grad_coef) gc = priv[tid].data() + gi_size;
    }
    Scratch<T> s(N);
    std::vector<T> acc(grad_coef ? static_cast<size_t>(g.B * acc_per_b) : 0, T(0));
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t t = g.shared ? it : it % nt;
      const int64_t b0 = g.shared ? 0 : it / nt, b1 = g.shared ? g.B : b0 + 1;
      const int64_t n = tile_coords(g, t, gxo.data(), gyo.data(), s);
      tile_basis(ptr.ctrl + (g.shared ? 0 : b0 * N * 2), N, s);
      for (int64_t b = b0; b < b1; ++b)
        tile_backward<T, Border>(g, ptr, b, t * kTile, n, gi ? gi + b * in_b : nullptr,
                                 gc ? acc.data() + b * acc_per_b : nullptr, s);
    }
    if (gc)
      for (int64_t b = 0; b < g.B; ++b) flush_lanes(acc.data() + b * acc_per_b, gc + b * coef_b, N);
#pragma omp barrier
    // every private buffer is complete
    const int nth = omp_get_num_threads();
#pragma omp for schedule(static)
    for (int64_t e = 0; e < gi_size; ++e)
      for (int u = 1; u < nth; ++u) grad_image[e] += priv[u][e];
#pragma omp for schedule(static)
    for (int64_t e = 0; e < gc_size; ++e)
      for (int u = 1; u < nth; ++u) grad_coef[e] += priv[u][gi_size + e];
  }
}

void check_size(const char* what, int64_t H, int64_t W) {
  if (H * W > static_cast<int64_t>(std::numeric_limits<int32_t>::max()))
    throw std::invalid_argument(std::string("fastlmk.tps_warp: ") + what + " image planes above 2^31 pixels are not supported");
}

template <typename T>
void dispatch_forward(const Geometry& g, const void* image, const void* ctrl, const void* coef, void* out,
                      bool border, int nt) {
  auto f = border ? forward<T, true> : forward<T, false>;
  f(g, static_cast<const T*>(image), static_cast<const T*>(ctrl), static_cast<const T*>(coef), static_cast<T*>(out), nt);
}

template <typename T>
void dispatch_backward(const Geometry& g, const void* grad_out, const void* image, const void* ctrl, const void* coef,
                       void* grad_image, void* grad_coef, bool border, int nt) {
  const Ptrs<T> ptr{static_cast<const T*>(grad_out), static_cast<const T*>(image), static_cast<const T*>(ctrl),
                    static_cast<const T*>(coef)};
  auto f = border ? backward<T, true> : backward<T, false>;
  f(g, ptr, static_cast<T*>(grad_image), static_cast<T*>(grad_coef), nt);
}

}  // namespace

void tps_warp_forward(int dtype, const void* image, const void* ctrl, const void* coef, void* out, int64_t B,
                      int64_t C, int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout, int64_t N, bool shared_ctrl,
                      bool border, int num_threads) {
  check_size("input", Hin, Win);
  const Geometry g{B, C, Hin, Win, Hout, Wout, N, shared_ctrl};
  const int nt = threads_for(B * Hout * Wout * (N + C), num_threads);
  if (dtype == kFloat32) {
    dispatch_forward<float>(g, image, ctrl, coef, out, border, nt);
  } else if (dtype == kFloat64) {
    dispatch_forward<double>(g, image, ctrl, coef, out, border, nt);
  } else {
    unsupported_dtype("tps_warp", dtype);
  }
}

void tps_warp_backward(int dtype, const void* grad_out, const void* image, const void* ctrl, const void* coef,
                       void* grad_image, void* grad_coef, int64_t B, int64_t C, int64_t Hin, int64_t Win,
                       int64_t Hout, int64_t Wout, int64_t N, bool shared_ctrl, bool border, int num_threads) {
  check_size("input", Hin, Win);
  if (grad_image == nullptr && grad_coef == nullptr) return;
  const Geometry g{B, C, Hin, Win, Hout, Wout, N, shared_ctrl};
  const int nt = threads_for(B * Hout * Wout * (N + C), num_threads);
  if (dtype == kFloat32) {
    dispatch_backward<float>(g, grad_out, image, ctrl, coef, grad_image, grad_coef, border, nt);
  } else if (dtype == kFloat64) {
    dispatch_backward<double>(g, grad_out, image, ctrl, coef, grad_image, grad_coef, border, nt);
  } else {
    unsupported_dtype("tps_warp", dtype);
  }
}

}  // namespace cpu
}  // namespace fastlmk
