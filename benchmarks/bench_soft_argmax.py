"""soft-argmax: heatmap logits (B, K, H, W) -> points (B, K, 2), spatial and marginal.

Shapes: paper B=32, K=10, 32x32, temperature 0.1; large B=64, K=68, 64x64, temperature 0.1.
Logits are standard normal. Forward+backward differentiates w.r.t. the logits.

kornia: ``kornia.geometry.subpix.spatial_soft_argmax2d(heatmaps, temperature,
normalized_coordinates=True)`` computes the spatial variant: its grid is ``linspace(-1, 1)``
(pixel centres, align_corners=True, our convention) and its output is (x, y). Its temperature
convention changed between releases: kornia 0.9 divides the logits by ``temperature`` (ours),
older releases multiplied them by it (so one passes 1/T). :func:`kornia_temperature` finds out
which the installed kornia does on a small input and passes the matching value. kornia has no
marginal variant.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastlmk
from fastlmk import reference

from benchmarks.conftest import MODES, SHAPES, Case, case_cache, compiled, device_providers, provider_fn, run, seeded

OP = "soft_argmax"
TEMPERATURE = 0.1
DIMS = {"paper": (32, 10, 32, 32), "large": (64, 68, 64, 64), "tiny": (2, 3, 8, 8)}  # B, K, H, W

_compiled_reference = compiled(reference.soft_argmax)


@case_cache
def _case(shape: str, device: str) -> Case:
    B, K, H, W = DIMS[shape]
    logits = torch.randn(B, K, H, W, generator=seeded(0)).to(device)
    m = logits.numel() * logits.element_size()
    p = B * K * 2 * logits.element_size()
    return Case(OP, shape, device, f"B={B} K={K} {H}x{W} T={TEMPERATURE}", (logits,), diff=(0,),
                rtol=1e-4, atol=1e-5,
                # forward reads the logits once; backward reads them again and writes their gradient
                nbytes={"forward": m + p, "forward+backward": 3 * m + 2 * p})


@functools.lru_cache(maxsize=None)
def kornia_temperature(kornia, temperature: float) -> float:
    """The temperature argument that makes kornia's spatial_soft_argmax2d divide logits by T."""
    x = torch.randn(1, 2, 5, 7, generator=seeded(3)) * 3
    want = reference.soft_argmax(x, 0.5, "spatial")
    if torch.allclose(kornia.geometry.subpix.spatial_soft_argmax2d(x, 0.5), want, atol=1e-5):
        return temperature  # kornia divides by its temperature, as we do
    if torch.allclose(kornia.geometry.subpix.spatial_soft_argmax2d(x, 2.0), want, atol=1e-5):
        return 1.0 / temperature  # kornia multiplies by its temperature
    pytest.skip("kornia's spatial_soft_argmax2d matches neither temperature convention")


def kornia_fn(kornia, variant: str):
    if variant != "spatial":
        pytest.skip("kornia has no marginal soft-argmax")
    kt = kornia_temperature(kornia, TEMPERATURE)
    return lambda h: kornia.geometry.subpix.spatial_soft_argmax2d(h, kt, True)


@pytest.mark.parametrize("device, provider", device_providers())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("variant", ["spatial", "marginal"])
def test_soft_argmax(benchmark, variant, shape, mode, device, provider):
    fn, warm = provider_fn(provider, OP, device, lambda h: reference.soft_argmax(h, TEMPERATURE, variant),
                           lambda h: _compiled_reference(h, TEMPERATURE, variant), lambda k: kornia_fn(k, variant),
                           lambda b: lambda h: fastlmk.soft_argmax(h, TEMPERATURE, variant, backend=b))
    case = _case(shape, device)
    case = Case(**{**case.__dict__, "op": f"{OP}[{variant}]"})
    run(benchmark, case, provider, mode, fn, lambda h: reference.soft_argmax(h, TEMPERATURE, variant), warm=warm,
        extra={"variant": variant})
