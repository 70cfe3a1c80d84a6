"""Run a trained landmark detector on image files: ``python -m fastlmk.detect``.

    python -m fastlmk.detect --checkpoint runs/x/checkpoints/last.pt photos/ --out detections/

Each image is (optionally cropped, then) resized to the detector's input size S x S, the detector
gives K points in normalised coordinates of that input, and the points are mapped back to pixels
of the ORIGINAL image. Written into ``--out``:

* ``landmarks.json`` (or ``landmarks.csv`` with ``--format csv``): per image its file name,
  width, height and the K points (x, y) in pixels, where (0, 0) is the centre of the top-left
  pixel, x grows to the right and y downwards (images are first turned upright by their EXIF
  orientation, as viewers show them);
* with ``--regressor <eval dir>/eval.json``: also the 5 *named* landmarks (eyes, nose, mouth
  corners) predicted by the linear regressor the evaluation fitted for this checkpoint;
* ``overlays/<name>.png``: the image with the points drawn (one fixed colour per landmark index,
  as in every fastlmk picture).

Coordinate mapping: the model input pixel ``u = (x + 1) / 2 * (S - 1)`` (x in [-1, 1]); the
resize maps pixel-centre positions linearly (centre of input pixel u sits at ``u + 0.5`` in
units of S), so in the original image ``X = left + (u + 0.5) * box_width / S - 0.5`` for the crop
box (left, top, box_width, box_height) that was resized (the whole image by default).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

import torch

from fastlmk._cli import UsageError, add_backend_argument, check_backend, check_device, check_output_dir, run

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm")
PROG = "fastlmk.detect"


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
            names = doc.get("per_landmark", {}).get("names") or [f"landmark {i}" for i in range(len(b) // 2)]
        except (ValueError, KeyError, TypeError) as e:
            raise DetectError(f"{path} has no usable '{variant}' regressor (write it with python -m "
                              f"fastlmk.evaluate): {type(e).__name__}: {e}") from None
        if W.dim() != 2 or b.dim() != 1 or W.shape[1] != b.shape[0] or b.shape[0] % 2 or W.shape[0] % 2:
            raise DetectError(f"{path}: malformed '{variant}' regressor (W {tuple(W.shape)}, b {tuple(b.shape)})")
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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}",
                                description="Detect landmarks with a trained fastlmk detector; writes the "
                                            "landmarks (pixels of the original images) and overlay PNGs.")
    p.add_argument("input", help="an image file or a folder of images")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint written by python -m fastlmk.train, or a run directory (its newest checkpoint)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--format", choices=("json", "csv"), default="json", help="landmarks file format")
    p.add_argument("--crop", choices=("none", "center"), default="none",
                   help="region fed to the detector: the whole image (stretched to a square) or a centred square")
    p.add_argument("--crop-scale", type=float, default=1.0,
                   help="with --crop center: side = scale x the shorter image side "
                        "(0.8 matches the CelebA preprocessing)")
    p.add_argument("--regressor", default=None, metavar="EVAL_JSON",
                   help="also output the 5 named landmarks, with the regressor stored in an eval.json "
                        "written by python -m fastlmk.evaluate for this checkpoint")
    p.add_argument("--variant", choices=("saic", "imm"), default="saic", help="which regressor of --regressor")
    p.add_argument("--recursive", action="store_true", help="also process images in subfolders")
    p.add_argument("--no-overlays", action="store_true", help="write only the landmarks file")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if available)")
    add_backend_argument(p)
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.batch_size < 1:
        raise UsageError(f"{PROG}: error: --batch-size must be >= 1, got {args.batch_size}")
    if not 0 < args.crop_scale <= 1:
        raise UsageError(f"{PROG}: error: --crop-scale must be in (0, 1], got {args.crop_scale}")
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise UsageError(f"{PROG}: error: checkpoint not found: {ckpt}")
    try:
        files, root = list_images(args.input, recursive=args.recursive)
    except DetectError as e:
        raise UsageError(f"{PROG}: error: {e}") from None
    single = Path(args.input).is_file()
    regressor = None
    if args.regressor:
        try:
            regressor = Regressor.from_eval_json(args.regressor, args.variant)
        except DetectError as e:
            raise UsageError(f"{PROG}: error: {e}") from None
    device = check_device(PROG, args.device)
    check_backend(PROG, args.backend, device)
    check_output_dir(PROG, "--out", args.out)  # now, not after the whole folder
    try:
        detector, config = load_detector(str(ckpt), device, args.backend)
    except (FileNotFoundError, ValueError) as e:  # load_detector's errors name the file already
        raise UsageError(f"{PROG}: error: {e}") from None
    except Exception as e:  # the CLI boundary: any other loading failure as one clear line
        raise UsageError(f"{PROG}: error: cannot load checkpoint {ckpt}: {type(e).__name__}: {e}") from None

    size = config.image_size
    try:
        records, skipped = detect_images(detector, files, root, size, out_dir=args.out, device=device,
                                         batch_size=args.batch_size, crop=args.crop, crop_scale=args.crop_scale,
                                         overlays=not args.no_overlays, progress=not args.no_progress,
                                         strict=single, regressor=regressor)
    except DetectError as e:
        raise UsageError(f"{PROG}: error: {e}") from None
    if not records:
        raise UsageError(f"{PROG}: error: none of the {len(files)} images in {args.input} could be read")
    meta = {"checkpoint": str(ckpt), "image_size": size, "num_landmarks": len(records[0]["landmarks"]),
            "crop": args.crop, "crop_scale": args.crop_scale}
    if regressor is not None:
        meta.update(regressor=regressor.source, regressor_variant=args.variant, named_landmark_names=regressor.names)
    path = write_landmarks(records, args.out, args.format, meta, skipped)
    msg = f"{PROG}: {len(records)} image(s) -> {path}"
    if not args.no_overlays:
        msg += f" and {Path(args.out) / 'overlays'}/"
    if skipped:
        msg += f"; skipped {len(skipped)} unreadable image(s)"
    print(msg, file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
