"""soft-argmax in Triton: heatmap logits (M, H, W) -> points (M, 2), forward and backward.

Work split: the forward runs one program per map and reads the logits once (an online
max / sum / weighted-sums sweep); it saves only the log-sum-exp. The spatial backward needs no
reduction, so it runs one program per (map, block of pixels) and recomputes the softmax from
the saved log-sum-exp; the marginal backward runs one program per map.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastlmk.triton._common import acc_dtype, grid_coord, is_f64, launch, pow2, scalar, split_scalar

_MAX_BLOCK = 2048  # pixels per step of the spatial sweeps
_MAX_TILE = 4096  # elements of a (rows, full width) tile of the marginal kernels
_MAX_MARGINAL_W = 16384  # the marginal kernels keep a full row of column sums in registers


@triton.jit
def _spatial_fwd_kernel(l_ptr, pts_ptr, stats_ptr, H, W, inv_hi, inv_lo,
                        IS_F64: tl.constexpr, BLOCK: tl.constexpr):
    """One program per map m; v = l * inv_t over its n = H*W pixels (flattened, BLOCK per step).

    forward:  p = softmax(v), x = sum_ij p_ij gx_j, y = sum_ij p_ij gy_i,
              stats = (mu, log s) with mu = max(v), s = sum exp(v - mu) -- kept apart rather
              than as lse = mu + log s: for |v| ~ 1e5 a float32 lse has a rounding step of ~0.01,
              which the backward's exp(v - lse) would turn into ~1% errors in p.
    Online: per block the running max moves to mu' = max(mu, max_block v) and the running sums
    (s, sx, sy) are rescaled by exp(mu - mu') before the block's exp(v - mu') terms are added.
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
        v = tl.load(base + idx, mask=mask, other=float("-inf")).to(ACC) * inv_t
        new_mu = tl.maximum(mu, tl.max(v, 0))
        shift = tl.where(new_mu == float("-inf"), 0.0, new_mu)  # all -inf so far: keep sums 0
        scale = tl.exp(mu - shift)
        e = tl.exp(v - shift)  # masked lanes: exp(-inf) = 0
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

    backward: dL/dl_ij = inv_t p_ij ((gx_j - x) gpx + (gy_i - y) gpy), p_ij = exp((v_ij - mu) - log s)
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
    c = ax * tl.load(pts_ptr + 2 * m).to(ACC) + ay * tl.load(pts_ptr + 2 * m + 1).to(ACC)
    v = tl.load(l_ptr + m * n + idx, mask=mask, other=0.0).to(ACC) * inv_t
    i = idx // W
    gx = grid_coord(idx - i * W, W, ACC)
    gy = grid_coord(i, H, ACC)
    grad = tl.exp((v - mu) - log_s) * (ax * gx + ay * gy - c)
    tl.store(gl_ptr + m * n + idx, grad.to(gl_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _marginal_fwd_kernel(l_ptr, pts_ptr, stats_ptr, H, W, inv_hi, inv_lo,
                         IS_F64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One program per map m, one read of its logits in (BLOCK_H, full width) tiles.

    forward (IMM): cbar_j = inv_t mean_i l_ij, rbar_i = inv_t mean_j l_ij,
              q = softmax(cbar) (W), r = softmax(rbar) (H), x = sum_j q_j gx_j, y = sum_i r_i gy_i,
              stats = (lse(cbar), lse(rbar)).
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
    row_scale = inv_t / tl.cast(W, ACC)
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
        rbar = tl.where(rmask, tl.sum(tile, 1) * row_scale, float("-inf"))
        new_mu = tl.maximum(mu, tl.max(rbar, 0))
        shift = tl.where(new_mu == float("-inf"), 0.0, new_mu)
        scale = tl.exp(mu - shift)
        e = tl.exp(rbar - shift)
        s = s * scale + tl.sum(e, 0)
        sy = sy * scale + tl.sum(e * grid_coord(rows, H, ACC), 0)
        mu = new_mu
    cbar = tl.where(cmask, col * (inv_t / tl.cast(H, ACC)), float("-inf"))
    cmu = tl.max(cbar, 0)
    e = tl.exp(cbar - cmu)
    cs = tl.sum(e, 0)
    sx = tl.sum(e * grid_coord(cols, W, ACC), 0)
    out_ty = pts_ptr.dtype.element_ty
    tl.store(pts_ptr + 2 * m, (sx / cs).to(out_ty))
    tl.store(pts_ptr + 2 * m + 1, (sy / s).to(out_ty))
    tl.store(stats_ptr + 2 * m, cmu + tl.log(cs))
    tl.store(stats_ptr + 2 * m + 1, mu + tl.log(s))


@triton.jit
def _marginal_bwd_kernel(g_ptr, l_ptr, stats_ptr, pts_ptr, gl_ptr, H, W, inv_hi, inv_lo,
                         IS_F64: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """One program per map m.

    backward: dL/dl_ij = a_j + b_i, a_j = inv_t/H q_j (gx_j - x) gpx, b_i = inv_t/W r_i (gy_i - y) gpy,
    with q, r recomputed from the saved lse. Sweep 1 re-forms the column means (a_j needs all
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
    lse_x = tl.load(stats_ptr + 2 * m).to(ACC)
    lse_y = tl.load(stats_ptr + 2 * m + 1).to(ACC)
    x = tl.load(pts_ptr + 2 * m).to(ACC)
    y = tl.load(pts_ptr + 2 * m + 1).to(ACC)
    ax = tl.load(g_ptr + 2 * m).to(ACC) * inv_t / Hf
    ay = tl.load(g_ptr + 2 * m + 1).to(ACC) * inv_t / Wf
    q = tl.exp(col * (inv_t / Hf) - lse_x)
    a = ax * q * (grid_coord(cols, W, ACC) - x)  # (BLOCK_W,)
    for r0 in range(0, H, BLOCK_H):
        rows = r0 + rows0
        mask = (rows < H)[:, None] & cmask[None, :]
        offs = rows[:, None] * W + cols[None, :]
        tile = tl.load(base + offs, mask=mask, other=0.0).to(ACC)
        r = tl.exp(tl.sum(tile, 1) * (inv_t / Wf) - lse_y)
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
    """logits (M, H, W) contiguous -> points (M, 2) in the logits dtype, stats (M, 1|2) in the
    accumulation dtype ((max, log-sum) of the spatial softmax, or the lse of the column and row
    softmaxes)."""
    M, H, W = logits.shape
    points = torch.empty((M, 2), dtype=logits.dtype, device=logits.device)
    # stats: marginal (lse_x, lse_y); spatial (max, log-sum) -- see _spatial_fwd_kernel
    stats = torch.empty((M, 2), dtype=acc_dtype(logits.dtype), device=logits.device)
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
