"""Gaussian heatmaps: points (B, K, 2) -> maps (B, K, H, W), peak 1.

Shapes: paper B=32, K=10, 32x32; large B=64, K=68, 64x64; std 0.5 px in both
(``0.5 * 2 / (W - 1)`` in normalised units). Points uniform in [-1, 1]^2. Forward+backward
differentiates w.r.t. the points.

kornia: ``kornia.geometry.subpix.render_gaussian2d(mean, std, (H, W), normalized_coordinates=True)``
uses our grid (``linspace(-1, 1)``, align_corners=True) and (x, y) means, but renders a
*probability* map: each 1-D factor is normalised to sum 1 over the grid,
``kornia = exp(-dx^2 / 2s^2) / Z_x * exp(-dy^2 / 2s^2) / Z_y`` with
``Z_x = sum_j exp(-(g_j - x)^2 / 2s^2)``. Multiplying by ``Z_x * Z_y`` renormalises it to our
peak-1 Gaussian exactly (dividing by the map's maximum would not: the peak lies between pixels).
That renormalisation (1-D sums plus one multiply over the map) is part of the timed kornia
function: it is what one must add to get this op out of kornia.
"""

from __future__ import annotations


import pytest
import torch

import fastlmk
from fastlmk import reference

from benchmarks.conftest import MODES, SHAPES, Case, case_cache, compiled, device_providers, provider_fn, run, seeded

OP = "gaussian_heatmaps"
DIMS = {"paper": (32, 10, 32, 32), "large": (64, 68, 64, 64), "tiny": (2, 3, 8, 8)}  # B, K, H, W
STD_PX = 0.5

_compiled_reference = compiled(reference.gaussian_heatmaps)


def std_normalised(width: int) -> float:
    return STD_PX * 2.0 / (width - 1)


@case_cache
def _case(shape: str, device: str) -> Case:
    B, K, H, W = DIMS[shape]
    points = (torch.rand(B, K, 2, generator=seeded(1)) * 2 - 1).to(device)
    maps = B * K * H * W * points.element_size()
    p = points.numel() * points.element_size()
    return Case(OP, shape, device, f"B={B} K={K} {H}x{W} std={STD_PX}px", (points,), diff=(0,),
                rtol=1e-4, atol=1e-5,
                # forward writes the maps once; backward reads their gradient once
                nbytes={"forward": maps + p, "forward+backward": 2 * maps + 3 * p})


def kornia_gaussian_heatmaps(kornia, points, height, width, std):
    """kornia's render_gaussian2d renormalised from a probability map to peak 1 (see module doc)."""
    std_t = torch.full((1, 1, 2), std, dtype=points.dtype, device=points.device)
    prob = kornia.geometry.subpix.render_gaussian2d(points, std_t, (height, width), True)  # (B, K, H, W)
    inv_two_var = 1.0 / (2.0 * std * std)
    xs = torch.linspace(-1, 1, width, dtype=points.dtype, device=points.device)
    ys = torch.linspace(-1, 1, height, dtype=points.dtype, device=points.device)
    zx = torch.exp(-(xs - points[..., :1]) ** 2 * inv_two_var).sum(-1)  # (B, K)
    zy = torch.exp(-(ys - points[..., 1:]) ** 2 * inv_two_var).sum(-1)
    return prob * (zx * zy)[..., None, None]


@pytest.mark.parametrize("device, provider", device_providers())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_gaussian_heatmaps(benchmark, shape, mode, device, provider):
    _, _, H, W = DIMS[shape]
    std = std_normalised(W)
    fn, warm = provider_fn(provider, OP, device, lambda p: reference.gaussian_heatmaps(p, H, W, std),
                           lambda p: _compiled_reference(p, H, W, std),
                           lambda kornia: lambda p: kornia_gaussian_heatmaps(kornia, p, H, W, std),
                           lambda b: lambda p: fastlmk.gaussian_heatmaps(p, H, W, std, backend=b))
    run(benchmark, _case(shape, device), provider, mode, fn, lambda p: reference.gaussian_heatmaps(p, H, W, std),
        warm=warm)
