"""A picture of what a trained detector finds on SynthFaces test faces.

Three rows of the same test images: the K discovered points (one colour per point: the same
colour should sit on the same facial spot in every face), the 5 landmarks regressed from them
(SAIC regressor fitted on training images), and the annotated landmarks.

    PYTHONPATH=. python scripts/landmark_figure.py runs/<run> --out docs/default_run_landmarks.png
"""

import argparse
import os

import torch

from fastlmk.training.checkpoint import load_detector, resolve_checkpoint
from fastlmk.data import build_dataset
from fastlmk.evaluate import DEFAULT_RIDGE, apply_linear, extract_points, fit_linear
from fastlmk.viz import save_grid


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("--out", required=True, help="PNG to write (an existing file is an error unless --force)")
    p.add_argument("--train", type=int, default=2000, help="training images for the regressor")
    p.add_argument("--count", type=int, default=8, help="test faces shown")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    args = p.parse_args(argv)
    if os.path.exists(args.out) and not args.force:
        raise SystemExit(f"error: --out {args.out} exists (use --force to overwrite)")
    det, cfg = load_detector(resolve_checkpoint(args.checkpoint))
    kw = cfg.dataset_kwargs("synth")
    train = torch.utils.data.Subset(build_dataset("synth", split="train", **kw), range(args.train))
    test = build_dataset("synth", split="test", **kw)
    with torch.no_grad():
        X, Y = extract_points(lambda x: det(x).points, train, progress=False)
        W, b = fit_linear(X.flatten(1), Y.flatten(1), bias=True, ridge=DEFAULT_RIDGE)
        batch = test.render(range(args.count))
        pts = det(batch["image"]).points
        reg = apply_linear(pts.flatten(1), W, b).view(-1, 5, 2).float()
    imgs = batch["image"]
    save_grid([imgs, imgs, imgs], args.out, points=[pts, reg, batch["landmarks"]], cell_size=128,
              row_titles=[f"{pts.shape[1]} discovered points", "5 regressed landmarks", "annotated landmarks"])
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
