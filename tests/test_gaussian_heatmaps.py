"""gaussian_heatmaps: every kernel backend against the reference, forward and backward; gradcheck;
peak-at-the-point property."""

import pytest
import torch

import fastlmk
from fastlmk import reference
from conftest import (DTYPES, KERNEL_BACKENDS, assert_close, backend_cases, gradcheck, grads, make_generator,
                      require_kernel)

OP = "gaussian_heatmaps"

# (B, K, H, W): odd sizes, H != W, K = 1, batch 0 and 1, 1x1, 1xW and Hx1 maps.
SMALL = [(2, 3, 5, 4), (1, 1, 1, 1), (0, 2, 3, 3), (1, 2, 1, 6), (2, 1, 6, 1)]
LARGE = [(3, 1, 7, 9), (2, 4, 16, 13), (2, 10, 32, 32)]


def _points(B, K, dtype, device, seed=0, spread=1.2):
    """Points in [-spread, spread]^2: some lie outside the map."""
    p = (torch.rand(B, K, 2, generator=make_generator(seed), dtype=torch.float64) * 2 - 1) * spread
    return p.to(device, dtype)


@pytest.mark.parametrize("std", [0.3, 0.05])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend,shape", backend_cases(SMALL, LARGE))
def test_matches_reference(backend, shape, dtype, std):
    device = require_kernel(backend, OP)
    B, K, H, W = shape
    p = _points(B, K, dtype, device).requires_grad_()
    pr = p.detach().clone().requires_grad_()
    out = fastlmk.gaussian_heatmaps(p, H, W, std, backend=backend)
    ref = reference.gaussian_heatmaps(pr, H, W, std)
    assert_close(out, ref, name="maps")
    g = torch.randn(ref.shape, generator=make_generator(1), dtype=torch.float64).to(device, dtype)
    assert_close(grads(out, p, g)[0], grads(ref, pr, g)[0], grad=True, scale=True, name="grad points")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous(backend):
    device = require_kernel(backend, OP)
    p = _points(3, 2, torch.float32, device).transpose(0, 1)  # (2, 3, 2), non-contiguous
    assert not p.is_contiguous()
    p.requires_grad_()
    pr = p.detach().clone().requires_grad_()
    out = fastlmk.gaussian_heatmaps(p, 6, 7, 0.2, backend=backend)
    ref = reference.gaussian_heatmaps(pr, 6, 7, 0.2)
    assert_close(out, ref, name="maps")
    g_nc = torch.randn(2, 3, 7, 6, device=device).transpose(2, 3)  # non-contiguous grad_out
    assert not g_nc.is_contiguous()
    assert_close(grads(out, p, g_nc)[0], grads(ref, pr, g_nc)[0], grad=True, scale=True, name="grad points")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradcheck(backend):
    device = require_kernel(backend, OP)
    p = _points(2, 2, torch.float64, device).requires_grad_()
    assert gradcheck(lambda t: fastlmk.gaussian_heatmaps(t, 4, 5, 0.4, backend=backend), (p,), backend)


@pytest.mark.parametrize("backend", ("reference",) + KERNEL_BACKENDS)
def test_peak_is_one_at_the_point(backend):
    """A point on a pixel centre: that pixel is 1 and the maximum; the value there is
    exp(0) = 1 and a neighbour one pixel away is exp(-d^2 / (2 std^2))."""
    device = torch.device("cpu") if backend == "reference" else require_kernel(backend, OP)
    H, W, std = 7, 10, 0.25
    pix = [(0, 0), (6, 9), (3, 4), (2, 7)]
    gx = lambda j: -1 + 2 * j / (W - 1)  # noqa: E731
    gy = lambda i: -1 + 2 * i / (H - 1)  # noqa: E731
    pts = torch.tensor([[[gx(j), gy(i)] for i, j in pix]], dtype=torch.float64)
    for dtype in DTYPES:
        maps = fastlmk.gaussian_heatmaps(pts.to(device, dtype), H, W, std, backend=backend).cpu()
        for k, (i, j) in enumerate(pix):
            m = maps[0, k]
            assert m[i, j].item() == pytest.approx(1.0, abs=1e-6), f"peak value of map {k}"
            assert int(m.argmax()) == i * W + j, f"map {k} peaks at {divmod(int(m.argmax()), W)}, not {(i, j)}"
            assert m.max().item() <= 1.0 + 1e-6
            if j + 1 < W:
                dx = 2 / (W - 1)
                assert m[i, j + 1].item() == pytest.approx(torch.exp(torch.tensor(-dx * dx / (2 * std * std))).item(), rel=1e-5)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_single_pixel_map_and_empty_batch(backend):
    """1x1 map: the pixel is at (0, 0); batch 0 runs forward and backward."""
    device = require_kernel(backend, OP)
    p = torch.tensor([[[0.0, 0.0], [0.3, -0.4]]], device=device, requires_grad=True)
    out = fastlmk.gaussian_heatmaps(p, 1, 1, 0.5, backend=backend)
    expected = torch.tensor([1.0, float(torch.exp(torch.tensor(-(0.09 + 0.16) / 0.5)))], device=device).view(1, 2, 1, 1)
    assert_close(out, expected, atol=1e-6, rtol=1e-6)
    e = torch.randn(0, 4, 2, device=device, requires_grad=True)
    out = fastlmk.gaussian_heatmaps(e, 5, 3, 0.1, backend=backend)
    assert out.shape == (0, 4, 5, 3)
    out.sum().backward()
    assert e.grad.shape == e.shape
