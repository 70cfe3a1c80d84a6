"""tps_transform_points: every kernel backend against the reference, forward and backward (points
and coefficients); gradcheck; identity and fit-interpolation properties."""

import pytest
import torch

import fastlmk
from fastlmk import TPS
from conftest import (DTYPES, KERNEL_BACKENDS, assert_close, backend_cases, gradcheck, grads, make_generator,
                      make_tps, require_kernel)

OP = "tps_transform_points"


def _case(B, M, kind, grid_size=4):
    return dict(B=B, M=M, kind=kind, grid_size=grid_size, id=f"B{B}-M{M}-{kind}-g{grid_size}")


SMALL = [_case(2, 5, "shared"), _case(1, 1, "per_sample"), _case(0, 3, "shared"), _case(3, 4, "batch1")]
LARGE = [_case(4, 68, "shared", 10), _case(3, 17, "per_sample"), _case(2, 1, "batch1", 3)]


def _points(B, M, dtype, device, tps=None, seed=0):
    """Points in [-1.3, 1.3]^2; when M > 1 the first one sits exactly on a control point
    (U(0) = 0 and its gradient 0 there: the kernels must not produce log(0) NaNs)."""
    p = (torch.rand(B, M, 2, generator=make_generator(seed), dtype=torch.float64) * 2 - 1) * 1.3
    p = p.to(device, dtype)
    if tps is not None and M > 1 and B > 0:
        p[:, 0] = tps.ctrl[:, 1].to(dtype).expand(B, 2)
    return p


def _transform_and_grads(points, tps, backend, seed=1):
    points = points.detach().clone().requires_grad_()
    coef = tps.coef.detach().clone().requires_grad_()
    out = fastlmk.tps_transform_points(points, TPS(tps.ctrl, coef), backend=backend)
    g = torch.randn(out.shape, generator=make_generator(seed), dtype=torch.float64).to(out)
    gp, gc = grads(out, (points, coef), g)
    return out, gp, gc


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("backend,case", backend_cases(SMALL, LARGE))
def test_matches_reference(backend, case, dtype):
    device = require_kernel(backend, OP)
    B, M = case["B"], case["M"]
    tps = make_tps(case["kind"], B, dtype, device, grid_size=case["grid_size"])
    points = _points(B, M, dtype, device, tps)
    out, gp, gc = _transform_and_grads(points, tps, backend)
    ref, gp_ref, gc_ref = _transform_and_grads(points, tps, "reference")
    assert_close(out, ref, name="points")
    assert torch.isfinite(gp).all() and torch.isfinite(gc).all()
    assert_close(gp, gp_ref, grad=True, scale=True, name="grad points")
    assert_close(gc, gc_ref, grad=True, scale=True, name="grad coef")


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_non_contiguous(backend):
    device = require_kernel(backend, OP)
    t = make_tps("per_sample", 3, torch.float64, device)
    points = _points(3, 6, torch.float64, device, t)
    points_nc = points.transpose(1, 2).contiguous().transpose(1, 2)
    tps_nc = TPS(t.ctrl.transpose(1, 2).contiguous().transpose(1, 2), t.coef.transpose(0, 1).contiguous().transpose(0, 1))
    assert not (points_nc.is_contiguous() or tps_nc.ctrl.is_contiguous() or tps_nc.coef.is_contiguous())
    out, gp, gc = _transform_and_grads(points_nc, tps_nc, backend)
    ref, gp_ref, gc_ref = _transform_and_grads(points, t, "reference")
    assert_close(out, ref, name="points")
    assert_close(gp, gp_ref, grad=True, scale=True, name="grad points")
    assert_close(gc, gc_ref, grad=True, scale=True, name="grad coef")


@pytest.mark.parametrize("kind", ["shared", "per_sample", "batch1"])
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_gradcheck(backend, kind):
    device = require_kernel(backend, OP)
    tps = make_tps(kind, 2, torch.float64, device, seed=2, grid_size=3)
    points = _points(2, 4, torch.float64, device, None, seed=3).requires_grad_()  # off the control points
    coef = tps.coef.clone().requires_grad_()
    assert gradcheck(lambda p, c: fastlmk.tps_transform_points(p, TPS(tps.ctrl, c), backend=backend),
                     (points, coef), backend)


@pytest.mark.parametrize("backend", ("reference",) + KERNEL_BACKENDS)
def test_identity_leaves_points_unchanged(backend):
    device = torch.device("cpu") if backend == "reference" else require_kernel(backend, OP)
    for dtype in DTYPES:
        t = fastlmk.identity_tps(3, 4, device=device, dtype=dtype)
        points = _points(3, 9, dtype, device, t)  # one of them on a control point
        out = fastlmk.tps_transform_points(points, t, backend=backend)
        assert_close(out, points, atol=1e-6 if dtype == torch.float32 else 1e-13, rtol=0, name=str(dtype))


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "per_sample"])
@pytest.mark.parametrize("backend", ("reference",) + KERNEL_BACKENDS)
def test_fitted_spline_interpolates(backend, shared):
    """f = tps_fit(src, dst) evaluated at src (exactly the control points) gives dst."""
    device = torch.device("cpu") if backend == "reference" else require_kernel(backend, OP)
    g = make_generator(8)
    B, N = 3, 9
    src = torch.rand(1 if shared else B, N, 2, generator=g, dtype=torch.float64) * 2 - 1
    dst = src + 0.1 * torch.randn(B, N, 2, generator=g, dtype=torch.float64)
    t = fastlmk.tps_fit(src, dst)
    for dtype in DTYPES:
        tps = t.to(device=device, dtype=dtype)
        out = fastlmk.tps_transform_points(src.expand(B, N, 2).to(device, dtype), tps, backend=backend)
        assert_close(out, dst.to(device, dtype), atol=5e-5 if dtype == torch.float32 else 1e-10, rtol=0, name=str(dtype))
