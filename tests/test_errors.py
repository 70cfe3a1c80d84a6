"""Bad input: each raises a clear ValueError/TypeError/RuntimeError naming the argument, before
any kernel runs (never a crash inside C++). Checked with the default backend ("auto", which on
this machine runs the CPU kernels where they are built) and with each explicit kernel backend
that is available here."""

import re

import pytest
import torch

import fastlmk
from fastlmk import TPS
from fastlmk.ops import backends
from conftest import KERNEL_BACKENDS, backend_device, make_tps

BACKENDS_HERE = ["auto"] + [b for b in KERNEL_BACKENDS if backends.available(b, backend_device(b))]


def _tps(B=2, dtype=torch.float32, device="cpu"):
    return make_tps("shared", B, dtype, device, grid_size=3)


def _img(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


BAD_SOFT_ARGMAX = [
    # (heatmaps, kwargs, exception, message)
    (_img(2, 5, 5), {}, ValueError, "heatmaps must have 4 dimensions, got shape (2, 5, 5)"),
    (_img(1, 2, 3, 5, 5), {}, ValueError, "heatmaps must have 4 dimensions"),
    (torch.zeros(2, 3, 5, 5, dtype=torch.int64), {}, TypeError, "heatmaps must be a floating-point tensor, got dtype torch.int64"),
    (torch.zeros(2, 3, 5, 5, dtype=torch.bool), {}, TypeError, "heatmaps must be a floating-point tensor"),
    ([[0.0]], {}, TypeError, "heatmaps must be a torch.Tensor, got list"),
    (_img(2, 3, 5, 5), {"temperature": float("nan")}, ValueError, "temperature must be finite and > 0, got nan"),
    (_img(2, 3, 5, 5), {"temperature": float("inf")}, ValueError, "temperature must be finite and > 0, got inf"),
    (_img(2, 3, 5, 5), {"temperature": 0.0}, ValueError, "temperature must be finite and > 0, got 0.0"),
    (_img(2, 3, 5, 5), {"temperature": -0.1}, ValueError, "temperature must be finite and > 0"),
    (_img(2, 3, 5, 5), {"temperature": torch.tensor(float("nan"))}, ValueError, "temperature must be finite"),
    (_img(2, 3, 5, 5), {"temperature": torch.ones(2)}, ValueError, "temperature must be a scalar"),
    (_img(2, 3, 5, 5), {"temperature": "hot"}, TypeError, "temperature must be a number, got str"),
    (_img(2, 3, 5, 5), {"mode": "max"}, ValueError, "mode must be one of ('spatial', 'marginal'), got 'max'"),
]


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("heatmaps,kwargs,exc,msg", BAD_SOFT_ARGMAX)
def test_soft_argmax(heatmaps, kwargs, exc, msg, backend):
    with pytest.raises(exc, match=re.escape(f"fastlmk.soft_argmax: {msg}")):
        fastlmk.soft_argmax(heatmaps, backend=backend, **kwargs)


_P = torch.zeros(2, 3, 2)
BAD_GAUSSIAN = [
    # (points, height, width, std, exception, message)
    (torch.zeros(2, 3), 5, 5, 0.1, ValueError, "points must have 3 dimensions, got shape (2, 3)"),
    (torch.zeros(2, 3, 3), 5, 5, 0.1, ValueError, "points must have last dimension 2, got shape (2, 3, 3)"),
    (torch.zeros(2, 3, 2, dtype=torch.int32), 5, 5, 0.1, TypeError, "points must be a floating-point tensor"),
    (_P, 0, 5, 0.1, ValueError, "height must be >= 1, got 0"),
    (_P, 5, -2, 0.1, ValueError, "width must be >= 1, got -2"),
    (_P, 5.0, 5, 0.1, TypeError, "height must be an int, got float"),
    (_P, 5, True, 0.1, TypeError, "width must be an int, got bool"),
    (_P, 5, 5, float("nan"), ValueError, "std must be finite and > 0, got nan"),
    (_P, 5, 5, float("inf"), ValueError, "std must be finite and > 0, got inf"),
    (_P, 5, 5, 0.0, ValueError, "std must be finite and > 0, got 0.0"),
    (_P, 5, 5, -1.0, ValueError, "std must be finite and > 0"),
    (_P, 5, 5, None, TypeError, "std must be a number, got NoneType"),
]


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("points,height,width,std,exc,msg", BAD_GAUSSIAN)
def test_gaussian_heatmaps(points, height, width, std, exc, msg, backend):
    with pytest.raises(exc, match=re.escape(f"fastlmk.gaussian_heatmaps: {msg}")):
        fastlmk.gaussian_heatmaps(points, height, width, std, backend=backend)


def _bad_tps_cases():
    """(tps, exception, message) for malformed splines, shared by the two TPS ops (batch 2)."""
    t = _tps(2)
    N = t.ctrl.shape[1]
    return [
        ((t.ctrl, t.coef), TypeError, "tps must be a fastlmk.TPS (from tps_fit or random_tps), got tuple"),
        (TPS(t.ctrl[0], t.coef), ValueError, "tps.ctrl must have 3 dimensions, got shape (9, 2)"),
        (TPS(t.ctrl, t.coef[..., :1]), ValueError, "tps.coef must have last dimension 2, got shape (2, 12, 1)"),
        (TPS(t.ctrl, t.coef[:, :-1]), ValueError, f"tps.coef must be (B, N + 3, 2) for N = {N} control points, got (2, 11, 2)"),
        (TPS(t.ctrl.expand(3, -1, -1), t.coef), ValueError, "tps.ctrl batch must be 1 or 2, got 3"),
        (TPS(t.ctrl.to(torch.int64), t.coef), TypeError, "tps.ctrl must be a floating-point tensor"),
        (TPS(t.ctrl, t.coef.to(torch.int64)), TypeError, "tps.coef must be a floating-point tensor"),
        (_tps(3), ValueError, "tps batch (3) must be 1 or match the input batch (2)"),
    ]


BAD_WARP = [
    # (image, kwargs, exception, message)
    (_img(2, 4, 4), {}, ValueError, "image must have 4 dimensions, got shape (2, 4, 4)"),
    (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), {}, TypeError, "image must be a floating-point tensor, got dtype torch.uint8"),
    (_img(2, 1, 4, 4), {"padding": "reflection"}, ValueError, "padding must be one of ('zeros', 'border'), got 'reflection'"),
    (_img(2, 1, 4, 4), {"size": (5,)}, ValueError, "size must be (H_out, W_out), got (5,)"),
    (_img(2, 1, 4, 4), {"size": (0, 4)}, ValueError, "size[0] must be >= 1, got 0"),
    (_img(2, 1, 4, 4), {"size": (4, -3)}, ValueError, "size[1] must be >= 1, got -3"),
    (_img(2, 1, 0, 4), {}, ValueError, "image must have H, W >= 1, got (2, 1, 0, 4)"),
]


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("image,kwargs,exc,msg", BAD_WARP)
def test_tps_warp(image, kwargs, exc, msg, backend):
    with pytest.raises(exc, match=re.escape(f"fastlmk.tps_warp: {msg}")):
        fastlmk.tps_warp(image, _tps(2), backend=backend, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("case", range(8))
def test_tps_warp_bad_spline(case, backend):
    tps, exc, msg = _bad_tps_cases()[case]
    with pytest.raises(exc, match=re.escape(f"fastlmk.tps_warp: {msg}")):
        fastlmk.tps_warp(_img(2, 1, 4, 4), tps, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("case", range(8))
def test_tps_transform_points_bad_spline(case, backend):
    tps, exc, msg = _bad_tps_cases()[case]
    with pytest.raises(exc, match=re.escape(f"fastlmk.tps_transform_points: {msg}")):
        fastlmk.tps_transform_points(torch.zeros(2, 5, 2), tps, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("points,exc,msg", [
    (torch.zeros(2, 5), ValueError, "points must have 3 dimensions, got shape (2, 5)"),
    (torch.zeros(2, 5, 3), ValueError, "points must have last dimension 2, got shape (2, 5, 3)"),
    (torch.zeros(2, 5, 2, dtype=torch.int64), TypeError, "points must be a floating-point tensor"),
    (torch.zeros(3, 5, 2), ValueError, "tps batch (2) must be 1 or match the input batch (3)"),
])
def test_tps_transform_points(points, exc, msg, backend):
    with pytest.raises(exc, match=re.escape(f"fastlmk.tps_transform_points: {msg}")):
        fastlmk.tps_transform_points(points, _tps(2), backend=backend)


def test_mixed_devices():
    """Tensors on two devices (the meta device stands in for a second one on CPU-only machines)."""
    meta = _tps(2, device="meta")
    with pytest.raises(ValueError, match=re.escape("fastlmk.tps_warp: all tensors must be on one device, got image on cpu, ctrl on meta, coef on meta")):
        fastlmk.tps_warp(_img(2, 1, 4, 4), meta)
    with pytest.raises(ValueError, match=re.escape("fastlmk.tps_transform_points: all tensors must be on one device")):
        fastlmk.tps_transform_points(torch.zeros(2, 5, 2), meta)
    with pytest.raises(ValueError, match=re.escape("fastlmk.tps_fit: all tensors must be on one device, got src_points on cpu, dst_points on meta")):
        fastlmk.tps_fit(torch.rand(1, 5, 2), torch.rand(2, 5, 2, device="meta"))
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="fastlmk.tps_warp: all tensors must be on one device"):
            fastlmk.tps_warp(_img(2, 1, 4, 4), _tps(2, device="cuda"))


@pytest.mark.parametrize("src,dst,kwargs,exc,msg", [
    (torch.rand(1, 5, 2), torch.rand(2, 6, 2), {}, ValueError, "src_points and dst_points must have the same number of points, got 5 and 6"),
    (torch.rand(3, 5, 2), torch.rand(2, 5, 2), {}, ValueError, "src_points batch must be 1 or 2, got 3"),
    (torch.rand(1, 2, 2), torch.rand(1, 2, 2), {}, ValueError, "at least 3 points are needed"),
    (torch.rand(5, 2), torch.rand(1, 5, 2), {}, ValueError, "src_points must have 3 dimensions"),
    (torch.rand(1, 5, 2), torch.rand(1, 5, 3), {}, ValueError, "dst_points must have last dimension 2"),
    (torch.zeros(1, 5, 2, dtype=torch.int64), torch.rand(1, 5, 2), {}, TypeError, "src_points must be a floating-point tensor"),
    (torch.rand(1, 5, 2), torch.rand(1, 5, 2), {"regularization": -1.0}, ValueError, "regularization must be finite and >= 0, got -1.0"),
    (torch.rand(1, 5, 2), torch.rand(1, 5, 2), {"regularization": float("nan")}, ValueError, "regularization must be finite and >= 0, got nan"),
])
def test_tps_fit(src, dst, kwargs, exc, msg):
    with pytest.raises(exc, match=re.escape(f"fastlmk.tps_fit: {msg}")):
        fastlmk.tps_fit(src, dst, **kwargs)


@pytest.mark.parametrize("kwargs,exc,msg", [
    ({"batch": -1}, ValueError, "batch must be >= 1, got -1"),
    ({"batch": 2.5}, TypeError, "batch must be an int, got float"),
    ({"batch": 2, "grid_size": 1}, ValueError, "grid_size must be >= 2, got 1"),
])
def test_random_tps(kwargs, exc, msg):
    with pytest.raises(exc, match=re.escape(f"fastlmk.random_tps: {msg}")):
        fastlmk.random_tps(**kwargs)
