"""The Triton kernels as ``torch.library`` operators, for ``torch.compile``.

The public ops call these (instead of their opaque ``torch.library.custom_op``) when they are
being compiled with ``backend="triton"``. Each forward and each backward is a
``torch.library.triton_op`` whose body launches the kernels through ``torch.library.wrap_triton``,
so ``torch.compile`` traces into the body and hands the kernels themselves to Inductor (which can
schedule them next to its own code, and also sees that no other op runs in between); the
backward is registered with ``register_autograd`` and is itself a ``triton_op``.

Under the Triton interpreter (``TRITON_INTERPRET=1``, CPU tensors) ``wrap_triton`` cannot trace a
kernel, so the same bodies are registered as opaque ``custom_op`` operators with explicit fake
(shape) functions instead: ``torch.compile`` then still works, treating each op as a black box.

    soft_argmax(heatmaps (B,K,H,W), temperature, marginal)      -> points (B,K,2)
    gaussian_heatmaps(points (B,K,2), height, width, std)       -> maps (B,K,H,W)
    tps_warp(image (B,C,H,W), ctrl, coef, out_h, out_w, border) -> image (B,C,out_h,out_w)
    tps_transform_points(points (B,M,2), ctrl, coef)            -> points (B,M,2)

ctrl (Bc, N, 2) and coef (B, N + 3, 2) come in the accumulation dtype, batch-expanded
(:func:`fastlmk.ops.tps_warp._prepare`).
"""

from __future__ import annotations

import torch

from fastlmk.ops import backends
from fastlmk.ops.gaussian_heatmaps import inv_two_var
from fastlmk.ops.triton import gaussian_heatmaps as _gh
from fastlmk.ops.triton import soft_argmax as _sa
from fastlmk.ops.triton import tps_transform_points as _tp
from fastlmk.ops.triton import tps_warp as _tw
from fastlmk.ops.triton._common import acc_dtype

# decided once, at import: whether triton was imported in interpreter mode
INTERPRETED = backends.triton_interpreted()


def _op(name: str, fake):
    """Register ``fn`` as ``fastlmk::<name>``: a triton_op, or under the interpreter an opaque
    custom_op with the given fake function."""

    def register(fn):
        if INTERPRETED:
            op = torch.library.custom_op(f"fastlmk::{name}", fn, mutates_args=())
            op.register_fake(fake)
            return op
        return torch.library.triton_op(f"fastlmk::{name}", fn, mutates_args=())

    return register


def _nothing(like: torch.Tensor) -> torch.Tensor:
    """Placeholder output of a backward for a gradient that was not asked for."""
    return like.new_empty(0)


# --- soft-argmax ---------------------------------------------------------------------------
def _soft_argmax_fake(heatmaps, temperature, marginal):
    B, K = heatmaps.shape[:2]
    return (heatmaps.new_empty(B, K, 2),
            heatmaps.new_empty(B, K, 4 if marginal else 2, dtype=acc_dtype(heatmaps.dtype)))


