"""torch.library registration: opcheck on every registered op, and torch.compile(fullgraph=True)
of a function using all ops, matching eager forward and backward."""

import pytest
import torch

import fastlmk
from conftest import KERNEL_BACKENDS, assert_close, make_generator, make_tps, require_kernel

# every registered op and the public op whose kernels it runs
REGISTERED = {
    "soft_argmax": "soft_argmax",
    "soft_argmax_backward": "soft_argmax",
    "gaussian_heatmaps": "gaussian_heatmaps",
    "gaussian_heatmaps_backward": "gaussian_heatmaps",
    "tps_warp": "tps_warp",
    "tps_warp_backward": "tps_warp",
    "tps_transform_points": "tps_transform_points",
    "tps_transform_points_backward": "tps_transform_points",
}


def test_every_op_is_registered():
    for name in REGISTERED:
        assert hasattr(torch.ops.fastlmk, name), f"torch.ops.fastlmk.{name} is not registered"


def _opcheck_args(name, backend, device):
    """Arguments of torch.ops.fastlmk.<name> in float64, differentiable inputs requiring grad."""
    g = make_generator(0)
    f64 = dict(dtype=torch.float64, device=device)
    if name.startswith("soft_argmax"):
        x = torch.randn(2, 3, 4, 5, generator=g, dtype=torch.float64).to(device).requires_grad_()
        if name == "soft_argmax":
            return (x, 0.7, True, backend)
        points, stats = torch.ops.fastlmk.soft_argmax(x.detach(), 0.7, True, backend)
        return (torch.randn(2, 3, 2, **f64), x, stats, points, 0.7, True, backend)
    if name.startswith("gaussian_heatmaps"):
        p = (torch.rand(2, 3, 2, generator=g, dtype=torch.float64) * 2 - 1).to(device).requires_grad_()
        if name == "gaussian_heatmaps":
            return (p, 4, 5, 0.3, backend)
        return (torch.randn(2, 3, 4, 5, **f64), p, 0.3, backend)
    tps = make_tps("shared", 2, torch.float64, device, grid_size=3)
    coef = tps.coef.clone().requires_grad_()
    if name.startswith("tps_warp"):
        image = torch.randn(2, 2, 5, 4, generator=g, dtype=torch.float64).to(device).requires_grad_()
        if name == "tps_warp":
            return (image, tps.ctrl, coef, 3, 6, True, backend)
        return (torch.randn(2, 2, 3, 6, **f64), image, tps.ctrl, coef, True, True, True, backend)
    p = (torch.rand(2, 5, 2, generator=g, dtype=torch.float64) * 2 - 1).to(device).requires_grad_()
    if name == "tps_transform_points":
        return (p, tps.ctrl, coef, backend)
    return (torch.randn(2, 5, 2, **f64), p, tps.ctrl, coef, True, True, backend)


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend, name):
    device = require_kernel(backend, REGISTERED[name])
    args = _opcheck_args(name, backend, device)
    if name.endswith("_backward"):
        # the backward ops are not themselves differentiable (no double backward): check them
        # (schema, fake tensor, AOT dispatch) on inputs that do not require grad
        args = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
    op = getattr(torch.ops.fastlmk, name).default
    torch.library.opcheck(op, args)
    if name.startswith("tps") and name.endswith("_backward"):
        # with one of the two gradients not asked for (need_* flags before the backend): the
        # kernels skip it and the operator returns an empty placeholder, the fake too
        for needs in ((True, False), (False, True)):
            torch.library.opcheck(op, args[:-3] + needs + args[-1:])


def _pipeline(images, heatmaps, src, dst, backend):
    """A small landmark pipeline touching every op: fit a spline, warp the images with it, find
    points, move them with the spline, render them."""
    tps = fastlmk.tps_fit(src, dst)
    warped = fastlmk.tps_warp(images, tps, size=(6, 7), padding="border", backend=backend)
    points = fastlmk.soft_argmax(heatmaps, temperature=0.5, mode="spatial", backend=backend)
    points_m = fastlmk.soft_argmax(heatmaps, temperature=0.5, mode="marginal", backend=backend)
    moved = fastlmk.tps_transform_points(points + points_m, tps, backend=backend)
    maps = fastlmk.gaussian_heatmaps(moved, 6, 7, 0.3, backend=backend)
    return warped * maps.sum(1, keepdim=True), moved


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_compile_fullgraph_matches_eager(backend):
    for op in ("soft_argmax", "gaussian_heatmaps", "tps_warp", "tps_transform_points"):
        device = require_kernel(backend, op)
    g = make_generator(1)
    images = torch.randn(2, 3, 5, 8, generator=g).to(device)
    heatmaps = torch.randn(2, 4, 6, 5, generator=g).to(device)
    src = (torch.rand(1, 6, 2, generator=g) * 2 - 1).to(device)
    dst = src + 0.1 * torch.randn(2, 6, 2, generator=g).to(device)

    def run(fn):
        inputs = [t.clone().requires_grad_() for t in (images, heatmaps, dst)]
        out, moved = fn(inputs[0], inputs[1], src, inputs[2], backend)
        loss = (out * torch.linspace(-1, 1, out.numel(), device=device).view_as(out)).sum() + moved.square().sum()
        return (out, moved) + torch.autograd.grad(loss, inputs)

    from torch._inductor.compile_fx import compile_fx

    traced = []

    def inductor_recording_ops(gm, example_inputs):
        traced.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return compile_fx(gm, example_inputs)

    torch._dynamo.reset()
    compiled = torch.compile(_pipeline, fullgraph=True, dynamic=False, backend=inductor_recording_ops)
    eager = run(_pipeline)
    got = run(compiled)
    for name, a, e in zip(("out", "moved", "grad images", "grad heatmaps", "grad dst"), got, eager):
        assert_close(a, e, atol=1e-4, rtol=1e-4, name=name)
    # the graph holds fastlmk's operators (not a fallback to the reference's aten ops)
    for op in ("soft_argmax", "gaussian_heatmaps", "tps_warp", "tps_transform_points"):
        assert any(op in t and "backward" not in t for t in traced), f"no {op} operator in the compiled graph: {traced}"
