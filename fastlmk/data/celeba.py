"""CelebA (unsupervised training) and MAFL (landmark evaluation), aligned images, IMM's crop.

Expected directory tree (``root``)::

    root/
      Img/img_align_celeba/000001.jpg ...        (178 x 218 aligned JPEGs;
                                                  or Img/img_align_celeba_hq/)
      Anno/list_landmarks_align_celeba.txt       line 1: image count
                                                 line 2: lefteye_x lefteye_y righteye_x righteye_y
                                                         nose_x nose_y leftmouth_x leftmouth_y
                                                         rightmouth_x rightmouth_y
                                                 then:   000001.jpg 69 109 106 113 77 142 73 152 108 154
      MAFL/training.txt                          19,000 image names, one per line
      MAFL/testing.txt                           1,000 image names, one per line

Splits: ``CelebA(split="train")`` = every image of the landmark list except the MAFL test images
(unsupervised training, as IMM and SAIC do); ``CelebA(split="test")`` = the MAFL test images.
``MAFL(split="train" | "test")`` = the MAFL lists. All items carry the 5 annotated landmarks.

Crop (IMM): the image is resized to ``S / 0.8`` on both sides (160 for S = 128) and the central
``S x S`` is kept; the landmarks undergo the same transform and are returned as (x, y) in
[-1, 1] (fastlmk's convention; annotation values are 0-based pixel centres).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch.utils.data import Dataset

from fastlmk.data import _io

__all__ = ["CelebA", "MAFL", "read_celeba_landmarks"]

_IMG_DIRS = ("img_align_celeba", "img_align_celeba_hq")


def read_celeba_landmarks(path) -> dict[str, list[float]]:
    """Parse ``list_landmarks_align_celeba.txt`` -> {image name: [x1, y1, ..., x5, y5]} (file order)."""
    lines = _io.read_lines(path)
    if len(lines) < 2:
        raise ValueError(f"fastlmk.data: {path}: expected a count line and a header line")
    n0, first = lines[0]
    try:
        count = int(first.split()[0])
    except ValueError:
        raise ValueError(f"fastlmk.data: {path}, line {n0}: expected the image count, got {first[:60]!r}") from None
    out: dict[str, list[float]] = {}
    for lineno, line in lines[2:]:
        tok = line.split()
        if len(tok) != 11:
            raise ValueError(f"fastlmk.data: {path}, line {lineno}: expected an image name and 10 numbers, "
                             f"found {len(tok)} fields")
        out[tok[0]] = _io.parse_floats(tok[1:], path, lineno, 10)
    if len(out) != count:
        raise ValueError(f"fastlmk.data: {path}: line 1 announces {count} images, found {len(out)}")
    return out


def _read_names(path) -> list[tuple[int, str]]:
    return [(n, line.split()[0]) for n, line in _io.read_lines(path)]


class _Aligned(Dataset):
    def __init__(self, root, split: str, size: int, image_dir: str | None):
        if root is None:
            raise FileNotFoundError("fastlmk.data: CelebA/MAFL need root= (the directory holding Img/, Anno/, MAFL/)")
        self.root = _io.require_dir(root, "CelebA root directory")
        if split not in ("train", "test"):
            raise ValueError(f"fastlmk.data: split must be 'train' or 'test', got {split!r}")
        self.split, self.size = split, _io.check_size(size)
        if image_dir is None:
            cands = [self.root / "Img" / d for d in _IMG_DIRS]
            found = [c for c in cands if c.is_dir()]
            if not found:
                raise FileNotFoundError(f"fastlmk.data: CelebA image directory not found: tried {', '.join(map(str, cands))}")
            self.image_dir = found[0]
        else:
            self.image_dir = _io.require_dir(self.root / image_dir, "CelebA image directory")
        self.anno_path = self.root / "Anno" / "list_landmarks_align_celeba.txt"
        self.landmarks_px = read_celeba_landmarks(self.anno_path)
        self.names: list[str] = []

    def _select(self, list_path: Path, exclude: bool):
        listed = _read_names(list_path)
        for lineno, name in listed:
            if name not in self.landmarks_px:
                raise ValueError(f"fastlmk.data: {list_path}, line {lineno}: image {name!r} is not in {self.anno_path}")
            if not exclude:  # the MAFL splits: their eyes normalise the evaluation's errors
                x1, y1, x2, y2 = self.landmarks_px[name][:4]
                if (x1, y1) == (x2, y2):
                    raise ValueError(f"fastlmk.data: {self.anno_path}: image {name!r} (listed in {list_path}, line "
                                     f"{lineno}) has coinciding eye landmarks ({x1}, {y1}); the inter-ocular "
                                     "distance that normalises the evaluation would be 0")
        names = {n for _, n in listed}
        if exclude:
            self.names = [n for n in self.landmarks_px if n not in names]
        else:
            self.names = [n for _, n in listed]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> dict:
        name = self.names[index]
        # IMM's crop is defined on the image's own size (178 x 218 for CelebA)
        image, _, box = _io.load_crop(self.image_dir / name, _io.imm_box, self.size)
        pts = torch.tensor(self.landmarks_px[name]).view(5, 2)
        return {"image": image, "landmarks": _io.points_to_normalised(pts, box, self.size), "index": index}


class CelebA(_Aligned):
    """Aligned CelebA with IMM's crop. ``split="train"``: all images except the MAFL test set;
    ``split="test"``: the MAFL test set. See the module docstring for the directory tree."""

    def __init__(self, root, split: str = "train", size: int = 128, image_dir: str | None = None):
        super().__init__(root, split, size, image_dir)
        self._select(self.root / "MAFL" / "testing.txt", exclude=(split == "train"))


class MAFL(_Aligned):
    """MAFL (CelebA subset with the 5 landmarks): ``split="train"`` (19,000) / ``"test"`` (1,000)."""

    def __init__(self, root, split: str = "train", size: int = 128, image_dir: str | None = None):
        super().__init__(root, split, size, image_dir)
        self._select(self.root / "MAFL" / ("training.txt" if split == "train" else "testing.txt"), exclude=False)
