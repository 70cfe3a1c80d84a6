"""float16 / bfloat16: the GPU kernels may be at most 2x further from the float64 reference than
the reference itself is when run in the same low precision (flash-attention's criterion).

For every op, forward and backward: inputs are drawn in float64 and rounded to the low dtype;
"ours" is the backend in the low dtype, "ref_low" the pure-PyTorch reference in the low dtype
(PyTorch's own kernels), "ref64" the reference in float64 on the same rounded inputs and the same
(rounded) upstream gradient. Per output: max|ours - ref64| <= 2 max|ref_low - ref64| + floor,
with a floor far below the dtype's resolution (guards against a reference that happens to be
exact). TPS coefficients stay float32 (the ops accumulate in float32 and take them as such).

CUDA only (the kernels under test are the CUDA C++ and Triton GPU kernels): skipped elsewhere.
"""

from __future__ import annotations

import pytest
import torch

import fastlmk
from fastlmk import TPS
from fastlmk.ops import backends

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="low-precision checks run on CUDA GPUs only (no GPU available)")

FLOOR = 1e-6


def _soft_argmax(mode):
    def case(g):
        x = torch.randn(8, 10, 32, 32, generator=g, dtype=torch.float64) * 3

        def run(backend, x):
            return fastlmk.soft_argmax(x, 0.1, mode, backend=backend)

        return run, [x], []

    return case


def _gaussian(g):
    pts = torch.rand(8, 10, 2, generator=g, dtype=torch.float64) * 2 - 1

    def run(backend, pts):
        return fastlmk.gaussian_heatmaps(pts, 32, 32, 0.1, backend=backend)

    return run, [pts], []


def _tps(shared):
    def case(g):
        B = 4
        tps = fastlmk.random_tps(1 if shared else B, grid_size=5, generator=g, dtype=torch.float32)
        ctrl = tps.ctrl
        coef = tps.coef.expand(B, -1, -1).contiguous() + 0.02 * torch.randn(B, *tps.coef.shape[1:], generator=g)
        return ctrl, coef

    return case


def _tps_warp(shared, padding):
    def case(g):
        ctrl, coef = _tps(shared)(g)
        img = torch.rand(coef.shape[0], 3, 48, 40, generator=g, dtype=torch.float64)

        def run(backend, img, coef):
            return fastlmk.tps_warp(img, TPS(ctrl.to(coef.device, coef.dtype), coef), (40, 44), padding, backend=backend)

        return run, [img], [coef]

    return case


def _tps_points(shared):
    def case(g):
        ctrl, coef = _tps(shared)(g)
        pts = torch.rand(coef.shape[0], 10, 2, generator=g, dtype=torch.float64) * 2 - 1

        def run(backend, pts, coef):
            return fastlmk.tps_transform_points(pts, TPS(ctrl.to(coef.device, coef.dtype), coef), backend=backend)

        return run, [pts], [coef]

    return case


CASES = {
    "soft_argmax_spatial": _soft_argmax("spatial"),
    "soft_argmax_marginal": _soft_argmax("marginal"),
    "gaussian_heatmaps": _gaussian,
    "tps_warp_shared_zeros": _tps_warp(True, "zeros"),
    "tps_warp_batch_border": _tps_warp(False, "border"),
    "tps_transform_points_shared": _tps_points(True),
    "tps_transform_points_batch": _tps_points(False),
}


def _run(run, backend, data, params, upstream):
    """Output and gradients (wrt data, then params) of run(backend, *data, *params)."""
    leaves = [t.detach().clone().requires_grad_() for t in (*data, *params)]
    out = run(backend, *leaves)
    grads = torch.autograd.grad(out, leaves, upstream.to(out.dtype))
    return [out.detach(), *grads]


def check_low_precision(name: str, backend: str, dtype: torch.dtype, device: str = "cuda") -> None:
    g = torch.Generator().manual_seed(0)
    run, data, params = CASES[name](g)
    data_low = [d.to(device, dtype) for d in data]
    params = [p.to(device, torch.float32) for p in params]
    with torch.no_grad():
        shape = run("reference", *data_low, *params).shape
    upstream = torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)
    ours = _run(run, backend, data_low, params, upstream)
    ref_low = _run(run, "reference", data_low, params, upstream)
    ref64 = _run(run, "reference", [d.double() for d in data_low], [p.double() for p in params], upstream.double())
    labels = ["output"] + [f"grad data[{i}]" for i in range(len(data))] + [f"grad params[{i}]" for i in range(len(params))]
    for label, a, r, e in zip(labels, ours, ref_low, ref64):
        assert a.dtype == r.dtype, f"{name} {label}: dtype {a.dtype} != reference's {r.dtype}"
        err = (a.double() - e).abs()
        err_ref = (r.double() - e).abs().max().item()
        worst = int(err.argmax())
        assert err.max().item() <= 2 * err_ref + FLOOR, (
            f"{name} [{backend}, {dtype}] {label}: max error {err.max().item():.3g} at flat index {worst} "
            f"(value {a.flatten()[worst].item():.6g}, float64 {e.flatten()[worst].item():.6g}) > 2 x the "
            f"reference's own {dtype} error {err_ref:.3g}")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("name", list(CASES))
def test_low_precision(name, backend, dtype):
    if not backends.available(backend, torch.device("cuda")):
        pytest.skip(f"backend {backend!r} not available on CUDA in this installation")
    check_low_precision(name, backend, dtype)
