"""Thin-plate-spline image warping, fused (spline evaluation + bilinear sampling in one kernel)."""

from __future__ import annotations

import warnings

import torch
from torch.autograd.function import once_differentiable

from fastlmk.ops import _checks, backends, reference
from fastlmk.ops._cpp import acc_dtype
from fastlmk.ops.tps import TPS, check_tps

_OP = "tps_warp"
_PADDING = ("zeros", "border")


def _forward(image, ctrl, coef, out_h, out_w, border, backend):
    return backends.kernels(backend).tps_warp_forward(image, ctrl, coef, out_h, out_w, border)


def _backward(grad, image, ctrl, coef, border, backend, need_image, need_coef):
    return backends.kernels(backend).tps_warp_backward(grad.contiguous(), image, ctrl, coef, border, need_image, need_coef)


@torch.library.custom_op("fastlmk::tps_warp", mutates_args=())
def _tps_warp_op(image: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor, out_h: int, out_w: int,
                 border: bool, backend: str) -> torch.Tensor:
    return _forward(image.contiguous(), ctrl.contiguous(), coef.contiguous(), out_h, out_w, border, backend)


@_tps_warp_op.register_fake
def _(image, ctrl, coef, out_h, out_w, border, backend):
    return image.new_empty(image.shape[0], image.shape[1], out_h, out_w)


@torch.library.custom_op("fastlmk::tps_warp_backward", mutates_args=())
def _tps_warp_backward_op(grad: torch.Tensor, image: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor,
                          border: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    gi, gc = _backward(grad, image.contiguous(), ctrl.contiguous(), coef.contiguous(), border, backend, True, True)
    return gi, gc


@_tps_warp_backward_op.register_fake
def _(grad, image, ctrl, coef, border, backend):
    return torch.empty_like(image, memory_format=torch.contiguous_format), torch.empty_like(coef, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    image, ctrl, coef, out_h, out_w, border, backend = inputs
    ctx.save_for_backward(image, ctrl, coef)
    ctx.args = (border, backend)


def _op_backward(ctx, grad):
    image, ctrl, coef = ctx.saved_tensors
    gi, gc = _tps_warp_backward_op(grad, image, ctrl, coef, *ctx.args)
    return gi, None, gc, None, None, None, None


_tps_warp_op.register_autograd(_op_backward, setup_context=_setup_context)


class _TpsWarpFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, image, ctrl, coef, out_h, out_w, border, backend):
        image, ctrl, coef = image.contiguous(), ctrl.contiguous(), coef.contiguous()
        ctx.save_for_backward(image, ctrl, coef)
        ctx.args = (border, backend)
        return _forward(image, ctrl, coef, out_h, out_w, border, backend)

    @staticmethod
    @once_differentiable  # the kernels' backward is not differentiable: a double backward raises
    def backward(ctx, grad):
        image, ctrl, coef = ctx.saved_tensors
        need_image, _, need_coef = ctx.needs_input_grad[:3]
        gi, gc = _backward(grad, image, ctrl, coef, *ctx.args, need_image, need_coef)
        return gi, None, gc, None, None, None, None


def _prepare(op, image_like, tps):
    """Cast ctrl/coef to the accumulation dtype of the data; broadcast a batch-1 spline.

    Control points are constants on every backend (the reference included, so that all agree):
    a ``ctrl`` that requires grad is detached, with a warning saying so."""
    ctrl = tps.ctrl
    if ctrl.requires_grad and torch.is_grad_enabled():
        warnings.warn(
            f"fastlmk.{op}: control points carry no gradient (tps.ctrl requires grad, but it is treated "
            "as a constant on every backend; gradients flow to tps.coef, to the image and to the points). "
            "Detach tps.ctrl to silence this warning.", UserWarning, stacklevel=3)
    dt = acc_dtype(image_like.dtype)
    ctrl, coef = ctrl.detach().to(dt), tps.coef.to(dt)
    B = image_like.shape[0]
    if coef.shape[0] != B:
        if coef.shape[0] != 1:
            raise ValueError(f"fastlmk.{op}: tps batch ({coef.shape[0]}) must be 1 or match the input batch ({B})")
        coef = coef.expand(B, -1, -1)
        if ctrl.shape[0] != 1:
            ctrl = ctrl.expand(B, -1, -1)
    return ctrl, coef


def tps_warp(image: torch.Tensor, tps: TPS, size=None, padding: str = "zeros", backend: str = "auto") -> torch.Tensor:
    r"""Warp images with thin-plate splines (backward mapping, bilinear).

    ``out[b, :, p] = bilinear(image[b], f_b(p))`` for every output pixel centre ``p`` in [-1, 1]^2
    (align_corners=True), exactly ``F.grid_sample(image, f(grid), align_corners=True)``, but the
    spline is evaluated per pixel inside the kernel: neither the ``(B, H*W, N)`` radial basis nor
    the sampling grid is materialised.

    Args:
        image: ``(B, C, H, W)``.
        tps: :class:`fastlmk.TPS` with batch B (or 1, broadcast).
        size: output ``(H_out, W_out)``; default the input size.
        padding: ``"zeros"`` (outside samples are 0) or ``"border"`` (coordinates clamped).
        backend: ``"auto" | "reference" | "cpu" | "cuda" | "triton"``.

    Returns:
        ``(B, C, H_out, W_out)``, dtype of ``image``.

    Backward: :math:`\partial L/\partial \text{image}` scatters each output gradient to its four
    bilinear taps; :math:`\partial L/\partial \text{coef}_{b,k} = \sum_p \phi_k(p)\,
    \partial L/\partial s_b(p)` with :math:`\phi(p) = [U(\lVert p - c_i\rVert)\ldots, 1, x, y]` and
    :math:`s = f(p)` the sample position. Control points are constants on every backend: no
    gradient, and a warning if ``tps.ctrl`` requires grad.

    The kernels' backward is once-differentiable: a double backward through them (a gradient
    penalty, ``create_graph=True`` then ``backward``) raises; ``backend="reference"`` supports it.
    """
    _checks.tensor(_OP, "image", image, ndim=4)
    check_tps(_OP, tps)
    _checks.same_device(_OP, image=image, ctrl=tps.ctrl, coef=tps.coef)
    _checks.choice(_OP, "padding", padding, _PADDING)
    if size is None:
        out_h, out_w = image.shape[-2:]
    else:
        if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
            raise ValueError(f"fastlmk.tps_warp: size must be (H_out, W_out), got {size!r}")
        # ints only: (5.7, 5) used to be truncated silently
        out_h = _checks.positive_int(_OP, "size[0]", size[0])
        out_w = _checks.positive_int(_OP, "size[1]", size[1])
    if image.shape[-2] < 1 or image.shape[-1] < 1:
        raise ValueError(f"fastlmk.tps_warp: image must have H, W >= 1, got {tuple(image.shape)}")
    ctrl, coef = _prepare(_OP, image, tps)
    be = backends.resolve(_OP, backend, image.device, image.dtype)
    if be == "reference" or image.numel() == 0:
        return reference.tps_warp(image, ctrl, coef, (out_h, out_w), padding)
    border = padding == "border"
    if torch.compiler.is_compiling():
        if be == "triton":
            from fastlmk.ops.triton import compiled_ops

            return compiled_ops.tps_warp(image, ctrl, coef, out_h, out_w, border)
        return _tps_warp_op(image, ctrl, coef, out_h, out_w, border, be)
    return _TpsWarpFn.apply(image, ctrl, coef, out_h, out_w, border, be)
