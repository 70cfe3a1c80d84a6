"""soft-argmax in Triton: heatmap logits (M, H, W) -> points (M, 2), forward and backward.

Work split: the forward runs one program per map and reads the logits once (an online
max / sum / weighted-sums sweep); it saves only the log-sum-exp. The spatial backward needs no
reduction, so it runs one program per (map, block of pixels) and recomputes the softmax from
the saved log-sum-exp; the marginal backward runs one program per map.

Every softmax exponent is formed as (l - max) * inv_t (:func:`_scaled_diff`), never as
l * inv_t - max * inv_t: on a GPU the compiler contracts the latter into an FMA that keeps the
product's rounding error (up to half an ulp of |l inv_t|, 512 at 1e10), so huge logits or tiny
temperatures lost the peak.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastlmk.ops._interface import acc_dtype, soft_argmax_stats_width
from fastlmk.ops.triton._common import check_index_range, grid_coord, is_f64, launch, pow2, scalar, split_scalar

_MAX_BLOCK = 2048  # pixels per step of the spatial sweeps
_MAX_TILE = 4096  # elements of a (rows, full width) tile of the marginal kernels
_MAX_MARGINAL_W = 16384  # the marginal kernels keep a full row of column sums in registers


@triton.jit
def _scaled_diff(v, mx, inv_t):
    """(v - mx) * inv_t for mx >= v: exactly 0 at the maximum (also for an infinite inv_t)."""
    d = v - mx
    return tl.where(d == 0.0, 0.0, d * inv_t)


@triton.jit
def _spatial_fwd_kernel(l_ptr, pts_ptr, stats_ptr, H, W, inv_hi, inv_lo,
                        IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    """One program per map m over its n = H*W logits l (flattened, BLOCK per step).

    forward:  p = softmax(l inv_t), x = sum_ij p_ij gx_j, y = sum_ij p_ij gy_i,
              stats = (mu, log s) with mu = max(l), s = sum exp((l - mu) inv_t) -- kept apart
              rather than as lse = mu inv_t + log s: for |l inv_t| ~ 1e5 a float32 lse has a
              rounding step of ~0.01, which the backward would turn into ~1% errors in p.
    Online: per block the running max moves to mu' = max(mu, max_block l) and the running sums
    (s, sx, sy) are rescaled by exp((mu - mu') inv_t) before the block's terms are added.
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    m = tl.program_id(0).to(tl.int64)
    n = H * W
    base = l_ptr + m * n
    inv_t = scalar(inv_hi, inv_lo, ACC)
    offs = tl.arange(0, BLOCK)
    mu = tl.full([], float("-inf"), ACC)
    s = tl.full([], 0.0, ACC)
    sx = tl.full([], 0.0, ACC)
    sy = tl.full([], 0.0, ACC)
    for start in range(0, n, BLOCK):
        idx = start + offs
        mask = idx < n
        v = tl.load(base + idx, mask=mask, other=float("-inf")).to(ACC)
        new_mu = tl.maximum(mu, tl.max(v, 0))
        shift = tl.where(new_mu == float("-inf"), 0.0, new_mu)  # all -inf so far: keep sums 0
        scale = tl.exp(_scaled_diff(mu, shift, inv_t))
        e = tl.exp(_scaled_diff(v, shift, inv_t))  # masked lanes: exp(-inf) = 0
        i = idx // W
        gx = grid_coord(idx - i * W, W, ACC)
        gy = grid_coord(i, H, ACC)
        s = s * scale + tl.sum(e, 0)
        sx = sx * scale + tl.sum(e * gx, 0)
        sy = sy * scale + tl.sum(e * gy, 0)
        mu = new_mu
    out_ty = pts_ptr.dtype.element_ty
    tl.store(pts_ptr + 2 * m, (sx / s).to(out_ty))
    tl.store(pts_ptr + 2 * m + 1, (sy / s).to(out_ty))
    tl.store(stats_ptr + 2 * m, mu)
    tl.store(stats_ptr + 2 * m + 1, tl.log(s))


@triton.jit
def _spatial_bwd_kernel(g_ptr, l_ptr, stats_ptr, pts_ptr, gl_ptr, H, W, inv_hi, inv_lo,
                        IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    """One program per (map m, block of BLOCK pixels).

    backward: dL/dl_ij = inv_t p_ij ((gx_j - x) gpx + (gy_i - y) gpy), p_ij = exp((l_ij - mu) inv_t - log s)
    recomputed from the saved (mu, log s), (gpx, gpy) the incoming gradient of the point.
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    m = tl.program_id(0).to(tl.int64)
    n = H * W
    idx = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < n
    inv_t = scalar(inv_hi, inv_lo, ACC)
    mu = tl.load(stats_ptr + 2 * m).to(ACC)
    log_s = tl.load(stats_ptr + 2 * m + 1).to(ACC)
    ax = tl.load(g_ptr + 2 * m).to(ACC) * inv_t
    ay = tl.load(g_ptr + 2 * m + 1).to(ACC) * inv_t
    x = tl.load(pts_ptr + 2 * m).to(ACC)
    y = tl.load(pts_ptr + 2 * m + 1).to(ACC)
    v = tl.load(l_ptr + m * n + idx, mask=mask, other=0.0).to(ACC)
    i = idx // W
    gx = grid_coord(idx - i * W, W, ACC)
    gy = grid_coord(i, H, ACC)
    # differences first: ax gx - ax x would cancel to ~1e3 for ax ~ inv_t ~ 1e10
    grad = tl.exp(_scaled_diff(v, mu, inv_t) - log_s) * (ax * (gx - x) + ay * (gy - y))
    tl.store(gl_ptr + m * n + idx, grad.to(gl_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _marginal_fwd_kernel(l_ptr, pts_ptr, stats_ptr, H, W, inv_hi, inv_lo,
                         IS_F64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One program per map m, one read of its logits in (BLOCK_H, full width) tiles.

    forward (IMM): cbar_j = mean_i l_ij, rbar_i = mean_j l_ij,
              q = softmax(cbar inv_t) (W), r = softmax(rbar inv_t) (H), x = sum_j q_j gx_j,
              y = sum_i r_i gy_i, stats = (max cbar, log sum exp((cbar - max) inv_t), the same
              for rbar).
    The column sums accumulate in registers over the tiles; each tile's rows are complete, so
    the row softmax runs online (as in the spatial kernel).
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    m = tl.program_id(0).to(tl.int64)
    base = l_ptr + m * H * W
    inv_t = scalar(inv_hi, inv_lo, ACC)
    cols = tl.arange(0, BLOCK_W)
    cmask = cols < W
    rows0 = tl.arange(0, BLOCK_H)
    Wf = tl.cast(W, ACC)
    col = tl.zeros([BLOCK_W], ACC)
    mu = tl.full([], float("-inf"), ACC)
    s = tl.full([], 0.0, ACC)
    sy = tl.full([], 0.0, ACC)
    for r0 in range(0, H, BLOCK_H):
        rows = r0 + rows0
        rmask = rows < H
        mask = rmask[:, None] & cmask[None, :]
        tile = tl.load(base + rows[:, None] * W + cols[None, :], mask=mask, other=0.0).to(ACC)
        col += tl.sum(tile, 0)
        rbar = tl.where(rmask, tl.sum(tile, 1) / Wf, float("-inf"))
        new_mu = tl.maximum(mu, tl.max(rbar, 0))
        shift = tl.where(new_mu == float("-inf"), 0.0, new_mu)
        scale = tl.exp(_scaled_diff(mu, shift, inv_t))
        e = tl.exp(_scaled_diff(rbar, shift, inv_t))
        s = s * scale + tl.sum(e, 0)
        sy = sy * scale + tl.sum(e * grid_coord(rows, H, ACC), 0)
        mu = new_mu
    cbar = tl.where(cmask, col / tl.cast(H, ACC), float("-inf"))
    cmu = tl.max(cbar, 0)
    e = tl.exp(_scaled_diff(cbar, cmu, inv_t))
    cs = tl.sum(e, 0)
    sx = tl.sum(e * grid_coord(cols, W, ACC), 0)
    out_ty = pts_ptr.dtype.element_ty
    tl.store(pts_ptr + 2 * m, (sx / cs).to(out_ty))
    tl.store(pts_ptr + 2 * m + 1, (sy / s).to(out_ty))
    tl.store(stats_ptr + 4 * m, cmu)
    tl.store(stats_ptr + 4 * m + 1, tl.log(cs))
    tl.store(stats_ptr + 4 * m + 2, mu)
    tl.store(stats_ptr + 4 * m + 3, tl.log(s))


@triton.jit
def _marginal_bwd_kernel(g_ptr, l_ptr, stats_ptr, pts_ptr, gl_ptr, H, W, inv_hi, inv_lo,
                         IS_F64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One program per map m.

    backward: dL/dl_ij = a_j + b_i, a_j = inv_t/H q_j (gx_j - x) gpx, b_i = inv_t/W r_i (gy_i - y) gpy,
    with q, r recomputed from the saved (max, log-sum) pairs. Sweep 1 re-forms the column means (a_j needs all
    rows); sweep 2 re-reads each tile for its row means (b_i) and writes a_j + b_i.
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    m = tl.program_id(0).to(tl.int64)
    base = l_ptr + m * H * W
    gbase = gl_ptr + m * H * W
    inv_t = scalar(inv_hi, inv_lo, ACC)
    Hf = tl.cast(H, ACC)
    Wf = tl.cast(W, ACC)
    cols = tl.arange(0, BLOCK_W)
    cmask = cols < W
    rows0 = tl.arange(0, BLOCK_H)
    col = tl.zeros([BLOCK_W], ACC)
    for r0 in range(0, H, BLOCK_H):
        rows = r0 + rows0
        mask = (rows < H)[:, None] & cmask[None, :]
        col += tl.sum(tl.load(base + rows[:, None] * W + cols[None, :], mask=mask, other=0.0).to(ACC), 0)
    mu_x = tl.load(stats_ptr + 4 * m).to(ACC)
    log_sx = tl.load(stats_ptr + 4 * m + 1).to(ACC)
    mu_y = tl.load(stats_ptr + 4 * m + 2).to(ACC)
    log_sy = tl.load(stats_ptr + 4 * m + 3).to(ACC)
    x = tl.load(pts_ptr + 2 * m).to(ACC)
    y = tl.load(pts_ptr + 2 * m + 1).to(ACC)
    ax = tl.load(g_ptr + 2 * m).to(ACC) * inv_t / Hf
    ay = tl.load(g_ptr + 2 * m + 1).to(ACC) * inv_t / Wf
    # the means exactly as the forward formed them, by a division (a product could be contracted
    # into an FMA with the subtraction): a mean rounded differently could exceed its saved max,
    # and (mean - max) * inv_t overflow
    q = tl.exp(_scaled_diff(col / Hf, mu_x, inv_t) - log_sx)
    a = ax * q * (grid_coord(cols, W, ACC) - x)  # (BLOCK_W,)
    for r0 in range(0, H, BLOCK_H):
        rows = r0 + rows0
        mask = (rows < H)[:, None] & cmask[None, :]
        offs = rows[:, None] * W + cols[None, :]
        tile = tl.load(base + offs, mask=mask, other=0.0).to(ACC)
        r = tl.exp(_scaled_diff(tl.sum(tile, 1) / Wf, mu_y, inv_t) - log_sy)
        b = ay * r * (grid_coord(rows, H, ACC) - y)  # (BLOCK_H,)
        tl.store(gbase + offs, (a[None, :] + b[:, None]).to(gl_ptr.dtype.element_ty), mask=mask)


def _marginal_blocks(H: int, W: int) -> tuple[int, int]:
    if W > _MAX_MARGINAL_W:
        raise ValueError(f"fastlmk.soft_argmax: the triton backend supports mode='marginal' for W <= "
                         f"{_MAX_MARGINAL_W}, got W = {W}; use backend='cuda' or 'reference'")
    block_w = pow2(W)
    return pow2(H, hi=max(1, _MAX_TILE // block_w)), block_w


def _warps(elements: int) -> int:
    return 8 if elements >= 2048 else 4


def soft_argmax_forward(logits: torch.Tensor, inv_t: float, marginal: bool):
    """logits (M, H, W) contiguous -> points (M, 2) in the logits dtype, stats (M, 2|4) in the
    accumulation dtype ((max, log-sum) of the spatial softmax, or of the column and then the row
    softmax)."""
    M, H, W = logits.shape
    check_index_range("soft_argmax", **{"H * W (one map)": H * W, "M * 4 (stats)": M * 4})
    points = torch.empty((M, 2), dtype=logits.dtype, device=logits.device)
    # stats: spatial (max, log-sum); marginal (max, log-sum) of the columns, then of the rows
    stats = torch.empty((M, soft_argmax_stats_width(marginal)), dtype=acc_dtype(logits.dtype), device=logits.device)
    hi, lo = split_scalar(inv_t)
    f64 = is_f64(logits.dtype)
    if marginal:
        bh, bw = _marginal_blocks(H, W)
        launch(_marginal_fwd_kernel, (M,))(logits, points, stats, H, W, hi, lo, IS_F64=f64,
                                           BLOCK_H=bh, BLOCK_W=bw, num_warps=_warps(bh * bw))
    else:
        block = pow2(H * W, lo=16, hi=_MAX_BLOCK)
        launch(_spatial_fwd_kernel, (M,))(logits, points, stats, H, W, hi, lo, IS_F64=f64, BLOCK=block,
                                          num_warps=_warps(block))
    return points, stats


def soft_argmax_backward(grad: torch.Tensor, logits: torch.Tensor, stats: torch.Tensor, points: torch.Tensor,
                         inv_t: float, marginal: bool) -> torch.Tensor:
    """grad (M, 2), logits (M, H, W), stats and points from the forward -> grad_logits (M, H, W)."""
    M, H, W = logits.shape
    check_index_range("soft_argmax", **{"H * W (one map)": H * W, "M * 4 (stats)": M * 4})
    grad_logits = torch.empty_like(logits)
    hi, lo = split_scalar(inv_t)
    f64 = is_f64(logits.dtype)
    if marginal:
        bh, bw = _marginal_blocks(H, W)
        launch(_marginal_bwd_kernel, (M,))(grad, logits, stats, points, grad_logits, H, W, hi, lo, IS_F64=f64,
                                           BLOCK_H=bh, BLOCK_W=bw, num_warps=_warps(bh * bw))
    else:
        block = pow2(H * W, lo=16, hi=1024)
        launch(_spatial_bwd_kernel, (M, triton.cdiv(H * W, block)))(
            grad, logits, stats, points, grad_logits, H, W, hi, lo, IS_F64=f64, BLOCK=block, num_warps=4)
    return grad_logits
