"""A folder of images (for training on one's own data), optionally with landmark annotations.

Expected tree: any directory; every ``*.jpg``, ``*.jpeg`` and ``*.png`` (any letter case) below
it, recursively, is an item, in sorted path order::

    root/
      a.jpg
      holiday/b.PNG
      holiday/2019/c.jpeg
      landmarks.csv          (optional: the 5 annotated landmarks of some or all images)

Each image is centre-cropped to a square (the largest one) and resized to ``S x S``; set
``crop="none"`` to resize the whole image instead (aspect not kept).

**Annotations.** ``root/landmarks.csv`` (the format ``python -m fastlmk.export synth`` writes) is
a header row, then one row per image: its path relative to ``root`` (``/`` separators, e.g.
``images/000001.png``), then ``x, y`` of the 5 landmarks in MAFL order
(:data:`fastlmk.data.LANDMARK_NAMES`) in pixels of that file, where ``(0, 0)`` is the centre of
the top-left pixel, x right, y down (the convention of ``python -m fastlmk.detect``). The
points go through the same crop and resize as the image, so ``item["landmarks"]`` is ``(5, 2)``
in fastlmk's ``[-1, 1]``. Images without a row are allowed: ``part="all"`` (training) keeps every
image, and its items carry ``"landmarks"`` only when every image has a row (a batch must be
uniform); ``part="annotated" | "fit" | "test"`` keeps only the annotated images, each with its
landmarks. ``"fit"`` / ``"test"`` split them deterministically for the evaluation protocol: in
sorted path order, the last ``test_fraction`` of the annotated images (at least one) are the
test part, the others fit the regressor. A bad file is a ``ValueError`` naming the csv file and
line: a wrong column count, a value that is not a number, a NaN or infinite coordinate, a row
for an image that is not under ``root``, a file named twice, a first row that is not a header.

Unreadable files are skipped, never returned as wrong samples: files whose header cannot be
parsed are dropped when the folder is scanned (one ``UserWarning`` giving their count and the
first few names; a row of the csv for such a file is dropped with it); with ``part="all"`` a
file that fails to decode later (e.g. truncated data) is replaced by the next readable image
(with that image's landmarks) and counted in :attr:`ImageFolder.num_skipped`, with a warning.
The annotated parts raise :class:`fastlmk.data.ImageReadError` naming the file instead (an
evaluation set must not change under the caller).
"""

from __future__ import annotations

import csv
import math
import warnings
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from fastlmk.data import _io
from fastlmk.data.landmarks import LANDMARK_NAMES

