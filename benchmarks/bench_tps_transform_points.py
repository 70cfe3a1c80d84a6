"""Thin-plate-spline point mapping: points (B, M, 2) -> f(points) (B, M, 2).

The landmark side of the TPS pair: mapping the detected points of one view through a spline.
Splines from ``fastlmk.random_tps`` on one shared 10x10 lattice. Shapes: paper B=32, M=10 points;
large B=64, M=68 points. Points uniform in [-1, 1]^2. Forward+backward differentiates w.r.t. the
points and the spline coefficients. These are tiny problems: the per-call overhead dominates.

kornia: ``kornia.geometry.transform.warp_points_tps(points, centres, kernel_weights,
affine_weights)`` with the mapping of :func:`benchmarks.conftest.kornia_tps` (kernel weights =
2 w, same affine part, control points expanded per sample).
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastlmk
from fastlmk import TPS, reference

from benchmarks.conftest import MODES, SHAPES, Case, case_cache, compiled, device_providers, kornia_tps, provider_fn, run, seeded

OP = "tps_transform_points"
GRID = 10
DIMS = {"paper": (32, 10), "large": (64, 68), "tiny": (2, 4)}  # B, M

_compiled_reference = compiled(reference.tps_transform_points)


@case_cache
def _case(shape: str, device: str) -> Case:
    B, M = DIMS[shape]
    points = (torch.rand(B, M, 2, generator=seeded(4)) * 2 - 1).to(device)
    tps = fastlmk.random_tps(B, GRID, generator=seeded(5), device=device)
    pb = points.numel() * points.element_size()
    cb = tps.coef.numel() * tps.coef.element_size()
    return Case(OP, shape, device, f"B={B} M={M} {GRID}x{GRID} lattice", (points, tps.ctrl, tps.coef), diff=(0, 2),
                rtol=1e-4, atol=1e-4,
                nbytes={"forward": 2 * pb + cb, "forward+backward": 4 * pb + 3 * cb})


def kornia_tps_transform_points(kornia, points, ctrl, coef):
    centres, kernel_weights, affine_weights = kornia_tps(ctrl, coef)
    return kornia.geometry.transform.warp_points_tps(points, centres, kernel_weights, affine_weights)


@pytest.mark.parametrize("device, provider", device_providers())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_tps_transform_points(benchmark, shape, mode, device, provider):
    fn, warm = provider_fn(provider, OP, device, reference.tps_transform_points, _compiled_reference,
                           lambda kornia: functools.partial(kornia_tps_transform_points, kornia),
                           lambda b: lambda p, ctrl, coef: fastlmk.tps_transform_points(p, TPS(ctrl, coef), backend=b))
    run(benchmark, _case(shape, device), provider, mode, fn, reference.tps_transform_points, warm=warm)
