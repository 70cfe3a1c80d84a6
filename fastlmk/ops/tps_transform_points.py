"""Thin-plate-spline point mapping, fused (no (B, M, N, 2) temporaries)."""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from fastlmk.ops import _checks, backends, reference
from fastlmk.ops.tps import TPS, check_tps
from fastlmk.ops.tps_warp import _prepare

_OP = "tps_transform_points"


def _forward(points, ctrl, coef, backend):
    return backends.kernels(backend).tps_transform_points_forward(points, ctrl, coef)


def _backward(grad, points, ctrl, coef, backend, need_points, need_coef):
    return backends.kernels(backend).tps_transform_points_backward(grad.contiguous(), points, ctrl, coef, need_points, need_coef)


@torch.library.custom_op("fastlmk::tps_transform_points", mutates_args=())
def _tps_points_op(points: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor, backend: str) -> torch.Tensor:
    return _forward(points.contiguous(), ctrl.contiguous(), coef.contiguous(), backend)


@_tps_points_op.register_fake
def _(points, ctrl, coef, backend):
    return torch.empty_like(points, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastlmk::tps_transform_points_backward", mutates_args=())
def _tps_points_backward_op(grad: torch.Tensor, points: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor,
                            backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    gp, gc = _backward(grad, points.contiguous(), ctrl.contiguous(), coef.contiguous(), backend, True, True)
    return gp, gc


@_tps_points_backward_op.register_fake
def _(grad, points, ctrl, coef, backend):
    return torch.empty_like(points, memory_format=torch.contiguous_format), torch.empty_like(coef, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    points, ctrl, coef, backend = inputs
    ctx.save_for_backward(points, ctrl, coef)
    ctx.backend = backend


def _op_backward(ctx, grad):
    points, ctrl, coef = ctx.saved_tensors
    gp, gc = _tps_points_backward_op(grad, points, ctrl, coef, ctx.backend)
    return gp, None, gc, None


_tps_points_op.register_autograd(_op_backward, setup_context=_setup_context)


class _TpsPointsFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, points, ctrl, coef, backend):
        points, ctrl, coef = points.contiguous(), ctrl.contiguous(), coef.contiguous()
        ctx.save_for_backward(points, ctrl, coef)
        ctx.backend = backend
        return _forward(points, ctrl, coef, backend)

    @staticmethod
    @once_differentiable  # the kernels' backward is not differentiable: a double backward raises
    def backward(ctx, grad):
        points, ctrl, coef = ctx.saved_tensors
        need_points, _, need_coef = ctx.needs_input_grad[:3]
        gp, gc = _backward(grad, points, ctrl, coef, ctx.backend, need_points, need_coef)
        return gp, None, gc, None


def tps_transform_points(points: torch.Tensor, tps: TPS, backend: str = "auto") -> torch.Tensor:
    r"""Map points through thin-plate splines: ``out[b, m] = f_b(points[b, m])``.

    Args:
        points: ``(B, M, 2)`` (x, y).
        tps: :class:`fastlmk.TPS` with batch B (or 1, broadcast).
        backend: ``"auto" | "reference" | "cpu" | "cuda" | "triton"``.

    Returns:
        ``(B, M, 2)``, dtype of ``points``.

    Backward: :math:`\partial L/\partial p = J_f(p)^\top \bar o` with
    :math:`J_f = [a_x\ a_y] + \sum_i w_i\, \nabla U_i^\top`,
    :math:`\nabla U_i = 2 (p - c_i)(\log\lVert p - c_i\rVert^2 + 1)` (0 at :math:`c_i`);
    :math:`\partial L/\partial \text{coef}_{k} = \sum_m \phi_k(p_m)\, \bar o_m`. Control points
    are constants on every backend (no gradient; a warning if ``tps.ctrl`` requires grad). Note that to move landmarks *with* an image warped by ``tps_warp`` one needs
    the inverse map (the warp samples at f(p)); ``tps_fit`` of the swapped pairs gives it.

    The kernels' backward is once-differentiable: a double backward through them (a gradient
    penalty, ``create_graph=True`` then ``backward``) raises; ``backend="reference"`` supports it.
    """
    _checks.tensor(_OP, "points", points, ndim=3, last=2)
    check_tps(_OP, tps)
    _checks.same_device(_OP, points=points, ctrl=tps.ctrl, coef=tps.coef)
    ctrl, coef = _prepare(_OP, points, tps)
    be = backends.resolve(_OP, backend, points.device, points.dtype)
    if be == "reference" or points.numel() == 0:
        return reference.tps_transform_points(points, ctrl, coef).to(points.dtype)
    if torch.compiler.is_compiling():
        if be == "triton":
            from fastlmk.ops.triton import compiled_ops

            return compiled_ops.tps_transform_points(points, ctrl, coef)
        return _tps_points_op(points, ctrl, coef, be)
    return _TpsPointsFn.apply(points, ctrl, coef, be)
