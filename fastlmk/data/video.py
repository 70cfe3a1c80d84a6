"""Video clips as a data set of frame pairs: two frames of one clip per item (``--dataset video``).

Expected tree: any directory; below it, recursively,

* every video file (``.mp4 .m4v .mov .avi .mkv .webm .gif``, any letter case) is a clip;
* every folder holding image files (``.jpg .jpeg .png .bmp .webp .tif .tiff``) is one clip, its
  frames in name order (natural order: ``frame_2`` before ``frame_10``);

folders whose name starts with a dot (such as the cache, ``.fastlmk-cache``) are not searched::

    root/
      talk_01.mp4
      talk_01.csv            (optional per-frame landmarks, see below)
      interviews/a.mov
      webcam_2024/0001.jpg 0002.jpg ...   (a clip of frames)
      webcam_2024/landmarks.csv           (optional)

Decoding (PyAV, ``pip install "fastlmk[video]"``; folders of frames need only Pillow) happens
once: every frame is resized to the training size ``S x S`` as it is decoded (a 4K clip is
never held in memory, not even one full-size frame as an array) and appended to a uint8 cache
file, ``<cache>/<clip>-<key>.u8`` (frames, S, S, 3) with a ``.json`` beside it (frame count,
original frame sizes, frame rate, decoding speed). The key hashes the clip's path, byte size,
modification time, ``S`` and the crop, so a changed file is decoded again and an unchanged one
never is. Training reads the cache through ``numpy.memmap``: it never seeks in a video. The
cache folder is ``root/.fastlmk-cache`` unless ``cache_dir`` names another one.

Square frames: ``crop="none"`` (default) resizes the whole frame to ``S x S`` (the aspect is not
kept, as ``fastlmk.detect --crop none`` does); ``crop="center"`` takes the largest centred
square.

Pairs. The data set has one item per frame of the usable clips. Item ``i`` is frame ``t`` of
clip ``c`` and frame ``t2 = t +- g`` of the same clip, the gap ``g`` drawn from
``frame_gap = (min, max)`` (clipped to the clip's length) by a hash of ``(seed, i)``: an item
is the same in every process and every epoch (like :class:`~fastlmk.data.ViewPairs`). Items::

    {"image": (3, S, S) float32 in [0, 1], "image2": (3, S, S), "index": i, "clip": c,
     "frame": t, "frame2": t2}   (+ "landmarks", "landmarks2": (5, 2) in [-1, 1])

Landmarks, when every usable clip has a landmark file: ``<video stem>.csv`` beside a video, or
``landmarks.csv`` inside a folder of frames, with a header row ``frame, time,
left_eye_x, left_eye_y, right_eye_x, ..., right_mouth_y`` (the 5 names of
:data:`~fastlmk.data.LANDMARK_NAMES`, spaces as ``_``; ``time`` optional) and one row per frame:
(x, y) in pixels of the original frame, (0, 0) the centre of the top-left pixel. Frames without
a row get NaN. ``python -m fastlmk.export synth-clips`` writes this format.

Bad input. A file that cannot be opened, has no video stream, no frame, or a single frame (no
pair) is skipped and counted (:attr:`VideoClips.skipped`, :meth:`VideoClips.summary`); a
missing root, a tree with no clip, a tree whose every clip is unusable, a video without PyAV
installed, a malformed landmark file and an unwritable cache folder are one-line errors raised
before anything is written (the cache folder is created only once a clip has decoded).
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from fastlmk.data import _io
from fastlmk.data.landmarks import LANDMARK_NAMES

__all__ = ["VideoClips", "VideoError", "MissingVideoSupport", "VIDEO_EXTENSIONS", "FRAME_EXTENSIONS", "CROPS",
           "FRAME_GAP", "INSTALL_HINT", "find_clips", "frame_box", "landmark_columns", "require_av"]

VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".gif")
FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
CROPS = ("none", "center")
# the gap between the two frames of a pair, in frames: the field's range (talking-head pairs a
# fraction of a second to ~1.5 s apart at 25 fps); clipped to each clip's length. The lower end 10
# rather than 3: close frames barely differ, and pairs must differ where the face moved (val split,
# SynthFaces clips, seed 0: 7.23 % with 10-40 vs 8.31 % with 3-40; docs/video.md)
FRAME_GAP = (10, 40)
CACHE_DIR = ".fastlmk-cache"
INSTALL_HINT = 'pip install "fastlmk[video]"'
_CACHE_VERSION = 1  # bump when the cache layout or the resampling changes


class VideoError(ValueError):
    """A user-facing problem with the video data (one line naming the file or folder)."""


class MissingVideoSupport(ImportError, ValueError):
    """PyAV is not installed (an ImportError, and a ValueError so CLIs print it as one line)."""


def require_av(path=None):
    """``import av``, or a one-line MissingVideoSupport naming ``path`` and the install command."""
    try:
        import av  # noqa: PLC0415  (optional dependency)
    except ImportError:
        what = f"{path} is a video; reading" if path is not None else "reading"
        raise MissingVideoSupport(f"fastlmk.data: {what} videos needs PyAV: {INSTALL_HINT}") from None
    return av


def landmark_columns() -> list[str]:
    """The coordinate columns of a landmark file: left_eye_x, left_eye_y, ..., right_mouth_y."""
    return [f"{n.replace(' ', '_')}_{c}" for n in LANDMARK_NAMES for c in ("x", "y")]


def frame_box(width: int, height: int, size: int, crop: str = "none"):
    """How a ``width x height`` frame becomes ``size x size``.

    Returns ``(sw, sh, ox, oy, box)``: the frame is resized to ``sw x sh`` and the ``size x size``
    window at (ox, oy) is kept; ``box`` = (left, top, right, bottom) of that window in pixel-edge
    coordinates of the original frame (for mapping landmarks, see ``fastlmk.data._io``).
    """
    if crop == "none":
        return size, size, 0, 0, (0.0, 0.0, float(width), float(height))
    if crop == "center":
        m = min(width, height)
        sw, sh = max(size, round(width * size / m)), max(size, round(height * size / m))
        ox, oy = (sw - size) // 2, (sh - size) // 2
        return sw, sh, ox, oy, (ox * width / sw, oy * height / sh, (ox + size) * width / sw, (oy + size) * height / sh)
    raise ValueError(f"fastlmk.data: crop must be one of {CROPS}, got {crop!r}")


def _natural_key(p: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", p.name)]


@dataclass
class Clip:
    """A clip found under the root: a video file or a folder of frames."""
    name: str  # path relative to the root (the name in messages and the summary)
    path: Path
    kind: str  # "video" | "frames"
    files: list = field(default_factory=list)  # frames: the image files in order
    landmark_file: Path | None = None


def find_clips(root) -> list[Clip]:
    """Video files and folders of frames under ``root`` (recursive, sorted by path; dot-folders skipped)."""
    root = Path(root)
    clips = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        d = Path(dirpath)
        frames = []
        for fn in sorted(filenames):
            p = d / fn
            ext = p.suffix.lower()
            if ext in VIDEO_EXTENSIONS and p.is_file():
                lm = p.with_suffix(".csv")
                clips.append(Clip(str(p.relative_to(root)), p, "video", landmark_file=lm if lm.is_file() else None))
            elif ext in FRAME_EXTENSIONS and p.is_file():
                frames.append(p)
        if frames:
            lm = d / "landmarks.csv"
            clips.append(Clip(str(d.relative_to(root)) if d != root else ".", d, "frames", sorted(frames, key=_natural_key),
                              lm if lm.is_file() else None))
    return sorted(clips, key=lambda c: c.name)


def _read_landmarks(path: Path) -> dict[int, np.ndarray]:
    """frame -> (5, 2) pixel coordinates, from a landmark file (one-line VideoError if malformed)."""
    cols = landmark_columns()
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError) as e:
        raise VideoError(f"fastlmk.data: cannot read landmark file {path}: {e}") from None
    if not rows:
        raise VideoError(f"fastlmk.data: landmark file {path} is empty (expected a header: frame, {', '.join(cols)})")
    header = [h.strip() for h in rows[0]]
    missing = [c for c in ["frame"] + cols if c not in header]
    if missing:
        raise VideoError(f"fastlmk.data: landmark file {path}: header lacks {', '.join(missing)}")
    fi, ci = header.index("frame"), [header.index(c) for c in cols]
    out = {}
    for n, row in enumerate(rows[1:], 2):
        if not any(v.strip() for v in row):
            continue
        try:
            frame = int(row[fi])
            xy = np.array([float(row[i]) if row[i].strip() else math.nan for i in ci], dtype=np.float64)
        except (ValueError, IndexError) as e:
            raise VideoError(f"fastlmk.data: landmark file {path}, line {n}: {e}") from None
        if frame < 0:
            raise VideoError(f"fastlmk.data: landmark file {path}, line {n}: negative frame {frame}")
        out[frame] = xy.reshape(len(LANDMARK_NAMES), 2)
    return out


def _clip_key(clip: Clip, size: int, crop: str) -> str:
    files = [clip.path] if clip.kind == "video" else clip.files
    h = hashlib.blake2b(digest_size=8)
    h.update(f"v{_CACHE_VERSION}|{clip.kind}|{clip.path.resolve()}|{size}|{crop}".encode())
    for f in files:
        st = f.stat()
        h.update(f"|{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()


class _Skip(Exception):
    """A clip that cannot be used (the message is the reason)."""


def _short(e: BaseException) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]


def _probe_video(av, path: Path) -> None:
    """Open the file and find a video stream (cheap: headers only); raises _Skip."""
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise _Skip("no video stream")
    except _Skip:
        raise
    except Exception as e:  # noqa: BLE001  (any FFmpeg / OS failure: the file is skipped)
        raise _Skip(f"cannot open: {_short(e)}") from None


def _decode_video(av, path: Path, size: int, crop: str, sink):
    """Decode frame by frame, resized on the fly; ``sink(array (S, S, 3) uint8, (W, H))`` per frame.
    Returns the frame rate (0.0 when unknown)."""
    try:
        with av.open(str(path)) as c:
            s = c.streams.video[0]
            s.thread_type = "AUTO"  # frame and slice threads; at most 4, so the frames in flight stay few
            s.codec_context.thread_count = min(4, os.cpu_count() or 1)
            rate = s.average_rate or s.guessed_rate
            for frame in c.decode(s):
                W, H = frame.width, frame.height
                sw, sh, ox, oy, _ = frame_box(W, H, size, crop)
                # swscale resizes from the decoder's own planes: no full-size RGB array is ever built
                arr = frame.reformat(width=sw, height=sh, format="rgb24", interpolation="AREA").to_ndarray()
                sink(np.ascontiguousarray(arr[oy:oy + size, ox:ox + size]), (W, H))
    except _Skip:
        raise
    except Exception as e:  # noqa: BLE001
        raise _Skip(f"decoding failed: {_short(e)}") from None
    return float(rate) if rate else 0.0


def _decode_frames(files: list[Path], size: int, crop: str, sink) -> float:
    from PIL import Image  # noqa: PLC0415

    for f in files:
        try:
            im = _io.open_image(f)
        except (_io.ImageReadError, FileNotFoundError) as e:
            raise _Skip(f"frame {f.name} unreadable: {_short(e).split(': ', 1)[-1]}") from None
        W, H = im.size
        _, _, _, _, box = frame_box(W, H, size, crop)
        out = im.resize((size, size), Image.Resampling.BILINEAR, box=box, reducing_gap=None)
        sink(np.asarray(out, dtype=np.uint8), (W, H))
    return 0.0


def _runs(sizes: list[tuple[int, int]]) -> list[list[int]]:
    """[(W, H), ...] -> [[W, H, count], ...] (run-length)."""
    out: list[list[int]] = []
    for w, h in sizes:
        if out and out[-1][0] == w and out[-1][1] == h:
            out[-1][2] += 1
        else:
            out.append([w, h, 1])
    return out


class VideoClips(Dataset):
    """Pairs of frames of the clips under ``root``; see the module docstring.

    Args:
        root: folder searched recursively for videos and folders of frames.
        size: training size S (frames are cached S x S).
        frame_gap: (min, max) frames between the two frames of a pair (clipped per clip).
        crop: "none" (the whole frame resized to a square) or "center" (the largest centred square).
        cache_dir: cache folder (default ``root/.fastlmk-cache``).
        seed: fixes each item's second frame.
        progress: show a progress bar while decoding.

    Attributes: ``clips`` (usable clips: dicts with name, frames, fps, cache file), ``skipped``
    ([(name, reason)]), ``num_frames``, ``decoded_frames`` / ``decode_seconds`` (this time),
    ``cached_frames``, ``has_landmarks``.
    """

    def __init__(self, root, size: int = 128, frame_gap=FRAME_GAP, crop: str = "none", cache_dir=None,
                 seed: int = 0, progress: bool = False):
        if root is None or str(root) == "":
            raise FileNotFoundError("fastlmk.data: 'video' needs root= (a folder of video files or folders of frames)")
        self.root = _io.require_dir(root, "video folder")
        self.size = _io.check_size(size)
        if crop not in CROPS:
            raise ValueError(f"fastlmk.data: crop must be one of {CROPS}, got {crop!r}")
        try:
            gmin, gmax = (int(g) for g in frame_gap)
        except (TypeError, ValueError):
            raise ValueError(f"fastlmk.data: frame_gap must be two integers (min, max), got {frame_gap!r}") from None
        if not 1 <= gmin <= gmax:
            raise ValueError(f"fastlmk.data: frame_gap must satisfy 1 <= min <= max, got ({gmin}, {gmax})")
        self.frame_gap, self.crop, self.seed = (gmin, gmax), crop, int(seed)
        self.cache_dir = Path(cache_dir) if cache_dir else self.root / CACHE_DIR

        # --- scan: find and open every clip; nothing is written in this phase ---
        found = find_clips(self.root)
        if not found:
            raise FileNotFoundError(f"fastlmk.data: no videos ({' '.join(VIDEO_EXTENSIONS)}) or folders of frames "
                                    f"({' '.join(FRAME_EXTENSIONS)}) under {self.root}")
        videos = [c for c in found if c.kind == "video"]
        av = require_av(videos[0].path) if videos else None
        self.skipped: list[tuple[str, str]] = []
        candidates, landmarks = [], {}
        for clip in found:
            try:
                if clip.kind == "video":
                    _probe_video(av, clip.path)
            except _Skip as e:
                self.skipped.append((clip.name, str(e)))
                continue
            candidates.append(clip)
            if clip.landmark_file is not None:
                landmarks[clip.name] = _read_landmarks(clip.landmark_file)  # malformed: an error, before any write
        if not candidates:
            raise VideoError(f"fastlmk.data: no usable clip under {self.root}: " + self._skip_text())
        self._check_cache_dir()

        # --- decode (or find in the cache) ---
        self.clips: list[dict] = []
        self.decoded_frames, self.decode_seconds, self.cached_frames = 0, 0.0, 0
        bar = None
        if progress:
            from tqdm.auto import tqdm  # noqa: PLC0415

            bar = tqdm(total=len(candidates), desc="decoding clips", unit="clip")
        for clip in candidates:
            try:
                info = self._cached_or_decode(av, clip)
            except _Skip as e:
                self.skipped.append((clip.name, str(e)))
                info = None
            if bar is not None:
                bar.update(1)
            if info is None:
                continue
            info["landmarks_px"] = landmarks.get(clip.name)
            self.clips.append(info)
        if bar is not None:
            bar.close()
        self.skipped.sort()
        if not self.clips:
            raise VideoError(f"fastlmk.data: no usable clip under {self.root}: " + self._skip_text())
        self.has_landmarks = all(c["landmarks_px"] is not None for c in self.clips)
        self._landmarks = [self._normalise_landmarks(c) for c in self.clips] if self.has_landmarks else None
        self.offsets = [0]
        for c in self.clips:
            self.offsets.append(self.offsets[-1] + c["frames"])
        self.num_frames = self.offsets[-1]
        self._mm: dict[int, np.ndarray] = {}

    # --- scanning and caching ---------------------------------------------------------------
    def _skip_text(self, limit: int = 3) -> str:
        parts = [f"{n} ({r})" for n, r in self.skipped[:limit]]
        more = len(self.skipped) - limit
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "") if parts else "none found"

    def _check_cache_dir(self) -> None:
        probe = self.cache_dir.resolve()
        if probe.exists() and not probe.is_dir():
            raise VideoError(f"fastlmk.data: video cache {self.cache_dir} exists and is not a directory")
        while not probe.exists():
            probe = probe.parent
        if not os.access(probe, os.W_OK | os.X_OK) or str(probe).startswith(("/proc", "/sys")):
            raise VideoError(f"fastlmk.data: video cache {self.cache_dir}: {probe} is not a writable directory "
                             "(name another with --video-cache)")

    def _cache_paths(self, clip: Clip) -> tuple[Path, Path]:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", clip.name).strip("._")[-60:] or "clip"
        key = _clip_key(clip, self.size, self.crop)
        return self.cache_dir / f"{stem}-{key}.u8", self.cache_dir / f"{stem}-{key}.json"

    def _cached_or_decode(self, av, clip: Clip) -> dict:
        data, meta_path = self._cache_paths(clip)
        S = self.size
        if meta_path.is_file() and data.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                if meta.get("version") == _CACHE_VERSION and data.stat().st_size == meta["frames"] * S * S * 3:
                    self.cached_frames += meta["frames"]
                    return dict(meta, name=clip.name, data=data)
            except (ValueError, KeyError, OSError):
                pass  # a damaged entry: decode again
        created = not self.cache_dir.exists()
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = data.with_name(f"{data.name}.tmp-{os.getpid()}")
        sizes: list[tuple[int, int]] = []
        t0 = time.perf_counter()
        try:
            with open(tmp, "wb") as fh:
                def sink(arr, wh):
                    fh.write(arr.tobytes())
                    sizes.append(wh)

                if clip.kind == "video":
                    fps = _decode_video(av, clip.path, S, self.crop, sink)
                else:
                    fps = _decode_frames(clip.files, S, self.crop, sink)
            seconds = time.perf_counter() - t0
            if len(sizes) < 2:  # not cached: a clip without a pair is never used
                raise _Skip("no frames" if not sizes else "1 frame: no pair")
            meta = {"version": _CACHE_VERSION, "source": str(clip.path), "frames": len(sizes), "size": S,
                    "crop": self.crop, "fps": fps, "frame_sizes": _runs(sizes), "decode_seconds": round(seconds, 4)}
            os.replace(tmp, data)
            tmp_meta = meta_path.with_name(f"{meta_path.name}.tmp-{os.getpid()}")
            tmp_meta.write_text(json.dumps(meta) + "\n")
            os.replace(tmp_meta, meta_path)  # the entry counts as written only now
        except BaseException:
            tmp.unlink(missing_ok=True)
            if created:
                try:
                    self.cache_dir.rmdir()  # only if still empty
                except OSError:
                    pass
            raise
        self.decoded_frames += len(sizes)
        self.decode_seconds += seconds
        return dict(meta, name=clip.name, data=data)

    def _normalise_landmarks(self, c: dict) -> torch.Tensor:
        """(frames, 5, 2) in [-1, 1] of the S x S frames (NaN where the file has no row)."""
        out = torch.full((c["frames"], len(LANDMARK_NAMES), 2), math.nan)
        sizes = [(w, h) for w, h, n in c["frame_sizes"] for _ in range(n)]
        for t, xy in c["landmarks_px"].items():
            if t < c["frames"]:
                _, _, _, _, box = frame_box(*sizes[t], self.size, self.crop)
                out[t] = _io.points_to_normalised(xy, box, self.size)
        return out

    # --- items -----------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.num_frames

    def __getstate__(self):  # DataLoader workers open their own memory maps
        state = dict(self.__dict__)
        state["_mm"] = {}
        return state

    def frames(self, c: int) -> np.ndarray:
        """Clip ``c``'s cached frames, (T, S, S, 3) uint8, memory-mapped (read-only)."""
        mm = self._mm.get(c)
        if mm is None:
            info = self.clips[c]
            mm = self._mm[c] = np.memmap(info["data"], dtype=np.uint8, mode="r",
                                         shape=(info["frames"], self.size, self.size, 3))
        return mm

    def locate(self, index: int) -> tuple[int, int]:
        """Item index -> (clip, frame)."""
        index = int(index)
        if index < 0:
            index += self.num_frames
        if not 0 <= index < self.num_frames:
            raise IndexError(f"VideoClips: index {index} out of range for length {self.num_frames}")
        c = bisect.bisect_right(self.offsets, index) - 1
        return c, index - self.offsets[c]

    def pair(self, index: int) -> tuple[int, int, int]:
        """Item index -> (clip, frame t, frame t2): |t2 - t| drawn from frame_gap clipped to the clip."""
        from fastlmk.data.synth import _hash  # noqa: PLC0415  (the stable hash of SynthFaces)

        c, t = self.locate(index)
        T = self.clips[c]["frames"]
        hi = min(self.frame_gap[1], T - 1)
        lo = min(self.frame_gap[0], hi)
        h = _hash("video-pair", self.seed, self.offsets[c] + t)
        g = lo + h % (hi - lo + 1)
        forward = (h >> 32) & 1
        if forward and t + g < T:
            return c, t, t + g
        if t - g >= 0:
            return c, t, t - g
        if t + g < T:
            return c, t, t + g
        # neither side has room for g: the farthest frame there is (>= ceil((T - 1) / 2) >= 1 away)
        return c, t, 0 if t >= T - 1 - t else T - 1

    def _image(self, c: int, t: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self.frames(c)[t])).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, index: int) -> dict:
        c, t, t2 = self.pair(index)
        item = {"image": self._image(c, t), "image2": self._image(c, t2), "index": self.offsets[c] + t,
                "clip": c, "frame": t, "frame2": t2}
        if self._landmarks is not None:
            item["landmarks"], item["landmarks2"] = self._landmarks[c][t], self._landmarks[c][t2]
        return item

    # --- reporting -------------------------------------------------------------------------
    @property
    def decode_fps(self) -> float:
        """Frames decoded (resized and cached) per second this time; 0 when all came from the cache."""
        return self.decoded_frames / self.decode_seconds if self.decode_seconds > 0 else 0.0

    def summary(self) -> str:
        """One line for the training start line: clips, frames, skips, decoding throughput."""
        n_clips = len(self.clips)
        s = f"{n_clips} clip{'s' * (n_clips != 1)}, {self.num_frames:,} frames at {self.size}px ({self.crop} crop)"
        s += f", frame gap {self.frame_gap[0]}-{self.frame_gap[1]}"
        if self.decoded_frames:
            s += f"; decoded {self.decoded_frames:,} frames at {self.decode_fps:,.0f} frames/s"
        if self.cached_frames:
            s += f"; {self.cached_frames:,} frames from the cache {self.cache_dir}"
        if self.skipped:
            s += f"; skipped {len(self.skipped)}: " + self._skip_text()
        return s
