"""Landmark detection with a trained fastlmk run, as a library: images, frames and videos.

A notebook user loads a run once and asks for landmarks::

    from fastlmk.detection import load
    det = load("runs/2026-12-06-...")                 # a run directory or a checkpoint file
    out = det([Image.open("a.jpg"), frame_array])     # PIL images, (H, W, 3) uint8 arrays or tensors
    out.points      # (B, K, 2) float64: the K discovered points, pixels of each ORIGINAL image
    out.named       # (B, 5, 2) eyes, nose, mouth corners (a run evaluated with fastlmk.evaluate), or None
    out.names       # ["left eye", "right eye", "nose", "left mouth", "right mouth"] or None

    det.video("talk.mp4", "det/")                     # det/talk.landmarks.json + det/talk.overlay.mp4

``python -m fastlmk.detect`` only parses its arguments and calls this module.

Geometry. Each image is (optionally cropped, then) resized to the detector's input size S x S,
the detector gives K points in normalised coordinates of that input, and the points are mapped
back to pixels of the original image, (0, 0) the centre of the top-left pixel, x right, y down.
The model input pixel ``u = (x + 1) / 2 * (S - 1)`` (x in [-1, 1]); the resize maps
pixel-centre positions linearly (centre of input pixel u sits at ``u + 0.5`` in units of S), so
in the original image ``X = left + (u + 0.5) * box_width / S - 0.5`` for the crop box (left,
top, box_width, box_height) that was resized (the whole image by default).

Named landmarks: the linear regressor from the K points to the 5 annotated landmarks that
``python -m fastlmk.evaluate`` fitted and stored in the run's ``eval.json`` (``load`` finds it
in the run directory, or takes ``regressor=PATH``).

Videos (PyAV, ``pip install "fastlmk[video]"``) are read frame by frame (memory bounded): per
frame its index, time stamp (seconds) and points go to ``<name>.landmarks.json`` (or ``.csv``),
and every frame with its points drawn to ``<name>.overlay.mp4`` (H.264, the long side at most
1024 px).
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["LandmarkDetector", "Detections", "DetectError", "Regressor", "load", "list_inputs", "list_images",
           "load_image", "crop_box", "preprocess", "to_original_pixels", "to_normalised", "overlay_names",
           "save_overlay", "detect_images", "write_landmarks", "load_detector", "detect_video",
           "IMAGE_EXTENSIONS", "VIDEO_EXTENSIONS"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
# videos (a .gif stays an image here: its first frame)
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm")
PROG = "fastlmk.detect"  # the name in messages


class DetectError(Exception):
    """A user-facing error of the detect command (bad path, unreadable image, ...)."""


# --- inputs ------------------------------------------------------------------------------------
def list_images(input_path, recursive: bool = False) -> tuple[list[Path], Path]:
    """Image files to process and the folder their names are reported relative to.

    A file is taken as it is (whatever its extension); in a folder, the files whose extension is
    in :data:`IMAGE_EXTENSIONS` (case-insensitive), sorted, optionally recursing.
    """
    p = Path(input_path)
    if p.is_file():
        return [p], p.parent
    if p.is_dir():
        it = p.rglob("*") if recursive else p.iterdir()
        files = sorted(f for f in it if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DetectError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {p}"
                              + ("" if recursive else " (use --recursive for subfolders)"))
        return files, p
    raise DetectError(f"input not found: {p}")


def load_image(path):
    """Open an image as upright RGB (PIL). Raises DetectError naming the file if unreadable."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # (DecompressionBombError: a header claiming a huge size; not an OSError) -> skipped like any
        # unreadable image
        raise DetectError(f"cannot read image {path}: {e}") from None


def crop_box(width: int, height: int, crop: str = "none", scale: float = 1.0) -> tuple[float, float, float, float]:
    """The region (left, top, right, bottom) in pixel-edge coordinates that is resized to S x S.

    ``crop="none"``: the whole image (stretched to a square if it is not one).
    ``crop="center"``: the centred square of side ``scale * min(width, height)``
    (``scale=0.8`` matches fastlmk's CelebA preprocessing: resize to 160, centre-crop 128).
    """
    if crop == "none":
        return 0.0, 0.0, float(width), float(height)
    if crop == "center":
        side = scale * min(width, height)
        left, top = (width - side) / 2, (height - side) / 2
        return left, top, left + side, top + side
    raise ValueError(f"{PROG}: crop must be 'none' or 'center', got {crop!r}")


