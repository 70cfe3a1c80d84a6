"""Per-call Python overhead of the ways into a fastlmk kernel, on tiny problems.

At the paper's sizes a kernel runs for tens of microseconds, so what happens around it matters.
For every op, on tiny inputs (the kernel itself is then almost free), this times:

* ``bare-kernel``: the tensor-level kernel interface (:mod:`fastlmk.ops._cpp`,
  ``backends.kernels(backend).<op>_forward`` / ``_backward``) on ready, contiguous tensors:
  the floor (binding call, output allocation);
* ``eager``: the public function (``fastlmk.soft_argmax(..., backend=...)``): argument checks,
  backend resolution, the ``autograd.Function`` fast path;
* ``registered-op``: the ``torch.library`` custom op called eagerly (``torch.ops.fastlmk.<op>``):
  dispatcher, schema checks, registered autograd -- the path ``torch.compile`` graphs use;
* ``compiled``: ``torch.compile(fullgraph=True)`` of the public function (graph guards + the
  registered op inside the compiled graph);
* ``reference-eager``: the pure-PyTorch reference, for scale.

Forward and forward+backward (for bare-kernel the backward kernel called directly with the same
upstream gradient). Overhead = a path's time minus bare-kernel's, read off the table.
"""

from __future__ import annotations

import pytest
import torch

import fastlmk
from fastlmk import TPS, reference
from fastlmk.ops import backends

from benchmarks.conftest import HAS_CUDA, MODES, Case, kernel_unavailable, make_step, run, seeded, upstream_grad

TEMPERATURE = 0.1
STD = 0.2
GRID = 4
PATHS = ("reference-eager", "bare-kernel", "eager", "registered-op", "compiled")
BACKENDS = [pytest.param("cpu", "cpu", id="cpu")] + [
    pytest.param("cuda", b, id=f"cuda-{b}") for b in ("cuda", "triton")]

# torch.compile(fullgraph=True) of each public function (static shapes), made once
_COMPILED = {}


def _compiled(name, fn):
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(fn, fullgraph=True, dynamic=False)
    return _COMPILED[name]


def _inputs(op: str, device: str):
    g = seeded(11)
    if op == "soft_argmax":
        return (torch.randn(2, 4, 8, 8, generator=g).to(device),), (0,), "B=2 K=4 8x8"
    if op == "gaussian_heatmaps":
        return ((torch.rand(2, 4, 2, generator=g) * 2 - 1).to(device),), (0,), "B=2 K=4 8x8"
    tps = fastlmk.random_tps(2, GRID, generator=g, device=device)
    if op == "tps_warp":
        return (torch.rand(2, 1, 8, 8, generator=g).to(device), tps.ctrl, tps.coef), (0, 2), f"B=2 1x8x8 {GRID}x{GRID}"
    return ((torch.rand(2, 4, 2, generator=g) * 2 - 1).to(device), tps.ctrl, tps.coef), (0, 2), f"B=2 M=4 {GRID}x{GRID}"


# per op: reference, public function, registered op (all over the same positional inputs)
def _reference(op):
    return {
        "soft_argmax": lambda h: reference.soft_argmax(h, TEMPERATURE, "spatial"),
        "gaussian_heatmaps": lambda p: reference.gaussian_heatmaps(p, 8, 8, STD),
        "tps_warp": reference.tps_warp,
        "tps_transform_points": reference.tps_transform_points,
    }[op]


def _public(op, backend):
    return {
        "soft_argmax": lambda h: fastlmk.soft_argmax(h, TEMPERATURE, "spatial", backend=backend),
        "gaussian_heatmaps": lambda p: fastlmk.gaussian_heatmaps(p, 8, 8, STD, backend=backend),
        "tps_warp": lambda img, ctrl, coef: fastlmk.tps_warp(img, TPS(ctrl, coef), backend=backend),
        "tps_transform_points": lambda p, ctrl, coef: fastlmk.tps_transform_points(p, TPS(ctrl, coef), backend=backend),
    }[op]


