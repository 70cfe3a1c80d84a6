"""An unlabelled folder of images (for training on one's own data).

Expected tree: any directory; every ``*.jpg``, ``*.jpeg`` and ``*.png`` (any letter case) below
it, recursively, is an item, in sorted path order::

    root/
      a.jpg
      holiday/b.PNG
      holiday/2019/c.jpeg

Each image is centre-cropped to a square (the largest one) and resized to ``S x S``; set
``crop="none"`` to resize the whole image instead (aspect not kept). Items have no
``"landmarks"``.

Unreadable files are skipped, never returned as wrong samples: files whose header cannot be
parsed are dropped when the folder is scanned (one ``UserWarning`` giving their count and the
first few names); a file that fails to decode later (e.g. truncated data) is replaced by the next
readable image and counted in :attr:`ImageFolder.num_skipped`, with a warning.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from fastlmk.data import _io

__all__ = ["ImageFolder", "IMAGE_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")


def _square_box(W: int, H: int):
    s = min(W, H)
    l, t = (W - s) / 2, (H - s) / 2
    return (l, t, l + s, t + s)


class ImageFolder(Dataset):
    """Unlabelled images under ``root`` (recursive); see the module docstring."""

    def __init__(self, root, size: int = 128, crop: str = "center", check: bool = True):
        if root is None:
            raise FileNotFoundError("fastlmk.data: 'folder' needs root= (a directory of images)")
        self.root = _io.require_dir(root, "image folder")
        if crop not in ("center", "none"):
            raise ValueError(f"fastlmk.data: crop must be 'center' or 'none', got {crop!r}")
        self.size, self.crop = _io.check_size(size), crop
        files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        bad: list[Path] = []
        if check:
            good = []
            for p in files:
                try:
                    with Image.open(p) as im:
                        im.size  # header parsed
                    good.append(p)
                except Exception:  # noqa: BLE001  (any unreadable file is skipped)
                    bad.append(p)
            files = good
        self.files = files
        self.skipped_files = bad
        self.num_skipped = len(bad)
        if bad:
            names = ", ".join(str(p.relative_to(self.root)) for p in bad[:5])
            warnings.warn(f"fastlmk.data: skipped {len(bad)} unreadable image file(s) under {self.root}: {names}"
                          + (" ..." if len(bad) > 5 else ""), UserWarning, stacklevel=2)
        if not self.files:
            raise FileNotFoundError(f"fastlmk.data: no readable images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        box = _square_box if self.crop == "center" else None
        n = len(self.files)
        for k in range(n):
            i = (index + k) % n
            try:
                image, _, _ = _io.load_crop(self.files[i], box, self.size)
                return {"image": image, "index": i}
            except (_io.ImageReadError, FileNotFoundError) as e:
                self.num_skipped += 1  # counted in this process (each DataLoader worker has its own count)
                warnings.warn(f"fastlmk.data: skipping unreadable image ({self.num_skipped} skipped so far): {e}",
                              UserWarning, stacklevel=2)
        raise _io.ImageReadError(f"fastlmk.data: no image under {self.root} could be decoded")
