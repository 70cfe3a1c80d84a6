r"""Thin-plate splines: the TPS container, fitting, and IMM's random warps.

A TPS maps a point p = (x, y) to

.. math:: f(p) = a_0 + x\,a_x + y\,a_y + \sum_{i=1}^{N} w_i\,U(\lVert p - c_i\rVert),
          \qquad U(r) = r^2 \log r^2,\ U(0) = 0

with control points :math:`c_i` and 2-vector coefficients. fastlmk stores it as
``TPS(ctrl, coef)``: ``ctrl`` ``(Bc, N, 2)`` with ``Bc`` 1 (one lattice shared by the batch, the
fast path) or ``B``; ``coef`` ``(B, N + 3, 2)``: rows ``0..N-1`` are :math:`w_i`, then
:math:`a_0, a_x, a_y`. Image warping (:func:`fastlmk.tps_warp`) is a backward mapping: the output
pixel p samples the input at f(p).
"""

from __future__ import annotations

import math
import warnings
from typing import NamedTuple

import torch

from fastlmk.ops import _checks, reference
from fastlmk.ops._interface import acc_dtype

__all__ = ["TPS", "tps_fit", "random_tps", "identity_tps", "lattice"]


class TPS(NamedTuple):
    """A batch of thin-plate splines (a NamedTuple, so it passes through torch.compile)."""

    ctrl: torch.Tensor  # (Bc, N, 2) control points, Bc in {1, B}
    coef: torch.Tensor  # (B, N + 3, 2): w_1..w_N, a_0, a_x, a_y

    @property
    def batch_size(self) -> int:
        return self.coef.shape[0]

    @property
    def num_ctrl(self) -> int:
        return self.ctrl.shape[1]

    @property
    def weights(self) -> torch.Tensor:
        """Radial weights w, (B, N, 2)."""
        return self.coef[:, : self.num_ctrl]

    @property
    def affine(self) -> torch.Tensor:
        """Affine part (B, 3, 2): rows a_0, a_x, a_y; f is affine iff weights are 0."""
        return self.coef[:, self.num_ctrl:]

    def to(self, *args, **kwargs) -> "TPS":
        return TPS(self.ctrl.to(*args, **kwargs), self.coef.to(*args, **kwargs))

    def __getitem__(self, idx):  # NamedTuple indexing stays available for ints
        if isinstance(idx, int) and idx in (0, 1, -1, -2):
            return tuple.__getitem__(self, idx)
        ctrl = self.ctrl if self.ctrl.shape[0] == 1 else self.ctrl[idx]
        return TPS(ctrl, self.coef[idx])


def check_tps(op: str, tps) -> None:
    if not isinstance(tps, TPS):
        raise TypeError(f"fastlmk.{op}: tps must be a fastlmk.TPS (from tps_fit or random_tps), got {type(tps).__name__}")
    _checks.tensor(op, "tps.ctrl", tps.ctrl, ndim=3, last=2)
    _checks.tensor(op, "tps.coef", tps.coef, ndim=3, last=2)
    B, N = tps.coef.shape[0], tps.ctrl.shape[1]
    if tps.coef.shape[1] != N + 3:
        raise ValueError(f"fastlmk.{op}: tps.coef must be (B, N + 3, 2) for N = {N} control points, got {tuple(tps.coef.shape)}")
    if tps.ctrl.shape[0] not in (1, B):
        raise ValueError(f"fastlmk.{op}: tps.ctrl batch must be 1 or {B}, got {tps.ctrl.shape[0]}")


def prepare_tps(op: str, image_like: torch.Tensor, tps: TPS) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ctrl, coef)`` of ``tps`` as the kernels take them (for :func:`fastlmk.tps_warp` and
    :func:`fastlmk.tps_transform_points`): in the accumulation dtype of the data
    ``image_like``, a batch-1 spline broadcast to its batch.

    Control points are constants on every backend (the reference included, so that all agree):
    a ``ctrl`` that requires grad is detached, with a warning saying so."""
    ctrl = tps.ctrl
    if ctrl.requires_grad and torch.is_grad_enabled():
        warnings.warn(
            f"fastlmk.{op}: control points carry no gradient (tps.ctrl requires grad, but it is treated "
            "as a constant on every backend; gradients flow to tps.coef, to the image and to the points). "
            "Detach tps.ctrl to silence this warning.", UserWarning, stacklevel=3)
    dt = acc_dtype(image_like.dtype)
    ctrl, coef = ctrl.detach().to(dt), tps.coef.to(dt)
    B = image_like.shape[0]
    if coef.shape[0] != B:
        if coef.shape[0] != 1:
            raise ValueError(f"fastlmk.{op}: tps batch ({coef.shape[0]}) must be 1 or match the input batch ({B})")
        coef = coef.expand(B, -1, -1)
        if ctrl.shape[0] != 1:
            ctrl = ctrl.expand(B, -1, -1)
    return ctrl, coef


def lattice(grid_size: int = 10, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, g*g, 2) regular control lattice over [-1, 1]^2, x fastest."""
    g = reference.grid_coords(grid_size, device, dtype)
    ys, xs = torch.meshgrid(g, g, indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)[None]


