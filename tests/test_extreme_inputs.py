"""Extreme but legal inputs: every kernel backend must give the reference's answer, never a
silently different one (issue 11, "silent wrong results"). Huge logits and tiny temperatures,
tiny Gaussian widths, NaN control points, inf pixels next to the zero padding."""

import pytest
import torch

import fastlmk
from fastlmk import TPS, reference
from conftest import KERNEL_BACKENDS, assert_close, make_tps, require_kernel


# --- soft_argmax: the peak must survive huge logits and tiny temperatures -------------------
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_soft_argmax_huge_logit_keeps_the_peak(backend):
    device = require_kernel(backend, "soft_argmax")
    m = torch.zeros(1, 1, 4, 4, device=device)
    m[0, 0, 3, 3] = 1158730112.0  # l * inv_t - max * inv_t under an FMA kept ~512 of rounding
    for mode in ("spatial", "marginal"):
        out = fastlmk.soft_argmax(m, 0.1, mode, backend=backend)
        assert_close(out, reference.soft_argmax(m, 0.1, mode), name=mode)
    assert torch.equal(fastlmk.soft_argmax(m, 0.1, backend=backend).cpu(), torch.ones(1, 1, 2))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("mode", ["spatial", "marginal"])
@pytest.mark.parametrize("scale,temperature,dtype", [
    (1e8, 0.1, torch.float32),
    (1.0, 1e-10, torch.float32),
    (1.0, 1e-20, torch.float64),
    (1.0, 1e-300, torch.float64),
])
def test_soft_argmax_extreme_scale(backend, mode, scale, temperature, dtype):
    device = require_kernel(backend, "soft_argmax")
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(2, 5, 6, 7, generator=g, dtype=dtype) * scale).to(device).requires_grad_()
    out = fastlmk.soft_argmax(x, temperature, mode, backend=backend)
    xr = x.detach().clone().requires_grad_()
    ref = reference.soft_argmax(xr, temperature, mode)
    assert torch.isfinite(ref).all()
    assert_close(out, ref, atol=1e-5, rtol=1e-5)
    w = torch.randn(out.shape, generator=g, dtype=dtype).to(device)
    (out * w).sum().backward()
    (ref * w).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert_close(x.grad, xr.grad, grad=True, scale=True)


# --- gaussian_heatmaps: a tiny std is a one-pixel map, not NaN ------------------------------
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("std", [4e-20, 1e-25, 1e-200])
def test_gaussian_heatmaps_tiny_std(backend, dtype, std):
    device = require_kernel(backend, "gaussian_heatmaps")
    # (-1, -1) and (1, -1) lie exactly on pixel centres (the corners): 0 * inf there gave NaN
    p = torch.tensor([[[-1.0, -1.0], [1.0, -1.0], [0.3, 0.1]]], dtype=dtype, device=device).requires_grad_()
    out = fastlmk.gaussian_heatmaps(p, 7, 4, std, backend=backend)
    one_pixel = torch.zeros(1, 3, 7, 4, dtype=dtype)
    one_pixel[0, 0, 0, 0] = one_pixel[0, 1, 0, 3] = 1.0  # the limit std -> 0
    ref = reference.gaussian_heatmaps(p.detach(), 7, 4, std)
    if torch.tensor(2.0 * std * std, dtype=dtype) > 0:  # (else the reference's 2 std^2 underflows: 0 / 0)
        assert_close(ref.cpu(), one_pixel)
    assert_close(out.cpu(), one_pixel)
    (grad,) = torch.autograd.grad(out.sum(), p)
    assert torch.isfinite(grad).all()


