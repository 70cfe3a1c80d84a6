"""Thin-plate-spline point mapping in Triton: points (B, M, 2) -> f_b(points), forward and backward.

f(p) = a_0 + x a_x + y a_y + sum_i w_i U(|p - c_i|^2), U(s) = s log s (U(0) = 0); ctrl (Bc, N, 2)
with Bc = 1 (a lattice shared by the batch) or B; coef (B, N + 3, 2) = [w_1..w_N, a_0, a_x, a_y].

Work split: one program per (batch b, block of BLOCK_M points); the control points and weights
stream through in blocks of BLOCK_N, so no (M, N) temporary reaches memory.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastlmk.ops.triton._common import check_index_range, is_f64, launch, pow2


@triton.jit
def zero_or_nan(d2):
    """0 for a squared distance of 0, NaN for a NaN one (a NaN control point must give a NaN
    spline, as in the reference, not silently the affine part)."""
    return tl.where(d2 == 0.0, 0.0, d2)


@triton.jit
def radial(d2):
    """U as a function of the squared distance: s log s, 0 at s = 0 (NaN stays NaN)."""
    return tl.where(d2 > 0.0, d2 * tl.log(tl.where(d2 > 0.0, d2, 1.0)), zero_or_nan(d2))


@triton.jit
def load_xy(base, idx, mask):
    """(base[2 idx], base[2 idx + 1]): the x and y of interleaved (x, y) pairs, 0 where masked."""
    return tl.load(base + 2 * idx, mask=mask, other=0.0), tl.load(base + 2 * idx + 1, mask=mask, other=0.0)


@triton.jit
def _program_points(p_ptr, M, ACC: tl.constexpr, BLOCK_M: tl.constexpr):
    """This program's batch item b (axis 0) and points m (axis 1 blocks of BLOCK_M): b, the
    offsets m, their mask and the coordinates (x_m, y_m) in ACC (0 on padding lanes)."""
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mask = offs < M
    x, y = load_xy(p_ptr + b * M * 2, offs, mask)
    return b, offs, mask, x.to(ACC), y.to(ACC)


@triton.jit
def _ctrl_block(cb, n0, N, BLOCK_N: tl.constexpr):
    """Control points n0 .. n0 + BLOCK_N - 1 of the spline at ``cb``: indices n, their mask and
    coordinates (cx, cy) (0 on padding lanes)."""
    n = n0 + tl.arange(0, BLOCK_N)
    nmask = n < N
    cx, cy = load_xy(cb, n, nmask)
    return n, nmask, cx, cy


@triton.jit
def _fwd_kernel(p_ptr, ctrl_ptr, coef_ptr, out_ptr, M, N, ctrl_bstride,
                IS_F64: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (b, m-block): out[b, m] = a_0 + x_m a_x + y_m a_y + sum_i w_i U(|p_m - c_i|^2).
    ctrl_bstride is 0 for a shared lattice, 2N otherwise."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    b, offs, mask, x, y = _program_points(p_ptr, M, ACC, BLOCK_M)
    cb = ctrl_ptr + b * ctrl_bstride
    wb = coef_ptr + b * (N + 3) * 2
    fx = tl.zeros([BLOCK_M], ACC)
    fy = tl.zeros([BLOCK_M], ACC)
    for n0 in range(0, N, BLOCK_N):
        n, nmask, cx, cy = _ctrl_block(cb, n0, N, BLOCK_N)
        wx, wy = load_xy(wb, n, nmask)  # 0 for padding lanes: no contribution
        dx = x[:, None] - cx[None, :]
        dy = y[:, None] - cy[None, :]
        u = radial(dx * dx + dy * dy)  # (BLOCK_M, BLOCK_N)
        fx += tl.sum(u * wx[None, :], 1)
        fy += tl.sum(u * wy[None, :], 1)
    aff = wb + 2 * N
    fx += tl.load(aff) + x * tl.load(aff + 2) + y * tl.load(aff + 4)
    fy += tl.load(aff + 1) + x * tl.load(aff + 3) + y * tl.load(aff + 5)
    ob = out_ptr + b * M * 2
    tl.store(ob + 2 * offs, fx.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(ob + 2 * offs + 1, fy.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_kernel(g_ptr, p_ptr, ctrl_ptr, coef_ptr, gp_ptr, gc_ptr, M, N, ctrl_bstride,
                IS_F64: tl.constexpr, NEED_POINTS: tl.constexpr, NEED_COEF: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (b, m-block), with o = dL/dout[b, m] and h_i = o . w_i:

    dL/dp_m   = J_f(p_m)^T o = (o . a_x + sum_i h_i dU_i/dx, o . a_y + sum_i h_i dU_i/dy),
                grad U(|p - c|^2) = 2 (p - c)(log|p - c|^2 + 1), 0 at p = c   (stored)
    dL/dw_i   = sum_m U_i(p_m) o_m,  dL/da_0 = sum_m o_m,  dL/da_x = sum_m x_m o_m,  dL/da_y = sum_m y_m o_m
                (this program's partial sums, atomically added to gc, zeroed).
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    b, offs, mask, x, y = _program_points(p_ptr, M, ACC, BLOCK_M)
    gb = g_ptr + b * M * 2
    ox, oy = load_xy(gb, offs, mask)  # 0 on padding lanes
    ox, oy = ox.to(ACC), oy.to(ACC)
    cb = ctrl_ptr + b * ctrl_bstride
    wb = coef_ptr + b * (N + 3) * 2
    gcb = gc_ptr + b * (N + 3) * 2
    jx = tl.zeros([BLOCK_M], ACC)
    jy = tl.zeros([BLOCK_M], ACC)
    for n0 in range(0, N, BLOCK_N):
        n, nmask, cx, cy = _ctrl_block(cb, n0, N, BLOCK_N)
        dx = x[:, None] - cx[None, :]
        dy = y[:, None] - cy[None, :]
        d2 = dx * dx + dy * dy
        pos = d2 > 0.0
        logd2 = tl.log(tl.where(pos, d2, 1.0))
        if NEED_POINTS:
            wx, wy = load_xy(wb, n, nmask)
            h = ox[:, None] * wx[None, :] + oy[:, None] * wy[None, :]  # (BLOCK_M, BLOCK_N)
            k = tl.where(pos, 2.0 * h * (logd2 + 1.0), zero_or_nan(d2))
            jx += tl.sum(k * dx, 1)
            jy += tl.sum(k * dy, 1)
        if NEED_COEF:
            u = tl.where(pos, d2 * logd2, zero_or_nan(d2))
            tl.atomic_add(gcb + 2 * n, tl.sum(u * ox[:, None], 0), mask=nmask)
            tl.atomic_add(gcb + 2 * n + 1, tl.sum(u * oy[:, None], 0), mask=nmask)
    if NEED_POINTS:
        aff = wb + 2 * N
        gx = jx + ox * tl.load(aff + 2) + oy * tl.load(aff + 3)
        gy = jy + ox * tl.load(aff + 4) + oy * tl.load(aff + 5)
        gpb = gp_ptr + b * M * 2
        tl.store(gpb + 2 * offs, gx.to(gp_ptr.dtype.element_ty), mask=mask)
        tl.store(gpb + 2 * offs + 1, gy.to(gp_ptr.dtype.element_ty), mask=mask)
    if NEED_COEF:
        a = gcb + 2 * N
        tl.atomic_add(a, tl.sum(ox, 0))
        tl.atomic_add(a + 1, tl.sum(oy, 0))
        tl.atomic_add(a + 2, tl.sum(x * ox, 0))
        tl.atomic_add(a + 3, tl.sum(x * oy, 0))
        tl.atomic_add(a + 4, tl.sum(y * ox, 0))
        tl.atomic_add(a + 5, tl.sum(y * oy, 0))


def _blocks(M: int, N: int) -> tuple[int, int]:
    return pow2(M, lo=16, hi=128), pow2(N, lo=16, hi=32)


def tps_transform_points_forward(points: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """points (B, M, 2), ctrl (Bc, N, 2), coef (B, N + 3, 2), all contiguous, ctrl/coef in the
    accumulation dtype -> (B, M, 2) in the points dtype."""
    B, M, _ = points.shape
    N = ctrl.shape[1]
    check_index_range("tps_transform_points", **{"2 * M (one batch of points)": 2 * M, "2 * (N + 3) (coefficients)": 2 * (N + 3)})
    out = torch.empty_like(points)
    bm, bn = _blocks(M, N)
    launch(_fwd_kernel, (B, triton.cdiv(M, bm)))(
        points, ctrl, coef, out, M, N, 0 if ctrl.shape[0] == 1 else 2 * N,
        IS_F64=is_f64(points.dtype), BLOCK_M=bm, BLOCK_N=bn, num_warps=4)
    return out


def tps_transform_points_backward(grad: torch.Tensor, points: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor,
                                  need_points: bool, need_coef: bool):
    """grad (B, M, 2) -> (grad_points (B, M, 2) in the points dtype or None,
    grad_coef (B, N + 3, 2) in the coef dtype or None)."""
    B, M, _ = points.shape
    N = ctrl.shape[1]
    check_index_range("tps_transform_points", **{"2 * M (one batch of points)": 2 * M, "2 * (N + 3) (coefficients)": 2 * (N + 3)})
    if not (need_points or need_coef):
        return None, None
    gp = torch.empty_like(points) if need_points else None
    gc = torch.zeros_like(coef) if need_coef else None
    unused = points.new_empty(0)  # pointer for an output that is not wanted (never written)
    bm, bn = _blocks(M, N)
    launch(_bwd_kernel, (B, triton.cdiv(M, bm)))(
        grad, points, ctrl, coef, gp if need_points else unused, gc if need_coef else unused,
        M, N, 0 if ctrl.shape[0] == 1 else 2 * N, IS_F64=is_f64(points.dtype),
        NEED_POINTS=bool(need_points), NEED_COEF=bool(need_coef), BLOCK_M=bm, BLOCK_N=bn, num_warps=4)
    return gp, gc
