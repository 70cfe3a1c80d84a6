"""Triton backend: every op, forward and backward, against the pure-PyTorch reference.

Runs on CUDA tensors where a GPU is present and on CPU tensors under Triton's interpreter
(TRITON_INTERPRET=1, set by conftest before triton is imported when CUDA is absent); skipped
with a reason otherwise. Shapes are small (the interpreter runs each block as numpy arrays) and
awkward: odd sizes, K = 1, 1x1 maps and images, point sets of one point. The kernels run in the
working dtype and are compared with the reference evaluated in float64 on the same inputs.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fastlmk
from fastlmk import TPS
from fastlmk.ops import backends
from conftest import assert_close

DEVICES = [d for d in ("cpu", "cuda") if backends.available("triton", torch.device(d))]
pytestmark = pytest.mark.skipif(
    not DEVICES,
    reason="triton backend unavailable: needs triton and a CUDA GPU, or TRITON_INTERPRET=1 set before triton is imported",
)
DEVICES = DEVICES or ["cpu"]

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}
# each op in each working dtype, on every device Triton runs on here
over_devices_and_dtypes = pytest.mark.parametrize("device, dtype", [(d, t) for d in DEVICES for t in TOL])


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float, what: str) -> None:
    """|actual - expected| <= tol * max(1, max|expected|) + tol |expected| elementwise, against a
    reference evaluated in float64 (conftest.assert_close names the worst element)."""
    assert_close(actual, expected, atol=tol, rtol=tol, scale=True, check_dtype=False, name=what)


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_()


def _grads(out: torch.Tensor, upstream: torch.Tensor, *inputs: torch.Tensor):
    return torch.autograd.grad(out, inputs, upstream.to(out.dtype))


# --- soft-argmax ---------------------------------------------------------------------------
SOFT_ARGMAX_SHAPES = [(2, 3, 5, 7), (1, 1, 1, 1), (2, 1, 1, 9), (1, 2, 13, 1), (1, 2, 33, 40)]


@over_devices_and_dtypes
@pytest.mark.parametrize("mode", ["spatial", "marginal"])
@pytest.mark.parametrize("shape", SOFT_ARGMAX_SHAPES, ids=str)
def test_soft_argmax(device, dtype, mode, shape):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 4).to(device)
    temperature = 0.3
    up = torch.randn(*shape[:2], 2, generator=g, dtype=torch.float64).to(device)
    xt, xr = _leaf(x.to(dtype)), _leaf(x.to(dtype).double())
    out = fastlmk.soft_argmax(xt, temperature, mode, backend="triton")
    ref = fastlmk.soft_argmax(xr, temperature, mode, backend="reference")
    assert out.dtype == dtype
    close(out, ref, TOL[dtype], "points")
    (gt,), (gr,) = _grads(out, up, xt), _grads(ref, up, xr)
    close(gt, gr, TOL[dtype], "grad heatmaps")


@pytest.mark.parametrize("device", DEVICES)
def test_soft_argmax_extreme_logits(device):
    """Large logits / T and -inf logits, also filling the first block(s) of the online sweeps:
    the running max starts at -inf there and must not turn the sums into NaN."""
    g = torch.Generator().manual_seed(10)
    x = torch.randn(1, 2, 40, 60, generator=g, dtype=torch.float64) * 50
    x[0, 0, 3, 4] = float("-inf")
    x[0, 1, :35] = float("-inf")  # the first 2100 pixels: more than one 2048-pixel block
    # marginal: a mean is -inf iff its row / column holds a -inf; rows 0..69 do (more than one
    # 64-row tile), columns 0..4 do, the other columns not
    xm = torch.randn(1, 2, 150, 60, generator=g, dtype=torch.float64) * 50
    xm[0, 0, 3, 4] = float("-inf")
    rows = torch.arange(70)
    xm[0, 1, rows, rows % 5] = float("-inf")
    for mode, logits in (("spatial", x), ("marginal", xm)):
        logits = logits.to(device)
        out = fastlmk.soft_argmax(logits.float(), 0.1, mode, backend="triton")
        ref = fastlmk.soft_argmax(logits.float().double(), 0.1, mode, backend="reference")
        assert torch.isfinite(ref).all()
        assert torch.isfinite(out).all(), mode
        close(out, ref, 1e-5, mode)


# --- Gaussian heatmaps ---------------------------------------------------------------------
GAUSSIAN_SHAPES = [(2, 3, 5, 7), (1, 1, 1, 1), (3, 1, 1, 6), (1, 2, 9, 1), (1, 2, 37, 150)]


@over_devices_and_dtypes
@pytest.mark.parametrize("shape", GAUSSIAN_SHAPES, ids=str)
def test_gaussian_heatmaps(device, dtype, shape):
    B, K, H, W = shape
    g = torch.Generator().manual_seed(1)
    pts = (torch.rand(B, K, 2, generator=g, dtype=torch.float64) * 2.4 - 1.2).to(device)
    up = torch.randn(shape, generator=g, dtype=torch.float64).to(device)
    std = 0.25
    pt, pr = _leaf(pts.to(dtype)), _leaf(pts.to(dtype).double())
    out = fastlmk.gaussian_heatmaps(pt, H, W, std, backend="triton")
    ref = fastlmk.gaussian_heatmaps(pr, H, W, std, backend="reference")
    assert out.dtype == dtype
    close(out, ref, TOL[dtype], "maps")
    (gt,), (gr,) = _grads(out, up, pt), _grads(ref, up, pr)
    close(gt, gr, TOL[dtype], "grad points")


# --- TPS -----------------------------------------------------------------------------------
def _tps(B: int, grid: int, shared: bool, g: torch.Generator, noise: float = 0.15) -> TPS:
    """Random control points and coefficients near the identity (affine part ~ I plus noise)."""
    N = grid * grid
    ctrl = torch.rand(1 if shared else B, N, 2, generator=g, dtype=torch.float64) * 2 - 1
    coef = torch.randn(B, N + 3, 2, generator=g, dtype=torch.float64) * noise
    coef[:, N + 1, 0] += 1.1  # a_x ~ (1.1, 0): some samples fall outside the image
    coef[:, N + 2, 1] += 1.05
    return TPS(ctrl, coef)


POINT_CASES = [(2, 5, 3, True), (3, 1, 2, False), (1, 40, 5, True), (2, 17, 1, False)]  # B, M, grid, shared


@over_devices_and_dtypes
@pytest.mark.parametrize("case", POINT_CASES, ids=str)
def test_tps_transform_points(device, dtype, case):
    B, M, grid, shared = case
    g = torch.Generator().manual_seed(2)
    tps = _tps(B, grid, shared, g)
    pts = torch.rand(B, M, 2, generator=g, dtype=torch.float64) * 2.2 - 1.1
    pts[:, 0] = tps.ctrl[0, 0]  # a point exactly on a control point: U(0) = 0 and grad U(0) = 0
    up = torch.randn(B, M, 2, generator=g, dtype=torch.float64).to(device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    pt, ct = _leaf(pts.to(device, dtype)), _leaf(tps.coef.to(device, acc))
    pr, cr = _leaf(pts.to(device, dtype).double()), _leaf(tps.coef.to(device, acc).double())
    ctrl = tps.ctrl.to(device, acc)
    out = fastlmk.tps_transform_points(pt, TPS(ctrl, ct), backend="triton")
    ref = fastlmk.tps_transform_points(pr, TPS(ctrl.double(), cr), backend="reference")
    assert out.dtype == dtype
    close(out, ref, TOL[dtype], "points")
    gt, gr = _grads(out, up, pt, ct), _grads(ref, up, pr, cr)
    close(gt[0], gr[0], TOL[dtype], "grad points")
    close(gt[1], gr[1], TOL[dtype], "grad coef")


WARP_CASES = [  # B, C, (Hi, Wi), (Ho, Wo), grid, shared
    (2, 3, (9, 11), (7, 10), 3, True),
    (5, 2, (8, 8), (8, 8), 4, True),  # more images than one image group of the shared fast path
    (3, 1, (1, 1), (4, 5), 2, False),  # 1x1 image
    (2, 2, (13, 6), (1, 1), 2, False),  # 1x1 output
    (1, 1, (7, 9), (6, 5), 1, True),
]


@over_devices_and_dtypes
@pytest.mark.parametrize("padding", ["zeros", "border"])
@pytest.mark.parametrize("case", WARP_CASES, ids=str)
def test_tps_warp(device, dtype, padding, case):
    B, C, (Hi, Wi), size, grid, shared = case
    g = torch.Generator().manual_seed(3)
    tps = _tps(B, grid, shared, g)
    img = torch.randn(B, C, Hi, Wi, generator=g, dtype=torch.float64)
    up = torch.randn(B, C, *size, generator=g, dtype=torch.float64).to(device)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    it, ct = _leaf(img.to(device, dtype)), _leaf(tps.coef.to(device, acc))
    ir, cr = _leaf(img.to(device, dtype).double()), _leaf(tps.coef.to(device, acc).double())
    ctrl = tps.ctrl.to(device, acc)
    out = fastlmk.tps_warp(it, TPS(ctrl, ct), size, padding, backend="triton")
    ref = fastlmk.tps_warp(ir, TPS(ctrl.double(), cr), size, padding, backend="reference")
    assert out.dtype == dtype
    close(out, ref, TOL[dtype], "warped image")
    gt, gr = _grads(out, up, it, ct), _grads(ref, up, ir, cr)
    close(gt[0], gr[0], TOL[dtype], "grad image")
    close(gt[1], gr[1], TOL[dtype], "grad coef")


@pytest.mark.parametrize("device", DEVICES)
def test_tps_partial_gradients(device):
    """The kernel-level interface returns None for a gradient that is not needed, and the wanted
    one is unchanged."""
    from fastlmk.ops import triton as tk

    g = torch.Generator().manual_seed(4)
    tps = _tps(2, 3, True, g)
    ctrl, coef = tps.ctrl.float().to(device), tps.coef.float().to(device)
    img = torch.randn(2, 2, 6, 7, generator=g).to(device)
    up = torch.randn(2, 2, 5, 4, generator=g).to(device)
    both = tk.tps_warp_backward(up, img, ctrl, coef, False, True, True)
    only_image = tk.tps_warp_backward(up, img, ctrl, coef, False, True, False)
    only_coef = tk.tps_warp_backward(up, img, ctrl, coef, False, False, True)
    assert only_image[1] is None and only_coef[0] is None
    close(only_image[0], both[0], 1e-6, "grad image")
    close(only_coef[1], both[1], 1e-6, "grad coef")
    assert tk.tps_warp_backward(up, img, ctrl, coef, False, False, False) == (None, None)
    pts = torch.rand(2, 3, 2, generator=g).to(device)
    gp = torch.randn(2, 3, 2, generator=g).to(device)
    both = tk.tps_transform_points_backward(gp, pts, ctrl, coef, True, True)
    only_points = tk.tps_transform_points_backward(gp, pts, ctrl, coef, True, False)
    only_coef = tk.tps_transform_points_backward(gp, pts, ctrl, coef, False, True)
    assert only_points[1] is None and only_coef[0] is None
    close(only_points[0], both[0], 1e-6, "grad points")
    close(only_coef[1], both[1], 1e-6, "grad coef")


# --- across ops ----------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_gradcheck_float64(device):
    """Finite differences in float64 on tiny inputs, independent of the reference (fast mode:
    a random projection of the Jacobian, to keep the interpreter quick)."""
    g = torch.Generator().manual_seed(5)

    def check(fn, *inputs):
        assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)

    x = _leaf(torch.randn(1, 2, 3, 4, generator=g, dtype=torch.float64).to(device))
    for mode in ("spatial", "marginal"):
        check(lambda t: fastlmk.soft_argmax(t, 0.5, mode, backend="triton"), x)
    p = _leaf((torch.rand(1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1).to(device))
    check(lambda t: fastlmk.gaussian_heatmaps(t, 3, 4, 0.4, backend="triton"), p)
    tps = _tps(1, 2, True, g)
    ctrl, coef = tps.ctrl.to(device), _leaf(tps.coef.to(device))
    img = _leaf(torch.randn(1, 1, 4, 3, generator=g, dtype=torch.float64).to(device))
    for padding in ("zeros", "border"):
        check(lambda i, c: fastlmk.tps_warp(i, TPS(ctrl, c), (3, 3), padding, backend="triton"), img, coef)
    check(lambda q, c: fastlmk.tps_transform_points(q, TPS(ctrl, c), backend="triton"), p, coef)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs(device, dtype):
    """float16 / bfloat16 run with float32 accumulation: results close to float64 on the same
    (rounded) inputs, within a few units of the dtype's resolution. (The strict low-precision
    criterion, against the reference's own low-precision error, is tests/test_low_precision.py.)
    Note: Triton's interpreter (triton 3.9) rounds float32 -> bfloat16 toward zero where compiled
    Triton rounds to nearest even, so on CPU bfloat16 outputs may be one unit off; the tolerance
    allows for it."""
    g = torch.Generator().manual_seed(6)
    tol = 4 * torch.finfo(dtype).eps
    x = torch.randn(2, 3, 9, 10, generator=g).to(device, dtype)
    for mode in ("spatial", "marginal"):
        out = fastlmk.soft_argmax(x, 0.5, mode, backend="triton")
        assert out.dtype == dtype
        close(out, fastlmk.soft_argmax(x.double(), 0.5, mode, backend="reference"), tol, mode)
    pts = (torch.rand(2, 3, 2, generator=g) * 2 - 1).to(device, dtype)
    out = fastlmk.gaussian_heatmaps(pts, 7, 8, 0.3, backend="triton")
    close(out, fastlmk.gaussian_heatmaps(pts.double(), 7, 8, 0.3, backend="reference"), tol, "maps")
    tps = _tps(2, 3, True, g)
    tps32 = TPS(tps.ctrl.float().to(device), tps.coef.float().to(device))
    tps64 = TPS(tps32.ctrl.double(), tps32.coef.double())
    img = torch.randn(2, 2, 8, 9, generator=g).to(device, dtype)
    out = fastlmk.tps_warp(img, tps32, backend="triton")
    # sample positions in float32 (kernel) vs float64: differences scale with the image gradient
    close(out, fastlmk.tps_warp(img.double(), tps64, backend="reference"), 2 * tol, "warp")
    out = fastlmk.tps_transform_points(pts, tps32, backend="triton")
    close(out, fastlmk.tps_transform_points(pts.double(), tps64, backend="reference"), tol, "tps points")


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 7, 5, generator=g, dtype=torch.float64).to(device).transpose(2, 3)  # (2, 3, 5, 7)
    close(fastlmk.soft_argmax(x, 0.5, backend="triton"), fastlmk.soft_argmax(x, 0.5, backend="reference"),
                 1e-10, "soft_argmax")
    pts = torch.rand(2, 2, 3, generator=g, dtype=torch.float64).to(device)[..., ::2] * 2 - 1  # stride 2
    close(fastlmk.gaussian_heatmaps(pts, 4, 5, 0.3, backend="triton"),
                 fastlmk.gaussian_heatmaps(pts, 4, 5, 0.3, backend="reference"), 1e-10, "gaussian")
    tps = _tps(1, 2, True, g)  # batch-1 spline broadcast over the images
    tps = TPS(tps.ctrl.to(device), tps.coef.to(device))
    img = torch.randn(2, 6, 5, 3, generator=g, dtype=torch.float64).to(device).permute(0, 3, 1, 2)  # channels last
    close(fastlmk.tps_warp(img, tps, backend="triton"), fastlmk.tps_warp(img, tps, backend="reference"),
                 1e-10, "tps_warp")
    close(fastlmk.tps_transform_points(pts, tps, backend="triton"),
                 fastlmk.tps_transform_points(pts, tps, backend="reference"), 1e-10, "tps points")


def test_marginal_width_limit():
    from fastlmk.ops.triton import soft_argmax as sa

    with pytest.raises(ValueError, match="W <= 16384"):
        sa._marginal_blocks(2, 20000)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile(device):
    """The whole pipeline under torch.compile(fullgraph=True) matches eager, forward and backward.
    On CUDA the ops are triton_ops traced into (Inductor sees the kernels); under the interpreter
    they are opaque custom ops (wrap_triton cannot trace interpreted kernels), so only the
    registration (schemas, fake functions, autograd) is checked there."""
    g = torch.Generator().manual_seed(8)
    x = _leaf(torch.randn(2, 3, 8, 9, generator=g).to(device))
    img = _leaf(torch.randn(2, 3, 10, 12, generator=g).to(device))
    tps = _tps(2, 3, True, g)
    ctrl, coef = tps.ctrl.float().to(device), _leaf(tps.coef.float().to(device))
    pts = _leaf((torch.rand(2, 3, 2, generator=g) * 2 - 1).to(device))

    def f(x, img, coef, pts):
        p = fastlmk.soft_argmax(x, 0.5, backend="triton")
        q = fastlmk.soft_argmax(x, 0.5, mode="marginal", backend="triton")
        maps = fastlmk.gaussian_heatmaps(p, 6, 7, 0.2, backend="triton")
        warped = fastlmk.tps_warp(img, TPS(ctrl, coef), padding="border", backend="triton")
        moved = fastlmk.tps_transform_points(pts, TPS(ctrl, coef), backend="triton")
        return maps.square().sum() + warped.square().sum() + (moved * p).sum() + q.sum()

    inputs = (x, img, coef, pts)
    eager = f(*inputs)
    eager_grads = torch.autograd.grad(eager, inputs)
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)(*inputs)
    compiled_grads = torch.autograd.grad(compiled, inputs)
    close(compiled, eager, 1e-6, "loss")
    for a, b, name in zip(compiled_grads, eager_grads, ("x", "img", "coef", "pts")):
        close(a, b, 1e-6, f"grad {name}")


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    """torch.library.opcheck: schema, fake functions, autograd registration of the compiled ops
    (tracing through AOT autograd is test_torch_compile's part)."""
    g = torch.Generator().manual_seed(9)
    x = _leaf(torch.randn(2, 1, 4, 5, generator=g).to(device))
    pts = _leaf((torch.rand(2, 3, 2, generator=g) * 2 - 1).to(device))
    tps = _tps(2, 2, False, g)
    ctrl, coef = tps.ctrl.float().to(device), _leaf(tps.coef.float().to(device))
    img = _leaf(torch.randn(2, 2, 5, 4, generator=g).to(device))
    ops = torch.ops.fastlmk
    cases = [(ops.triton_soft_argmax, (x, 0.5, False)), (ops.triton_soft_argmax, (x, 0.5, True)),
             (ops.triton_gaussian_heatmaps, (pts, 5, 4, 0.3)), (ops.triton_tps_warp, (img, ctrl, coef, 4, 5, False)),
             (ops.triton_tps_transform_points, (pts, ctrl, coef))]
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))


@pytest.mark.skipif(os.environ.get("FASTLMK_TRITON_AOT", "0") in ("", "0"),
                    reason="set FASTLMK_TRITON_AOT=1 to compile every kernel for sm_90 (~30-60 s without a cache)")
def test_kernels_compile_for_gpu():
    """Compile the kernels ahead of time for an H100 (sm_90) without a GPU: catches what the
    interpreter accepts but the Triton compiler rejects. Nothing is run."""
    pytest.importorskip("triton.backends.nvidia")
    root = Path(__file__).resolve().parent
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, str(root / "triton_aot_compile.py"), "--level", "smoke"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
