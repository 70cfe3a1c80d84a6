"""Readable pure-PyTorch reference implementations of every fastlmk op.

They are the oracle of the tests, the fallback where no kernel is built, and the baseline of
the benchmarks. They favour clarity over speed: every intermediate (softmax, full Gaussian maps,
the (B, P, N+3) TPS basis, the sampling grid) is materialised and autograd does the backward.
Conventions (README "Conventions"): points are (x, y) in [-1, 1], align_corners=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_coords(n: int, device=None, dtype=None) -> torch.Tensor:
    """Normalised coordinates of the n pixel centres along one axis: -1 ... +1 (0 if n == 1)."""
    if n == 1:
        return torch.zeros(1, device=device, dtype=dtype)
    return torch.linspace(-1.0, 1.0, n, device=device, dtype=dtype)


def soft_argmax(heatmaps: torch.Tensor, temperature: float = 1.0, mode: str = "spatial") -> torch.Tensor:
    """(B, K, H, W) logits -> (B, K, 2) expected (x, y) under a softmax; see fastlmk.soft_argmax."""
    B, K, H, W = heatmaps.shape
    xs = grid_coords(W, heatmaps.device, heatmaps.dtype)  # (W,)
    ys = grid_coords(H, heatmaps.device, heatmaps.dtype)  # (H,)
    if mode == "spatial":
        prob = torch.softmax(heatmaps.reshape(B, K, H * W) / temperature, dim=-1).reshape(B, K, H, W)
        x = (prob.sum(dim=2) * xs).sum(dim=-1)  # marginal over rows, then E[x]
        y = (prob.sum(dim=3) * ys).sum(dim=-1)
    elif mode == "marginal":
        px = torch.softmax(heatmaps.mean(dim=2) / temperature, dim=-1)  # (B, K, W)
        py = torch.softmax(heatmaps.mean(dim=3) / temperature, dim=-1)  # (B, K, H)
        x = (px * xs).sum(dim=-1)
        y = (py * ys).sum(dim=-1)
    else:
        raise ValueError(f"mode must be 'spatial' or 'marginal', got {mode!r}")
    return torch.stack([x, y], dim=-1)


def gaussian_heatmaps(points: torch.Tensor, height: int, width: int, std: float) -> torch.Tensor:
    """(B, K, 2) points -> (B, K, H, W) maps exp(-|p - mu|^2 / (2 std^2)), peak 1."""
    xs = grid_coords(width, points.device, points.dtype).view(1, 1, 1, width)
    ys = grid_coords(height, points.device, points.dtype).view(1, 1, height, 1)
    mx = points[..., 0, None, None]  # (B, K, 1, 1)
    my = points[..., 1, None, None]
    d2 = (xs - mx) ** 2 + (ys - my) ** 2  # (B, K, H, W)
    return torch.exp(-d2 / (2.0 * std * std))


def tps_radial(s: torch.Tensor) -> torch.Tensor:
    """U as a function of the squared distance s = r^2: U = r^2 log r^2 = s log s, U(0) = 0."""
    tiny = torch.finfo(s.dtype).tiny
    return s * torch.log(s.clamp_min(tiny))


def tps_basis(points: torch.Tensor, ctrl: torch.Tensor) -> torch.Tensor:
    """(B, P, 2) points, (Bc, N, 2) control points -> (B, P, N + 3) basis [U(|p - c_i|^2)..., 1, x, y]."""
    d2 = ((points[:, :, None, :] - ctrl[:, None, :, :]) ** 2).sum(dim=-1)  # (B, P, N)
    ones = torch.ones_like(points[..., :1])
    return torch.cat([tps_radial(d2), ones, points], dim=-1)


def tps_transform_points(points: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """f(points) for a TPS given as control points (Bc, N, 2) and coefficients (B, N + 3, 2)."""
    return tps_basis(points.to(coef.dtype), ctrl.to(coef.dtype)) @ coef


def output_grid(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """(H*W, 2) normalised (x, y) of every output pixel, row-major."""
    ys, xs = torch.meshgrid(grid_coords(height, device, dtype), grid_coords(width, device, dtype), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1)


def tps_warp(image: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor, size=None, padding: str = "zeros") -> torch.Tensor:
    """Backward-mapping warp: out[b, :, p] = bilinear sample of image[b] at f_b(p)."""
    B, C, H, W = image.shape
    out_h, out_w = size if size is not None else (H, W)
    grid = output_grid(out_h, out_w, image.device, coef.dtype).expand(B, -1, -1)  # (B, P, 2)
    src = tps_transform_points(grid, ctrl, coef)  # (B, P, 2) where to sample
    src = src.reshape(B, out_h, out_w, 2).to(image.dtype)
    return F.grid_sample(image, src, mode="bilinear", padding_mode=padding, align_corners=True)
