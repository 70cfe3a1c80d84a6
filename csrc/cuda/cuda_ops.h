// CUDA kernels of fastlmk (module fastlmk._C_cuda). Framework-free: raw device pointers to
// contiguous row-major buffers, sizes, and the stream to launch on (torch's current stream, as
// a cudaStream_t passed through void*). The Python layer validates, makes inputs contiguous,
// allocates outputs and sets the current device.
//
// dtype is a fastlmk::DType code: float32, float64, float16 or bfloat16. Arithmetic is done in
// the accumulation type acc_t: double for float64 data, float otherwise. "stats", "ctrl", "coef"
// and the TPS image gradient are acc_t buffers; everything else has the data dtype.
//
// Every function launches asynchronously on `stream`, skips zero-size work, checks each launch,
// and throws std::runtime_error("fastlmk.<op> (CUDA): ...") on a CUDA error and
// std::invalid_argument on sizes it cannot index (both become Python exceptions).
#pragma once
#include <cstdint>

namespace fastlmk {
namespace cuda {

// logits[M, H, W] -> points[M, 2] (x, y), stats[M, 2|4] (acc_t, private to this backend). spatial:
// stats = (max logit, log2 of sum 2^((l - max) c)) with c = inv_temperature * log2(e), kept apart
// so the backward's p is exact for huge logits. marginal: softmaxes of the column means (over W,
// gives x) and of the row means (over H, gives y); stats = the same pair for each, columns first.
// One block (maps >= 2K elements) or one warp per map; the logits are read once.
void soft_argmax_forward(int dtype, const void* logits, void* points, void* stats, int64_t M, int64_t H,
                         int64_t W, double inv_temperature, bool marginal, void* stream);
// grad_points[M, 2], logits, stats, points (from the forward) -> grad_logits[M, H, W] (written).
// The softmax is recomputed from the saved log-sum-exp.
void soft_argmax_backward(int dtype, const void* grad_points, const void* logits, const void* stats,
                          const void* points, void* grad_logits, int64_t M, int64_t H, int64_t W,
                          double inv_temperature, bool marginal, void* stream);

// points[M, 2] -> out[M, H, W], out[m, i, j] = exp(-((gx_j - x_m)^2 + (gy_i - y_m)^2) * inv_two_var),
// computed as the product of the two 1-D factors; each output element written once.
void gaussian_heatmaps_forward(int dtype, const void* points, void* out, int64_t M, int64_t H, int64_t W,
                               double inv_two_var, void* stream);
// grad_out[M, H, W], points[M, 2] -> grad_points[M, 2] (written); grad_out is read once.
void gaussian_heatmaps_backward(int dtype, const void* grad_out, const void* points, void* grad_points,
                                int64_t M, int64_t H, int64_t W, double inv_two_var, void* stream);

// Thin-plate spline f(p) = a0 + x a_x + y a_y + sum_i w_i U(|p - c_i|^2), U(s) = s log s.
// ctrl[Bc, N, 2] control points (Bc = 1 when shared_ctrl, else B); coef[B, N + 3, 2]: rows
// 0..N-1 are w_i, rows N, N+1, N+2 are a0, a_x, a_y. Both acc_t.
//
// image[B, C, Hin, Win] -> out[B, C, Hout, Wout]; output pixel p samples image at f(p) (bilinear,
// align_corners=True; zeros padding, or coordinates clamped to the image when border), exactly
// F.grid_sample(image, f(grid), "bilinear", padding, align_corners=True). One thread per output
// pixel; with shared_ctrl one thread serves up to 8 images, evaluating the radial basis once.
void tps_warp_forward(int dtype, const void* image, const void* ctrl, const void* coef, void* out, int64_t B,
                      int64_t C, int64_t Hin, int64_t Win, int64_t Hout, int64_t Wout, int64_t N,
                      bool shared_ctrl, bool border, void* stream);
// grad_out[B, C, Hout, Wout] -> grad_image[B, C, Hin, Win] (acc_t: float32 for float16/bfloat16
// images) and grad_coef[B, N + 3, 2] (acc_t); each may be null (not wanted); both are ACCUMULATED
// into (atomics), the caller passes zero-filled buffers.
void tps_warp_backward(int dtype, const void* grad_out, const void* image, const void* ctrl, const void* coef,
                       void* grad_image, void* grad_coef, int64_t B, int64_t C, int64_t Hin, int64_t Win,
                       int64_t Hout, int64_t Wout, int64_t N, bool shared_ctrl, bool border, void* stream);

// points[B, M, 2] -> out[B, M, 2] = f(points). One thread per point.
void tps_transform_points_forward(int dtype, const void* points, const void* ctrl, const void* coef, void* out,
                                  int64_t B, int64_t M, int64_t N, bool shared_ctrl, void* stream);
// grad_out[B, M, 2] -> grad_points[B, M, 2] (+= J_f^T grad_out, data dtype) and grad_coef[B, N + 3, 2]
// (acc_t, atomics); each may be null; both are ACCUMULATED into, the caller zero-fills them.
void tps_transform_points_backward(int dtype, const void* grad_out, const void* points, const void* ctrl,
                                   const void* coef, void* grad_points, void* grad_coef, int64_t B, int64_t M,
                                   int64_t N, bool shared_ctrl, void* stream);

}  // namespace cuda
}  // namespace fastlmk
