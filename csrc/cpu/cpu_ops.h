// CPU kernels of fastlmk. Every pointer is a contiguous row-major buffer of `dtype` (float32 or
// float64) unless stated; "stats", "ctrl" and "coef" buffers have the same dtype as the data.
// Work is split over `num_threads` OpenMP threads (the Python layer passes
// torch.get_num_threads(), so the kernels never oversubscribe torch's own pool).
#pragma once
#include <cstdint>

namespace fastlmk {
namespace cpu {

// logits[M, H, W] -> points[M, 2] (x, y), stats[M, 2] spatial: (max logit, log sum exp((l - max)
// inv_temperature)); stats[M, 4] marginal: the same pair for the column-mean softmax, then for the
// row-mean softmax. The stats are private to the backend: only its own backward reads them.
void soft_argmax_forward(int dtype, const void* logits, void* points, void* stats, int64_t M,
                         int64_t H, int64_t W, double inv_temperature, bool marginal, int num_threads);
// grad_points[M, 2], logits, stats, points (from the forward) -> grad_logits[M, H, W] (written).
void soft_argmax_backward(int dtype, const void* grad_points, const void* logits, const void* stats,
                          const void* points, void* grad_logits, int64_t M, int64_t H, int64_t W,
                          double inv_temperature, bool marginal, int num_threads);

// points[M, 2] -> out[M, H, W], out[m, i, j] = exp(-((gx_j - x_m)^2 + (gy_i - y_m)^2) * inv_two_var).
void gaussian_heatmaps_forward(int dtype, const void* points, void* out, int64_t M, int64_t H,
                               int64_t W, double inv_two_var, int num_threads);
// grad_out[M, H, W], points[M, 2] -> grad_points[M, 2] (written).
void gaussian_heatmaps_backward(int dtype, const void* grad_out, const void* points, void* grad_points,
                                int64_t M, int64_t H, int64_t W, double inv_two_var, int num_threads);

// Thin-plate spline f(p) = a0 + x a_x + y a_y + sum_i w_i U(|p - c_i|^2), U(s) = s log s.
// ctrl[Bc, N, 2] control points (Bc = 1 when shared_ctrl, else B); coef[B, N + 3, 2]: rows
// 0..N-1 are w_i, rows N, N+1, N+2 are a0, a_x, a_y.
//
// image[B, C, Hin, Win] -> out[B, C, Hout, Wout]; out pixel p samples image at f(p) (bilinear,
// align_corners=True, zeros padding or, when border, coordinates clamped to the image).
void tps_warp_forward(int dtype, const void* image, const void* ctrl, const void* coef, void* out,
                      int64_t B, int64_t C, int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout,
                      int64_t N, bool shared_ctrl, bool border, int num_threads);
// grad_out[B, C, Hout, Wout] -> grad_image[B, C, Hin, Win] and grad_coef[B, N + 3, 2]; each may be
// null (not wanted); both are ACCUMULATED into, the caller passes zero-filled buffers.
void tps_warp_backward(int dtype, const void* grad_out, const void* image, const void* ctrl,
                       const void* coef, void* grad_image, void* grad_coef, int64_t B, int64_t C,
                       int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout, int64_t N,
                       bool shared_ctrl, bool border, int num_threads);

// points[B, M, 2] -> out[B, M, 2] = f(points).
void tps_transform_points_forward(int dtype, const void* points, const void* ctrl, const void* coef,
                                  void* out, int64_t B, int64_t M, int64_t N, bool shared_ctrl,
                                  int num_threads);
// grad_out[B, M, 2] -> grad_points[B, M, 2] (J_f^T grad_out) and grad_coef[B, N + 3, 2]; each may
// be null; both are ACCUMULATED into, the caller passes zero-filled buffers.
void tps_transform_points_backward(int dtype, const void* grad_out, const void* points,
                                   const void* ctrl, const void* coef, void* grad_points,
                                   void* grad_coef, int64_t B, int64_t M, int64_t N,
                                   bool shared_ctrl, int num_threads);

}  // namespace cpu
}  // namespace fastlmk
