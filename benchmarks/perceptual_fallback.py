"""Choose the perceptual-loss fallback (no VGG weights) by landmark error at equal budget.

Trains one short run per candidate of fastlmk.training.losses.PERCEPTUAL (minus "vgg") on SynthFaces with
the same seed, steps and everything else, evaluates each with fastlmk.evaluate, and prints a
markdown table (forward error, % of inter-ocular distance; lower is better).

    PYTHONPATH=. python benchmarks/perceptual_fallback.py --steps 300 [--flags passed to fastlmk.train]
"""

import argparse
import json
import os
import subprocess
import sys
import time

CANDIDATES = ("none", "random-conv", "ssim", "laplacian")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", default="runs/perceptual_fallback")
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    args, train_flags = p.parse_known_args()
    rows = []
    for kind in args.candidates.split(","):
        cmd = [sys.executable, "-m", "fastlmk.train", "--perceptual", kind, "--out-dir", args.out_dir,
               "--run-name", kind, *train_flags]
        print("$", " ".join(cmd[1:]), flush=True)
        t0 = time.time()
        subprocess.run(cmd, check=True)
        with open(os.path.join(args.out_dir, kind, "eval.json")) as f:
            ev = json.load(f)
        rows.append((kind, ev["forward"]["imm"], ev["forward"]["saic"], ev["mean_shape"], time.time() - t0))
    print("\n| perceptual | forward error IMM (%) | forward error SAIC (%) | mean-shape baseline (%) | wall (s) |")
    print("|---|---|---|---|---|")
    for kind, imm, saic, ms, wall in rows:
        print(f"| {kind} | {imm:.2f} | {saic:.2f} | {ms:.2f} | {wall:.0f} |")


if __name__ == "__main__":
    main()