def _registered(op, backend):
    ops = torch.ops.fastlmk
    return {
        "soft_argmax": lambda h: ops.soft_argmax(h, TEMPERATURE, False, backend)[0],
        "gaussian_heatmaps": lambda p: ops.gaussian_heatmaps(p, 8, 8, STD, backend),
        "tps_warp": lambda img, ctrl, coef: ops.tps_warp(img, ctrl, coef, 8, 8, False, backend),
        "tps_transform_points": lambda p, ctrl, coef: ops.tps_transform_points(p, ctrl, coef, backend),
    }[op]


def _bare_step(op, backend, inputs, mode):
    """Forward (and backward) kernel calls on contiguous tensors, no autograd, no checks."""
    k = backends.kernels(backend)
    x = inputs[0].contiguous()
    grad = {}

    def upstream(out):
        if "g" not in grad:
            grad["g"] = upstream_grad(out)
        return grad["g"]

    if op == "soft_argmax":
        B, K, H, W = x.shape
        flat = x.view(B * K, H, W)

        def step():
            pts, stats = k.soft_argmax_forward(flat, 1.0 / TEMPERATURE, False)
            out = pts.view(B, K, 2)
            if mode == "forward":
                return out
            g = upstream(out)
            gl = k.soft_argmax_backward(g.view(B * K, 2), flat, stats, pts, 1.0 / TEMPERATURE, False)
            return out, gl.view(B, K, H, W)
    elif op == "gaussian_heatmaps":
        B, K, _ = x.shape
        flat = x.view(B * K, 2)
        inv_two_var = 1.0 / (2 * STD * STD)

        def step():
            out = k.gaussian_heatmaps_forward(flat, 8, 8, inv_two_var).view(B, K, 8, 8)
            if mode == "forward":
                return out
            g = upstream(out)
            gp = k.gaussian_heatmaps_backward(g.view(B * K, 8, 8), flat, inv_two_var)
            return out, gp.view(B, K, 2)
    else:
        ctrl, coef = inputs[1].contiguous(), inputs[2].contiguous()

        def step():
            if op == "tps_warp":
                out = k.tps_warp_forward(x, ctrl, coef, 8, 8, False)
            else:
                out = k.tps_transform_points_forward(x, ctrl, coef)
            if mode == "forward":
                return out
            g = upstream(out)
            if op == "tps_warp":
                gx, gc = k.tps_warp_backward(g, x, ctrl, coef, False, True, True)
            else:
                gx, gc = k.tps_transform_points_backward(g, x, ctrl, coef, True, True)
            return out, gx, gc
    return step


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("device, backend", BACKENDS)
@pytest.mark.parametrize("op", ["soft_argmax", "gaussian_heatmaps", "tps_warp", "tps_transform_points"])
def test_overhead(benchmark, op, device, backend, mode, path):
    if device == "cuda" and not HAS_CUDA:
        pytest.skip("no CUDA device on this machine")
    if path != "reference-eager":
        why = kernel_unavailable(op, backend, device)
        if why:
            pytest.skip(f"fastlmk-{backend}: {why}")
    elif backend == "triton":
        pytest.skip("reference-eager is timed once per device (with the cuda row)")
    inputs, diff, desc = _inputs(op, device)
    case = Case(f"overhead:{op}", "tiny", device, desc, inputs, diff=diff, rtol=1e-4, atol=1e-5)
    provider = "reference-eager" if path == "reference-eager" else f"fastlmk-{backend} {path}"
    ref = _reference(op)
    fn, step, warm = None, None, 0
    if path == "reference-eager":
        fn = ref
    elif path == "bare-kernel":
        step = _bare_step(op, backend, inputs, mode)
    elif path == "eager":
        fn = _public(op, backend)
    elif path == "registered-op":
        fn = _registered(op, backend)
    else:
        fn = _compiled(f"{op}-{backend}-{mode}", _public(op, backend))
        # compile now, bypassing torch.compile's on-disk caches: they do not notice a changed fake
        # (meta) implementation of a custom op and replay a stale graph (seen here when the
        # soft-argmax stats went from (B, K, 1) to (B, K, 2))
        with torch._inductor.config.patch(fx_graph_cache=False), \
                torch._functorch.config.patch(enable_autograd_cache=False):
            make_step(fn, case, mode)()
    run(benchmark, case, provider, mode, fn, ref, warm=warm, step=step, extra={"path": path, "backend": backend})
