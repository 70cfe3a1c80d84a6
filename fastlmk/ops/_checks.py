"""Argument validation shared by the public ops: clear errors naming the argument."""

from __future__ import annotations

import math

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def tensor(op: str, name: str, t, ndim: int | None = None, last: int | None = None) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastlmk.{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastlmk.{op}: {name} must be a floating-point tensor, got dtype {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"fastlmk.{op}: {name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if last is not None and t.shape[-1] != last:
        raise ValueError(f"fastlmk.{op}: {name} must have last dimension {last}, got shape {tuple(t.shape)}")


def positive_float(op: str, name: str, v) -> float:
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"fastlmk.{op}: {name} must be a scalar, got shape {tuple(v.shape)}")
        v = v.item()
    try:
        v = float(v)
    except (TypeError, ValueError):
        raise TypeError(f"fastlmk.{op}: {name} must be a number, got {type(v).__name__}") from None
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"fastlmk.{op}: {name} must be finite and > 0, got {v}")
    return v


MAX_SIZE = 2**31 - 1  # sizes travel to the kernels as int32/int64: larger ones are refused here


def positive_int(op: str, name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"fastlmk.{op}: {name} must be an int, got {type(v).__name__}")
    if v < 1:
        raise ValueError(f"fastlmk.{op}: {name} must be >= 1, got {v}")
    if v > MAX_SIZE:
        raise ValueError(f"fastlmk.{op}: {name} must be <= {MAX_SIZE}, got {v}")
    return v


def same_device(op: str, **tensors) -> None:
    devices = {n: t.device for n, t in tensors.items()}
    if len(set(devices.values())) > 1:
        desc = ", ".join(f"{n} on {d}" for n, d in devices.items())
        raise ValueError(f"fastlmk.{op}: all tensors must be on one device, got {desc}")


def choice(op: str, name: str, v, options) -> None:
    if v not in options:
        raise ValueError(f"fastlmk.{op}: {name} must be one of {options}, got {v!r}")
