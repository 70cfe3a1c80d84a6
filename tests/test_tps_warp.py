"""tps_warp: every kernel backend against the reference, forward and backward (image and spline
coefficients); gradcheck; identity, translation and resize properties."""

import pytest
import torch
import torch.nn.functional as F

import fastlmk
from fastlmk import TPS
from conftest import (DTYPES, KERNEL_BACKENDS, assert_close, backend_cases, gradcheck, grads, make_generator,
                      make_tps, require_kernel, tolerances)

OP = "tps_warp"
PADDINGS = ("zeros", "border")


def _case(B, C, H, W, size, kind, grid_size=4):
    return dict(B=B, C=C, H=H, W=W, size=size, kind=kind, grid_size=grid_size,
                id=f"{B}x{C}x{H}x{W}-{size}-{kind}-g{grid_size}")


# Hout != Hin, 1x1 input and output, batch 0 and 1, shared / per-sample / broadcast splines.
SMALL = [
    _case(2, 2, 5, 4, None, "shared"),
    _case(1, 1, 1, 1, None, "per_sample"),
    _case(0, 2, 4, 4, None, "shared"),
    _case(1, 3, 4, 6, (3, 5), "per_sample"),
    _case(2, 1, 6, 5, (1, 1), "batch1"),
]
LARGE = [
    _case(3, 1, 16, 12, (10, 14), "per_sample"),
    _case(2, 3, 32, 32, None, "shared"),
    _case(3, 2, 7, 9, (13, 4), "batch1"),
    _case(2, 3, 24, 20, (16, 16), "shared", grid_size=10),  # the paper's 10x10 lattice
]


def _image(shape, dtype, device, seed=0):
    """float64: white noise. float32: a smooth image (bilinear upsampling of a coarse random
    one), so that a sub-ulp difference in where a kernel and the reference sample, crossing a
    pixel edge, cannot flip the bilinear gradient by a whole pixel difference."""
    g = make_generator(seed)
    B, C, H, W = shape
    if dtype == torch.float64:
        img = torch.randn(shape, generator=g, dtype=torch.float64)
    else:
        coarse = torch.randn(B, C, 4, 4, generator=g, dtype=torch.float64)
        img = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=True) if B else torch.zeros(shape)
    return img.to(device, dtype)