# --- TPS: a NaN control point gives a NaN spline (as the reference), not the affine part ------
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("kind", ["shared", "per_sample"])
def test_tps_nan_control_point_propagates(backend, kind):
    device = require_kernel(backend, "tps_warp")
    t = make_tps(kind, 2, torch.float32, device, grid_size=3)
    ctrl = t.ctrl.clone()
    ctrl[0, 1, 0] = float("nan")
    t = TPS(ctrl, t.coef)
    img = torch.rand(2, 1, 5, 6, device=device)
    out = fastlmk.tps_warp(img, t, backend=backend)
    ref = fastlmk.tps_warp(img, t, backend="reference")
    assert torch.isnan(ref[0]).all()
    assert_close(out, ref)
    pts = torch.rand(2, 4, 2, device=device) * 2 - 1
    outp = fastlmk.tps_transform_points(pts, t, backend=backend)
    refp = fastlmk.tps_transform_points(pts, t, backend="reference")
    assert torch.isnan(refp[0]).all()
    assert_close(outp, refp)


# --- tps_warp: an inf pixel does not leak NaN into the zero padding ---------------------------
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_tps_warp_inf_border_pixel_keeps_padding_zero(backend):
    device = require_kernel(backend, "tps_warp")
    img = torch.rand(1, 2, 5, 6, device=device)
    img[0, 0, :, -1] = float("inf")  # the whole right border column
    img[0, 1, 0, 0] = float("-inf")
    # identity affine zoomed out by 2: most output pixels sample far outside the image
    ctrl = torch.zeros(1, 1, 2, device=device)
    coef = torch.zeros(1, 4, 2, device=device)
    coef[0, 2, 0] = 2.0  # x' = 2x
    coef[0, 3, 1] = 2.0  # y' = 2y
    t = TPS(ctrl, coef)
    out = fastlmk.tps_warp(img, t, size=(9, 11), backend=backend)
    ref = torch.nn.functional.grid_sample(
        img, reference.output_grid(9, 11, device, torch.float32).view(1, 9, 11, 2) * 2,
        align_corners=True)
    assert_close(out, ref)
    assert (out[0, :, 0, 0] == 0).all()  # far outside: exactly 0, as grid_sample


# --- autograd: no silent second-order or control-point gradients ------------------------------
def _op_calls(device, backend):
    """op name -> (function of its differentiable input on ``backend``, an input)."""
    t = make_tps("shared", 2, torch.float64, device, grid_size=3)
    return {
        "soft_argmax": (lambda x: fastlmk.soft_argmax(x, 0.5, backend=backend),
                        torch.randn(2, 3, 5, 6, dtype=torch.float64, device=device)),
        "gaussian_heatmaps": (lambda p: fastlmk.gaussian_heatmaps(p, 5, 6, 0.3, backend=backend),
                              torch.rand(2, 3, 2, dtype=torch.float64, device=device) * 2 - 1),
        "tps_warp": (lambda im: fastlmk.tps_warp(im, t, backend=backend),
                     torch.rand(2, 1, 5, 6, dtype=torch.float64, device=device)),
        "tps_transform_points": (lambda p: fastlmk.tps_transform_points(p, t, backend=backend),
                                 torch.rand(2, 4, 2, dtype=torch.float64, device=device) * 2 - 1),
    }


OPS = ["soft_argmax", "gaussian_heatmaps", "tps_warp", "tps_transform_points"]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("op", OPS)
def test_double_backward_raises_instead_of_dropping_the_term(backend, op):
    device = require_kernel(backend, op)
    f, x = _op_calls(device, backend)[op]
    x.requires_grad_()
    # a gradient penalty: the second-order term used to be silently dropped (0.57 vs 2.41)
    (gx,) = torch.autograd.grad(f(x).pow(2).sum(), x, create_graph=True)
    loss = f(x).pow(2).sum() + 10 * gx.pow(2).sum()
    with pytest.raises(RuntimeError, match="once_differentiable"):
        loss.backward()
    # the reference supports it
    f, _ = _op_calls(device, "reference")[op]
    (gx,) = torch.autograd.grad(f(x).pow(2).sum(), x, create_graph=True)
    (f(x).pow(2).sum() + 10 * gx.pow(2).sum()).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", ["reference", *KERNEL_BACKENDS])
