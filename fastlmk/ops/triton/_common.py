"""Helpers shared by the Triton kernels: dtype flag, scalar passing, launch, grid coordinates."""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl


def is_f64(dtype: torch.dtype) -> bool:
    """The ``IS_F64`` constexpr of every kernel: accumulate in float64 (else float32).

    A bool rather than a ``tl.dtype`` argument: plain constexprs pass through ``torch.compile``'s
    capture of user-defined Triton kernels; each kernel derives ``ACC`` from it."""
    return dtype == torch.float64


_F32_MAX = 3.4028234663852886e38


def split_scalar(v: float) -> tuple[float, float]:
    """``v`` as ``hi + lo`` with both exactly representable in float32.

    Triton passes Python floats to kernels as float32; a float64 kernel rebuilds the scalar as
    ``float64(hi) + float64(lo)`` (~48 bits), so float64 results do not lose precision to the
    argument passing. float32 kernels use ``hi + lo`` rounded to float32, i.e. ``float32(v)``.
    Magnitudes above float32's largest finite value are clamped to it: an inverse temperature or
    1 / (2 std^2) that large makes a hard argmax / a one-pixel map anyway (unclamped, ``hi`` would
    be inf and ``lo`` NaN).
    """
    v = max(-_F32_MAX, min(_F32_MAX, float(v)))
    hi = struct.unpack("f", struct.pack("f", v))[0]
    lo = struct.unpack("f", struct.pack("f", v - hi))[0]
    return hi, lo


# In-kernel offsets are int32 (program ids, aranges, the size arguments); only the per-map /
# per-image base offsets are int64. Every host function checks the extents that enter int32
# arithmetic against this limit (2^31 less a block of slack), as the CPU and CUDA kernels check
# theirs, so that a huge plane is refused instead of read or written out of bounds.
INDEX_LIMIT = 2**31 - 2**16


def check_index_range(op: str, **extents: int) -> None:
    """ValueError if an extent (elements addressed with int32 offsets) reaches INDEX_LIMIT."""
    for name, n in extents.items():
        if int(n) >= INDEX_LIMIT:
            raise ValueError(f"fastlmk.{op}: the triton backend addresses {name} = {int(n)} elements with int32 "
                             f"offsets (limit {INDEX_LIMIT}); split the input or use backend='reference'")


def launch(kernel, grid):
    """``kernel[grid]`` through ``torch.library.wrap_triton`` so that ``torch.compile`` (via
    ``torch.library.triton_op``) can trace the launch; outside tracing this is the plain launch."""
    return torch.library.wrap_triton(kernel)[grid]


def pow2(n: int, lo: int = 1, hi: int = 1 << 30) -> int:
    """next power of two >= n, clamped to [lo, hi]."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


@triton.jit
def scalar(hi, lo, ACC: tl.constexpr):
    """Rebuild a scalar passed as :func:`split_scalar` in the accumulation dtype."""
    return tl.cast(hi, ACC) + tl.cast(lo, ACC)


@triton.jit
def grid_coord(idx, n, ACC: tl.constexpr):
    """Normalised coordinate of pixel ``idx`` on an axis of ``n`` pixels (align_corners=True):
    -1 + 2 idx / (n - 1), evaluated from the nearer end like ``torch.linspace``; 0 when n == 1."""
    nm1 = tl.maximum(n - 1, 1)
    step = 2.0 / tl.cast(nm1, ACC)
    from_lo = -1.0 + step * idx.to(ACC)
    from_hi = 1.0 - step * (n - 1 - idx).to(ACC)
    c = tl.where(idx < n // 2, from_lo, from_hi)
    return tl.where(n > 1, c, 0.0)