def preprocess(image, size: int, box) -> torch.Tensor:
    """PIL RGB image -> (3, size, size) float32 in [0, 1] of the crop box, bicubic resize."""
    import numpy as np
    from PIL import Image

    im = image.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)


def to_original_pixels(points: torch.Tensor, box, size: int) -> torch.Tensor:
    """(..., 2) normalised points of the S x S model input -> pixels (x, y) of the original image."""
    left, top, right, bottom = box
    u = (points[..., 0].double() + 1) * 0.5 * (size - 1)
    v = (points[..., 1].double() + 1) * 0.5 * (size - 1)
    x = left + (u + 0.5) * (right - left) / size - 0.5
    y = top + (v + 0.5) * (bottom - top) / size - 0.5
    return torch.stack([x, y], dim=-1)


def to_normalised(pixels: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """(..., 2) pixel (x, y) -> normalised [-1, 1] coordinates of a width x height image."""
    x = pixels[..., 0] / max(width - 1, 1) * 2 - 1
    y = pixels[..., 1] / max(height - 1, 1) * 2 - 1
    return torch.stack([x, y], dim=-1)


class Regressor:
    """The linear map from the K discovered points to named landmarks that ``fastlmk.evaluate``
    fitted and stored in ``eval.json`` ("regressors"): ``landmarks = points.flatten() @ W + b``
    in normalised coordinates of the model input."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor, names: list[str], source: str = ""):
        self.W, self.b, self.names, self.source = W.double(), b.double(), list(names), source

    @classmethod
    def from_eval_json(cls, path, variant: str = "saic") -> "Regressor":
        path = Path(path)
        if not path.is_file():
            raise DetectError(f"regressor file not found: {path}")
        try:
            doc = json.loads(path.read_text())
            reg = doc["regressors"][variant]
            W = torch.tensor(reg["W"], dtype=torch.float64)
            b = torch.tensor(reg["b"], dtype=torch.float64)
            per_landmark = doc.get("per_landmark") or {}
            if not isinstance(per_landmark, dict):
                raise DetectError(f"{path}: malformed 'per_landmark' (expected an object, got "
                                  f"{json.dumps(per_landmark)[:80]})")
            names = per_landmark.get("names")
        except (ValueError, KeyError, TypeError, AttributeError, RuntimeError) as e:
            raise DetectError(f"{path} has no usable '{variant}' regressor (write it with python -m "
                              f"fastlmk.evaluate): {type(e).__name__}: {e}") from None
        if W.dim() != 2 or b.dim() != 1 or W.shape[1] != b.shape[0] or b.shape[0] % 2 or W.shape[0] % 2:
            raise DetectError(f"{path}: malformed '{variant}' regressor (W {tuple(W.shape)}, b {tuple(b.shape)})")
        L = b.shape[0] // 2
        if names is None:
            names = [f"landmark {i}" for i in range(L)]
        if not (isinstance(names, list) and len(names) == L and all(isinstance(n, str) for n in names)):
            raise DetectError(f"{path}: malformed 'per_landmark' 'names' (expected a list of {L} strings, got "
                              f"{json.dumps(names)[:80]})")
        return cls(W, b, names, str(path))

    @property
    def num_points(self) -> int:
        return self.W.shape[0] // 2

    def __call__(self, points: torch.Tensor) -> torch.Tensor:
        """(B, K, 2) discovered points -> (B, L, 2) landmarks, normalised coordinates."""
        if points.shape[-2] != self.num_points:
            raise DetectError(f"regressor {self.source} expects {self.num_points} discovered points, "
                              f"the detector gives {points.shape[-2]}")
        return (points.double().flatten(1) @ self.W + self.b).view(points.shape[0], -1, 2)


# --- the work ----------------------------------------------------------------------------------
def overlay_names(files: list[Path], root: Path) -> dict[Path, Path]:
    """overlays/<relative path without extension>.png; the extension is kept when two inputs would
    otherwise collide (a.jpg and a.png)."""
    stems = {}
    for f in files:
        stems.setdefault(f.relative_to(root).with_suffix(""), []).append(f)
    names = {}
    for stem, group in stems.items():
        for f in group:
            rel = f.relative_to(root)
            names[f] = (stem if len(group) == 1 else rel.with_name(rel.name.replace(".", "_"))).with_suffix(".png")
    return names


def save_overlay(image, pixels: torch.Tensor, path: Path, box=None, max_size: int = 1024, radius=None) -> None:
    """Draw pixel-coordinate points on a PIL image (and the crop box if one was used) and save a PNG;
    large images are shrunk so the long side is at most ``max_size``."""
    import numpy as np
    from PIL import Image, ImageDraw

    from fastlmk.viz import draw_landmarks

    W, H = image.size
    scale = min(1.0, max_size / max(W, H)) if max_size else 1.0
    if scale < 1.0:
        image = image.resize((max(1, round(W * scale)), max(1, round(H * scale))), Image.Resampling.LANCZOS)
    w, h = image.size
    # pixel positions scale about pixel-edge coordinates: X' + 0.5 = (X + 0.5) * w / W
    px = (pixels[..., 0] + 0.5) * (w / W) - 0.5
    py = (pixels[..., 1] + 0.5) * (h / H) - 0.5
    pts = to_normalised(torch.stack([px, py], -1).float(), w, h)
    t = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255).unsqueeze(0)
    if radius is None:
        radius = max(2.0, min(w, h) / 60)
    t = draw_landmarks(t, pts.unsqueeze(0), radius=radius)[0]
    out = Image.fromarray(t.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())
    if box is not None and tuple(box) != (0.0, 0.0, float(W), float(H)):
        ImageDraw.Draw(out).rectangle([c * s for c, s in zip(box, (w / W, h / H, w / W, h / H))],
                                      outline=(255, 255, 255), width=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path, format="PNG")


@torch.no_grad()
def detect_images(detector, files: list[Path], root: Path, image_size: int, out_dir=None, device="cpu",
                  batch_size: int = 16, crop: str = "none", crop_scale: float = 1.0, overlays: bool = True,
                  progress: bool = True, strict: bool = False, regressor: Regressor | None = None):
    """Run the detector on image files.

    Args:
        detector: module with ``forward(images (B, 3, S, S)) -> object with .points (B, K, 2)``.
        files, root: images and the folder their reported names are relative to.
        image_size: S, the detector's input side.
        out_dir: where overlays go (``out_dir/overlays``); needed when ``overlays`` is True.
        strict: raise on an unreadable image instead of skipping it.
        regressor: also report the named landmarks it predicts ("named_landmarks").

    Returns:
        (records, skipped): records = [{"file", "width", "height", "landmarks": [[x, y], ...]}
        (+ "named_landmarks")] in pixels of the original images; skipped = [{"file", "error"}].
    """
    from tqdm.auto import tqdm

    if overlays and out_dir is None:
        raise ValueError(f"{PROG}: out_dir is needed to write overlays")
    device = torch.device(device)
    names = overlay_names(files, root)
    records, skipped = [], []
    bar = tqdm(total=len(files), desc="detect", unit="img", disable=not progress)
    for start in range(0, len(files), batch_size):
        batch = []  # (file, PIL image, box)
        for f in files[start:start + batch_size]:
            try:
                im = load_image(f)
            except DetectError as e:
                if strict:
                    raise
                skipped.append({"file": str(f.relative_to(root)), "error": str(e)})
                print(f"{PROG}: warning: skipping {f}: {str(e).split(': ', 1)[-1]}", file=sys.stderr)
                bar.update(1)
                continue
            batch.append((f, im, crop_box(*im.size, crop=crop, scale=crop_scale)))
        if not batch:
            continue
        x = torch.stack([preprocess(im, image_size, box) for _, im, box in batch]).to(device)
        points = detector(x).points.float().cpu()  # (B, K, 2) normalised to the model input
        named = regressor(points) if regressor is not None else [None] * len(batch)  # (B, L, 2)
        for (f, im, box), p, n in zip(batch, points, named):
            pix = to_original_pixels(p, box, image_size)  # (K, 2) float64 original pixels
            rec = {"file": str(f.relative_to(root)), "width": im.size[0], "height": im.size[1],
                   "landmarks": [[_coord(a), _coord(b)] for a, b in pix]}
            if n is not None:
                rec["named_landmarks"] = [[_coord(a), _coord(b)] for a, b in to_original_pixels(n, box, image_size)]
            records.append(rec)
            if overlays:
                save_overlay(im, pix, Path(out_dir) / "overlays" / names[f], box=box)
            bar.update(1)
    bar.close()
    return records, skipped


def _coord(v) -> float | None:
    """A coordinate for the landmarks file: rounded to 0.01 px; None (JSON null, an empty CSV
    cell) when not finite, so that landmarks.json stays valid JSON."""
    v = float(v)
    return round(v, 2) if math.isfinite(v) else None


def write_landmarks(records: list[dict], out_dir, fmt: str = "json", meta: dict | None = None,
                    skipped: list[dict] | None = None) -> Path:
    """Write ``landmarks.json`` (with ``meta`` and the skipped files) or ``landmarks.csv``
    (one row per image: file, width, height, x0, y0, x1, y1, ..., then ``<name>_x, <name>_y``
    for the named landmarks when ``meta["named_landmark_names"]`` is given)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if fmt == "json":
        path = out / "landmarks.json"
        doc = dict(meta or {})
        doc["coordinates"] = ("(x, y) in pixels of the original (EXIF-upright) image; (0, 0) is the centre of "
                              "the top-left pixel, x right, y down")
        doc["images"] = records
        doc["skipped"] = skipped or []
        path.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    elif fmt == "csv":
        path = out / "landmarks.csv"
        K = max((len(r["landmarks"]) for r in records), default=0)
        names = [n.replace(" ", "_") for n in (meta or {}).get("named_landmark_names", [])]
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "width", "height"] + [f"{c}{k}" for k in range(K) for c in ("x", "y")]
                       + [f"{n}_{c}" for n in names for c in ("x", "y")])
            for r in records:
                w.writerow([r["file"], r["width"], r["height"]]
                           + ["" if v is None else f"{v:.2f}" for pt in r["landmarks"] for v in pt]
                           + ["" if v is None else f"{v:.2f}" for pt in r.get("named_landmarks", []) for v in pt])
    else:
        raise ValueError(f"{PROG}: format must be 'json' or 'csv', got {fmt!r}")
    return path


