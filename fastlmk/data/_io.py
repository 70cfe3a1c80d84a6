"""Shared helpers of the real data set loaders: files, annotation parsing, image decoding, crops.

Geometry convention. Annotations are pixel coordinates; fastlmk treats a 0-based coordinate
``c`` as the *centre* of pixel ``c`` (the pixel spans [c - 0.5, c + 0.5]). A crop box
``(left, top, right, bottom)`` is given in continuous image coordinates (pixel edges: the whole
image is ``(0, 0, W, H)``) and is resampled to ``S x S`` with Pillow (``Image.resize(..., box=)``,
the same half-pixel convention), so a point maps as

    out = (c + 0.5 - left) * S / (right - left) - 0.5        (pixel index in the S x S image)
    normalised = 2 * out / (S - 1) - 1                        (fastlmk's [-1, 1], align_corners)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = ["ImageReadError", "require_file", "require_dir", "read_lines", "load_crop", "points_to_normalised"]


class ImageReadError(RuntimeError):
    """An image file exists but cannot be decoded (truncated, corrupt, not an image)."""


def require_file(path, what: str = "file") -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fastlmk.data: {what} not found: {path}")
    return path


def require_dir(path, what: str = "directory") -> Path:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"fastlmk.data: {what} not found: {path}")
    return path


def read_lines(path) -> list[tuple[int, str]]:
    """(1-based line number, stripped line) of every non-blank line."""
    path = require_file(path)
    with open(path, encoding="utf-8", errors="replace") as f:
        return [(n, line.strip()) for n, line in enumerate(f, 1) if line.strip()]


def parse_floats(tokens, path, lineno, count: int) -> list[float]:
    if len(tokens) < count:
        raise ValueError(f"fastlmk.data: {path}, line {lineno}: expected {count} numbers, found {len(tokens)}")
    try:
        vals = [float(t) for t in tokens[:count]]
    except ValueError as e:
        raise ValueError(f"fastlmk.data: {path}, line {lineno}: not a number ({e})") from None
    if not all(np.isfinite(vals)):
        raise ValueError(f"fastlmk.data: {path}, line {lineno}: non-finite coordinate")
    return vals


def open_image(path) -> Image.Image:
    """Open and fully decode an image as RGB; clear errors for missing or corrupt files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"fastlmk.data: image file not found: {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"fastlmk.data: cannot decode image {path}: {e}") from None


def load_crop(path, box, size: int):
    """Decode ``path``, resample the crop ``box`` to ``size x size``.

    ``box``: (left, top, right, bottom), None (whole image) or a callable ``(W, H) -> box``.
    Returns ``(image (3, S, S) float32 in [0, 1], (W, H) of the original image, box used)``.
    """
    im = open_image(path)
    W, H = im.size
    if callable(box):
        box = box(W, H)
    box = (0.0, 0.0, float(W), float(H)) if box is None else tuple(float(b) for b in box)
    out = im.resize((size, size), Image.BILINEAR, box=box, reducing_gap=None)
    arr = np.asarray(out, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0), (W, H), box


def points_to_normalised(points, box, size: int) -> torch.Tensor:
    """Pixel-centre coordinates (..., 2) (x, y), 0-based, of the original image -> [-1, 1] of the crop."""
    pts = torch.as_tensor(np.asarray(points, dtype=np.float64))
    l, t, r, b = box
    x = (pts[..., 0] + 0.5 - l) * size / (r - l) - 0.5
    y = (pts[..., 1] + 0.5 - t) * size / (b - t) - 0.5
    return (torch.stack([x, y], -1) * (2.0 / (size - 1)) - 1.0).float()


def imm_box(W: int, H: int, crop: float = 0.8) -> tuple[float, float, float, float]:
    """IMM's crop: resize the image to round(S / 0.8) (both sides), take the central S x S.

    Expressed as a box in original coordinates, independent of S: the central ``crop`` fraction
    of each side.
    """
    mx, my = W * (1 - crop) / 2, H * (1 - crop) / 2
    return (mx, my, W - mx, H - my)


def relpath(root: Path, p: str) -> Path:
    """Join an annotation's relative path (``/`` or Windows ``\\`` separators) to ``root``."""
    return root.joinpath(*[q for q in p.replace("\\", "/").split("/") if q not in ("", ".")])


def check_size(size) -> int:
    # an int (not "big" -> a raw int() error, not 64.7 -> truncated silently)
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise TypeError(f"fastlmk.data: size must be an int, got {type(size).__name__} {size!r}")
    size = int(size)
    if size < 2:
        raise ValueError(f"fastlmk.data: size must be >= 2, got {size}")
    return size


def env_root(name: str):
    return os.environ.get(name)