def _system(ctrl: torch.Tensor, regularization: float) -> torch.Tensor:
    """(Bc, N+3, N+3) TPS system L = [[K + lambda I, P], [P^T, 0]], P = [1, x, y]."""
    Bc, N, _ = ctrl.shape
    d2 = ((ctrl[:, :, None] - ctrl[:, None]) ** 2).sum(-1)
    K = reference.tps_radial(d2) + regularization * torch.eye(N, dtype=ctrl.dtype, device=ctrl.device)
    P = torch.cat([torch.ones_like(ctrl[..., :1]), ctrl], dim=-1)  # (Bc, N, 3)
    top = torch.cat([K, P], dim=-1)
    bottom = torch.cat([P.transpose(1, 2), torch.zeros(Bc, 3, 3, dtype=ctrl.dtype, device=ctrl.device)], dim=-1)
    return torch.cat([top, bottom], dim=1)


def tps_fit(src_points: torch.Tensor, dst_points: torch.Tensor, regularization: float = 0.0) -> TPS:
    r"""Fit the TPS that maps ``src_points`` onto ``dst_points`` (exactly when regularization is 0).

    Solves :math:`\begin{bmatrix}K + \lambda I & P\\ P^\top & 0\end{bmatrix}
    \begin{bmatrix}w\\ a\end{bmatrix} = \begin{bmatrix}d\\ 0\end{bmatrix}` with
    :math:`K_{ij} = U(\lVert s_i - s_j\rVert)`, :math:`P_i = [1, s_i]`. Differentiable (torch solve).

    Args:
        src_points: ``(Bc, N, 2)`` control points (``Bc`` 1 or B), N >= 3 and not collinear.
        dst_points: ``(B, N, 2)`` their images.
        regularization: :math:`\lambda \ge 0`, smoothing (0 interpolates).

    Returns:
        :class:`TPS` with ``ctrl = src_points``. To warp an image so that content at ``a`` moves
        to ``b``, fit ``tps_fit(b, a)`` (the warp samples the input at f(output pixel)).
    """
    op = "tps_fit"
    _checks.tensor(op, "src_points", src_points, ndim=3, last=2)
    _checks.tensor(op, "dst_points", dst_points, ndim=3, last=2)
    _checks.same_device(op, src_points=src_points, dst_points=dst_points)
    if src_points.shape[1] != dst_points.shape[1]:
        raise ValueError(f"fastlmk.tps_fit: src_points and dst_points must have the same number of points, got {src_points.shape[1]} and {dst_points.shape[1]}")
    if src_points.shape[0] not in (1, dst_points.shape[0]):
        raise ValueError(f"fastlmk.tps_fit: src_points batch must be 1 or {dst_points.shape[0]}, got {src_points.shape[0]}")
    if src_points.shape[1] < 3:
        raise ValueError("fastlmk.tps_fit: at least 3 points are needed")
    if not math.isfinite(regularization) or regularization < 0:
        raise ValueError(f"fastlmk.tps_fit: regularization must be finite and >= 0, got {regularization}")
    dtype = torch.promote_types(torch.promote_types(src_points.dtype, dst_points.dtype), torch.float32)
    src, dst = src_points.to(dtype), dst_points.to(dtype)
    B, N = dst.shape[:2]
    L = _system(src, regularization)  # (Bc, N+3, N+3)
    rhs = torch.cat([dst, dst.new_zeros(B, 3, 2)], dim=1)  # (B, N+3, 2)
    try:
        if L.shape[0] == 1 and B > 1:
            # one factorisation for the whole batch: solve against (N+3, 2B)
            coef = torch.linalg.solve(L[0], rhs.permute(1, 0, 2).reshape(N + 3, 2 * B))
            coef = coef.reshape(N + 3, B, 2).permute(1, 0, 2).contiguous()
        else:
            coef = torch.linalg.solve(L, rhs)
    except torch.linalg.LinAlgError:
        raise ValueError("fastlmk.tps_fit: the TPS system is singular: src_points are collinear or repeated "
                         "(they must span the plane; a regularization > 0 does not help with collinear points)") from None
    return TPS(src, coef)


