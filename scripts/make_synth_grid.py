"""Write a grid of SynthFaces samples with their landmarks drawn: docs/synthfaces.png.

    PYTHONPATH=. python scripts/make_synth_grid.py [--out docs/synthfaces.png] [--rows 4] [--cols 8]
"""

import argparse

import numpy as np
from PIL import Image, ImageDraw

from fastlmk.data import SynthFaces

# one colour per MAFL landmark: left eye, right eye, nose, left mouth, right mouth
COLOURS = [(255, 60, 60), (60, 200, 255), (255, 230, 40), (80, 255, 80), (255, 80, 255)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="docs/synthfaces.png")
    ap.add_argument("--rows", type=int, default=4)
    ap.add_argument("--cols", type=int, default=8)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--split", default="train")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--zoom", type=int, default=2, help="upscale factor of each tile (nearest)")
    ap.add_argument("--no-landmarks", action="store_true")
    args = ap.parse_args()

    ds = SynthFaces(args.split, size=args.size, seed=args.seed)
    n = args.rows * args.cols
    # every 4th index: a new subject per tile (consecutive indices are views of one subject)
    idx = [i * ds.views_per_subject for i in range(n - args.cols)] + list(range(args.cols))
    b = ds.render(idx)
    S, z, pad = args.size, args.zoom, 4
    canvas = Image.new("RGB", (args.cols * (S * z + pad) + pad, args.rows * (S * z + pad) + pad), (255, 255, 255))
    for k in range(n):
        arr = (b["image"][k].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        tile = Image.fromarray(arr).resize((S * z, S * z), Image.NEAREST)
        if not args.no_landmarks:
            d = ImageDraw.Draw(tile)
            for j, (x, y) in enumerate(b["landmarks"][k].tolist()):
                px, py = (x + 1) / 2 * (S - 1) * z + z / 2, (y + 1) / 2 * (S - 1) * z + z / 2
                r = 1.6 * z
                d.ellipse([px - r, py - r, px + r, py + r], outline=COLOURS[j], width=max(1, z // 2))
        r_, c_ = divmod(k, args.cols)
        canvas.paste(tile, (pad + c_ * (S * z + pad), pad + r_ * (S * z + pad)))
    canvas.save(args.out)
    print(f"wrote {args.out} ({args.rows}x{args.cols}; last row: the 4 views of subjects 0 and 1)")


if __name__ == "__main__":
    main()
