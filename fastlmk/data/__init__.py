"""fastlmk.data: data sets and the intra-subject pair maker.

* :class:`SynthFaces` -- procedural faces with exact landmarks (no files; the default).
* :class:`CelebA`, :class:`MAFL` -- aligned CelebA with IMM's crop; MAFL landmark splits.
* :class:`AFLWZhang` ("aflw_zhang"), :class:`AFLWThewlis` ("aflw_thewlis") -- the two AFLW versions.
* :class:`ImageFolder` ("folder") -- any directory of jpg/png images; landmarks where its
  ``landmarks.csv`` gives them (the format ``python -m fastlmk.export`` writes, docs/data.md).
* :class:`VideoClips` ("video") -- video files / folders of frames: pairs of two frames of one clip.
* :func:`build_dataset` -- one factory for all of them.
* :class:`TPSPairs` -- two random TPS warps per image + smooth border masks, on the training device.

Every item is a dict ``{"image": (3, S, S) float32 in [0, 1], "landmarks": (5, 2) (x, y) in
[-1, 1] in MAFL order (left eye, right eye, nose, left mouth corner, right mouth corner; absent
for unlabelled data), "index": int}`` (+ ``"subject"`` for SynthFaces).
"""

from __future__ import annotations

from fastlmk.data._io import ImageReadError
from fastlmk.data.aflw import AFLWThewlis, AFLWZhang
from fastlmk.data.celeba import MAFL, CelebA
from fastlmk.data.folder import ImageFolder
from fastlmk.data.landmarks import LANDMARK_NAMES
from fastlmk.data.pairs import Pairs, TPSPairs, border_mask
from fastlmk.data.synth import SynthFaces, ViewPairs, tune_malloc
from fastlmk.data.video import VideoClips

__all__ = ["DATASETS", "AFLWThewlis", "AFLWZhang", "CelebA", "ImageFolder", "ImageReadError", "LANDMARK_NAMES", "MAFL", "Pairs",
           "SynthFaces", "TPSPairs", "VideoClips", "ViewPairs", "border_mask", "build_dataset", "tune_malloc"]

DATASETS = ("synth", "celeba", "mafl", "aflw_zhang", "aflw_thewlis", "folder", "video")


def build_dataset(name: str, root=None, split: str = "train", size: int = 128, **kw):
    """Build a data set by name.

    Args:
        name: one of ``"synth", "celeba", "mafl", "aflw_zhang", "aflw_thewlis", "folder", "video"``.
        root: data directory (ignored by "synth"); see each class for its expected tree.
        split: "train" or "test" ("folder" and "video" have a single split and ignore it; an
            annotated folder's evaluation parts are ``part="fit" | "test"``).
        size: image side S.
        **kw: passed to the class (e.g. ``length``/``seed`` for "synth", ``crop`` / ``part`` for "folder").

    Raises:
        ValueError: unknown name (the message lists the valid ones) or bad split.
        FileNotFoundError: missing root or annotation files (the message names the path).
    """
    if name == "synth":
        return SynthFaces(split=split, size=size, **kw)
    if name == "celeba":
        return CelebA(root, split=split, size=size, **kw)
    if name == "mafl":
        return MAFL(root, split=split, size=size, **kw)
    if name == "aflw_zhang":
        return AFLWZhang(root, split=split, size=size, **kw)
    if name == "aflw_thewlis":
        return AFLWThewlis(root, split=split, size=size, **kw)
    if name == "folder":
        return ImageFolder(root, size=size, **kw)
    if name == "video":  # items are pairs (image, image2) of two frames of one clip
        return VideoClips(root, size=size, **kw)
    raise ValueError(f"fastlmk.data.build_dataset: unknown data set {name!r}; valid names: {', '.join(DATASETS)}")