def _warp_and_grads(image, tps, size, padding, backend, grad_out_seed=1):
    image = image.detach().clone().requires_grad_()
    coef = tps.coef.detach().clone().requires_grad_()
    out = fastlmk.tps_warp(image, TPS(tps.ctrl, coef), size=size, padding=padding, backend=backend)
    g = torch.randn(out.shape, generator=make_generator(grad_out_seed), dtype=torch.float64).to(out)
    gi, gc = grads(out, (image, coef), g)
    return out, gi, gc


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend,case", backend_cases(SMALL, LARGE))
def test_matches_reference(backend, case, dtype, padding):
    device = require_kernel(backend, OP)
    B, C, H, W, size = case["B"], case["C"], case["H"], case["W"], case["size"]
    image = _image((B, C, H, W), dtype, device)
    tps = make_tps(case["kind"], B, dtype, device, grid_size=case["grid_size"])
    out, gi, gc = _warp_and_grads(image, tps, size, padding, backend)
    ref, gi_ref, gc_ref = _warp_and_grads(image, tps, size, padding, "reference")
    f32_atol = 1e-4  # a ~1e-6 difference in the float32 sample position, times the image slope
    assert_close(out, ref, atol=f32_atol if dtype == torch.float32 else None, name="warped image")
    assert_close(gi, gi_ref, grad=True, name="grad image")
    assert_close(gc, gc_ref, grad=True, scale=True, name="grad coef")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous(backend):
    device = require_kernel(backend, OP)
    base = _image((2, 5, 6, 3), torch.float64, device)  # (B, W, H, C)
    image = base.permute(0, 3, 2, 1)  # (2, 3, 6, 5), channels-last-like strides
    assert not image.is_contiguous()
    t = make_tps("per_sample", 2, torch.float64, device)
    ctrl = t.ctrl.transpose(1, 2).contiguous().transpose(1, 2)  # same values, non-contiguous
    coef = torch.stack([t.coef, t.coef], dim=-1).flatten(-2)[..., ::2]  # same values, stride 2
    assert not ctrl.is_contiguous() and not coef.is_contiguous()
    tps = TPS(ctrl, coef)
    for padding in PADDINGS:
        out, gi, gc = _warp_and_grads(image, tps, (4, 7), padding, backend)
        ref, gi_ref, gc_ref = _warp_and_grads(image.contiguous(), t, (4, 7), padding, "reference")
        assert_close(out, ref, name=f"warped image ({padding})")
        assert_close(gi, gi_ref, grad=True, name=f"grad image ({padding})")
        assert_close(gc, gc_ref, grad=True, scale=True, name=f"grad coef ({padding})")


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("kind", ["shared", "per_sample"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradcheck(backend, kind, padding):
    """Random non-identity splines, so no sample sits on a pixel edge (a kink of bilinear)."""
    device = require_kernel(backend, OP)
    image = _image((2, 2, 5, 4), torch.float64, device).requires_grad_()
    tps = make_tps(kind, 2, torch.float64, device, seed=3, grid_size=3)
    coef = tps.coef.clone().requires_grad_()

    def f(img, c):
        return fastlmk.tps_warp(img, TPS(tps.ctrl, c), size=(4, 6), padding=padding, backend=backend)

    assert gradcheck(f, (image, coef), backend)


@pytest.mark.parametrize("backend", ("reference",) + KERNEL_BACKENDS)
def test_identity_leaves_image_unchanged(backend):
    device = torch.device("cpu") if backend == "reference" else require_kernel(backend, OP)
    for dtype in DTYPES:
        image = torch.randn(2, 3, 7, 6, generator=make_generator(4), dtype=torch.float64).to(device, dtype)
        for padding in PADDINGS:
            out = fastlmk.tps_warp(image, fastlmk.identity_tps(2, 5, device=device, dtype=dtype), padding=padding,
                                   backend=backend)
            assert_close(out, image, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0, name=f"{dtype} {padding}")


@pytest.mark.parametrize("backend", ("reference",) + KERNEL_BACKENDS)
def test_identity_to_other_size_is_bilinear_resize(backend):
    """With size != input size the identity warp is exactly an align_corners bilinear resize."""
    device = torch.device("cpu") if backend == "reference" else require_kernel(backend, OP)
    image = torch.randn(2, 2, 6, 9, generator=make_generator(5), dtype=torch.float64).to(device)
    for size in [(11, 4), (3, 13)]:
        out = fastlmk.tps_warp(image, fastlmk.identity_tps(1, 4, device=device, dtype=torch.float64), size=size,
                               backend=backend)
        assert_close(out, F.interpolate(image, size=size, mode="bilinear", align_corners=True), atol=1e-12, rtol=0)


@pytest.mark.parametrize("padding", PADDINGS)
@pytest.mark.parametrize("backend", ("reference",) + KERNEL_BACKENDS)
def test_translation_by_one_pixel(backend, padding):
    """f(p) = p + (one pixel, 0): out[..., j] = image[..., j + 1]; the last column is 0 (zeros)
    or repeats the border column (border)."""
    device = torch.device("cpu") if backend == "reference" else require_kernel(backend, OP)
    for dtype in DTYPES:
        B, C, H, W = 2, 2, 5, 7
        image = torch.randn(B, C, H, W, generator=make_generator(6), dtype=torch.float64).to(device, dtype)
        t = fastlmk.identity_tps(B, 3, device=device, dtype=dtype)
        coef = t.coef.clone()
        coef[:, -3, 0] = 2.0 / (W - 1)  # a_0 = (one pixel, 0)
        out = fastlmk.tps_warp(image, TPS(t.ctrl, coef), padding=padding, backend=backend)
        expected = torch.cat([image[..., 1:], image[..., -1:] if padding == "border" else torch.zeros_like(image[..., -1:])], -1)
        assert_close(out, expected, atol=1e-5 if dtype == torch.float32 else 1e-12, rtol=0, name=f"{dtype}")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_far_outside_samples(backend):
    """A spline that maps everything far outside the image: zeros padding gives 0 (and zero
    gradients), border padding the corner pixel."""
    device = require_kernel(backend, OP)
    image = torch.randn(1, 2, 4, 5, generator=make_generator(7), dtype=torch.float64).to(device).requires_grad_()
    t = fastlmk.identity_tps(1, 3, device=device, dtype=torch.float64)
    coef = t.coef.clone()
    coef[:, -3] = torch.tensor([5.0, -7.0])  # shift far right and up
    coef.requires_grad_()
    out = fastlmk.tps_warp(image, TPS(t.ctrl, coef), padding="zeros", backend=backend)
    assert_close(out, torch.zeros_like(out), atol=0, rtol=0)
    gi, gc = grads(out, (image, coef), torch.ones_like(out))
    assert_close(gi, torch.zeros_like(image), atol=0, rtol=0, name="grad image")
    assert_close(gc, torch.zeros_like(coef), atol=0, rtol=0, name="grad coef")
    out = fastlmk.tps_warp(image, TPS(t.ctrl, coef), padding="border", backend=backend)
    assert_close(out, image[:, :, :1, -1:].expand_as(out), atol=1e-12, rtol=0)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_image_only_and_coef_only_gradients(backend):
    """The backward must honour which inputs need a gradient (the kernels skip the others)."""
    device = require_kernel(backend, OP)
    image = _image((2, 2, 5, 6), torch.float64, device)
    tps = make_tps("shared", 2, torch.float64, device)
    _, gi_ref, gc_ref = _warp_and_grads(image, tps, None, "zeros", "reference")
    img = image.clone().requires_grad_()
    out = fastlmk.tps_warp(img, tps, backend=backend)
    (gi,) = grads(out, (img,), torch.randn(out.shape, generator=make_generator(1), dtype=torch.float64).to(out))
    assert_close(gi, gi_ref, grad=True, name="grad image")
    coef = tps.coef.clone().requires_grad_()
    out = fastlmk.tps_warp(image, TPS(tps.ctrl, coef), backend=backend)
    (gc,) = grads(out, (coef,), torch.randn(out.shape, generator=make_generator(1), dtype=torch.float64).to(out))
    assert_close(gc, gc_ref, grad=True, scale=True, name="grad coef")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_spline_dtype_follows_the_image(backend):
    """A float32 spline on a float64 image (and the reverse): computed in the image's dtype,
    gradients flow back to the spline in its own dtype."""
    device = require_kernel(backend, OP)
    for img_dtype, tps_dtype in [(torch.float64, torch.float32), (torch.float32, torch.float64)]:
        image = _image((2, 1, 5, 6), img_dtype, device)
        tps = make_tps("shared", 2, tps_dtype, device)
        out, gi, gc = _warp_and_grads(image, tps, (4, 4), "zeros", backend)
        ref, gi_ref, gc_ref = _warp_and_grads(image, tps, (4, 4), "zeros", "reference")
        assert out.dtype == img_dtype and gc.dtype == tps_dtype
        assert_close(out, ref, atol=1e-4 if img_dtype == torch.float32 else None, name=f"{img_dtype} image")
        atol, rtol = tolerances(img_dtype, grad=True)  # computed in the image's precision
        assert_close(gc, gc_ref, atol=atol, rtol=rtol, scale=True, name=f"{tps_dtype} grad coef")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_a_changed_shared_lattice_is_seen(backend):
    """Kernels may cache per-lattice work (e.g. the radial basis of a shared lattice): a new
    lattice of the same shape, the same lattice edited in place, or a new output size must each
    give fresh, correct results."""
    device = require_kernel(backend, OP)
    require_kernel(backend, "tps_transform_points")
    image = _image((2, 2, 6, 7), torch.float64, device)
    a = make_tps("shared", 2, torch.float64, device, seed=10, grid_size=3)
    b = make_tps("shared", 2, torch.float64, device, seed=11, grid_size=3)
    ctrl = a.ctrl.clone()
    jitter = 0.05 * torch.randn(ctrl.shape, generator=make_generator(12), dtype=torch.float64).to(device)
    for step, (tps, size) in enumerate([(a, None), (TPS(a.ctrl + jitter, a.coef), None), (b, None), (a, (5, 3)),
                                        (TPS(ctrl, a.coef), None), ("edit", None), (a, None)]):
        if tps == "edit":
            ctrl.add_(jitter)  # same tensor, same address, new values
            tps = TPS(ctrl, a.coef)
        out = fastlmk.tps_warp(image, tps, size=size, backend=backend)
        ref = fastlmk.tps_warp(image, tps, size=size, backend="reference")
        assert_close(out, ref, name=f"call {step}")
        pts = torch.rand(2, 5, 2, generator=make_generator(step), dtype=torch.float64).to(device) * 2 - 1
        assert_close(fastlmk.tps_transform_points(pts, tps, backend=backend),
                     fastlmk.tps_transform_points(pts, tps, backend="reference"), name=f"points, call {step}")
