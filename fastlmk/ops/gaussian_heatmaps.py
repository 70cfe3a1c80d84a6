"""Gaussian heatmap rendering: landmark points -> K Gaussian maps, fused."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fastlmk.ops import _checks, backends, reference
from fastlmk.ops._cpp import acc_dtype

_OP = "gaussian_heatmaps"


def inv_two_var(std: float, dtype: torch.dtype) -> float:
    """The kernels' scale a = 1 / (2 std^2), capped at 1/8 of the accumulation dtype's largest
    value: for std below ~1e-19 (float32) it would overflow to inf, and 0 * inf at a point on a
    pixel centre gave NaN (the cap changes only exponents of pixels closer than ~1e-19 to the
    point; the backward's 2a stays finite)."""
    return min(0.5 / std / std, torch.finfo(acc_dtype(dtype)).max / 8)


def _forward(points, height, width, std, backend):
    B, K, _ = points.shape
    out = backends.kernels(backend).gaussian_heatmaps_forward(
        points.reshape(B * K, 2), height, width, inv_two_var(std, points.dtype))
    return out.view(B, K, height, width)


def _backward(grad, points, std, backend):
    B, K, H, W = grad.shape
    g = backends.kernels(backend).gaussian_heatmaps_backward(
        grad.contiguous().view(B * K, H, W), points.reshape(B * K, 2), inv_two_var(std, points.dtype))
    return g.view(B, K, 2)


@torch.library.custom_op("fastlmk::gaussian_heatmaps", mutates_args=())
def _gaussian_heatmaps_op(points: torch.Tensor, height: int, width: int, std: float, backend: str) -> torch.Tensor:
    return _forward(points.contiguous(), height, width, std, backend)


@_gaussian_heatmaps_op.register_fake
def _(points, height, width, std, backend):
    return points.new_empty(points.shape[0], points.shape[1], height, width)


@torch.library.custom_op("fastlmk::gaussian_heatmaps_backward", mutates_args=())
def _gaussian_heatmaps_backward_op(grad: torch.Tensor, points: torch.Tensor, std: float, backend: str) -> torch.Tensor:
    return _backward(grad, points.contiguous(), std, backend)


@_gaussian_heatmaps_backward_op.register_fake
def _(grad, points, std, backend):
    return torch.empty_like(points, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    points, height, width, std, backend = inputs
    ctx.save_for_backward(points)
    ctx.args = (std, backend)


def _op_backward(ctx, grad):
    (points,) = ctx.saved_tensors
    return _gaussian_heatmaps_backward_op(grad, points, *ctx.args), None, None, None, None


_gaussian_heatmaps_op.register_autograd(_op_backward, setup_context=_setup_context)


class _GaussianHeatmapsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, height, width, std, backend):
        points = points.contiguous()
        ctx.save_for_backward(points)
        ctx.args = (std, backend)
        return _forward(points, height, width, std, backend)

    @staticmethod
    @once_differentiable  # the kernels' backward is not differentiable: a double backward raises
    def backward(ctx, grad):
        (points,) = ctx.saved_tensors
        return _backward(grad, points, *ctx.args), None, None, None, None


def gaussian_heatmaps(points: torch.Tensor, height: int, width: int, std: float,
                      backend: str = "auto") -> torch.Tensor:
    r"""Render one isotropic Gaussian per point, peak value 1 (unnormalised).

    .. math:: G_{k,ij} = \exp\!\Big(-\frac{(g^x_j - x_k)^2 + (g^y_i - y_k)^2}{2\sigma^2}\Big)
              = e^x_{kj}\, e^y_{ki}

    with :math:`g^x, g^y` the pixel-centre coordinates in [-1, 1] (align_corners=True); the map
    factorises into 1-D terms, which the kernels exploit.

    Args:
        points: ``(B, K, 2)`` (x, y) in [-1, 1].
        height, width: output size (>= 1).
        std: :math:`\sigma` in normalised units (finite, > 0). 0.5 px on a 32-pixel grid is
            ``0.5 * 2 / 31``.
        backend: ``"auto" | "reference" | "cpu" | "cuda" | "triton"``.

    Returns:
        maps ``(B, K, H, W)``, dtype of ``points``.

    Backward: :math:`\partial L/\partial x_k = \sum_{ij} \bar G_{k,ij} G_{k,ij} (g^x_j - x_k)/\sigma^2`
    (same for y); the kernels recompute :math:`G` and read the incoming gradient once.

    The kernels' backward is once-differentiable: a double backward through them (a gradient
    penalty, ``create_graph=True`` then ``backward``) raises; ``backend="reference"`` supports it.
    """
    _checks.tensor(_OP, "points", points, ndim=3, last=2)
    height = _checks.positive_int(_OP, "height", height)
    width = _checks.positive_int(_OP, "width", width)
    std = _checks.positive_float(_OP, "std", std)
    be = backends.resolve(_OP, backend, points.device, points.dtype)
    if be == "reference" or points.numel() == 0:
        return reference.gaussian_heatmaps(points, height, width, std)
    if torch.compiler.is_compiling():
        if be == "triton":
            from fastlmk.ops.triton import compiled_ops

            return compiled_ops.gaussian_heatmaps(points, height, width, std)
        return _gaussian_heatmaps_op(points, height, width, std, be)
    return _GaussianHeatmapsFn.apply(points, height, width, std, be)