def load_detector(path: str, device, backend: str = "auto"):
    """(detector in eval mode on device running on ``backend``, its TrainConfig) from a training checkpoint."""
    from fastlmk.training.checkpoint import load_detector as load

    detector, config = load(path, map_location=device, backend=backend)
    return detector.to(device).eval(), config


# --- the library API ---------------------------------------------------------------------------
@dataclass
class Detections:
    """Landmarks of a batch, in pixels of the original images ((0, 0) = centre of the top-left pixel).

    points: (B, K, 2) float64, the discovered points; named: (B, L, 2) float64 named landmarks
    (None without a regressor); names: their L names; boxes: the crop box of each image.
    """
    points: torch.Tensor
    named: torch.Tensor | None
    names: list | None
    boxes: list


def _to_pil(image):
    """PIL image, (H, W, 3) uint8 array, or (3, H, W) float tensor in [0, 1] -> PIL RGB image."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"{PROG}: a tensor image must be (3, H, W) in [0, 1], got shape {tuple(image.shape)}")
        arr = image.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).expand(3, -1, -1)
        return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy())
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"{PROG}: an array image must be (H, W, 3) uint8, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"{PROG}: an array image must be uint8 (0-255), got {arr.dtype}")
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]))


class LandmarkDetector:
    """A trained detector, loaded once (see :func:`load`); call it on images or frames.

    Args:
        model: module with ``forward(images (B, 3, S, S)) -> object with .points (B, K, 2)``.
        image_size: S.
        regressor: optional :class:`Regressor` for the named landmarks.
        device: where the model runs.
        crop, crop_scale: the default region fed to the model (see :func:`crop_box`).
    """

    def __init__(self, model, image_size: int, regressor: Regressor | None = None, device="cpu",
                 crop: str = "none", crop_scale: float = 1.0, config=None, source: str = ""):
        crop_box(2, 2, crop, crop_scale)  # checks crop
        self.model, self.image_size, self.regressor = model, int(image_size), regressor
        self.device, self.crop, self.crop_scale = torch.device(device), crop, float(crop_scale)
        self.config, self.source = config, source

    @property
    def names(self) -> list | None:
        return self.regressor.names if self.regressor is not None else None

    def __repr__(self) -> str:
        named = f", named: {', '.join(self.names)}" if self.regressor is not None else ""
        return f"LandmarkDetector({self.source or 'model'}, {self.image_size}px, {self.device}{named})"

    @torch.no_grad()
    def __call__(self, images, crop: str | None = None, crop_scale: float | None = None) -> Detections:
        """Landmarks of one image or a list / batch of images (PIL, (H, W, 3) uint8 arrays, (3, H, W)
        or (B, 3, H, W) float tensors in [0, 1]); sizes may differ."""
        crop = self.crop if crop is None else crop
        crop_scale = self.crop_scale if crop_scale is None else crop_scale
        if isinstance(images, torch.Tensor) and images.dim() == 4:
            images = list(images)
        elif not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            return Detections(torch.zeros(0, 0, 2, dtype=torch.float64), None, self.names, [])
        inputs, boxes = zip(*(self.prepare(im, crop, crop_scale) for im in images))
        return self.detect_prepared(torch.stack(inputs), list(boxes))

    def prepare(self, image, crop: str | None = None, crop_scale: float | None = None):
        """One image -> (model input (3, S, S) float in [0, 1], its crop box in original pixels)."""
        im = _to_pil(image)
        box = crop_box(*im.size, crop=self.crop if crop is None else crop,
                       scale=self.crop_scale if crop_scale is None else crop_scale)
        return preprocess(im, self.image_size, box), box

    @torch.no_grad()
    def detect_prepared(self, x: torch.Tensor, boxes: list) -> Detections:
        """Landmarks from model inputs (B, 3, S, S) made by :meth:`prepare` and their boxes."""
        S = self.image_size
        points = self.model(x.to(self.device)).points.float().cpu()  # (B, K, 2) normalised to the model input
        pix = torch.stack([to_original_pixels(p, box, S) for p, box in zip(points, boxes)])
        named = None
        if self.regressor is not None:
            n = self.regressor(points)  # (B, L, 2) normalised
            named = torch.stack([to_original_pixels(q, box, S) for q, box in zip(n, boxes)])
        return Detections(pix, named, self.names, boxes)

    def video(self, path, out_dir, name: str | None = None, fmt: str = "json", overlay: bool = True,
              batch_size: int = 16, progress: bool = True) -> dict:
        """Landmarks of every frame of a video file; see :func:`detect_video`."""
        return detect_video(self, path, out_dir, name=name, fmt=fmt, overlay=overlay, batch_size=batch_size,
                            progress=progress)


def _find_eval_json(ckpt: Path) -> Path | None:
    """The run's eval.json: <run>/eval.json or <run>/eval/eval.json next to checkpoints/."""
    run = ckpt if ckpt.is_dir() else ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    for p in (run / "eval.json", run / "eval" / "eval.json"):
        if p.is_file():
            return p
    return None


