"""The README's video figure: ``python -m fastlmk.detect`` overlay videos -> an animated GIF and a
strip of frames (PNG).

    PYTHONPATH=. python scripts/video_figure.py det/a.overlay.mp4 det/b.overlay.mp4 \
        --gif docs/video_detect.gif --png docs/video_detect.png [--every 2] [--frames 6]

The GIF plays the overlay videos side by side (every ``--every``-th frame); the PNG shows
``--frames`` evenly spaced frames of each video, one row per video.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
from PIL import Image


def read_frames(path: str) -> list[np.ndarray]:
    try:
        import av
    except ImportError:
        sys.exit('error: reading videos needs PyAV: pip install "fastlmk[video]"')
    with av.open(path) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", nargs="+")
    p.add_argument("--gif", required=True)
    p.add_argument("--png", required=True)
    p.add_argument("--every", type=int, default=2)
    p.add_argument("--frames", type=int, default=6)
    p.add_argument("--fps", type=float, default=12.5)
    a = p.parse_args(argv)
    clips = [read_frames(v) for v in a.videos]
    n = min(len(c) for c in clips)
    if n == 0:
        sys.exit("error: a video has no frames")
    side = [np.concatenate([c[t] for c in clips], axis=1) for t in range(0, n, a.every)]
    frames = [Image.fromarray(f).convert("P", palette=Image.ADAPTIVE, colors=128) for f in side]
    frames[0].save(a.gif, save_all=True, append_images=frames[1:], duration=int(1000 * a.every / a.fps),
                   loop=0, optimize=True)
    picks = np.linspace(0, n - 1, a.frames).round().astype(int)
    rows = [np.concatenate([c[t] for t in picks], axis=1) for c in clips]
    Image.fromarray(np.concatenate(rows, axis=0)).save(a.png)
    print(f"wrote {a.gif} ({len(frames)} frames) and {a.png} ({len(clips)} x {len(picks)} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
