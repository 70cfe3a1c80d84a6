"""Thin-plate-spline point mapping, fused (no (B, M, N, 2) temporaries)."""

from __future__ import annotations

import torch

from fastlmk.ops import _checks, reference
from fastlmk.ops._op import declare
from fastlmk.ops.tps import TPS, check_tps, prepare_tps

_OP = "tps_transform_points"


# --- the declaration: over a backend's kernel set k (fastlmk.ops._interface), wired by _op -----
def _forward(k, points, ctrl, coef):
    return k.tps_transform_points_forward(points, ctrl, coef)


def _backward(k, grad, points, ctrl, coef, need_points, need_coef):
    return k.tps_transform_points_backward(grad, points, ctrl, coef, need_points, need_coef)


def _fake(points, ctrl, coef):
    return torch.empty_like(points, memory_format=torch.contiguous_format)


def _reference(points, ctrl, coef):
    return reference.tps_transform_points(points, ctrl, coef).to(points.dtype)


_tps_transform_points = declare(
    "tps_transform_points(Tensor points, Tensor ctrl, Tensor coef) -> Tensor mapped",
    saved="points, ctrl, coef", differentiable="points, coef",  # ctrl: constants (see prepare_tps)
    forward=_forward, backward=_backward, fake=_fake, reference=_reference)


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
    ctrl, coef = prepare_tps(_OP, points, tps)
    return _tps_transform_points(backend, points, ctrl, coef)