def load(run_or_checkpoint, device=None, backend: str = "auto", regressor="auto", variant: str = "saic",
         crop: str = "none", crop_scale: float = 1.0) -> LandmarkDetector:
    """Load a trained run (its directory: the newest checkpoint) or a checkpoint file, once.

    Args:
        device: "cpu", "cuda", ... (default: cuda if available).
        regressor: "auto" (the run's eval.json when there is one), a path to an eval.json, or None.
        variant: which stored regressor ("saic" or "imm").
        crop, crop_scale: default region fed to the detector (:func:`crop_box`).
    """
    from fastlmk.training.config import check_device

    device = check_device(device or "auto")
    path = Path(run_or_checkpoint)
    if not path.exists():
        raise FileNotFoundError(f"{PROG}: checkpoint not found: {path}")
    reg = None
    if regressor == "auto":
        found = _find_eval_json(path)
        if found is not None:
            try:
                reg = Regressor.from_eval_json(found, variant)
            except DetectError:
                reg = None  # an eval.json without a regressor: points only
    elif regressor is not None:
        reg = Regressor.from_eval_json(regressor, variant)
    model, config = load_detector(str(path), device, backend)
    if reg is not None and reg.num_points != config.num_landmarks:
        raise DetectError(f"regressor {reg.source} expects {reg.num_points} discovered points, "
                          f"the detector gives {config.num_landmarks}")
    return LandmarkDetector(model, config.image_size, reg, device, crop, crop_scale, config, str(path))


