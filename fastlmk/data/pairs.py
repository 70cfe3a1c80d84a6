"""Intra-subject pairs: two random thin-plate-spline warps of every image of a batch (IMM).

For a batch ``I`` (B, 3, S, S) on any device, :class:`TPSPairs` draws two independent splines per
image with :func:`fastlmk.random_tps` (IMM's recipe, method.md section 5) and returns

* ``x = tps_warp(I, T)``, ``x' = tps_warp(I, T')`` (zero padding, the fused warp kernel);
* the splines ``T``, ``T'``;
* ``mask = tps_warp(M, T)``, ``mask' = tps_warp(M, T')`` where ``M`` is a smooth border mask of
  the input frame: ``M(x, y) = r(1 - |x|) r(1 - |y|)`` with ``r(d) = smoothstep(0, margin, d)``
  (0 on the border, 1 from ``margin`` inwards, normalised units). Warped with zero padding, the
  masks are 0 wherever a view samples outside the input (padded pixels), ramp smoothly to 1
  inside, and multiply the reconstruction loss so that padding is never learned.

Image and mask are warped in one kernel call (the mask is a 4th channel).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

import fastlmk
from fastlmk import TPS

__all__ = ["Pairs", "TPSPairs", "border_mask"]


class Pairs(NamedTuple):
    x: torch.Tensor  # (B, C, S, S) first view
    x_prime: torch.Tensor  # (B, C, S, S) second view
    tps: TPS  # spline of the first view (batch B)
    tps_prime: TPS  # spline of the second view
    mask: torch.Tensor  # (B, 1, S, S) in [0, 1]
    mask_prime: torch.Tensor  # (B, 1, S, S) in [0, 1]
    # [ours] with two views: a third warp of x''s source image, the partner of x' in the
    # equivariance term (x and x' are not related by known splines then); None otherwise
    x_eq: torch.Tensor | None = None
    tps_eq: TPS | None = None


def border_mask(height: int, width: int, margin: float = 0.1, device=None, dtype=torch.float32) -> torch.Tensor:
    """(1, 1, H, W) smooth mask: 0 on the border pixels, 1 from ``margin`` (normalised units) inwards."""
    def ramp(n):
        d = 1 - torch.linspace(-1, 1, n, device=device, dtype=torch.float64).abs()  # distance to the border
        if margin <= 0:
            return (d > 0).to(torch.float64) if n > 1 else torch.ones_like(d)
        t = (d / margin).clamp(0, 1)
        return t * t * (3 - 2 * t)  # smoothstep

    return (ramp(height)[:, None] * ramp(width)[None]).to(dtype)[None, None]


class TPSPairs:
    """Batch-level pair maker; see the module docstring. Arguments follow :func:`fastlmk.random_tps`.

    Args:
        grid_size, rotation_std, scale_std, translation_std, warp_std, extra_warp_prob,
        extra_warp_std: the random spline recipe (IMM defaults).
        mask_margin: width of the mask's ramp in normalised units (0.1 = 5% of the side).
        backend: backend of :func:`fastlmk.tps_warp` ("auto": the fused kernel of the device).

    ``__call__(images, generator=None) -> Pairs``. ``generator`` (a ``torch.Generator``, on the
    CPU or on the images' device) makes the draw reproducible.
    """

    def __init__(self, grid_size: int = 10, rotation_std: float = 5.0, scale_std: float = 0.1,
                 translation_std: float = 0.1, warp_std: float = 0.001, extra_warp_prob: float = 0.5,
                 extra_warp_std: tuple = (0.005, 0.01), mask_margin: float = 0.1, backend: str = "auto"):
        if mask_margin < 0:
            raise ValueError(f"TPSPairs: mask_margin must be >= 0, got {mask_margin}")
        self.tps_kwargs = dict(grid_size=grid_size, rotation_std=rotation_std, scale_std=scale_std,
                               translation_std=translation_std, warp_std=warp_std, extra_warp_prob=extra_warp_prob,
                               extra_warp_std=tuple(extra_warp_std))
        self.mask_margin = float(mask_margin)
        self.backend = backend
        self._mask_cache: dict = {}

    def _mask(self, h, w, device, dtype):
        key = (h, w, str(device), dtype)
        if key not in self._mask_cache:
            self._mask_cache[key] = border_mask(h, w, self.mask_margin, device, dtype)
        return self._mask_cache[key]

    def spline(self, batch: int, device=None, dtype=torch.float32, generator=None) -> TPS:
        """One batch of random splines of this recipe."""
        return fastlmk.random_tps(batch, **self.tps_kwargs, generator=generator, device=device, dtype=dtype)

    def sample(self, batch: int, device=None, dtype=torch.float32, generator=None) -> tuple[TPS, TPS]:
        """The two spline batches only."""
        return self.spline(batch, device, dtype, generator), self.spline(batch, device, dtype, generator)

    def warp(self, images: torch.Tensor, tps: TPS) -> tuple[torch.Tensor, torch.Tensor]:
        """Warp images and the border mask with ``tps`` in one kernel call -> (view, mask)."""
        B, C, H, W = images.shape
        m = self._mask(H, W, images.device, images.dtype).expand(B, 1, H, W)
        out = fastlmk.tps_warp(torch.cat([images, m], 1), tps, padding="zeros", backend=self.backend)
        return out[:, :C], out[:, C:].clamp(0, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None,
                 second: torch.Tensor | None = None, equivariance_partner: bool = False,
                 shared_warp: bool = False) -> Pairs:
        """``second``: other images to make ``x'`` from (e.g. another view of the same subject,
        :class:`fastlmk.data.synth.ViewPairs`); default ``images`` (IMM's pairs).
        ``equivariance_partner``: with ``second``, also warp ``second`` with a third spline
        (``Pairs.x_eq``, ``Pairs.tps_eq``, drawn after the other two). ``shared_warp``: with
        ``second``, warp it with the first spline too (``x`` and ``x'`` then differ only where
        the two views differ)."""
        if not isinstance(images, torch.Tensor) or images.dim() != 4:
            raise ValueError(f"TPSPairs: images must be a (B, C, H, W) tensor, got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        if not images.is_floating_point():
            raise TypeError(f"TPSPairs: images must be floating point, got {images.dtype}")
        t1, t2 = self.sample(images.shape[0], images.device, images.dtype, generator)
        x, m1 = self.warp(images, t1)
        if second is not None and second.shape != images.shape:
            raise ValueError(f"TPSPairs: second images must have the shape of images {tuple(images.shape)}, "
                             f"got {tuple(second.shape)}")
        if second is not None and shared_warp:
            t2 = t1
        x2, m2 = self.warp(images if second is None else second, t2)
        if second is None or not equivariance_partner:
            return Pairs(x, x2, t1, t2, m1, m2)
        t3 = self.spline(images.shape[0], images.device, images.dtype, generator)
        return Pairs(x, x2, t1, t2, m1, m2, self.warp(second, t3)[0], t3)
