"""Thin-plate-spline image warping, and TPS pair making.

``tps_warp``: images (B, 3, S, S) warped by given splines on one shared 10x10 control lattice
(``fastlmk.random_tps``), bilinear, zero padding. Shapes: paper B=32, 3x128x128; large B=16,
3x256x256 (twice the pixels of paper; the batch is halved because the reference and kornia
materialise a (B, S*S, 100, 2) temporary, 0.8 GB at this size, and run for seconds per call on
2 cores, and the whole CPU benchmark has a 5-minute budget). Forward+backward differentiates
w.r.t. the image and the spline coefficients (control points are constants).

``tps_pair_making``: what the training data pipeline does per batch (fastlmk.data.TPSPairs
without its masks): draw two random splines on the shared lattice (``fastlmk.random_tps``, seeded
generator) and warp the batch with each, ``x = warp(images, tps)``, ``x' = warp(images, tps')``.
Forward only (no gradient flows through data augmentation). Paper shape only: at the large shape
it is two of the large ``tps_warp`` forward calls plus the same tiny spline draws, and the slow
providers would spend a fifth of the CPU run's time budget on it.

kornia: ``kornia.geometry.transform.warp_image_tps(image, centres, kernel_weights,
affine_weights, align_corners=True)`` with the mapping of :func:`benchmarks.conftest.kornia_tps`
(kernel weights = 2 w, same affine part, control points expanded per sample). kornia has no
random-spline sampler, so its pair making draws the splines with ``fastlmk.random_tps`` too (the
same draws) and only the warps are kornia's; fitting the same splines with kornia's
``get_tps_transform`` would add B dense (N+3)x(N+3) solves on top.
"""

from __future__ import annotations

import functools

import pytest
import torch

import fastlmk
from fastlmk import TPS, reference

from benchmarks.conftest import (MODES, SHAPES, Case, case_cache, compiled, device_providers, kornia_tps, provider_fn,
                                 run, seeded, smooth_images)

OP = "tps_warp"
PAIR_OP = "tps_pair_making"
GRID = 10
DIMS = {"paper": (32, 3, 128), "large": (16, 3, 256), "tiny": (2, 3, 16)}  # B, C, S

_compiled_reference = compiled(reference.tps_warp)


def _images(shape: str, device: str) -> torch.Tensor:
    B, C, S = DIMS[shape]
    return smooth_images(B, C, S, seeded(2)).to(device)


@case_cache
def _case(shape: str, device: str) -> Case:
    B, C, S = DIMS[shape]
    image = _images(shape, device)
    tps = fastlmk.random_tps(B, GRID, generator=seeded(3), device=device)
    img_bytes = image.numel() * image.element_size()
    coef_bytes = tps.coef.numel() * tps.coef.element_size()
    return Case(OP, shape, device, f"B={B} {C}x{S}x{S} {GRID}x{GRID} lattice", (image, tps.ctrl, tps.coef),
                # the coefficient gradient sums S*S*C float32 terms of both signs: two correct float32
                # results differ by up to ~1% of its largest entry at 256x256, so the elementwise
                # float32 comparison of gradients is only a sanity check; the float64 comparison on a
                # few samples (conftest.check_answer) is the precise one
                diff=(0, 2), rtol=1e-3, atol=1e-4, grad_atol=3e-2,
                # forward: read the image, write the output; backward: read the output gradient and
                # the image (for the coefficient gradient), write the image gradient
                nbytes={"forward": 2 * img_bytes + coef_bytes, "forward+backward": 5 * img_bytes + 3 * coef_bytes})


@case_cache
def _pair_case(shape: str, device: str) -> Case:
    B, C, S = DIMS[shape]
    image = _images(shape, device)
    img_bytes = image.numel() * image.element_size()
    return Case(PAIR_OP, shape, device, f"B={B} {C}x{S}x{S} {GRID}x{GRID} lattice, 2 warps", (image,),
                rtol=1e-3, atol=1e-4, nbytes={"forward": 3 * img_bytes},  # read once, write two views
                # random_tps draws depend on the batch size, so a float64 rerun on a few samples
                # would draw other splines: checked elementwise against float32 only (the warp
                # itself gets the float64 check in test_tps_warp)
                f64_check=False)


def kornia_tps_warp(kornia, image, ctrl, coef):
    centres, kernel_weights, affine_weights = kornia_tps(ctrl, coef)
    return kornia.geometry.transform.warp_image_tps(image, centres, kernel_weights, affine_weights, align_corners=True)


def warp_fn(provider: str, device: str):
    """(warp(image, ctrl, coef), untimed warm-up calls) for ``provider``."""
    return provider_fn(provider, OP, device, reference.tps_warp, _compiled_reference,
                       lambda kornia: functools.partial(kornia_tps_warp, kornia),
                       lambda b: lambda image, ctrl, coef: fastlmk.tps_warp(image, TPS(ctrl, coef), backend=b))


@pytest.mark.parametrize("device, provider", device_providers())
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES)
def test_tps_warp(benchmark, shape, mode, device, provider):
    fn, warm = warp_fn(provider, device)
    run(benchmark, _case(shape, device), provider, mode, fn, reference.tps_warp, warm=warm)


def pair_fn(warp, device: str):
    """Pair making with ``warp``: two random splines (seeded, so every provider draws the same), two warps."""
    def make_pair(images):
        B = images.shape[0]
        gen = seeded(7)
        tps = fastlmk.random_tps(B, GRID, generator=gen, device=device)
        tps_prime = fastlmk.random_tps(B, GRID, generator=gen, device=device)
        x = warp(images, tps.ctrl, tps.coef)
        x_prime = warp(images, tps_prime.ctrl, tps_prime.coef)
        return x, x_prime

    return make_pair


@pytest.mark.parametrize("device, provider", device_providers())
@pytest.mark.parametrize("shape", [s for s in SHAPES if s != "large"])
def test_tps_pair_making(benchmark, shape, device, provider):
    warp, warm = warp_fn(provider, device)
    run(benchmark, _pair_case(shape, device), provider, "forward", pair_fn(warp, device),
        pair_fn(reference.tps_warp, device), warm=warm)
