"""Thin-plate-spline image warping in Triton, spline evaluation and bilinear sampling fused.

out[b, c, p] = bilinear(image[b, c], f_b(p)) for every output pixel centre p in [-1, 1]^2,
exactly ``F.grid_sample(image, f(grid), "bilinear", padding, align_corners=True)``; neither the
(B, P, N) radial basis nor the sampling grid reaches memory.

Work split: one program per (block of BLOCK_P output pixels, group of BLOCK_B images). The
control points and weights stream through in blocks of BLOCK_N. With one control lattice shared
by the batch (ctrl (1, N, 2), the common case) the radial basis U(|p - c_i|^2) of a pixel does
not depend on the image, so a program evaluates it once for BLOCK_B images (one log per pixel
and control point for the whole group); with per-image lattices BLOCK_B = 1.
The backward recomputes the sample positions, scatters the image gradient to the four taps with
atomic adds, and reduces the weight gradient over the program's pixels before one atomic add
per (image, coefficient).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastlmk.ops._interface import acc_dtype
from fastlmk.ops.triton._common import check_index_range, grid_coord, is_f64, launch, pow2
from fastlmk.ops.triton.tps_transform_points import radial


@triton.jit
def _basis(px, py, b, bmask, n, nmask, ctrl_ptr, N, SHARED: tl.constexpr):
    """U(|p - c_n|^2) for pixels px, py (BLOCK_P,), images b (BLOCK_B,), control points n
    (BLOCK_N,): (1, BLOCK_P, BLOCK_N) for a shared lattice, else (BLOCK_B, BLOCK_P, BLOCK_N)."""
    if SHARED:
        cx = tl.load(ctrl_ptr + 2 * n, mask=nmask, other=0.0)
        cy = tl.load(ctrl_ptr + 2 * n + 1, mask=nmask, other=0.0)
        dx = px[:, None] - cx[None, :]
        dy = py[:, None] - cy[None, :]
        u = radial(dx * dx + dy * dy)[None, :, :]
    else:
        cmask = bmask[:, None] & nmask[None, :]
        cb = ctrl_ptr + b[:, None] * (2 * N) + 2 * n[None, :]
        cx = tl.load(cb, mask=cmask, other=0.0)
        cy = tl.load(cb + 1, mask=cmask, other=0.0)
        dx = px[None, :, None] - cx[:, None, :]
        dy = py[None, :, None] - cy[:, None, :]
        u = radial(dx * dx + dy * dy)
    return u


@triton.jit
def _sample_positions(px, py, b, bmask, ctrl_ptr, coef_ptr, N,
                      SHARED: tl.constexpr, ACC: tl.constexpr, BLOCK_N: tl.constexpr):
    """(sx, sy) = f_b(p), each (BLOCK_B, BLOCK_P): a_0 + x a_x + y a_y + sum_i w_i U(|p - c_i|^2)."""
    wrow = coef_ptr + b * ((N + 3) * 2)  # (BLOCK_B,)
    sx = tl.zeros([b.shape[0], px.shape[0]], ACC)
    sy = tl.zeros([b.shape[0], px.shape[0]], ACC)
    for n0 in range(0, N, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < N
        wmask = bmask[:, None] & nmask[None, :]
        wx = tl.load(wrow[:, None] + 2 * n[None, :], mask=wmask, other=0.0)  # (BLOCK_B, BLOCK_N)
        wy = tl.load(wrow[:, None] + 2 * n[None, :] + 1, mask=wmask, other=0.0)
        u = _basis(px, py, b, bmask, n, nmask, ctrl_ptr, N, SHARED)
        sx += tl.sum(u * wx[:, None, :], 2)
        sy += tl.sum(u * wy[:, None, :], 2)
    aff = wrow + 2 * N
    sx += (tl.load(aff, mask=bmask, other=0.0)[:, None] + px[None, :] * tl.load(aff + 2, mask=bmask, other=0.0)[:, None]
           + py[None, :] * tl.load(aff + 4, mask=bmask, other=0.0)[:, None])
    sy += (tl.load(aff + 1, mask=bmask, other=0.0)[:, None] + px[None, :] * tl.load(aff + 3, mask=bmask, other=0.0)[:, None]
           + py[None, :] * tl.load(aff + 5, mask=bmask, other=0.0)[:, None])
    return sx, sy


@triton.jit
def _unnormalise(s, size, BORDER: tl.constexpr):
    """grid_sample's source index for normalised s (align_corners=True): (s + 1) / 2 (size - 1),
    clamped to [0, size - 1] for border padding. Returns (index, d index / d s) where the
    derivative is 0 where the border clamp is active (as in PyTorch: the borders count as out)."""
    hi = tl.cast(size - 1, s.dtype)
    scale = 0.5 * hi
    i = (s + 1.0) * 0.5 * hi
    if BORDER:
        d = tl.where((i > 0.0) & (i < hi), scale, 0.0)
        i = tl.where(i == i, i, 0.0)  # NaN -> pixel 0, as grid_sample's clip
        i = tl.minimum(tl.maximum(i, 0.0), hi)
    else:
        d = scale + tl.zeros_like(i)
        # far outside the image every tap is out of bounds; clamping keeps the int cast defined
        # (a NaN position samples nothing here; the forward makes its output NaN)
        i = tl.where(i == i, tl.minimum(tl.maximum(i, -2.0), hi + 2.0), -2.0)
    return i, d


@triton.jit
def _bilinear_taps(ix, iy, Hi, Wi, tile):
    """The four bilinear taps of pixel-unit sample positions (ix, iy): fractions (fx, fy), in-bounds
    masks m00, m01, m10, m11 (restricted to ``tile``) and flat offsets o00 .. o11 into an Hi x Wi plane
    (row y0 or y0 + 1, column x0 or x0 + 1, x0 = floor(ix), y0 = floor(iy))."""
    x0f = tl.floor(ix)
    y0f = tl.floor(iy)
    fx = ix - x0f
    fy = iy - y0f
    x0 = x0f.to(tl.int32)
    y0 = y0f.to(tl.int32)
    x1 = x0 + 1
    y1 = y0 + 1
    vx0 = (x0 >= 0) & (x0 < Wi)
    vx1 = (x1 >= 0) & (x1 < Wi)
    vy0 = (y0 >= 0) & (y0 < Hi)
    vy1 = (y1 >= 0) & (y1 < Hi)
    o00 = y0 * Wi + x0
    o10 = o00 + Wi
    return (fx, fy, tile & vy0 & vx0, tile & vy0 & vx1, tile & vy1 & vx0, tile & vy1 & vx1,
            o00, o00 + 1, o10, o10 + 1)


@triton.jit
def _program_samples(ctrl_ptr, coef_ptr, B, Ho, Wo, N, SHARED: tl.constexpr, ACC: tl.constexpr,
                     BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's output pixels p (axis 0 blocks of BLOCK_P) and images b (axis 1 groups of
    BLOCK_B), with P = Ho * Wo, their masks, the pixels' normalised coordinates (px, py) and the
    sample positions s = f_b(p) (BLOCK_B, BLOCK_P): the common start of the forward and backward
    kernels."""
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    b = tl.program_id(1).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    P = Ho * Wo
    pmask = p < P
    bmask = b < B
    row = p // Wo
    px = grid_coord(p - row * Wo, Wo, ACC)
    py = grid_coord(row, Ho, ACC)
    sx, sy = _sample_positions(px, py, b, bmask, ctrl_ptr, coef_ptr, N, SHARED, ACC, BLOCK_N)
    return p, b, P, pmask, bmask, px, py, sx, sy


