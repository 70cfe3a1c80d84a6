"""soft_argmax: every kernel backend against the reference, forward and backward; gradcheck; the
one-hot property."""

import pytest
import torch

import fastlmk
from fastlmk import reference
from conftest import (DTYPES, KERNEL_BACKENDS, assert_close, assert_no_worse, backend_cases, gradcheck,
                      grads, make_generator, require_kernel)

OP = "soft_argmax"
MODES = ("spatial", "marginal")

# (B, K, H, W): odd sizes, H != W, K = 1, batch 0 and 1, 1x1, 1xW and Hx1 maps.
SMALL = [(2, 3, 5, 4), (1, 1, 1, 1), (0, 2, 3, 3), (1, 2, 1, 6), (2, 1, 6, 1)]
LARGE = [(3, 1, 7, 9), (2, 4, 16, 13), (2, 10, 32, 32)]


def _logits(shape, dtype, device, seed=0, scale=3.0):
    return (torch.randn(shape, generator=make_generator(seed), dtype=torch.float64) * scale).to(device, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("temperature", [1.0, 0.1])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend,shape", backend_cases(SMALL, LARGE))
def test_matches_reference(backend, shape, dtype, temperature, mode):
    device = require_kernel(backend, OP)
    x = _logits(shape, dtype, device).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out = fastlmk.soft_argmax(x, temperature, mode, backend=backend)
    ref = reference.soft_argmax(xr, temperature, mode)
    assert_close(out, ref, name="points")
    g = torch.randn(ref.shape, generator=make_generator(1), dtype=torch.float64).to(device, dtype)
    (gx,) = grads(out, x, g)
    (gr,) = grads(ref, xr, g)
    assert_close(gx, gr, grad=True, name="grad heatmaps")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous(backend, mode):
    device = require_kernel(backend, OP)
    base = _logits((3, 6, 2, 9), torch.float32, device)  # (B, H, K, W2)
    x = base.permute(0, 2, 1, 3)[..., ::2]  # (3, 2, 6, 5), permuted and strided
    assert not x.is_contiguous()
    x.requires_grad_()
    xr = x.detach().clone().requires_grad_()
    out = fastlmk.soft_argmax(x, 0.5, mode, backend=backend)
    ref = reference.soft_argmax(xr, 0.5, mode)
    assert_close(out, ref, name="points")
    g = torch.randn_like(ref)
    assert_close(grads(out, x, g)[0], grads(ref, xr, g)[0], grad=True, name="grad heatmaps")
    # grad of a non-contiguous incoming gradient (e.g. from a transpose downstream)
    g_nc = torch.randn(2, 3, 2, device=device).transpose(0, 1)
    assert_close(grads(out, x, g_nc)[0], grads(ref, xr, g_nc)[0], grad=True, name="grad (non-contiguous grad_out)")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradcheck(backend, mode):
    device = require_kernel(backend, OP)
    x = _logits((2, 2, 4, 5), torch.float64, device, scale=1.0).requires_grad_()
    assert gradcheck(lambda t: fastlmk.soft_argmax(t, 0.7, mode, backend=backend), (x,), backend)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend", ("reference",) + KERNEL_BACKENDS)
def test_one_hot_gives_pixel_coordinate(backend, mode):
    """A large logit at one pixel and a small temperature: the point is that pixel's centre."""
    device = torch.device("cpu") if backend == "reference" else require_kernel(backend, OP)
    B, K, H, W = 2, 3, 7, 10
    pix = [[(0, 0), (6, 9), (3, 4)], [(2, 7), (5, 1), (6, 0)]]  # (row, col) per map
    x = torch.zeros(B, K, H, W, dtype=torch.float64)
    expected = torch.zeros(B, K, 2, dtype=torch.float64)
    for b in range(B):
        for k in range(K):
            i, j = pix[b][k]
            x[b, k, i, j] = 20.0
            expected[b, k] = torch.tensor([-1 + 2 * j / (W - 1), -1 + 2 * i / (H - 1)])
    for dtype in DTYPES:
        out = fastlmk.soft_argmax(x.to(device, dtype), temperature=0.01, mode=mode, backend=backend)
        assert_close(out.cpu(), expected.to(dtype), atol=1e-6, rtol=0, name=f"{dtype}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_large_logits_are_stable(backend):
    """Logits around 1e4 (a softmax without max-subtraction overflows): finite, and no further
    from the float64 answer than the reference in the same dtype (in float32 the logits carry
    only ~1e-3 absolute precision, so x/T itself is uncertain by ~1e-2)."""
    device = require_kernel(backend, OP)
    for dtype in DTYPES:
        x = (_logits((2, 2, 6, 5), torch.float64, device) + 1e4).to(dtype).requires_grad_()
        xr = x.detach().clone().requires_grad_()
        x64 = x.detach().double().requires_grad_()
        for mode in MODES:
            out = fastlmk.soft_argmax(x, 0.1, mode, backend=backend)
            ref = reference.soft_argmax(xr, 0.1, mode)
            ref64 = reference.soft_argmax(x64, 0.1, mode)
            assert torch.isfinite(out).all()
            assert_no_worse(out, ref, ref64, name=f"{mode} {dtype}")
            g = torch.ones_like(ref)
            gk, gr, g64 = grads(out, x, g)[0], grads(ref, xr, g)[0], grads(ref64, x64, g.double())[0]
            assert torch.isfinite(gk).all()
            assert_no_worse(gk, gr, g64, atol=1e-5, name=f"grad {mode} {dtype}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_uniform_map_gives_centre_and_1x1_map_zero(backend):
    device = require_kernel(backend, OP)
    x = torch.full((1, 2, 5, 8), 3.0, device=device)
    for mode in MODES:
        assert_close(fastlmk.soft_argmax(x, 1.0, mode, backend=backend), torch.zeros(1, 2, 2, device=device),
                     atol=1e-6, rtol=0)
    one = torch.randn(2, 3, 1, 1, device=device, requires_grad=True)
    out = fastlmk.soft_argmax(one, 1.0, backend=backend)
    assert_close(out, torch.zeros(2, 3, 2, device=device), atol=0, rtol=0)
    (g,) = grads(out, one, torch.ones_like(out))
    assert_close(g, torch.zeros_like(one), atol=0, rtol=0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_empty_batch_backward(backend):
    device = require_kernel(backend, OP)
    x = torch.randn(0, 3, 4, 4, device=device, requires_grad=True)
    out = fastlmk.soft_argmax(x, backend=backend)
    assert out.shape == (0, 3, 2)
    out.sum().backward()
    assert x.grad.shape == x.shape
