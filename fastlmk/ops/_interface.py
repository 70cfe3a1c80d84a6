"""The tensor-level kernel interface that every backend implements.

Each backend's kernel set (:func:`fastlmk.ops.backends.kernels`: :class:`fastlmk.ops._cpp.CppKernels`
for "cpu" and "cuda", the :mod:`fastlmk.ops.triton` module for "triton") exposes the same
functions over *validated, contiguous* tensors; the op declarations (:mod:`fastlmk.ops._op`)
call them and own autograd.

    soft_argmax_forward(logits[M,H,W], inv_t, marginal)            -> points[M,2], stats[M,2|4]
    soft_argmax_backward(grad[M,2], logits, stats, points, inv_t, marginal) -> grad_logits[M,H,W]
    gaussian_heatmaps_forward(points[M,2], H, W, inv_two_var)      -> maps[M,H,W]
    gaussian_heatmaps_backward(grad[M,H,W], points, inv_two_var)   -> grad_points[M,2]
    tps_warp_forward(image[B,C,Hi,Wi], ctrl[Bc,N,2], coef[B,N+3,2], Ho, Wo, border) -> out
    tps_warp_backward(grad_out, image, ctrl, coef, border, need_image, need_coef)
                                                                  -> grad_image|None, grad_coef|None
    tps_transform_points_forward(points[B,M,2], ctrl, coef)        -> out[B,M,2]
    tps_transform_points_backward(grad, points, ctrl, coef, need_points, need_coef)
                                                                  -> grad_points|None, grad_coef|None

stats, ctrl and coef use the accumulation dtype (:func:`acc_dtype`). soft-argmax stats
(M, :func:`soft_argmax_stats_width`) are private to a backend (its backward reads them): spatial
keeps the max logit and the log of the shifted sum apart (exact p for huge logits), marginal the
same pair for the column-mean and for the row-mean softmax.
"""

from __future__ import annotations

import torch


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of data in ``dtype``: float64 for float64, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def soft_argmax_stats_width(marginal: bool) -> int:
    """Columns of the soft-argmax stats: (max, log-sum) per softmax, two softmaxes if marginal."""
    return 4 if marginal else 2
