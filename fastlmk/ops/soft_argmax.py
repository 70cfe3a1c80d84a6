"""soft-argmax: heatmap logits -> expected landmark coordinates, fused."""

from __future__ import annotations

import torch

from fastlmk.ops import _checks, reference
from fastlmk.ops._interface import acc_dtype, soft_argmax_stats_width
from fastlmk.ops._op import declare

_OP = "soft_argmax"
MODES = ("spatial", "marginal")  # the ``mode`` argument


# --- the declaration: over a backend's kernel set k (fastlmk.ops._interface), wired by _op -----
def _forward(k, heatmaps, temperature, marginal):
    B, K, H, W = heatmaps.shape
    points, stats = k.soft_argmax_forward(heatmaps.view(B * K, H, W), 1.0 / temperature, marginal)
    return points.view(B, K, 2), stats.view(B, K, -1)


def _backward(k, grad, heatmaps, stats, points, temperature, marginal):
    B, K, H, W = heatmaps.shape
    g = k.soft_argmax_backward(grad.view(B * K, 2), heatmaps.view(B * K, H, W), stats.view(B * K, -1),
                               points.view(B * K, 2), 1.0 / temperature, marginal)
    return g.view(B, K, H, W)


def _fake(heatmaps, temperature, marginal):
    B, K = heatmaps.shape[:2]
    return heatmaps.new_empty(B, K, 2), heatmaps.new_empty(B, K, soft_argmax_stats_width(marginal),
                                                          dtype=acc_dtype(heatmaps.dtype))


def _reference(heatmaps, temperature, marginal):
    return reference.soft_argmax(heatmaps, temperature, "marginal" if marginal else "spatial")


_soft_argmax = declare(
    "soft_argmax(Tensor heatmaps, float temperature, bool marginal) -> (Tensor points, Tensor stats)",
    saved="heatmaps, stats, points, temperature, marginal", differentiable="heatmaps",
    forward=_forward, backward=_backward, fake=_fake, reference=_reference)


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
    return _soft_argmax(backend, heatmaps, temperature, mode == "marginal")