# --- videos ------------------------------------------------------------------------------------
def list_inputs(input_path, recursive: bool = False) -> tuple[list[Path], list[Path], Path]:
    """(images, videos, the folder names are reported relative to): a file is a video when its
    extension is in :data:`VIDEO_EXTENSIONS`, else an image; a folder gives both kinds."""
    p = Path(input_path)
    if p.is_file():
        return ([], [p], p.parent) if p.suffix.lower() in VIDEO_EXTENSIONS else ([p], [], p.parent)
    if p.is_dir():
        it = p.rglob("*") if recursive else p.iterdir()
        files = sorted(f for f in it if f.is_file())
        images = [f for f in files if f.suffix.lower() in IMAGE_EXTENSIONS]
        videos = [f for f in files if f.suffix.lower() in VIDEO_EXTENSIONS]
        if not images and not videos:
            raise DetectError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) or videos "
                              f"({', '.join(VIDEO_EXTENSIONS)}) in folder {p}"
                              + ("" if recursive else " (use --recursive for subfolders)"))
        return images, videos, p
    raise DetectError(f"input not found: {p}")


def _even_size(W: int, H: int, max_size: int = 1024) -> tuple[int, int]:
    """The overlay video's size: the long side at most max_size, both sides even (yuv420p)."""
    s = min(1.0, max_size / max(W, H))
    return max(2, int(round(W * s / 2)) * 2), max(2, int(round(H * s / 2)) * 2)