@triton.jit
def _fwd_kernel(img_ptr, ctrl_ptr, coef_ptr, out_ptr, B, C, Hi, Wi, Ho, Wo, N,
                IS_F64: tl.constexpr, SHARED: tl.constexpr, BORDER: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (pixel block, image group): s = f_b(p); ix, iy = unnormalised s;
    out[b, c, p] = sum over the 4 taps t in bounds of w_t image[b, c, t] with w the bilinear weights
    ((1 - fx)(1 - fy), fx (1 - fy), (1 - fx) fy, fx fy), fx = ix - floor(ix), fy = iy - floor(iy)."""
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    p, b, P, pmask, bmask, px, py, sx, sy = _program_samples(ctrl_ptr, coef_ptr, B, Ho, Wo, N, SHARED, ACC,
                                                             BLOCK_B, BLOCK_P, BLOCK_N)
    nan_pt = (sx != sx) | (sy != sy)
    ix, _ = _unnormalise(sx, Wi, BORDER)
    iy, _ = _unnormalise(sy, Hi, BORDER)
    tile = bmask[:, None] & pmask[None, :]
    fx, fy, m00, m01, m10, m11, o00, o01, o10, o11 = _bilinear_taps(ix, iy, Hi, Wi, tile)
    w00 = (1.0 - fx) * (1.0 - fy)
    w01 = fx * (1.0 - fy)
    w10 = (1.0 - fx) * fy
    w11 = fx * fy
    plane = Hi * Wi
    img_b = img_ptr + (b * C * plane)[:, None]  # (BLOCK_B, 1)
    out_b = out_ptr + (b * C * P)[:, None] + p[None, :]
    for c in range(C):
        src = img_b + c * plane
        v = w00 * tl.load(src + o00, mask=m00, other=0.0).to(ACC)
        v += w01 * tl.load(src + o01, mask=m01, other=0.0).to(ACC)
        v += w10 * tl.load(src + o10, mask=m10, other=0.0).to(ACC)
        v += w11 * tl.load(src + o11, mask=m11, other=0.0).to(ACC)
        if not BORDER:  # a NaN sample position gives a NaN sample, as grid_sample's zeros padding
            v = tl.where(nan_pt, float("nan"), v)
        tl.store(out_b + c * P, v.to(out_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _bwd_kernel(g_ptr, img_ptr, ctrl_ptr, coef_ptr, gi_ptr, gc_ptr, B, C, Hi, Wi, Ho, Wo, N,
                IS_F64: tl.constexpr, SHARED: tl.constexpr, BORDER: tl.constexpr,
                NEED_IMAGE: tl.constexpr, NEED_COEF: tl.constexpr,
                BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr):
    """Program (pixel block, image group), o = dL/dout[b, c, p]:

    dL/dimage[b, c, t] += w_t o                       (atomic add per tap in bounds)
    dL/dix = sum_c o ((1 - fy)(v01 - v00) + fy (v11 - v10)),  dL/dsx = dL/dix dix/dsx  (same for y,
             v the taps, 0 out of bounds)
    dL/dw_i = sum_p U(|p - c_i|^2) dL/ds(p), dL/da_0 = sum_p dL/ds(p), dL/da_x = sum_p x_p dL/ds(p),
    dL/da_y = sum_p y_p dL/ds(p)                      (summed over the block, one atomic add each).
    """
    ACC: tl.constexpr = tl.float64 if IS_F64 else tl.float32
    p, b, P, pmask, bmask, px, py, sx, sy = _program_samples(ctrl_ptr, coef_ptr, B, Ho, Wo, N, SHARED, ACC,
                                                             BLOCK_B, BLOCK_P, BLOCK_N)
    ix, dix_dsx = _unnormalise(sx, Wi, BORDER)
    iy, diy_dsy = _unnormalise(sy, Hi, BORDER)
    tile = bmask[:, None] & pmask[None, :]
    fx, fy, m00, m01, m10, m11, o00, o01, o10, o11 = _bilinear_taps(ix, iy, Hi, Wi, tile)
    plane = Hi * Wi
    img_b = img_ptr + (b * C * plane)[:, None]
    gi_b = gi_ptr + (b * C * plane)[:, None]
    g_b = g_ptr + (b * C * P)[:, None] + p[None, :]
    dix = tl.zeros([BLOCK_B, BLOCK_P], ACC)
    diy = tl.zeros([BLOCK_B, BLOCK_P], ACC)
    for c in range(C):
        o = tl.load(g_b + c * P, mask=tile, other=0.0).to(ACC)
        if NEED_IMAGE:
            dst = gi_b + c * plane
            gi_ty = gi_ptr.dtype.element_ty
            tl.atomic_add(dst + o00, ((1.0 - fx) * (1.0 - fy) * o).to(gi_ty), mask=m00)
            tl.atomic_add(dst + o01, (fx * (1.0 - fy) * o).to(gi_ty), mask=m01)
            tl.atomic_add(dst + o10, ((1.0 - fx) * fy * o).to(gi_ty), mask=m10)
            tl.atomic_add(dst + o11, (fx * fy * o).to(gi_ty), mask=m11)
        if NEED_COEF:
            src = img_b + c * plane
            v00 = tl.load(src + o00, mask=m00, other=0.0).to(ACC)
            v01 = tl.load(src + o01, mask=m01, other=0.0).to(ACC)
            v10 = tl.load(src + o10, mask=m10, other=0.0).to(ACC)
            v11 = tl.load(src + o11, mask=m11, other=0.0).to(ACC)
            dix += o * ((1.0 - fy) * (v01 - v00) + fy * (v11 - v10))
            diy += o * ((1.0 - fx) * (v10 - v00) + fx * (v11 - v01))
    if NEED_COEF:
        dsx = dix * dix_dsx  # (BLOCK_B, BLOCK_P), 0 outside the tile
        dsy = diy * diy_dsy
        gc_row = gc_ptr + b * ((N + 3) * 2)  # (BLOCK_B,)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + tl.arange(0, BLOCK_N)
            nmask = n < N
            u = _basis(px, py, b, bmask, n, nmask, ctrl_ptr, N, SHARED)
            wmask = bmask[:, None] & nmask[None, :]
            dst = gc_row[:, None] + 2 * n[None, :]
            tl.atomic_add(dst, tl.sum(u * dsx[:, :, None], 1), mask=wmask)
            tl.atomic_add(dst + 1, tl.sum(u * dsy[:, :, None], 1), mask=wmask)
        aff = gc_row + 2 * N
        tl.atomic_add(aff, tl.sum(dsx, 1), mask=bmask)
        tl.atomic_add(aff + 1, tl.sum(dsy, 1), mask=bmask)
        tl.atomic_add(aff + 2, tl.sum(dsx * px[None, :], 1), mask=bmask)
        tl.atomic_add(aff + 3, tl.sum(dsy * px[None, :], 1), mask=bmask)
        tl.atomic_add(aff + 4, tl.sum(dsx * py[None, :], 1), mask=bmask)
        tl.atomic_add(aff + 5, tl.sum(dsy * py[None, :], 1), mask=bmask)


def _blocks(B: int, N: int, shared: bool) -> tuple[int, int, int]:
    """(BLOCK_B, BLOCK_P, BLOCK_N); a BLOCK_B x BLOCK_P x BLOCK_N basis tile lives in registers."""
    block_n = pow2(N, lo=16, hi=16)
    if shared:
        block_b = pow2(B, hi=4)
        return block_b, 256 // block_b, block_n
    return 1, 128, block_n


def _check_sizes(C, Hi, Wi, Ho, Wo, B, N):
    # int32 in the kernels: tap offsets (< Hi Wi), channel offsets c * plane (< C Hi Wi, C Ho Wo),
    # pixel indices (< Ho Wo), coefficient offsets (< 2 (N + 3))
    check_index_range("tps_warp", **{"C * H * W (one input image)": C * Hi * Wi,
                                     "C * H_out * W_out (one output image)": C * Ho * Wo,
                                     "2 * (N + 3) (coefficients)": 2 * (N + 3)})


def tps_warp_forward(image: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor, out_h: int, out_w: int,
                     border: bool) -> torch.Tensor:
    """image (B, C, Hi, Wi), ctrl (Bc, N, 2) with Bc in {1, B}, coef (B, N + 3, 2), all contiguous,
    ctrl/coef in the accumulation dtype -> (B, C, out_h, out_w) in the image dtype."""
    B, C, Hi, Wi = image.shape
    N = ctrl.shape[1]
    _check_sizes(C, Hi, Wi, out_h, out_w, B, N)
    shared = ctrl.shape[0] == 1
    out = torch.empty((B, C, out_h, out_w), dtype=image.dtype, device=image.device)
    bb, bp, bn = _blocks(B, N, shared)
    launch(_fwd_kernel, (triton.cdiv(out_h * out_w, bp), triton.cdiv(B, bb)))(
        image, ctrl, coef, out, B, C, Hi, Wi, out_h, out_w, N, IS_F64=is_f64(image.dtype), SHARED=shared,
        BORDER=bool(border), BLOCK_B=bb, BLOCK_P=bp, BLOCK_N=bn, num_warps=4)
    return out


def tps_warp_backward(grad_out: torch.Tensor, image: torch.Tensor, ctrl: torch.Tensor, coef: torch.Tensor,
                      border: bool, need_image: bool, need_coef: bool):
    """grad_out (B, C, Ho, Wo) contiguous -> (grad_image (B, C, Hi, Wi) in the image dtype or None,
    grad_coef (B, N + 3, 2) in the coef dtype or None). The image gradient accumulates in the
    accumulation dtype (atomics in half precision would be slow and lossy) and is cast back."""
    B, C, Hi, Wi = image.shape
    Ho, Wo = grad_out.shape[-2:]
    N = ctrl.shape[1]
    _check_sizes(C, Hi, Wi, Ho, Wo, B, N)
    if not (need_image or need_coef):
        return None, None
    shared = ctrl.shape[0] == 1
    unused = image.new_empty(0)  # pointer for an output that is not wanted (never written)
    gi = torch.zeros(image.shape, dtype=acc_dtype(image.dtype), device=image.device) if need_image else None
    gc = torch.zeros_like(coef) if need_coef else None
    bb, bp, bn = _blocks(B, N, shared)
    launch(_bwd_kernel, (triton.cdiv(Ho * Wo, bp), triton.cdiv(B, bb)))(
        grad_out, image, ctrl, coef, gi if need_image else unused, gc if need_coef else unused,
        B, C, Hi, Wi, Ho, Wo, N, IS_F64=is_f64(image.dtype), SHARED=shared, BORDER=bool(border),
        NEED_IMAGE=bool(need_image), NEED_COEF=bool(need_coef), BLOCK_B=bb, BLOCK_P=bp, BLOCK_N=bn, num_warps=4)
    if gi is not None and gi.dtype != image.dtype:
        gi = gi.to(image.dtype)
    return gi, gc
