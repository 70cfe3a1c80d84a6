"""SynthFaces clips: smooth sequences of one subject, written as real video files with per-frame
landmarks (``python -m fastlmk.export synth-clips DIR``; the tests' fixture and a demo data set).

A clip of subject ``s`` is rendered by :func:`~fastlmk.data.synth.render_faces` from parameters
that drift over time. Identity, background, head placement (in-plane rotation, scale,
translation) and lighting stay those of the subject's view 0 (``sample_params(...,
static_background=True, static_pose=True)``, the frames of a talking-head video, as the `motion`
pairs of the default recipe). The *motion* parameters -- yaw, smile, mouth opening, brow raise
and the eye openness -- pass through keyframes, one every ``keyframe_every`` frames (keyframe
``k`` = the subject's view ``k``, so each keyframe is an independent SynthFaces view), and are
interpolated between them with smoothstep weights ``w = 3f^2 - 2f^3`` (continuous, with zero
velocity at the keyframes; never outside the range of the two keyframes). Blinks are events:
each frame starts one with probability ``blink_rate`` (a hash of seed, subject and frame) and
the eyes close and reopen over 5 frames. The landmarks of every frame are exact (the
parameters' forward map, as for SynthFaces).

Files per clip ``i`` (``clip_0000.mp4`` ...): the video (H.264 ``libx264`` when this PyAV build
has it, else MPEG-4 Part 2; ``yuv420p``, ``fps`` frames per second) and ``clip_0000.csv``:
``frame, time, left_eye_x, left_eye_y, ..., right_mouth_y`` in pixels of the frame, (0, 0) the
centre of the top-left pixel (the format :class:`fastlmk.data.VideoClips` reads beside a clip).
"""

from __future__ import annotations

import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fastlmk.data.synth import POSES, _hash, render_faces, sample_params, tune_malloc

__all__ = ["clip_params", "render_clip", "video_codec", "write_video", "export_clips", "MOTION_KEYS"]

# the view parameters that move during a clip (the rest are the subject's view 0)
MOTION_KEYS = ("yaw", "smile", "mouth_open", "brow_raise", "eye_open")
_BLINK = (0.55, 0.12, 0.0, 0.3, 0.75)  # eye openness factor over the frames of a blink
HELP = "write SynthFaces video clips (mp4, one subject each, pose and expression drifting) and per-frame landmarks"


def _subject(split: str, clip: int) -> int:
    """The subject id of clip ``clip``: as SynthFaces numbers them (train even, test odd, val negative)."""
    return -1 - clip if split == "val" else 2 * clip + (split == "test")


def clip_params(seed: int, split: str, subject: int, frames: int, pose: str = "aligned", keyframe_every: int = 12,
                blink_rate: float = 0.02) -> dict:
    """Parameters of the ``frames`` frames of one clip (a :func:`sample_params` dict with batch dim = frames)."""
    if frames < 1:
        raise ValueError(f"synth clips: frames must be >= 1, got {frames}")
    if keyframe_every < 1:
        raise ValueError(f"synth clips: keyframe_every must be >= 1, got {keyframe_every}")
    K = (frames - 1) // keyframe_every + 2  # keyframes 0 .. K-1 cover frames 0 .. frames-1
    keys = sample_params(seed, split, [subject] * K, list(range(K)), pose, static_background=True, static_pose=True)
    # keyframes hold open eyes (blinks are events below): a keyframe that drew a blink keeps the eyes open
    keys["eye_open"] = torch.where(keys["eye_open"] < 0.5, torch.full_like(keys["eye_open"], 0.9), keys["eye_open"])
    t = torch.arange(frames, dtype=torch.float64) / keyframe_every
    k0 = t.floor().long()
    f = t - k0
    w = (f * f * (3 - 2 * f)).float()  # smoothstep
    p = {key: val[[0] * frames].clone() for key, val in keys.items()}  # every frame = view 0 ...
    for key in MOTION_KEYS:  # ... but the motion parameters, between keyframes k0 and k0 + 1
        a, b = keys[key][k0], keys[key][k0 + 1]
        p[key] = a + (b - a) * w
    factor = torch.ones(frames)
    t_frame = 0
    while t_frame < frames:
        u = (_hash("blink", seed, split, subject, t_frame) % 1_000_000) / 1_000_000
        if u < blink_rate:
            for j, v in enumerate(_BLINK):
                if t_frame + j < frames:
                    factor[t_frame + j] = v
            t_frame += len(_BLINK) + 3  # a blink, then at least 3 open frames
        else:
            t_frame += 1
    p["eye_open"] = p["eye_open"] * factor
    return p