@pytest.mark.parametrize("op", ["tps_warp", "tps_transform_points"])
def test_control_points_carry_no_gradient_on_every_backend(backend, op):
    device = require_kernel(backend, op) if backend != "reference" else torch.device("cpu")
    t = make_tps("per_sample", 2, torch.float64, device)
    ctrl = t.ctrl.clone().requires_grad_()
    coef = t.coef.clone().requires_grad_()
    x = torch.rand(2, 1, 5, 6, dtype=torch.float64, device=device) if op == "tps_warp" else \
        torch.rand(2, 4, 2, dtype=torch.float64, device=device) * 2 - 1
    fn = getattr(fastlmk, op)
    with pytest.warns(UserWarning, match=f"fastlmk.{op}: control points carry no gradient"):
        out = fn(x, TPS(ctrl, coef), backend=backend)
    out.square().sum().backward()
    assert ctrl.grad is None  # the reference used to return one, the kernels None
    assert coef.grad is not None


# --- the Triton kernels index in int32: huge extents are refused, not read out of bounds --------
def test_triton_int32_index_guard():
    from fastlmk.ops import backends

    tri = backends.module("triton")
    if tri is None:
        pytest.skip("triton is not installed")
    from fastlmk.ops.triton import gaussian_heatmaps as gh, soft_argmax as sa, tps_transform_points as tp, tps_warp as tw

    big = torch.zeros(1, 1, 1).expand(1, 2**16, 2**15)  # 2^31 elements, no memory
    with pytest.raises(ValueError, match="fastlmk.soft_argmax: the triton backend addresses H \\* W"):
        sa.soft_argmax_forward(big, 1.0, False)
    with pytest.raises(ValueError, match="int32"):
        sa.soft_argmax_backward(torch.zeros(1, 2), big, torch.zeros(1, 2), torch.zeros(1, 2), 1.0, False)
    with pytest.raises(ValueError, match="fastlmk.gaussian_heatmaps: .*height \\* width"):
        gh.gaussian_heatmaps_forward(torch.zeros(1, 2), 2**16, 2**15, 1.0)
    img = torch.zeros(1, 1, 1, 1).expand(1, 2, 2**15, 2**15)  # one image of 2^31 elements
    t = make_tps("shared", 1, torch.float32, "cpu", grid_size=3)
    with pytest.raises(ValueError, match="fastlmk.tps_warp: .*C \\* H \\* W"):
        tw.tps_warp_forward(img, t.ctrl, t.coef, 4, 4, False)
    with pytest.raises(ValueError, match="fastlmk.tps_warp: .*C \\* H_out \\* W_out"):
        tw.tps_warp_forward(torch.zeros(1, 2, 4, 4), t.ctrl, t.coef, 2**15, 2**15, False)
    with pytest.raises(ValueError, match="fastlmk.tps_transform_points: .*2 \\* M"):
        tp.tps_transform_points_forward(torch.zeros(1, 1, 2).expand(1, 2**30, 2), t.ctrl, t.coef)


# --- op arguments that used to reach C++ / numpy / linalg or be truncated silently -------------
def _bad_op_calls():
    img, t = torch.zeros(1, 1, 4, 4), fastlmk.random_tps(1, grid_size=3)
    line = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]])
    return [
        (lambda: fastlmk.gaussian_heatmaps(torch.zeros(1, 1, 2), 2**70, 4, 0.1), ValueError, "height must be <= 2147483647"),
        (lambda: fastlmk.tps_warp(img, t, size=5), ValueError, "size must be (H_out, W_out), got 5"),
        (lambda: fastlmk.tps_warp(img, t, size=(5.7, 5)), TypeError, "size[0] must be an int, got float"),
        (lambda: fastlmk.tps_fit(line, torch.rand(1, 4, 2)), ValueError, "tps_fit: the TPS system is singular"),
        (lambda: fastlmk.random_tps(2, grid_size=2.5), TypeError, "grid_size must be an int, got float"),
        (lambda: fastlmk.random_tps(2, rotation_std=float("nan")), ValueError, "rotation_std must be a finite number"),
    ]


@pytest.mark.parametrize("case", range(6))
def test_bad_op_arguments_get_a_clear_error(case):
    import re

    fn, exc, msg = _bad_op_calls()[case]
    with pytest.raises(exc, match=re.escape(msg)):
        fn()
