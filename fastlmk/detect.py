"""Run a trained landmark detector on images and videos: ``python -m fastlmk.detect``.

    python -m fastlmk.detect --checkpoint runs/x photos/ --out detections/
    python -m fastlmk.detect --checkpoint runs/x clip.mp4 --out det/

The work is done by :mod:`fastlmk.detection` (the library API: ``fastlmk.detection.load(run)``);
this module parses the arguments, checks them before anything is written, and calls it.

Images: each is (optionally cropped, then) resized to the detector's input size S x S and the
points are mapped back to pixels of the ORIGINAL image. Written into ``--out``:

* ``landmarks.json`` (or ``landmarks.csv`` with ``--format csv``): per image its file name,
  width, height and the K points (x, y) in pixels, where (0, 0) is the centre of the top-left
  pixel, x grows to the right and y downwards (images are first turned upright by their EXIF
  orientation, as viewers show them);
* with ``--regressor <eval dir>/eval.json``: also the 5 *named* landmarks (eyes, nose, mouth
  corners) predicted by the linear regressor the evaluation fitted for this checkpoint;
* ``overlays/<name>.png``: the image with the points drawn (one fixed colour per landmark index,
  as in every fastlmk picture).

Videos (``.mp4 .m4v .mov .avi .mkv .webm``; PyAV: ``pip install "fastlmk[video]"``), a file or
the videos in a folder: ``<name>.landmarks.json`` (or ``.csv``) with per frame its index, time
stamp (seconds) and points, and ``<name>.overlay.mp4``, the video with the points drawn.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch  # noqa: F401  (the detection module's tensors)

from fastlmk._cli import UsageError, add_backend_argument, check_backend, check_device, check_output_dir, run
from fastlmk.detection import (IMAGE_EXTENSIONS, PROG, VIDEO_EXTENSIONS, DetectError, Detections,  # noqa: F401
                               LandmarkDetector, Regressor, crop_box, detect_images, detect_video, list_images,
                               list_inputs, load_image, overlay_names, preprocess, save_overlay, to_normalised,
                               to_original_pixels, write_landmarks)
from fastlmk.detection import load_detector  # noqa: F401  (looked up here by main: tests replace it)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}",
                                description="Detect landmarks with a trained fastlmk detector; writes the "
                                            "landmarks (pixels of the original images or frames) and overlays (PNGs, mp4 for videos).")
    p.add_argument("input", help="an image or video file, or a folder of images and / or videos")
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
        files, videos, root = list_inputs(args.input, recursive=args.recursive)
    except DetectError as e:
        raise UsageError(f"{PROG}: error: {e}") from None
    single = Path(args.input).is_file()
    if videos:
        from fastlmk.data.video import require_av

        try:
            require_av(videos[0])
        except ImportError as e:
            raise UsageError(f"{PROG}: error: {str(e).replace('fastlmk.data: ', '')}") from None
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
    try:
        Path(args.out).mkdir(parents=True, exist_ok=True)
    except OSError as e:  # e.g. /proc/x: the check above cannot see every file system's rules
        raise UsageError(f"{PROG}: error: --out {args.out}: cannot create it ({e.strerror or e})") from None
    try:
        return _work(args, detector, config, regressor, device, files, videos, root, single)
    except DetectError as e:
        raise UsageError(f"{PROG}: error: {e}") from None
    except OSError as e:  # a write that fails after all (read-only or full file system)
        where = e.filename or args.out
        raise UsageError(f"{PROG}: error: cannot write {where} (--out {args.out}): {e.strerror or e}") from None


def _work(args, detector, config, regressor, device, files, videos, root, single) -> int:
    size = config.image_size
    msgs, n_ok = [], 0
    if files:
        records, skipped = detect_images(detector, files, root, size, out_dir=args.out, device=device,
                                         batch_size=args.batch_size, crop=args.crop, crop_scale=args.crop_scale,
                                         overlays=not args.no_overlays, progress=not args.no_progress,
                                         strict=single, regressor=regressor)
        if not records and not videos:
            raise DetectError(f"none of the {len(files)} images in {args.input} could be read")
        if records:
            meta = {"checkpoint": str(args.checkpoint), "image_size": size,
                    "num_landmarks": len(records[0]["landmarks"]), "crop": args.crop, "crop_scale": args.crop_scale}
            if regressor is not None:
                meta.update(regressor=regressor.source, regressor_variant=args.variant,
                            named_landmark_names=regressor.names)
            path = write_landmarks(records, args.out, args.format, meta, skipped)
            msg = f"{len(records)} image(s) -> {path}"
            if not args.no_overlays:
                msg += f" and {Path(args.out) / 'overlays'}/"
            if skipped:
                msg += f"; skipped {len(skipped)} unreadable image(s)"
            msgs.append(msg)
            n_ok += 1
    if videos:
        det = LandmarkDetector(detector, size, regressor, device, args.crop, args.crop_scale, config, str(args.checkpoint))
        done, failed = [], []
        for v in videos:
            name = str(v.relative_to(root).with_suffix(""))
            try:
                done.append(detect_video(det, v, args.out, name=name, fmt=args.format, overlay=not args.no_overlays,
                                         batch_size=args.batch_size, progress=not args.no_progress))
            except DetectError as e:
                if single:
                    raise
                failed.append(v)
                print(f"{PROG}: warning: skipping video {v}: {str(e).split(': ', 1)[-1]}", file=sys.stderr)
        if not done and not n_ok:
            raise DetectError(f"none of the {len(videos)} videos in {args.input} could be read")
        if done:
            frames = sum(r["frames"] for r in done)
            msg = f"{len(done)} video(s), {frames} frames -> {Path(args.out)}/<name>.landmarks.{args.format}"
            if not args.no_overlays:
                msg += " and <name>.overlay.mp4"
            if failed:
                msg += f"; skipped {len(failed)} unreadable video(s)"
            msgs.append(msg)
    print(f"{PROG}: " + "; ".join(msgs), file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
