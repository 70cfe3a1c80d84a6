"""Thin-plate-spline image warping, fused (spline evaluation + bilinear sampling in one kernel)."""

from __future__ import annotations

import torch

from fastlmk.ops import _checks, reference
from fastlmk.ops._op import declare
from fastlmk.ops.tps import TPS, check_tps, prepare_tps

_OP = "tps_warp"
_PADDING = ("zeros", "border")


# --- the declaration: over a backend's kernel set k (fastlmk.ops._interface), wired by _op -----
def _forward(k, image, ctrl, coef, out_h, out_w, border):
    return k.tps_warp_forward(image, ctrl, coef, out_h, out_w, border)


def _backward(k, grad, image, ctrl, coef, border, need_image, need_coef):
    return k.tps_warp_backward(grad, image, ctrl, coef, border, need_image, need_coef)


def _fake(image, ctrl, coef, out_h, out_w, border):
    return image.new_empty(image.shape[0], image.shape[1], out_h, out_w)


def _reference(image, ctrl, coef, out_h, out_w, border):
    return reference.tps_warp(image, ctrl, coef, (out_h, out_w), "border" if border else "zeros")


_tps_warp = declare(
    "tps_warp(Tensor image, Tensor ctrl, Tensor coef, int out_h, int out_w, bool border) -> Tensor warped",
    saved="image, ctrl, coef, border", differentiable="image, coef",  # ctrl: constants (see prepare_tps)
    forward=_forward, backward=_backward, fake=_fake, reference=_reference)


def tps_warp(image: torch.Tensor, tps: TPS, size=None, padding: str = "zeros", backend: str = "auto") -> torch.Tensor:
    r"""Warp images with thin-plate splines (backward mapping, bilinear).

    ``out[b, :, p] = bilinear(image[b], f_b(p))`` for every output pixel centre ``p`` in [-1, 1]^2
    (align_corners=True), exactly ``F.grid_sample(image, f(grid), align_corners=True)``, but the
    spline is evaluated per pixel inside the kernel: neither the ``(B, H*W, N)`` radial basis nor
    the sampling grid is materialised.

    Args:
        image: ``(B, C, H, W)``.
        tps: :class:`fastlmk.TPS` with batch B (or 1, broadcast).
        size: output ``(H_out, W_out)``; default the input size.
        padding: ``"zeros"`` (outside samples are 0) or ``"border"`` (coordinates clamped).
        backend: ``"auto" | "reference" | "cpu" | "cuda" | "triton"``.

    Returns:
        ``(B, C, H_out, W_out)``, dtype of ``image``.

    Backward: :math:`\partial L/\partial \text{image}` scatters each output gradient to its four
    bilinear taps; :math:`\partial L/\partial \text{coef}_{b,k} = \sum_p \phi_k(p)\,
    \partial L/\partial s_b(p)` with :math:`\phi(p) = [U(\lVert p - c_i\rVert)\ldots, 1, x, y]` and
    :math:`s = f(p)` the sample position. Control points are constants on every backend: no
    gradient, and a warning if ``tps.ctrl`` requires grad.

    The kernels' backward is once-differentiable: a double backward through them (a gradient
    penalty, ``create_graph=True`` then ``backward``) raises; ``backend="reference"`` supports it.
    """
    _checks.tensor(_OP, "image", image, ndim=4)
    check_tps(_OP, tps)
    _checks.same_device(_OP, image=image, ctrl=tps.ctrl, coef=tps.coef)
    _checks.choice(_OP, "padding", padding, _PADDING)
    if size is None:
        out_h, out_w = image.shape[-2:]
    else:
        if not isinstance(size, (tuple, list, torch.Size)) or len(size) != 2:
            raise ValueError(f"fastlmk.tps_warp: size must be (H_out, W_out), got {size!r}")
        # ints only: (5.7, 5) used to be truncated silently
        out_h = _checks.positive_int(_OP, "size[0]", size[0])
        out_w = _checks.positive_int(_OP, "size[1]", size[1])
    if image.shape[-2] < 1 or image.shape[-1] < 1:
        raise ValueError(f"fastlmk.tps_warp: image must have H, W >= 1, got {tuple(image.shape)}")
    ctrl, coef = prepare_tps(_OP, image, tps)
    return _tps_warp(backend, image, ctrl, coef, out_h, out_w, padding == "border")
