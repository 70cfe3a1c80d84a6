"""Write data sets as ordinary image files: ``python -m fastlmk.export <subcommand> DIR`` (docs/data.md).

    python -m fastlmk.export synth synth_aligned/ --split train --num 10000 --size 64 --pose aligned

``synth`` writes SynthFaces as ``DIR/images/000000.png, ...`` (file ``i`` is item ``i`` of the
split, the same image ``build_dataset("synth", split=..., size=..., pose=...)`` renders, rounded
to 8 bits) and ``DIR/landmarks.csv`` (a header row, then per image its file name and x, y of the
5 landmarks in pixels of that image, MAFL order, (0, 0) = the centre of the top-left pixel:
``u = (x + 1) / 2 * (S - 1)`` for fastlmk's [-1, 1]), plus ``DIR/export.json`` (the settings). So
``python -m fastlmk.train --dataset folder --data-root DIR`` trains on the images the in-memory
split gives, and ``python -m fastlmk.evaluate --dataset folder --data-root DIR`` evaluates with
the landmarks (:class:`fastlmk.data.ImageFolder` reads them).

Subcommands are registered in :data:`SUBCOMMANDS` (name -> help, add_arguments, run); a new one
adds an entry and its two functions, and can use the helpers here (:func:`prepare_output_dir`,
:func:`to_uint8`, :func:`to_pixels`, :func:`PngWriter`).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from fastlmk._cli import UsageError, check_output_dir, run
from fastlmk.data import synth_clips as _synth_clips

PROG = "fastlmk.export"
_NUMBERED_PNG = re.compile(r"\d+\.png")  # the file names an export writes into DIR/images


# --- helpers shared by the subcommands -----------------------------------------------------------
def prepare_output_dir(prog: str, path, force: bool) -> list[Path]:
    """Check that ``path`` can take an export before anything is written (UsageError otherwise):
    a writable directory (or creatable), empty unless ``force``. Returns the numbered PNGs of an
    earlier export in ``path/images`` (``force`` only), for the caller to replace."""
    check_output_dir(prog, "DIR", path)
    path = Path(path)
    if not path.is_dir() or not any(path.iterdir()):
        return []
    if not force:
        raise UsageError(f"{prog}: error: DIR {path} is not empty (pass --force to write into it)")
    images = path / "images"
    return sorted(p for p in images.iterdir() if _NUMBERED_PNG.fullmatch(p.name)) if images.is_dir() else []


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) float in [0, 1] -> (B, S, S, 3) uint8, rounded to nearest (what loading the PNG
    back and dividing by 255 gives)."""
    return images.detach().mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def to_pixels(points: torch.Tensor, size: int) -> np.ndarray:
    """(..., 2) fastlmk coordinates in [-1, 1] (align_corners) -> pixels of an S x S image,
    (0, 0) = the centre of the top-left pixel: ``u = (x + 1) / 2 * (S - 1)``."""
    return (points.detach().double().cpu().numpy() + 1.0) * 0.5 * (size - 1)


class PngWriter:
    """Writes PNGs (Pillow) on a background thread, so the encoding overlaps the next batch's
    rendering (Pillow's encoder releases the GIL); at most two batches wait. A context manager:
    leaving it waits for every file and re-raises a write error."""

    def __init__(self, compress_level: int = 1):
        self.compress_level = compress_level  # zlib level 1: ~2x faster than Pillow's 6, files ~10 % larger
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending = []

    def _write(self, arrays, paths):
        from PIL import Image

        for a, p in zip(arrays, paths):
            Image.fromarray(a).save(p, format="PNG", compress_level=self.compress_level)
        return len(paths)

    def submit(self, arrays: np.ndarray, paths: list[Path], done=None) -> None:
        """Write ``arrays[i]`` ((S, S, 3) uint8) to ``paths[i]``; ``done(len(paths))`` is called on
        this thread once the batch is written."""
        while len(self._pending) >= 2:
            self._finish(self._pending.pop(0))
        self._pending.append((self._pool.submit(self._write, arrays, paths), done))

    @staticmethod
    def _finish(entry) -> None:
        future, done = entry
        n = future.result()  # re-raises a write error here
        if done is not None:
            done(n)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        try:
            while self._pending:
                entry = self._pending.pop(0)
                if exc_type is None:
                    self._finish(entry)
                else:
                    entry[0].cancel()
        finally:
            self._pool.shutdown(wait=True)
        return False


# --- synth ----------------------------------------------------------------------------------------
def synth_defaults() -> dict:
    """The image size and pose of the default training run (the cpu preset), the export's defaults."""
    from fastlmk.training.config import preset

    cfg = preset("cpu")
    return {"size": cfg.image_size, "pose": cfg.synth_pose}