__all__ = ["ImageFolder", "IMAGE_EXTENSIONS", "LANDMARKS_CSV", "PARTS", "has_annotations", "landmarks_header",
           "check_annotated_folder", "read_landmarks_csv", "write_landmarks_csv"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LANDMARKS_CSV = "landmarks.csv"  # the annotation file at a folder's root
PARTS = ("all", "annotated", "fit", "test")
DEFAULT_TEST_FRACTION = 0.2


def landmarks_header() -> list[str]:
    """The header row of ``landmarks.csv``: ``file, left_eye_x, left_eye_y, ..., right_mouth_y``."""
    return ["file"] + [f"{n.replace(' ', '_')}_{c}" for n in LANDMARK_NAMES for c in ("x", "y")]


def has_annotations(root) -> bool:
    """Whether ``root`` has a ``landmarks.csv`` (its rows are checked when the folder is loaded)."""
    return root is not None and (Path(root) / LANDMARKS_CSV).is_file()


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def read_landmarks_csv(path) -> dict[str, tuple[int, np.ndarray]]:
    """Rows of a ``landmarks.csv``: {relative path (``/`` separators): (line number, (5, 2) float64
    pixels)}. Checks the format only (not that the files exist): ValueError naming ``path`` and
    the line for a missing header, a wrong column count, a non-number, a NaN / infinite value, a
    file named twice."""
    path = _io.require_file(path, "landmark file")
    ncol = 1 + 2 * len(LANDMARK_NAMES)
    rows: dict[str, tuple[int, np.ndarray]] = {}
    where = lambda n: f"fastlmk.data: {path}, line {n}"  # noqa: E731
    header_seen = False
    with open(path, newline="", encoding="utf-8-sig", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            cells = [c.strip() for c in next(csv.reader([line]))]
            if len(cells) != ncol:
                raise ValueError(f"{where(n)}: expected {ncol} columns (file, then x, y of "
                                 f"{len(LANDMARK_NAMES)} landmarks), found {len(cells)}")
            if not header_seen:
                header_seen = True
                if all(_number(c) is not None for c in cells[1:]):
                    raise ValueError(f"{where(n)}: the first row must be a header ({', '.join(landmarks_header())}), "
                                     f"found numbers")
                continue
            vals = []
            for k, c in enumerate(cells[1:]):
                v = _number(c)
                col = landmarks_header()[k + 1]
                if v is None:
                    raise ValueError(f"{where(n)}: {col} is not a number: {c!r}")
                if not math.isfinite(v):
                    raise ValueError(f"{where(n)}: {col} is not finite: {c!r}")
                vals.append(v)
            name = "/".join(q for q in cells[0].replace("\\", "/").split("/") if q not in ("", "."))
            if not name:
                raise ValueError(f"{where(n)}: empty file name")
            if name in rows:
                raise ValueError(f"{where(n)}: {name} already has a row (line {rows[name][0]})")
            rows[name] = (n, np.asarray(vals, dtype=np.float64).reshape(len(LANDMARK_NAMES), 2))
    if not header_seen:
        raise ValueError(f"{where(1)}: the file is empty; expected a header row ({', '.join(landmarks_header())})")
    return rows


def write_landmarks_csv(path, names, pixels, decimals: int = 4) -> Path:
    """Write a ``landmarks.csv``: the header, then per image its name (relative to the folder's
    root, ``/`` separators) and the (5, 2) pixel coordinates ``pixels[i]`` (x, y; (0, 0) = the
    centre of the top-left pixel), ``decimals`` places. The file appears whole (written beside,
    then renamed)."""
    path = Path(path)
    pixels = np.asarray(pixels, dtype=np.float64)
    if pixels.shape != (len(names), len(LANDMARK_NAMES), 2):
        raise ValueError(f"fastlmk.data: pixels must be ({len(names)}, {len(LANDMARK_NAMES)}, 2), got {pixels.shape}")
    if not np.isfinite(pixels).all():
        raise ValueError("fastlmk.data: landmark pixels must be finite")
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(landmarks_header())
        for name, pts in zip(names, pixels):
            w.writerow([name] + [f"{v:.{decimals}f}" for v in pts.reshape(-1)])
    tmp.replace(path)
    return path


def check_annotated_folder(root, what: str = "folder") -> None:
    """Raise unless ``root`` is a directory whose ``landmarks.csv`` is valid and annotates at
    least two of its images (one to fit the regressor, one to test): FileNotFoundError naming
    ``what`` and the folder, or the ValueError naming the csv file and line. For the commands,
    to check an evaluation folder before a run rather than after it."""
    if not root:
        raise FileNotFoundError(f"{what}: no folder given (a folder with {LANDMARKS_CSV})")
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{what}: no such directory: {root}")
    if not has_annotations(root):
        raise FileNotFoundError(f"{what} {root}: no {LANDMARKS_CSV}, nothing to evaluate against")
    ImageFolder(root, size=2, part="test")  # reads and checks every row


def _square_box(W: int, H: int):
    s = min(W, H)
    l, t = (W - s) / 2, (H - s) / 2
    return (l, t, l + s, t + s)


class ImageFolder(Dataset):
    """Images under ``root`` (recursive), with their landmarks where ``landmarks.csv`` gives them;
    see the module docstring.

    Args:
        root: the folder.
        size: image side S.
        crop: ``"center"`` (the largest centred square) or ``"none"`` (the whole image).
        check: parse every file's header now and drop the unreadable ones (with a warning).
        annotations: ``"auto"`` (``root/landmarks.csv`` when it exists), a csv path, or None
            (ignore any annotations).
        part: ``"all"`` (every image), ``"annotated"`` (the images with a row), ``"fit"`` / ``"test"``
            (the annotated images split for the evaluation protocol).
        test_fraction: share of the annotated images in the ``"test"`` part (the last ones in
            sorted path order; at least one, and at least one left to fit).

    Attributes:
        files: the item paths; ``annotations_path``: the csv read (or None);
        num_annotated: images of the folder with a row; ``has_landmarks``: items carry "landmarks".
    """

    def __init__(self, root, size: int = 128, crop: str = "center", check: bool = True, annotations="auto",
                 part: str = "all", test_fraction: float = DEFAULT_TEST_FRACTION):
        if root is None:
            raise FileNotFoundError("fastlmk.data: 'folder' needs root= (a directory of images)")
        self.root = _io.require_dir(root, "image folder")
        if crop not in ("center", "none"):
            raise ValueError(f"fastlmk.data: crop must be 'center' or 'none', got {crop!r}")
        if part not in PARTS:
            raise ValueError(f"fastlmk.data: part must be one of {', '.join(PARTS)}, got {part!r}")
        if not (isinstance(test_fraction, (int, float)) and 0 < test_fraction < 1):
            raise ValueError(f"fastlmk.data: test_fraction must be in (0, 1), got {test_fraction!r}")
        self.size, self.crop, self.part = _io.check_size(size), crop, part
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
        self.skipped_files = bad
        self.num_skipped = len(bad)
        if bad:
            names = ", ".join(str(p.relative_to(self.root)) for p in bad[:5])
            warnings.warn(f"fastlmk.data: skipped {len(bad)} unreadable image file(s) under {self.root}: {names}"
                          + (" ..." if len(bad) > 5 else ""), UserWarning, stacklevel=2)
        if not files:
            raise FileNotFoundError(f"fastlmk.data: no readable images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root}")

        # ---- annotations: pixels of each file, checked against the files found
        if annotations == "auto":
            annotations = self.root / LANDMARKS_CSV if has_annotations(self.root) else None
        self.annotations_path = None if annotations is None else Path(annotations)
        points: dict[Path, np.ndarray] = {}
        if self.annotations_path is not None:
            rows = read_landmarks_csv(self.annotations_path)
            known = {p.relative_to(self.root).as_posix(): p for p in files}
            unreadable = {p.relative_to(self.root).as_posix() for p in bad}
            for name, (n, pts) in rows.items():
                if name in known:
                    points[known[name]] = pts
                elif name not in unreadable:  # (an unreadable file's row goes with the file, warned above)
                    what = ("not a " + "/".join(IMAGE_EXTENSIONS) + " image" if (self.root / name).is_file()
                            else "no such file")
                    raise ValueError(f"fastlmk.data: {self.annotations_path}, line {n}: {name}: {what} under {self.root}")
        self.num_annotated = len(points)
        self._points = points
        if part == "all":
            self.files = files
            self.has_landmarks = bool(points) and len(points) == len(files)
        else:
            if self.annotations_path is None:
                raise FileNotFoundError(f"fastlmk.data: part={part!r} needs annotations: {self.root / LANDMARKS_CSV} "
                                        f"not found")
            annotated = [p for p in files if p in points]
            if not annotated:
                raise ValueError(f"fastlmk.data: {self.annotations_path}: none of its rows names a readable image "
                                 f"under {self.root}")
            if part != "annotated":
                if len(annotated) < 2:
                    raise ValueError(f"fastlmk.data: {self.annotations_path}: part={part!r} needs at least 2 "
                                     f"annotated images (one to fit, one to test), found {len(annotated)}")
                n_test = min(len(annotated) - 1, max(1, round(test_fraction * len(annotated))))
                annotated = annotated[len(annotated) - n_test:] if part == "test" else annotated[:len(annotated) - n_test]
            self.files = annotated
            self.has_landmarks = True

    def __len__(self) -> int:
        return len(self.files)

    def landmarks_pixels(self, index: int):
        """(5, 2) float64 pixels of item ``index`` as the csv gives them (original image), or None."""
        return self._points.get(self.files[index])

    def __getitem__(self, index: int) -> dict:
        box = _square_box if self.crop == "center" else None
        n = len(self.files)
        for k in range(n if self.part == "all" else 1):
            i = (index + k) % n
            try:
                image, _, used = _io.load_crop(self.files[i], box, self.size)
            except (_io.ImageReadError, FileNotFoundError) as e:
                if self.part != "all":  # an evaluation set never swaps images
                    raise
                self.num_skipped += 1  # counted in this process (each DataLoader worker has its own count)
                warnings.warn(f"fastlmk.data: skipping unreadable image ({self.num_skipped} skipped so far): {e}",
                              UserWarning, stacklevel=2)
                continue
            item = {"image": image, "index": i}
            if self.has_landmarks:
                item["landmarks"] = _io.points_to_normalised(self._points[self.files[i]], used, self.size)
            return item
        raise _io.ImageReadError(f"fastlmk.data: no image under {self.root} could be decoded")
