"""AFLW, 5 landmarks, in its two incompatible benchmark versions (never mix their numbers).

``AFLWZhang`` ("aflw_zhang", a.k.a. AFLW_R): the re-cropped release of Zhang et al. (CVPR 2018),
used by IMM and SAIC; 10,122 train / 2,991 test faces. Expected tree (``root``)::

    root/
      aflw_train_images.txt        relative image paths under output/, one per line
      aflw_test_images.txt           e.g. "2/image08101_47593.jpg"
      aflw_train_keypoints.mat     MATLAB file with
      aflw_test_keypoints.mat        gt: (N, 5, 2) landmarks in (row, col) = (y, x) pixel order
                                     hw: (N, 2) (height, width) of the frame gt refers to
      output/2/image08101_47593.jpg ...

  The image is resized to ``S x S`` (aspect not kept, as IMM does); ``gt`` is read as (row, col),
  swapped to (x, y), scaled from the ``hw`` frame and normalised to [-1, 1].

``AFLWThewlis`` ("aflw_thewlis", a.k.a. AFLW_M): Thewlis et al.'s 150 x 150 crops for training and
the MTFL (TCDCN) AFLW test subset (2,995 faces). Expected tree (``root``)::

    root/
      aflw_cropped/facedata_cropped.csv   CSV with a header row; columns used: "set" (1 = train),
                                          "crop_file" (path under aflw_cropped/), and columns
                                          5..14 (1-based): x1, y1, ..., x5, y5, 1-based pixels
      aflw_cropped/cropped/50749.jpg ...
      MTFL/testing.txt                    "AFLW/0001-image20056.jpg x1 .. x5 y1 .. y5 gender smile
                                          glasses pose" (whitespace separated; x's then y's;
                                          1-based pixels; "\\" separators are accepted)
      MTFL/AFLW/0001-image20056.jpg ...

  ``split="train"`` reads the CSV rows with ``set == 1``; ``split="test"`` reads MTFL/testing.txt.
  Images are resized to ``S x S``; points are scaled with the image's own size.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fastlmk.data import _io

__all__ = ["AFLWZhang", "AFLWThewlis"]


class _Resized(Dataset):
    """Items: the whole image resized to S x S; points given in pixels of a (W, H) frame."""

    files: list[Path]
    points: np.ndarray  # (N, 5, 2) (x, y), 0-based pixel centres
    frames: np.ndarray | None  # (N, 2) (W, H) frame of the points; None: the image's own size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict:
        path = self.files[index]
        image, (W, H), _ = _io.load_crop(path, None, self.size)
        fw, fh = (W, H) if self.frames is None else self.frames[index]
        lm = _io.points_to_normalised(self.points[index], (0.0, 0.0, float(fw), float(fh)), self.size)
        return {"image": image, "landmarks": lm, "index": index}


class AFLWZhang(_Resized):
    """AFLW re-cropped by Zhang et al. (``"aflw_zhang"``); see the module docstring for the tree."""

    def __init__(self, root, split: str = "train", size: int = 128):
        if root is None:
            raise FileNotFoundError("fastlmk.data: aflw_zhang needs root= (the directory with aflw_*_images.txt)")
        root = _io.require_dir(root, "AFLW (Zhang) root directory")
        if split not in ("train", "test"):
            raise ValueError(f"fastlmk.data: split must be 'train' or 'test', got {split!r}")
        self.root, self.split, self.size = root, split, _io.check_size(size)
        list_path = root / f"aflw_{split}_images.txt"
        mat_path = _io.require_file(root / f"aflw_{split}_keypoints.mat", "AFLW keypoint file")
        names = _io.read_lines(list_path)
        from scipy.io import loadmat

        try:
            mat = loadmat(str(mat_path))
        except Exception as e:  # scipy raises several types for bad files
            raise ValueError(f"fastlmk.data: cannot read MATLAB file {mat_path}: {e}") from None
        for key in ("gt", "hw"):
            if key not in mat:
                raise ValueError(f"fastlmk.data: {mat_path} has no variable {key!r} (found {sorted(k for k in mat if not k.startswith('__'))})")
        try:  # a cell array, a struct or text instead of numbers: one clear error naming the file
            gt = np.asarray(mat["gt"], dtype=np.float64)
            hw = np.asarray(mat["hw"], dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"fastlmk.data: {mat_path}: gt and hw must be numeric arrays ({e})") from None
        if gt.ndim != 3 or gt.shape[1:] != (5, 2):
            raise ValueError(f"fastlmk.data: {mat_path}: gt must be (N, 5, 2), got {gt.shape}")
        if hw.size % 2 or (hw.ndim == 2 and 2 not in hw.shape):
            raise ValueError(f"fastlmk.data: {mat_path}: hw must be (N, 2), got {hw.shape}")
        hw = hw.reshape(-1, 2)
        if not (len(gt) == len(hw) == len(names)):
            raise ValueError(f"fastlmk.data: {mat_path} holds {len(gt)} gt / {len(hw)} hw entries but "
                             f"{list_path} lists {len(names)} images")
        if not (np.isfinite(gt).all() and np.isfinite(hw).all() and (hw > 0).all()):
            raise ValueError(f"fastlmk.data: {mat_path}: non-finite landmarks or non-positive sizes")
        # landmarks far outside their frame (1e30) are a broken file, not landmarks of 1e28
        span = np.abs(gt) / hw[:, None, :]  # (N, 5, 2), row/col over height/width
        if (span > 10).any():
            i = int(np.argwhere(span > 10)[0][0])
            raise ValueError(f"fastlmk.data: {mat_path}: entry {i} ({names[i][1]}) has landmarks {gt[i].tolist()} "
                             f"far outside its {hw[i].tolist()} frame")
        self.files = [_io.relpath(root / "output", name) for _, name in names]
        self.points = gt[:, :, ::-1].copy()  # (row, col) -> (x, y)
        self.frames = hw[:, ::-1].copy()  # (h, w) -> (W, H)


class AFLWThewlis(_Resized):
    """AFLW crops of Thewlis et al. + the MTFL test set (``"aflw_thewlis"``); see the module docstring."""

    def __init__(self, root, split: str = "train", size: int = 128):
        if root is None:
            raise FileNotFoundError("fastlmk.data: aflw_thewlis needs root= (the directory with aflw_cropped/ and MTFL/)")
        root = _io.require_dir(root, "AFLW (Thewlis) root directory")
        if split not in ("train", "test"):
            raise ValueError(f"fastlmk.data: split must be 'train' or 'test', got {split!r}")
        self.root, self.split, self.size = root, split, _io.check_size(size)
        self.frames = None
        if split == "train":
            self._read_csv(root / "aflw_cropped" / "facedata_cropped.csv")
        else:
            self._read_mtfl(root / "MTFL" / "testing.txt")

    def _read_csv(self, path: Path):
        path = _io.require_file(path, "AFLW crop annotation file")
        files, pts = [], []
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            rows = csv.reader(f)
            header = next(rows, None)
            if header is None:
                raise ValueError(f"fastlmk.data: {path} is empty")
            header = [h.strip() for h in header]
            for col in ("set", "crop_file"):
                if col not in header:
                    raise ValueError(f"fastlmk.data: {path}, line 1: header has no column {col!r} (found {header})")
            i_set, i_file = header.index("set"), header.index("crop_file")
            for lineno, row in enumerate(rows, 2):
                if not row or not any(c.strip() for c in row):
                    continue
                if len(row) < max(14, len(header)):
                    raise ValueError(f"fastlmk.data: {path}, line {lineno}: expected {max(14, len(header))} fields, found {len(row)}")
                if row[i_set].strip() != "1":
                    continue
                xy = _io.parse_floats(row[4:14], path, lineno, 10)
                files.append(_io.relpath(path.parent, row[i_file].strip()))
                pts.append(np.asarray(xy).reshape(5, 2) - 1.0)  # interleaved x, y; 1-based
        self.files = files
        self.points = np.asarray(pts, dtype=np.float64).reshape(-1, 5, 2)

    def _read_mtfl(self, path: Path):
        files, pts = [], []
        for lineno, line in _io.read_lines(path):
            tok = line.split()
            vals = _io.parse_floats(tok[1:], path, lineno, 10)
            files.append(_io.relpath(path.parent, tok[0]))
            pts.append(np.stack([vals[:5], vals[5:]], -1) - 1.0)  # x1..x5, y1..y5; 1-based
        self.files = files
        self.points = np.asarray(pts, dtype=np.float64).reshape(-1, 5, 2)