def _draw(images: list, pixels: torch.Tensor, orig_sizes: list) -> list:
    """Draw (B, K, 2) points in pixels of frames of ``orig_sizes`` [(W, H)] on the (equal-size)
    small PIL frames -> (h, w, 3) uint8 arrays."""
    import numpy as np

    from fastlmk.viz import draw_landmarks

    W, H = (torch.tensor(v, dtype=torch.float64)[:, None] for v in zip(*orig_sizes))  # (B, 1)
    w, h = images[0].size
    # pixel positions scale about pixel-edge coordinates: X' + 0.5 = (X + 0.5) * w / W
    px = (pixels[..., 0] + 0.5) * (w / W) - 0.5
    py = (pixels[..., 1] + 0.5) * (h / H) - 0.5
    pts = to_normalised(torch.stack([px, py], -1).float(), w, h)
    t = torch.stack([torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1) for im in images])
    t = draw_landmarks(t.float().div_(255), pts, radius=max(2.0, min(w, h) / 60))
    return list(t.mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy())


def detect_video(det: LandmarkDetector, path, out_dir, name: str | None = None, fmt: str = "json",
                 overlay: bool = True, batch_size: int = 16, progress: bool = True) -> dict:
    """Landmarks of every frame of a video: ``out_dir/<name>.landmarks.json`` (or ``.csv``) and,
    with ``overlay``, ``out_dir/<name>.overlay.mp4`` (the frames with the points drawn).

    JSON: {"video", "width", "height", "fps", "num_frames", "image_size", "crop", "coordinates",
    ("named_landmark_names"), "frames": [{"frame", "time", "landmarks", ("named_landmarks")}]}.
    CSV: one row per frame: frame, time, x0, y0, ..., then <name>_x, <name>_y for named landmarks.
    Raises DetectError naming the file if it cannot be read or has no frame (nothing written then).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from fastlmk.data.video import _short, require_av

    try:
        av = require_av(path)
    except ImportError as e:
        raise DetectError(str(e).replace("fastlmk.data: ", "")) from None
    path, out = Path(path), Path(out_dir)
    name = name or path.stem
    if fmt not in ("json", "csv"):
        raise ValueError(f"{PROG}: format must be 'json' or 'csv', got {fmt!r}")
    try:
        container = av.open(str(path))
    except Exception as e:  # noqa: BLE001  (any FFmpeg / OS failure names the file)
        raise DetectError(f"cannot read video {path}: {_short(e)}") from None
    rows, writer, overlay_path = [], None, out / f"{name}.overlay.mp4"
    try:
        if not container.streams.video:
            raise DetectError(f"cannot read video {path}: no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else 25.0
        bar = tqdm(total=stream.frames or None, desc=f"detect {path.name}", unit="frame", disable=not progress)
        size = None
        pending = []  # (index, time, (model input, box), small PIL frame for the overlay, original size)

        def flush():
            nonlocal writer
            if not pending:
                return
            d = det.detect_prepared(torch.stack([f[0] for _, _, f, _, _ in pending]), [f[1] for _, _, f, _, _ in pending])
            for k, (t, ts, _, _, _) in enumerate(pending):
                row = {"frame": t, "time": round(ts, 4), "landmarks": [[_coord(a), _coord(b)] for a, b in d.points[k]]}
                if d.named is not None:
                    row["named_landmarks"] = [[_coord(a), _coord(b)] for a, b in d.named[k]]
                rows.append(row)
            if overlay:
                if writer is None:
                    writer = _VideoWriter(overlay_path, pending[0][3].size, fps)
                for arr in _draw([s for _, _, _, s, _ in pending], d.points, [wh for *_, wh in pending]):
                    writer.write(arr)
            bar.update(len(pending))
            pending.clear()

        try:
            for t, frame in enumerate(container.decode(stream)):
                im = frame.to_image()  # RGB, full size: one frame at a time, only its model input is kept
                if size is None:
                    size = im.size
                    out.mkdir(parents=True, exist_ok=True)
                    overlay_path.parent.mkdir(parents=True, exist_ok=True)
                small = im.resize(_even_size(*size), Image.Resampling.BILINEAR) if overlay else None
                ts = frame.time if frame.time is not None else t / fps
                pending.append((t, float(ts), det.prepare(im), small, im.size))
                del im
                if len(pending) >= batch_size:
                    flush()
            flush()
        except DetectError:
            raise
        except OSError:
            raise
        except Exception as e:  # noqa: BLE001  (a decoding failure mid-stream names the file)
            raise DetectError(f"cannot read video {path}: {_short(e)}") from None
        finally:
            bar.close()
        if not rows:
            raise DetectError(f"cannot read video {path}: no frames")
    finally:
        container.close()
        if writer is not None:
            writer.close()
    W, H = size
    names = det.names
    if fmt == "json":
        lm_path = out / f"{name}.landmarks.json"
        doc = {"video": str(path), "width": W, "height": H, "fps": fps, "num_frames": len(rows),
               "image_size": det.image_size, "crop": det.crop, "crop_scale": det.crop_scale,
               "coordinates": "(x, y) in pixels of the original frame; (0, 0) is the centre of the top-left pixel, "
                              "x right, y down; time in seconds"}
        if names is not None:
            doc["named_landmark_names"] = names
        doc["frames"] = rows
        lm_path.write_text(json.dumps(doc, allow_nan=False) + "\n")
    else:
        lm_path = out / f"{name}.landmarks.csv"
        K = len(rows[0]["landmarks"])
        cols = [n.replace(" ", "_") for n in (names or [])]
        with open(lm_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["frame", "time"] + [f"{c}{k}" for k in range(K) for c in ("x", "y")]
                       + [f"{n}_{c}" for n in cols for c in ("x", "y")])
            for r in rows:
                w.writerow([r["frame"], f"{r['time']:.4f}"]
                           + ["" if v is None else f"{v:.2f}" for pt in r["landmarks"] for v in pt]
                           + ["" if v is None else f"{v:.2f}" for pt in r.get("named_landmarks", []) for v in pt])
    return {"video": str(path), "frames": len(rows), "fps": fps, "width": W, "height": H, "landmarks": str(lm_path),
            "overlay": str(overlay_path) if overlay else None}


class _VideoWriter:
    """An mp4 writer (H.264 when this PyAV has libx264, else MPEG-4) of (h, w, 3) uint8 frames."""

    def __init__(self, path: Path, size, fps: float):
        import av
        from fractions import Fraction

        from fastlmk.data.synth_clips import video_codec

        self.av = av
        self.container = av.open(str(path), "w")
        codec = video_codec()
        self.stream = self.container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        self.stream.width, self.stream.height = size
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": "20", "preset": "fast"} if codec == "libx264" else {"qscale": "3"}
        self.size = tuple(size)

    def write(self, arr) -> None:
        import numpy as np
        from PIL import Image

        if (arr.shape[1], arr.shape[0]) != self.size:
            arr = np.asarray(Image.fromarray(arr).resize(self.size, Image.Resampling.BILINEAR))
        for pkt in self.stream.encode(self.av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
            self.container.mux(pkt)

    def close(self) -> None:
        for pkt in self.stream.encode():
            self.container.mux(pkt)
        self.container.close()
