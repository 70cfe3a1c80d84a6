"""Gaussian heatmaps in Triton: points (M, 2) -> maps (M, H, W), forward and backward.

Work split: the forward runs one program per (map, tile of BLOCK_H x BLOCK_W pixels); the map
factorises, G_ij = ey_i ex_j, so a tile costs BLOCK_H + BLOCK_W exponentials and one multiply
per pixel, and is written once. The backward runs one program per (map, share of its row
tiles), reads the incoming gradient once and adds its partial sums to the point's gradient.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastlmk.ops._interface import acc_dtype
from fastlmk.ops.triton._common import check_index_range, grid_coord, is_f64, launch, pow2, scalar, split_scalar

_MAX_BLOCK_W = 128
_TILE = 2048  # pixels per tile
_TARGET_PROGRAMS = 1024  # backward: split maps into row shares until about this many programs


@triton.jit
def _fwd_kernel(pts_ptr, out_ptr, H, W, c_hi, c_lo, TILES_W,
                IS_F64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program (m, tile): G_ij = exp(-(gx_j - x)^2 c) exp(-(gy_i - y)^2 c), c = 1 / (2 std^2)."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    m = tl.program_id(0).to(tl.int64)
    t = tl.program_id(1)
    th = t // TILES_W
    tw = t - th * TILES_W
    c = scalar(c_hi, c_lo, ACC)
    x = tl.load(pts_ptr + 2 * m).to(ACC)
    y = tl.load(pts_ptr + 2 * m + 1).to(ACC)
    cols = tw * BLOCK_W + tl.arange(0, BLOCK_W)
    rows = th * BLOCK_H + tl.arange(0, BLOCK_H)
    dx = grid_coord(cols, W, ACC) - x
    dy = grid_coord(rows, H, ACC) - y
    ex = tl.exp(-(dx * dx) * c)  # (BLOCK_W,)
    ey = tl.exp(-(dy * dy) * c)  # (BLOCK_H,)
    val = ey[:, None] * ex[None, :]
    mask = (rows < H)[:, None] & (cols < W)[None, :]
    offs = m * H * W + rows[:, None] * W + cols[None, :]
    tl.store(out_ptr + offs, val.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(g_ptr, pts_ptr, gp_ptr, H, W, c_hi, c_lo, SPLIT,
                IS_F64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """Program (m, share s) covers row tiles s, s + SPLIT, ... of map m.

    backward: dL/dx = 2c sum_ij Gbar_ij G_ij (gx_j - x), dL/dy = 2c sum_ij Gbar_ij G_ij (gy_i - y),
    G recomputed from its 1-D factors; the partial sums are atomically added to gp (zeroed,
    accumulation dtype).
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    m = tl.program_id(0).to(tl.int64)
    share = tl.program_id(1)
    c = scalar(c_hi, c_lo, ACC)
    x = tl.load(pts_ptr + 2 * m).to(ACC)
    y = tl.load(pts_ptr + 2 * m + 1).to(ACC)
    base = g_ptr + m * H * W
    acc_x = tl.zeros([BLOCK_H, BLOCK_W], ACC)
    acc_y = tl.zeros([BLOCK_H, BLOCK_W], ACC)
    for r0 in range(share * BLOCK_H, H, SPLIT * BLOCK_H):
        rows = r0 + tl.arange(0, BLOCK_H)
        dy = grid_coord(rows, H, ACC) - y
        ey = tl.exp(-(dy * dy) * c)
        for c0 in range(0, W, BLOCK_W):
            cols = c0 + tl.arange(0, BLOCK_W)
            dx = grid_coord(cols, W, ACC) - x
            ex = tl.exp(-(dx * dx) * c)
            mask = (rows < H)[:, None] & (cols < W)[None, :]
            g = tl.load(base + rows[:, None] * W + cols[None, :], mask=mask, other=0.0).to(ACC)
            t = g * ey[:, None] * ex[None, :]
            acc_x += t * dx[None, :]
            acc_y += t * dy[:, None]
    two_c = 2.0 * c
    tl.atomic_add(gp_ptr + 2 * m, two_c * tl.sum(tl.sum(acc_x, 1), 0))
    tl.atomic_add(gp_ptr + 2 * m + 1, two_c * tl.sum(tl.sum(acc_y, 1), 0))


def _blocks(H: int, W: int) -> tuple[int, int]:
    block_w = pow2(W, hi=_MAX_BLOCK_W)
    return pow2(H, hi=max(1, _TILE // block_w)), block_w


def gaussian_heatmaps_forward(points: torch.Tensor, height: int, width: int, inv_two_var: float) -> torch.Tensor:
    """points (M, 2) contiguous -> maps (M, H, W) in the points dtype."""
    M = points.shape[0]
    check_index_range("gaussian_heatmaps", **{"height * width (one map)": height * width, "M * 2 (points)": M * 2})
    out = torch.empty((M, height, width), dtype=points.dtype, device=points.device)
    bh, bw = _blocks(height, width)
    tiles_w = triton.cdiv(width, bw)
    hi, lo = split_scalar(inv_two_var)
    launch(_fwd_kernel, (M, triton.cdiv(height, bh) * tiles_w))(
        points, out, height, width, hi, lo, tiles_w, IS_F64=is_f64(points.dtype), BLOCK_H=bh, BLOCK_W=bw,
        num_warps=4)
    return out


def gaussian_heatmaps_backward(grad: torch.Tensor, points: torch.Tensor, inv_two_var: float) -> torch.Tensor:
    """grad (M, H, W) contiguous, points (M, 2) -> grad_points (M, 2) in the points dtype."""
    M, H, W = grad.shape
    check_index_range("gaussian_heatmaps", **{"height * width (one map)": H * W, "M * 2 (points)": M * 2})
    bh, bw = _blocks(H, W)
    split = max(1, min(triton.cdiv(H, bh), _TARGET_PROGRAMS // max(M, 1)))
    gp = torch.zeros((M, 2), dtype=acc_dtype(points.dtype), device=points.device)
    hi, lo = split_scalar(inv_two_var)
    launch(_bwd_kernel, (M, split))(grad, points, gp, H, W, hi, lo, split, IS_F64=is_f64(points.dtype),
                                    BLOCK_H=bh, BLOCK_W=bw, num_warps=4)
    return gp.to(points.dtype)
