"""Gaussian heatmap rendering: landmark points -> K Gaussian maps, fused."""

from __future__ import annotations

import torch

from fastlmk.ops import _checks, reference
from fastlmk.ops._interface import acc_dtype
from fastlmk.ops._op import declare

_OP = "gaussian_heatmaps"


def inv_two_var(std: float, dtype: torch.dtype) -> float:
    """The kernels' scale a = 1 / (2 std^2), capped at 1/8 of the accumulation dtype's largest
    value: for std below ~1e-19 (float32) it would overflow to inf, and 0 * inf at a point on a
    pixel centre gave NaN (the cap changes only exponents of pixels closer than ~1e-19 to the
    point; the backward's 2a stays finite)."""
    return min(0.5 / std / std, torch.finfo(acc_dtype(dtype)).max / 8)


# --- the declaration: over a backend's kernel set k (fastlmk.ops._interface), wired by _op -----
def _forward(k, points, height, width, std):
    B, K, _ = points.shape
    out = k.gaussian_heatmaps_forward(points.view(B * K, 2), height, width, inv_two_var(std, points.dtype))
    return out.view(B, K, height, width)


def _backward(k, grad, points, std):
    B, K, H, W = grad.shape
    g = k.gaussian_heatmaps_backward(grad.view(B * K, H, W), points.view(B * K, 2), inv_two_var(std, points.dtype))
    return g.view(B, K, 2)


def _fake(points, height, width, std):
    return points.new_empty(points.shape[0], points.shape[1], height, width)


def _reference(points, height, width, std):
    return reference.gaussian_heatmaps(points, height, width, std)


_gaussian_heatmaps = declare(
    "gaussian_heatmaps(Tensor points, int height, int width, float std) -> Tensor maps",
    saved="points, std", differentiable="points",
    forward=_forward, backward=_backward, fake=_fake, reference=_reference)


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
    return _gaussian_heatmaps(backend, points, height, width, std)