@_op("triton_soft_argmax", _soft_argmax_fake)
def _soft_argmax_op(heatmaps: torch.Tensor, temperature: float, marginal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    B, K, H, W = heatmaps.shape
    points, stats = _sa.soft_argmax_forward(heatmaps.contiguous().view(B * K, H, W), 1.0 / temperature, marginal)
    return points.view(B, K, 2), stats.view(B, K, -1)


def _soft_argmax_bwd_fake(grad, heatmaps, stats, points, temperature, marginal):
    return torch.empty_like(heatmaps, memory_format=torch.contiguous_format)


@_op("triton_soft_argmax_backward", _soft_argmax_bwd_fake)
def _soft_argmax_bwd_op(grad: torch.Tensor, heatmaps: torch.Tensor, stats: torch.Tensor, points: torch.Tensor,
                        temperature: float, marginal: bool) -> torch.Tensor:
    B, K, H, W = heatmaps.shape
    g = _sa.soft_argmax_backward(grad.contiguous().view(B * K, 2), heatmaps.contiguous().view(B * K, H, W),
                                 stats.contiguous().view(B * K, -1), points.contiguous().view(B * K, 2),
                                 1.0 / temperature, marginal)
    return g.view(B, K, H, W)


def _soft_argmax_setup(ctx, inputs, output):
    heatmaps, temperature, marginal = inputs
    ctx.save_for_backward(heatmaps, output[1], output[0])
    ctx.args = (temperature, marginal)


def _soft_argmax_bwd(ctx, grad_points, grad_stats):
    heatmaps, stats, points = ctx.saved_tensors
    return _soft_argmax_bwd_op(grad_points, heatmaps, stats, points, *ctx.args), None, None


_soft_argmax_op.register_autograd(_soft_argmax_bwd, setup_context=_soft_argmax_setup)


def soft_argmax(heatmaps: torch.Tensor, temperature: float, marginal: bool) -> torch.Tensor:
    return _soft_argmax_op(heatmaps, temperature, marginal)[0]


# --- Gaussian heatmaps ---------------------------------------------------------------------
def _gaussian_fake(points, height, width, std):
    return points.new_empty(points.shape[0], points.shape[1], height, width)


@_op("triton_gaussian_heatmaps", _gaussian_fake)
def _gaussian_op(points: torch.Tensor, height: int, width: int, std: float) -> torch.Tensor:
    B, K, _ = points.shape
    out = _gh.gaussian_heatmaps_forward(points.contiguous().view(B * K, 2), height, width, inv_two_var(std, points.dtype))
    return out.view(B, K, height, width)


def _gaussian_bwd_fake(grad, points, std):
    return torch.empty_like(points, memory_format=torch.contiguous_format)


@_op("triton_gaussian_heatmaps_backward", _gaussian_bwd_fake)
def _gaussian_bwd_op(grad: torch.Tensor, points: torch.Tensor, std: float) -> torch.Tensor:
    B, K, H, W = grad.shape
    g = _gh.gaussian_heatmaps_backward(grad.contiguous().view(B * K, H, W), points.contiguous().view(B * K, 2),
                                       inv_two_var(std, points.dtype))
    return g.view(B, K, 2)


def _gaussian_setup(ctx, inputs, output):
    points, height, width, std = inputs
    ctx.save_for_backward(points)
    ctx.std = std


def _gaussian_bwd(ctx, grad):
    (points,) = ctx.saved_tensors
    return _gaussian_bwd_op(grad, points, ctx.std), None, None, None


_gaussian_op.register_autograd(_gaussian_bwd, setup_context=_gaussian_setup)


def gaussian_heatmaps(points: torch.Tensor, height: int, width: int, std: float) -> torch.Tensor:
    return _gaussian_op(points, height, width, std)


# --- TPS warp ------------------------------------------------------------------------------
def _warp_fake(image, ctrl, coef, out_h, out_w, border):
    return image.new_empty(image.shape[0], image.shape[1], out_h, out_w)


@_op("triton_tps_warp", _warp_fake)
def _warp_op(image: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor, out_h: int, out_w: int,
             border: bool) -> torch.Tensor:
    return _tw.tps_warp_forward(image.contiguous(), ctrl.contiguous(), coef.contiguous(), out_h, out_w, border)


def _warp_bwd_fake(grad, image, ctrl, coef, border, need_image, need_coef):
    gi = torch.empty_like(image, memory_format=torch.contiguous_format) if need_image else _nothing(image)
    gc = torch.empty_like(coef, memory_format=torch.contiguous_format) if need_coef else _nothing(coef)
    return gi, gc


@_op("triton_tps_warp_backward", _warp_bwd_fake)
def _warp_bwd_op(grad: torch.Tensor, image: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor, border: bool,
                 need_image: bool, need_coef: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gi, gc = _tw.tps_warp_backward(grad.contiguous(), image.contiguous(), ctrl.contiguous(), coef.contiguous(),
                                   border, need_image, need_coef)
    return (gi if gi is not None else _nothing(image)), (gc if gc is not None else _nothing(coef))


def _warp_setup(ctx, inputs, output):
    image, ctrl, coef, out_h, out_w, border = inputs
    ctx.save_for_backward(image, ctrl, coef)
    ctx.border = border


def _warp_bwd(ctx, grad):
    image, ctrl, coef = ctx.saved_tensors
    need_image, need_coef = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    gi, gc = _warp_bwd_op(grad, image, ctrl, coef, ctx.border, need_image, need_coef)
    return (gi if need_image else None), None, (gc if need_coef else None), None, None, None


_warp_op.register_autograd(_warp_bwd, setup_context=_warp_setup)


def tps_warp(image: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor, out_h: int, out_w: int,
             border: bool) -> torch.Tensor:
    return _warp_op(image, ctrl, coef, out_h, out_w, border)


# --- TPS point mapping ---------------------------------------------------------------------
def _points_fake(points, ctrl, coef):
    return torch.empty_like(points, memory_format=torch.contiguous_format)


@_op("triton_tps_transform_points", _points_fake)
def _points_op(points: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    return _tp.tps_transform_points_forward(points.contiguous(), ctrl.contiguous(), coef.contiguous())


def _points_bwd_fake(grad, points, ctrl, coef, need_points, need_coef):
    gp = torch.empty_like(points, memory_format=torch.contiguous_format) if need_points else _nothing(points)
    gc = torch.empty_like(coef, memory_format=torch.contiguous_format) if need_coef else _nothing(coef)
    return gp, gc


@_op("triton_tps_transform_points_backward", _points_bwd_fake)
def _points_bwd_op(grad: torch.Tensor, points: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor,
                   need_points: bool, need_coef: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gp, gc = _tp.tps_transform_points_backward(grad.contiguous(), points.contiguous(), ctrl.contiguous(),
                                               coef.contiguous(), need_points, need_coef)
    return (gp if gp is not None else _nothing(points)), (gc if gc is not None else _nothing(coef))


def _points_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _points_bwd(ctx, grad):
    points, ctrl, coef = ctx.saved_tensors
    need_points, need_coef = ctx.needs_input_grad[0], ctx.needs_input_grad[2]
    gp, gc = _points_bwd_op(grad, points, ctrl, coef, need_points, need_coef)
    return (gp if need_points else None), None, (gc if need_coef else None)


_points_op.register_autograd(_points_bwd, setup_context=_points_setup)


def tps_transform_points(points: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    return _points_op(points, ctrl, coef)