def identity_tps(batch: int = 1, grid_size: int = 10, device=None, dtype=torch.float32) -> TPS:
    """The identity spline (w = 0, a_x = (1, 0), a_y = (0, 1)) on a shared lattice."""
    ctrl = lattice(grid_size, device, dtype)
    coef = torch.zeros(batch, ctrl.shape[1] + 3, 2, device=device, dtype=dtype)
    coef[:, -2, 0] = 1
    coef[:, -1, 1] = 1
    return TPS(ctrl, coef)


_INV_CACHE: dict = {}


def _lattice_inverse(grid_size, device, dtype):
    key = (grid_size, str(device), dtype)
    if key not in _INV_CACHE:
        ctrl = lattice(grid_size, device, torch.float64)
        _INV_CACHE[key] = torch.linalg.inv(_system(ctrl, 0.0)[0]).to(dtype)
    return _INV_CACHE[key]


def random_tps(batch: int, grid_size: int = 10, rotation_std: float = 5.0, scale_std: float = 0.1,
               translation_std: float = 0.1, warp_std: float = 0.001, extra_warp_prob: float = 0.5,
               extra_warp_std: tuple = (0.005, 0.01), generator: torch.Generator | None = None,
               device=None, dtype=torch.float32) -> TPS:
    """Random warps around the identity, IMM's recipe (method.md section 5).

    Per sample: a rotation :math:`\\theta \\sim N(0, \\text{rotation\\_std})` degrees, a scale
    :math:`1 + N(0, \\text{scale\\_std})`, a translation :math:`N(0, \\text{translation\\_std})^2`;
    every lattice point is displaced by :math:`N(0, \\text{warp\\_std})` plus, with probability
    ``extra_warp_prob``, :math:`N(0, s)` with :math:`s \\sim U(\\text{extra\\_warp\\_std})`. The
    spline interpolating lattice -> displaced lattice is returned (``grid_size**2`` control points
    shared by the batch, the kernels' fast path). Seed it with ``generator``; random numbers are
    drawn on the generator's device (CPU by default) and moved to ``device``.
    """
    _checks.positive_int("random_tps", "batch", batch) if batch != 0 else None
    _checks.positive_int("random_tps", "grid_size", grid_size)
    if grid_size < 2:
        raise ValueError(f"fastlmk.random_tps: grid_size must be >= 2, got {grid_size}")
    for name, v in (("rotation_std", rotation_std), ("scale_std", scale_std), ("translation_std", translation_std),
                    ("warp_std", warp_std), ("extra_warp_prob", extra_warp_prob)):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
            raise ValueError(f"fastlmk.random_tps: {name} must be a finite number >= 0, got {v!r}")
    if len(extra_warp_std) != 2 or not all(math.isfinite(v) and v >= 0 for v in extra_warp_std):
        raise ValueError(f"fastlmk.random_tps: extra_warp_std must be (low, high), finite and >= 0, got {extra_warp_std!r}")
    gdev = generator.device if generator is not None else torch.device("cpu")
    kw = dict(generator=generator, device=gdev, dtype=torch.float64)
    ctrl = lattice(grid_size, gdev, torch.float64)  # (1, N, 2)
    N = ctrl.shape[1]
    theta = torch.randn(batch, **kw) * math.radians(rotation_std)
    scale = 1.0 + torch.randn(batch, **kw) * scale_std
    trans = torch.randn(batch, 1, 2, **kw) * translation_std
    cos, sin = torch.cos(theta) * scale, torch.sin(theta) * scale
    R = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    dst = ctrl @ R.transpose(1, 2) + trans  # (B, N, 2)
    dst = dst + torch.randn(batch, N, 2, **kw) * warp_std
    lo, hi = extra_warp_std
    extra = torch.rand(batch, 1, 1, **kw) < extra_warp_prob
    s = lo + (hi - lo) * torch.rand(batch, 1, 1, **kw)
    dst = dst + torch.randn(batch, N, 2, **kw) * s * extra
    rhs = torch.cat([dst, dst.new_zeros(batch, 3, 2)], dim=1)  # (B, N+3, 2)
    coef = _lattice_inverse(grid_size, gdev, torch.float64) @ rhs
    return TPS(ctrl.to(device=device, dtype=dtype), coef.to(device=device, dtype=dtype))