def render_clip(seed: int, split: str, clip: int, frames: int, size: int, pose: str = "aligned", keyframe_every: int = 12,
                batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (images (frames, 3, S, S) float in [0, 1], landmarks (frames, 5, 2) in [-1, 1])."""
    tune_malloc()
    p = clip_params(seed, split, _subject(split, clip), frames, pose, keyframe_every)
    imgs, pts = [], []
    for s in range(0, frames, batch_size):
        img, lm, _ = render_faces({k: v[s:s + batch_size] for k, v in p.items()}, size)
        imgs.append(img)
        pts.append(lm)
    return torch.cat(imgs), torch.cat(pts)


def video_codec() -> str:
    """``libx264`` (H.264) when this PyAV build can encode it, else ``mpeg4``."""
    import av

    return "libx264" if "libx264" in av.codecs_available else "mpeg4"


def write_video(path, frames_uint8: np.ndarray, fps: int = 25, codec: str | None = None) -> str:
    """Write (T, H, W, 3) uint8 frames as a video file (yuv420p: H and W even). Returns the codec."""
    import av

    codec = codec or video_codec()
    T, H, W, _ = frames_uint8.shape
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = W, H, "yuv420p"
        # near-lossless at these small sizes: the landmarks are exact, the pixels should be too
        s.options = {"crf": "16", "preset": "fast"} if codec == "libx264" else {"qscale": "2"}
        for t in range(T):
            for pkt in s.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frames_uint8[t]), format="rgb24")):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return codec


def write_landmarks(path, pixels: np.ndarray, fps: int) -> None:
    """``frame, time, <name>_x, <name>_y, ...`` rows, (T, 5, 2) pixel coordinates."""
    from fastlmk.data.video import landmark_columns

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["frame", "time"] + landmark_columns())
        for t, pts in enumerate(pixels):
            w.writerow([t, f"{t / fps:.4f}"] + [f"{v:.3f}" for v in pts.reshape(-1)])


def export_clips(out_dir, num: int = 8, frames: int = 100, size: int = 128, pose: str = "aligned", seed: int = 0,
                 split: str = "train", fps: int = 25, keyframe_every: int = 12, threads: int = 1,
                 progress: bool = True) -> dict:
    """Write ``num`` clips to ``out_dir`` (clip_0000.mp4 + clip_0000.csv, ..., export.json).

    Returns {"clips", "frames", "codec", "seconds", "frames_per_s"}.
    """
    from tqdm.auto import tqdm

    from fastlmk.data.landmarks import LANDMARK_NAMES

    if pose not in POSES:
        raise ValueError(f"synth clips: pose must be one of {POSES}, got {pose!r}")
    if size < 16 or size % 2:
        raise ValueError(f"synth clips: size must be even and >= 16 (yuv420p video), got {size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(4, len(str(max(num - 1, 0))))
    codec = video_codec()
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    bar = tqdm(total=num * frames, desc="export synth-clips", unit="frame", disable=not progress)
    try:
        for i in range(num):
            images, pts = render_clip(seed, split, i, frames, size, pose, keyframe_every)
            arr = images.mul(255).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
            stem = out / f"clip_{i:0{width}d}"
            write_video(stem.with_suffix(".mp4"), arr, fps, codec)
            write_landmarks(stem.with_suffix(".csv"), (pts.double().numpy() + 1.0) * 0.5 * (size - 1), fps)
            bar.update(frames)
    finally:
        torch.set_num_threads(threads_before)
        bar.close()
    seconds = time.perf_counter() - t0
    meta = {"dataset": "synth-clips", "split": split, "num": num, "frames": frames, "size": size, "pose": pose,
            "seed": seed, "fps": fps, "keyframe_every": keyframe_every, "codec": codec,
            "subjects": f"clip i is SynthFaces {split} subject {_subject(split, 0)} + {2 if split != 'val' else -1} i",
            "landmarks": "clip_*.csv: frame, time (s), x, y in pixels, (0, 0) = centre of the top-left pixel, "
                         "MAFL order: " + ", ".join(LANDMARK_NAMES)}
    (out / "export.json").write_text(json.dumps(meta, indent=1) + "\n")
    return {"clips": num, "frames": num * frames, "codec": codec, "seconds": seconds,
            "frames_per_s": num * frames / seconds if seconds > 0 else math.inf}


# --- python -m fastlmk.export synth-clips -----------------------------------------------------
def add_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="output folder (created; must be empty unless --force)")
    p.add_argument("--num", type=int, default=8, help="number of clips (one subject each; default 8)")
    p.add_argument("--frames", type=int, default=100, help="frames per clip (default 100, 4 s at 25 fps)")
    p.add_argument("--size", type=int, default=128, help="frame side in pixels, even (default 128)")
    p.add_argument("--pose", choices=POSES, default="aligned", help="pose regime (default aligned, the default run's)")
    p.add_argument("--seed", type=int, default=0, help="SynthFaces seed (default 0)")
    p.add_argument("--split", choices=("train", "val", "test"), default="train",
                   help="SynthFaces split the subjects come from (disjoint subjects; default train)")
    p.add_argument("--fps", type=int, default=25, help="frames per second (default 25)")
    p.add_argument("--keyframe-every", type=int, default=12,
                   help="frames between independent poses / expressions (default 12: ~0.5 s at 25 fps)")


def run_command(args) -> int:
    from fastlmk._cli import UsageError
    from fastlmk.data.video import require_av
    from fastlmk.export import PROG, prepare_output_dir

    for flag, v, lo in (("--num", args.num, 1), ("--frames", args.frames, 1), ("--fps", args.fps, 1),
                        ("--keyframe-every", args.keyframe_every, 1), ("--size", args.size, 16)):
        if v < lo:
            raise UsageError(f"{PROG}: error: {flag} must be >= {lo}, got {v}")
    if args.size % 2:
        raise UsageError(f"{PROG}: error: --size must be even (yuv420p video), got {args.size}")
    try:
        require_av()
    except ImportError as e:
        raise UsageError(f"{PROG}: error: {e}") from None
    prepare_output_dir(PROG, args.dir, args.force)
    r = export_clips(args.dir, num=args.num, frames=args.frames, size=args.size, pose=args.pose, seed=args.seed,
                     split=args.split, fps=args.fps, keyframe_every=args.keyframe_every, threads=args.threads,
                     progress=not args.no_progress)
    print(f"{PROG}: {r['clips']} SynthFaces {args.split} clips x {args.frames} frames ({args.size}x{args.size}, "
          f"{args.pose}, {r['codec']}, seed {args.seed}) -> {args.dir}/clip_*.mp4 + clip_*.csv in "
          f"{r['seconds']:.1f} s ({r['frames_per_s']:.0f} frames/s)", file=sys.stderr)
    return 0
