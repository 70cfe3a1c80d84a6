"""Is a trained detector learning landmarks? Three numbers that move long before the regression does.

For a checkpoint trained on SynthFaces (its image size is read from the config):

* spread: per discovered point, the std of its position over test images (normalised units);
  ~0 = the point does not move (collapsed), far above the annotations' spread = it jumps around;
* equivariance error: warp test images with random TPS (the training recipe) and map the points
  found on the warped image back with the same spline; median distance, in pixels, to the points
  found on the unwarped image. A detector that ignores the image scores about the warp's own
  displacement (printed as "constant points"); a detector that tracks the image scores ~0;
* the regression error of fastlmk.evaluate (IMM and SAIC variants) on a small split.

    PYTHONPATH=. python benchmarks/diagnose_detector.py runs/<run> [--train 1000 --test 500]
"""

import argparse

import torch

import fastlmk
from fastlmk.training.checkpoint import load_detector, resolve_checkpoint
from fastlmk.data import TPSPairs, build_dataset
from fastlmk.evaluate import extract_points, mean_shape_baseline, regression_errors


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="checkpoint file or run directory")
    p.add_argument("--train", type=int, default=1000, help="training images for the regressor")
    p.add_argument("--test", type=int, default=500, help="test images")
    p.add_argument("--warped", type=int, default=64, help="test images for the equivariance error")
    p.add_argument("--threads", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    det, cfg = load_detector(resolve_checkpoint(args.checkpoint))
    S, kw = cfg.image_size, cfg.dataset_kwargs("synth")
    train_set, test_set = build_dataset("synth", split="train", **kw), build_dataset("synth", split="test", **kw)
    sub = lambda ds, n: torch.utils.data.Subset(ds, range(min(n, len(ds))))  # noqa: E731
    with torch.no_grad():
        ptr, gtr = extract_points(lambda x: det(x).points, sub(train_set, args.train), progress=False)
        pte, gte = extract_points(lambda x: det(x).points, sub(test_set, args.test), progress=False)
        print("spread of each point over test images:", [round(v, 3) for v in pte.std(0).mean(1).tolist()],
              f"(annotations: {gte.std(0).mean(1).mean():.3f})")
        for v in ("imm", "saic"):
            print(f"regression error {v.upper()}: {float(regression_errors(ptr, gtr, pte, gte, gte, v).mean()):.2f} %")
        print(f"mean-shape baseline: {mean_shape_baseline(gtr, gte):.2f} %")
        images = torch.stack([test_set[i]["image"] for i in range(min(args.warped, len(test_set)))])
        pairs = TPSPairs(grid_size=cfg.tps_grid, rotation_std=cfg.rotation_std, scale_std=cfg.scale_std,
                         translation_std=cfg.translation_std, warp_std=cfg.warp_std,
                         extra_warp_prob=cfg.extra_warp_prob)(images, generator=torch.Generator().manual_seed(0))
        mu, mu_warped = det(images).points, det(pairs.x).points
        px = (S - 1) / 2
        err = (fastlmk.tps_transform_points(mu_warped, pairs.tps) - mu).norm(dim=-1).median(0).values * px
        const = (fastlmk.tps_transform_points(mu, pairs.tps) - mu).norm(dim=-1) * px
        print("equivariance error, median px per point:", [round(v, 2) for v in err.tolist()],
              f"mean {float(err.mean()):.2f} (constant points: {float(const.median()):.2f})")


if __name__ == "__main__":
    main()