def export_synth(out_dir, split: str = "train", num: int | None = None, size: int = 64, pose: str = "aligned",
                 seed: int = 0, batch_size: int = 32, threads: int = 1, progress: bool = True,
                 stale: list[Path] | None = None) -> dict:
    """Write SynthFaces items ``0 .. num - 1`` of ``split`` to ``out_dir`` (images/, landmarks.csv,
    export.json); see the module docstring. The caller checks ``out_dir`` first
    (:func:`prepare_output_dir`); ``stale``: earlier numbered PNGs to delete if not rewritten.

    Args:
        num: images (default: the split's default length, 20,000 train / 2,000 val or test).
        size, pose, seed: as :class:`fastlmk.data.SynthFaces` (``build_dataset("synth", ...)``
            with the same values gives the same images).
        batch_size: images rendered per call; threads: torch CPU threads while rendering (1 is
            the fastest on a busy machine; the setting is restored afterwards).

    Returns:
        {"images": n, "dir", "csv", "seconds", "images_per_s"}.
    """
    from tqdm.auto import tqdm

    from fastlmk.data import LANDMARK_NAMES, SynthFaces
    from fastlmk.data.folder import LANDMARKS_CSV, write_landmarks_csv

    ds = SynthFaces(split=split, size=size, length=num, seed=seed, pose=pose)  # the build_dataset("synth") defaults
    n = len(ds)
    out = Path(out_dir)
    images = out / "images"
    images.mkdir(parents=True, exist_ok=True)
    width = max(6, len(str(max(n - 1, 0))))
    names = [f"images/{i:0{width}d}.png" for i in range(n)]
    pixels = np.empty((n, len(LANDMARK_NAMES), 2), dtype=np.float64)
    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    bar = tqdm(total=n, desc=f"export synth {split}", unit="img", disable=not progress)
    try:
        with PngWriter() as writer:
            for start in range(0, n, batch_size):
                idx = list(range(start, min(n, start + batch_size)))
                batch = ds.render(idx)
                pixels[idx[0]: idx[-1] + 1] = to_pixels(batch["landmarks"], size)
                writer.submit(to_uint8(batch["image"]), [out / names[i] for i in idx], done=bar.update)
    finally:
        torch.set_num_threads(threads_before)
        bar.close()
    written = {out / name for name in names}
    removed = [p for p in (stale or []) if p not in written]
    for p in removed:
        p.unlink(missing_ok=True)
    csv_path = write_landmarks_csv(out / LANDMARKS_CSV, names, pixels)
    seconds = time.perf_counter() - t0
    meta = {"dataset": "synth", "split": split, "num": n, "size": size, "pose": pose, "seed": seed,
            "same_as": f"fastlmk.data.build_dataset('synth', split={split!r}, size={size}, pose={pose!r}, "
                       f"seed={seed}, length={n})",
            "landmarks": "landmarks.csv: x, y in pixels, (0, 0) = centre of the top-left pixel, MAFL order: "
                         + ", ".join(LANDMARK_NAMES)}
    (out / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {"images": n, "dir": str(out), "csv": str(csv_path), "removed": len(removed), "seconds": seconds,
            "images_per_s": n / seconds if seconds > 0 else float("inf")}


def _add_synth(p: argparse.ArgumentParser) -> None:
    from fastlmk.data.synth import POSES

    d = synth_defaults()
    p.add_argument("dir", metavar="DIR", help="output folder (created; must be empty unless --force)")
    p.add_argument("--split", choices=("train", "val", "test"), default="train",
                   help="SynthFaces split (disjoint subjects; default train)")
    p.add_argument("--num", type=int, default=None,
                   help="number of images, items 0 .. N-1 of the split (default: the split's length, "
                        "20,000 train / 2,000 val or test)")
    p.add_argument("--size", type=int, default=d["size"],
                   help=f"image side in pixels (default {d['size']}, the default run's --image-size)")
    p.add_argument("--pose", choices=POSES, default=d["pose"],
                   help=f"pose regime (default {d['pose']}, the default run's --synth-pose)")
    p.add_argument("--seed", type=int, default=0, help="SynthFaces seed (default 0, the one training uses)")


def _run_synth(args) -> int:
    if args.num is not None and args.num < 1:
        raise UsageError(f"{PROG}: error: --num must be >= 1, got {args.num}")
    if args.size < 16:
        raise UsageError(f"{PROG}: error: --size must be >= 16, got {args.size}")
    stale = prepare_output_dir(PROG, args.dir, args.force)
    r = export_synth(args.dir, split=args.split, num=args.num, size=args.size, pose=args.pose, seed=args.seed,
                     threads=args.threads, progress=not args.no_progress, stale=stale)
    extra = f"; removed {r['removed']} image(s) of an earlier export" if r["removed"] else ""
    print(f"{PROG}: {r['images']} SynthFaces {args.split} images ({args.size}x{args.size}, {args.pose}, seed "
          f"{args.seed}) -> {Path(args.dir) / 'images'}/ and {r['csv']} in {r['seconds']:.1f} s "
          f"({r['images_per_s']:.0f} images/s){extra}", file=sys.stderr)
    return 0


# --- the command ----------------------------------------------------------------------------------
# name -> (one-line help, add_arguments(parser), run(args) -> exit status); options every
# subcommand gets (--force, --threads, --no-progress) are added by _parser
SUBCOMMANDS = {
    "synth": ("write SynthFaces images and their landmarks (landmarks.csv)", _add_synth, _run_synth),
    "synth-clips": (_synth_clips.HELP, _synth_clips.add_arguments, _synth_clips.run_command),  # fastlmk/data/synth_clips.py
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python -m {PROG}",
                                description="Write a data set as ordinary files with their landmarks, for "
                                            "fastlmk's data sets (synth: DIR/images/*.png + DIR/landmarks.csv, "
                                            "which --dataset folder reads) or any other tool.")
    sub = p.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    for name, (help_, add_arguments, run_) in SUBCOMMANDS.items():
        sp = sub.add_parser(name, help=help_, description=help_)
        add_arguments(sp)
        sp.add_argument("--force", "--overwrite", dest="force", action="store_true",
                        help="write into a non-empty DIR (replacing the numbered PNGs of an earlier export)")
        sp.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads for rendering (default 1: the fastest on a busy machine)")
        sp.add_argument("--no-progress", action="store_true", help="no progress bar")
        sp.set_defaults(_run=run_)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.threads < 1:
        raise UsageError(f"{PROG}: error: --threads must be >= 1, got {args.threads}")
    return args._run(args)


if __name__ == "__main__":
    run(main)
