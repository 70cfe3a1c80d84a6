"""soft-argmax: heatmap logits -> expected landmark coordinates, fused."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fastlmk.ops import _checks, backends, reference
from fastlmk.ops._cpp import acc_dtype, soft_argmax_stats_width

_OP = "soft_argmax"
MODES = ("spatial", "marginal")  # the ``mode`` argument


def _forward(heatmaps, temperature, marginal, backend):
    B, K, H, W = heatmaps.shape
    points, stats = backends.kernels(backend).soft_argmax_forward(
        heatmaps.reshape(B * K, H, W), 1.0 / temperature, marginal)
    return points.view(B, K, 2), stats.view(B, K, -1)


def _backward(grad, heatmaps, stats, points, temperature, marginal, backend):
    B, K, H, W = heatmaps.shape
    g = backends.kernels(backend).soft_argmax_backward(
        grad.contiguous().view(B * K, 2), heatmaps.reshape(B * K, H, W), stats.reshape(B * K, -1),
        points.reshape(B * K, 2), 1.0 / temperature, marginal)
    return g.view(B, K, H, W)


# --- torch.library registration: what torch.compile and opcheck see ------------------------
@torch.library.custom_op("fastlmk::soft_argmax", mutates_args=())
def _soft_argmax_op(heatmaps: torch.Tensor, temperature: float, marginal: bool, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(heatmaps.contiguous(), temperature, marginal, backend)


@_soft_argmax_op.register_fake
def _(heatmaps, temperature, marginal, backend):
    B, K = heatmaps.shape[:2]
    return heatmaps.new_empty(B, K, 2), heatmaps.new_empty(B, K, soft_argmax_stats_width(marginal),
                                                          dtype=acc_dtype(heatmaps.dtype))


@torch.library.custom_op("fastlmk::soft_argmax_backward", mutates_args=())
def _soft_argmax_backward_op(grad: torch.Tensor, heatmaps: torch.Tensor, stats: torch.Tensor, points: torch.Tensor,
                             temperature: float, marginal: bool, backend: str) -> torch.Tensor:
    return _backward(grad, heatmaps.contiguous(), stats.contiguous(), points.contiguous(), temperature, marginal, backend)


@_soft_argmax_backward_op.register_fake
def _(grad, heatmaps, stats, points, temperature, marginal, backend):
    return torch.empty_like(heatmaps, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    heatmaps, temperature, marginal, backend = inputs
    ctx.save_for_backward(heatmaps, output[1], output[0])
    ctx.args = (temperature, marginal, backend)


def _op_backward(ctx, grad_points, grad_stats):
    heatmaps, stats, points = ctx.saved_tensors
    return _soft_argmax_backward_op(grad_points, heatmaps, stats, points, *ctx.args), None, None, None


_soft_argmax_op.register_autograd(_op_backward, setup_context=_setup_context)


# --- eager fast path: the same kernels without the custom-op dispatch overhead -------------
class _SoftArgmaxFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, heatmaps, temperature, marginal, backend):
        heatmaps = heatmaps.contiguous()
        points, stats = _forward(heatmaps, temperature, marginal, backend)
        ctx.save_for_backward(heatmaps, stats, points)
        ctx.args = (temperature, marginal, backend)
        return points

    @staticmethod
    @once_differentiable  # the kernels' backward is not differentiable: a double backward raises
    def backward(ctx, grad_points):
        heatmaps, stats, points = ctx.saved_tensors
        return _backward(grad_points, heatmaps, stats, points, *ctx.args), None, None, None


def soft_argmax(heatmaps: torch.Tensor, temperature: float = 1.0, mode: str = "spatial",
                backend: str = "auto") -> torch.Tensor:
    r"""Expected (x, y) position under a softmax over each heatmap.

    Args:
        heatmaps: logits ``(B, K, H, W)``.
        temperature: ``T > 0``; logits are divided by it before the softmax (the method uses 0.1).
        mode: ``"spatial"``: softmax over all ``H*W`` pixels,
            :math:`p_{ij} = \mathrm{softmax}(l/T)_{ij}`, :math:`x = \sum_{ij} p_{ij} g^x_j`,
            :math:`y = \sum_{ij} p_{ij} g^y_i`.
            ``"marginal"`` (IMM): :math:`q = \mathrm{softmax}(\bar l_{\cdot j}/T)` of the column
            means, :math:`r = \mathrm{softmax}(\bar l_{i \cdot}/T)` of the row means,
            :math:`x = \sum_j q_j g^x_j`, :math:`y = \sum_i r_i g^y_i`.
            :math:`g^x_j = -1 + 2j/(W-1)`, :math:`g^y_i = -1 + 2i/(H-1)` (pixel centres,
            align_corners=True).
        backend: ``"auto" | "reference" | "cpu" | "cuda" | "triton"``.

    Returns:
        points ``(B, K, 2)`` as (x, y) in [-1, 1], dtype of ``heatmaps``.

    Backward (spatial): :math:`\partial L/\partial l_{ij} = \frac1T p_{ij}\,((g^x_j - x)\,\bar x +
    (g^y_i - y)\,\bar y)` with :math:`(\bar x, \bar y)` the incoming gradient; the kernels save
    only the per-map log-sum-exp and recompute :math:`p`. Marginal:
    :math:`\partial L/\partial l_{ij} = \frac{1}{HT} q_j (g^x_j - x)\bar x + \frac{1}{WT} r_i (g^y_i - y)\bar y`.

    The kernels' backward is once-differentiable: a double backward through them (a gradient
    penalty, ``create_graph=True`` then ``backward``) raises; ``backend="reference"`` supports it.
    """
    _checks.tensor(_OP, "heatmaps", heatmaps, ndim=4)
    temperature = _checks.positive_float(_OP, "temperature", temperature)
    _checks.choice(_OP, "mode", mode, MODES)
    be = backends.resolve(_OP, backend, heatmaps.device, heatmaps.dtype)
    if be == "reference" or heatmaps.numel() == 0:
        return reference.soft_argmax(heatmaps, temperature, mode)
    marginal = mode == "marginal"
    if torch.compiler.is_compiling():
        if be == "triton":
            from fastlmk.ops.triton import compiled_ops

            return compiled_ops.soft_argmax(heatmaps, temperature, marginal)
        return _soft_argmax_op(heatmaps, temperature, marginal, be)[0]
    return _SoftArgmaxFn.apply(heatmaps, temperature, marginal, be)
