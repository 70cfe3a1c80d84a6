"""The "cpu" and "cuda" kernel sets: tensor-level wrappers around the framework-free C++/CUDA kernels.

:class:`CppKernels` implements the interface of :mod:`fastlmk.ops._interface` by passing raw
pointers and sizes to ``fastlmk._C_cpu`` / ``fastlmk._C_cuda`` (which never see a torch tensor)
and allocating the outputs here.
"""

from __future__ import annotations

import torch

from fastlmk.ops._interface import acc_dtype, soft_argmax_stats_width

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1, torch.float16: 2, torch.bfloat16: 3}


def _ptr(t):
    return t.data_ptr() if t is not None else 0


class CppKernels:
    """Calls into ``fastlmk._C_cpu`` (``kind="cpu"``) or ``fastlmk._C_cuda`` (``kind="cuda"``).

    The last argument of every C++ entry point is the launch context: the number of OpenMP
    threads for the CPU (``torch.get_num_threads()``: no oversubscription against torch's pool),
    the current CUDA stream handle for CUDA.
    """

    def __init__(self, module, kind: str):
        self.m = module
        self.kind = kind

    def _ctx(self, t: torch.Tensor) -> int:
        if self.kind == "cpu":
            return torch.get_num_threads()
        if t.device.index is not None and t.device.index != torch.cuda.current_device():
            torch.cuda.set_device(t.device)
        return torch.cuda.current_stream(t.device).cuda_stream

    # --- soft-argmax -----------------------------------------------------------------------
    def soft_argmax_forward(self, logits, inv_t, marginal):
        M, H, W = logits.shape
        points = logits.new_empty(M, 2)
        stats = torch.empty(M, soft_argmax_stats_width(marginal), dtype=acc_dtype(logits.dtype), device=logits.device)
        self.m.soft_argmax_forward(_DTYPE_CODE[logits.dtype], _ptr(logits), _ptr(points), _ptr(stats),
                                   M, H, W, float(inv_t), bool(marginal), self._ctx(logits))
        return points, stats

    def soft_argmax_backward(self, grad, logits, stats, points, inv_t, marginal):
        M, H, W = logits.shape
        grad_logits = torch.empty_like(logits)
        self.m.soft_argmax_backward(_DTYPE_CODE[logits.dtype], _ptr(grad), _ptr(logits), _ptr(stats),
                                    _ptr(points), _ptr(grad_logits), M, H, W, float(inv_t), bool(marginal),
                                    self._ctx(logits))
        return grad_logits

    # --- Gaussian heatmaps -----------------------------------------------------------------
    def gaussian_heatmaps_forward(self, points, height, width, inv_two_var):
        M = points.shape[0]
        out = points.new_empty(M, height, width)
        self.m.gaussian_heatmaps_forward(_DTYPE_CODE[points.dtype], _ptr(points), _ptr(out), M, height, width,
                                         float(inv_two_var), self._ctx(points))
        return out

    def gaussian_heatmaps_backward(self, grad, points, inv_two_var):
        M, H, W = grad.shape
        grad_points = torch.empty_like(points)
        self.m.gaussian_heatmaps_backward(_DTYPE_CODE[points.dtype], _ptr(grad), _ptr(points), _ptr(grad_points),
                                          M, H, W, float(inv_two_var), self._ctx(points))
        return grad_points

    # --- TPS -------------------------------------------------------------------------------
    def tps_warp_forward(self, image, ctrl, coef, out_h, out_w, border):
        B, C, Hi, Wi = image.shape
        N = ctrl.shape[1]
        out = image.new_empty(B, C, out_h, out_w)
        self.m.tps_warp_forward(_DTYPE_CODE[image.dtype], _ptr(image), _ptr(ctrl), _ptr(coef), _ptr(out),
                                B, C, Hi, Wi, out_h, out_w, N, ctrl.shape[0] == 1, bool(border), self._ctx(image))
        return out

    def tps_warp_backward(self, grad_out, image, ctrl, coef, border, need_image, need_coef):
        B, C, Hi, Wi = image.shape
        Ho, Wo = grad_out.shape[-2:]
        N = ctrl.shape[1]
        # zero-filled: the kernels accumulate (atomics on the GPU). CUDA half images get a float32
        # gradient buffer (atomics in half are slow and lossy), cast back below.
        gi_dtype = torch.float32 if image.dtype in (torch.float16, torch.bfloat16) else image.dtype
        grad_image = torch.zeros(image.shape, dtype=gi_dtype, device=image.device) if need_image else None
        grad_coef = torch.zeros_like(coef) if need_coef else None
        self.m.tps_warp_backward(_DTYPE_CODE[image.dtype], _ptr(grad_out), _ptr(image), _ptr(ctrl), _ptr(coef),
                                 _ptr(grad_image), _ptr(grad_coef), B, C, Hi, Wi, Ho, Wo, N, ctrl.shape[0] == 1,
                                 bool(border), self._ctx(image))
        if grad_image is not None and grad_image.dtype != image.dtype:
            grad_image = grad_image.to(image.dtype)
        return grad_image, grad_coef

    def tps_transform_points_forward(self, points, ctrl, coef):
        B, M, _ = points.shape
        N = ctrl.shape[1]
        out = torch.empty_like(points)
        self.m.tps_transform_points_forward(_DTYPE_CODE[points.dtype], _ptr(points), _ptr(ctrl), _ptr(coef),
                                            _ptr(out), B, M, N, ctrl.shape[0] == 1, self._ctx(points))
        return out

    def tps_transform_points_backward(self, grad, points, ctrl, coef, need_points, need_coef):
        B, M, _ = points.shape
        N = ctrl.shape[1]
        grad_points = torch.zeros_like(points) if need_points else None
        grad_coef = torch.zeros_like(coef) if need_coef else None
        self.m.tps_transform_points_backward(_DTYPE_CODE[points.dtype], _ptr(grad), _ptr(points), _ptr(ctrl),
                                             _ptr(coef), _ptr(grad_points), _ptr(grad_coef), B, M, N,
                                             ctrl.shape[0] == 1, self._ctx(points))
        return grad_points, grad_coef
