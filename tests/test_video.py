"""Tests of fastlmk.data.video: clips found, decoded once at the training size into a cache, pairs
of two frames of one clip, and every kind of bad input (issue 23, item 6)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")

from fastlmk.data import DATASETS, build_dataset  # noqa: E402
from fastlmk.data import video as V  # noqa: E402


def frame_pattern(t, h, w):
    """A frame whose colour codes its index t (R = 20 t mod 256, smooth G / B ramps)."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = (20 * t) % 256
    img[..., 1] = (x * 255 // max(w - 1, 1)).astype(np.uint8)
    img[..., 2] = (y * 255 // max(h - 1, 1)).astype(np.uint8)
    return img


def write_video(path, frames, w, h, fps=25, codec="mpeg4"):
    """A real video file of ``frames`` frames (frame_pattern), encoded with PyAV."""
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"qscale": "2"} if codec == "mpeg4" else {"crf": "10"}
        for t in range(frames):
            for p in s.encode(av.VideoFrame.from_ndarray(frame_pattern(t, h, w), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def red_of(img_chw):
    """The frame index coded in a decoded (3, S, S) image's red channel."""
    return round(float(img_chw[0].mean()) * 255 / 20)


@pytest.fixture
def clips(tmp_path):
    root = tmp_path / "clips"
    (root / "sub").mkdir(parents=True)
    write_video(root / "a.mp4", 12, 64, 48)
    write_video(root / "sub" / "b.mkv", 9, 96, 96)  # another frame size
    frames = root / "sub" / "frames_c"
    frames.mkdir()
    for t in (1, 2, 10):  # name order must be natural: 1, 2, 10
        Image.fromarray(frame_pattern(t, 40, 50)).save(frames / f"f_{t}.png")
    return root


def test_find_and_decode(clips):
    ds = V.VideoClips(clips, size=16, frame_gap=(1, 5))
    assert [c["name"] for c in ds.clips] == ["a.mp4", "sub/b.mkv", "sub/frames_c"]
    assert [c["frames"] for c in ds.clips] == [12, 9, 3]
    assert len(ds) == 24 and ds.skipped == []
    assert ds.clips[0]["fps"] == 25 and ds.clips[0]["frame_sizes"] == [[64, 48, 12]]
    # each cached frame is the right source frame, at S x S
    assert ds.frames(0).shape == (12, 16, 16, 3)
    for c, expected in ((0, range(12)), (1, range(9)), (2, (1, 2, 10))):
        assert [red_of(torch.from_numpy(np.array(f)).permute(2, 0, 1).float() / 255) for f in ds.frames(c)] == list(expected)
    # the resize keeps the whole frame: green ramps 0 -> 255 left to right, blue top to bottom
    f = ds.frames(1)[0].astype(int)
    assert f[:, 0, 1].mean() < 20 and f[:, -1, 1].mean() > 235 and f[0, :, 2].mean() < 20 and f[-1, :, 2].mean() > 235
    assert "3 clips, 24 frames" in ds.summary() and "frames/s" in ds.summary()
    assert ds.decoded_frames == 24 and ds.decode_fps > 0


def test_pairs_deterministic_and_in_window(clips):
    ds = V.VideoClips(clips, size=16, frame_gap=(2, 4), seed=3)
    for i in range(len(ds)):
        c, t, t2 = ds.pair(i)
        T = ds.clips[c]["frames"]
        assert 0 <= t2 < T and t2 != t
        if T - 1 >= 4:  # the window fits the clip
            assert 2 <= abs(t2 - t) <= 4, (i, t, t2)
        item = ds[i]
        assert item["clip"] == c and item["frame"] == t and item["frame2"] == t2 and item["index"] == i
        assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
        if c < 2:  # video frames: the red channel codes the frame index
            assert red_of(item["image"]) == t and red_of(item["image2"]) == t2
    again = V.VideoClips(clips, size=16, frame_gap=(2, 4), seed=3)
    assert [again.pair(i) for i in range(len(ds))] == [ds.pair(i) for i in range(len(ds))]
    other = V.VideoClips(clips, size=16, frame_gap=(2, 4), seed=4)
    assert [other.pair(i) for i in range(len(ds))] != [ds.pair(i) for i in range(len(ds))]
    # the 3-frame clip: a gap window of (2, 4) is clipped to its length (gap 2 is the only one)
    for i in range(21, 24):
        c, t, t2 = ds.pair(i)
        assert c == 2 and abs(t2 - t) == 2 or (t == 1 and t2 in (0, 2))


def test_gap_window_clipped_and_batches(clips):
    ds = build_dataset("video", clips, size=16, frame_gap=(30, 40))  # longer than every clip
    assert "video" in DATASETS
    for i in range(len(ds)):
        c, t, t2 = ds.pair(i)
        assert t2 != t and 0 <= t2 < ds.clips[c]["frames"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)))
    assert batch["image"].shape == (4, 3, 16, 16) and batch["image2"].shape == (4, 3, 16, 16)


def test_cache_reused_and_invalidated(clips, tmp_path):
    cache = tmp_path / "cache"
    ds = V.VideoClips(clips, size=16, cache_dir=cache)
    assert ds.decoded_frames == 24 and not (clips / V.CACHE_DIR).exists()
    assert len(list(cache.glob("*.u8"))) == 3 and len(list(cache.glob("*.json"))) == 3
    again = V.VideoClips(clips, size=16, cache_dir=cache)
    assert again.decoded_frames == 0 and again.cached_frames == 24 and "from the cache" in again.summary()
    np.testing.assert_array_equal(again.frames(0), ds.frames(0))
    # another training size or crop: another cache entry
    assert V.VideoClips(clips, size=8, cache_dir=cache).decoded_frames == 24
    assert V.VideoClips(clips, size=16, cache_dir=cache, crop="center").decoded_frames == 24
    # a changed file is decoded again (the key holds size and mtime)
    write_video(clips / "a.mp4", 7, 64, 48)
    changed = V.VideoClips(clips, size=16, cache_dir=cache)
    assert changed.decoded_frames == 7 and changed.clips[0]["frames"] == 7
    # default cache folder under the root; never searched as clips
    d = V.VideoClips(clips, size=16)
    assert (clips / V.CACHE_DIR).is_dir() and len(d.clips) == 3


def test_center_crop(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    write_video(root / "wide.mp4", 3, 96, 48)
    ds = V.VideoClips(root, size=16, crop="center")
    f = ds.frames(0)[0].astype(int)
    # the central 48 x 48 square of a 96-wide green ramp: green goes ~64 -> ~190
    assert 40 < f[:, 0, 1].mean() < 90 and 165 < f[:, -1, 1].mean() < 215
    assert V.frame_box(96, 48, 16, "center")[4] == (24.0, 0.0, 72.0, 48.0)


def test_landmarks_beside_clips(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    write_video(root / "a.mp4", 4, 64, 32)
    cols = V.landmark_columns()
    rows = [["frame", "time"] + cols]
    truth = {}
    for t in (0, 1, 3):  # frame 2 has no row
        pts = np.array([[10 + t, 5], [50, 5], [32, 16], [20, 25], [44, 25.5]], dtype=np.float64)
        truth[t] = pts
        rows.append([t, t / 25] + [f"{v:.2f}" for v in pts.reshape(-1)])
    (root / "a.csv").write_text("\n".join(",".join(map(str, r)) for r in rows) + "\n")
    ds = V.VideoClips(root, size=16, frame_gap=(1, 1))
    assert ds.has_landmarks
    item = ds[0]
    # pixel x of a 64-wide frame -> [-1, 1] of the 16 px frame: ((x + .5) * 16 / 64 - .5) * 2 / 15 - 1
    exp = lambda p: ((p + 0.5) * 16 / np.array([64, 32]) - 0.5) * 2 / 15 - 1  # noqa: E731
    torch.testing.assert_close(item["landmarks"], torch.tensor(exp(truth[0]), dtype=torch.float32))
    assert torch.isnan(ds._landmarks[0][2]).all()
    # a malformed file: one line naming it, nothing written
    (root / "a.csv").write_text("frame,left_eye_x\n0,1\n")
    with pytest.raises(V.VideoError, match=r"a\.csv: header lacks left_eye_y"):
        V.VideoClips(root, size=16, cache_dir=tmp_path / "c2")
    assert not (tmp_path / "c2").exists()


# --- bad input (issue 23, item 6) ------------------------------------------------------------
def test_bad_files_are_skipped_and_counted(clips, tmp_path):
    (clips / "text.mp4").write_text("this is not a video\n")
    (clips / "corrupt.mp4").write_bytes((clips / "a.mp4").read_bytes()[:200] + b"\x00" * 500)
    with av.open(str(clips / "audio.mkv"), "w") as c:  # a file with no video stream
        s = c.add_stream("pcm_s16le", rate=8000)
        f = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
        f.sample_rate = 8000
        for p in s.encode(f):
            c.mux(p)
        for p in s.encode():
            c.mux(p)
    write_video(clips / "one.mp4", 1, 32, 32)
    one_frame_dir = clips / "single"
    one_frame_dir.mkdir()
    Image.fromarray(frame_pattern(0, 8, 8)).save(one_frame_dir / "0.png")
    ds = V.VideoClips(clips, size=16, cache_dir=tmp_path / "cache")
    assert [c["name"] for c in ds.clips] == ["a.mp4", "sub/b.mkv", "sub/frames_c"]
    reasons = dict(ds.skipped)
    assert set(reasons) == {"audio.mkv", "corrupt.mp4", "one.mp4", "single", "text.mp4"}
    assert reasons["audio.mkv"] == "no video stream"
    assert reasons["one.mp4"] == reasons["single"] == "1 frame: no pair"
    assert reasons["text.mp4"].startswith("cannot open") and "corrupt.mp4" in reasons
    assert "skipped 5" in ds.summary() and "audio.mkv (no video stream)" in ds.summary()
    assert len(list((tmp_path / "cache").glob("*.u8"))) == 3  # no entry for the skipped clips, no temp file
    assert not list((tmp_path / "cache").glob("*.tmp-*"))


def test_zero_frame_video(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    for ext in ("avi", "mp4"):  # avi keeps an empty video stream; mp4 drops a track without samples
        with av.open(str(root / f"empty.{ext}"), "w") as c:
            s = c.add_stream("mpeg4", rate=25)
            s.width = s.height = 32
            s.pix_fmt = "yuv420p"
            c.start_encoding()
    write_video(root / "ok.mp4", 3, 32, 32)
    ds = V.VideoClips(root, size=8)
    assert [c["name"] for c in ds.clips] == ["ok.mp4"]
    assert ds.skipped == [("empty.avi", "no frames"), ("empty.mp4", "no video stream")]


def test_only_bad_clips_is_one_line_error_and_writes_nothing(tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    (root / "text.mp4").write_text("not a video")
    write_video(root / "one.mp4", 1, 32, 32)
    with pytest.raises(V.VideoError) as e:
        V.VideoClips(root, size=16)
    msg = str(e.value)
    assert "\n" not in msg and "no usable clip" in msg and "text.mp4 (cannot open" in msg and "one.mp4 (1 frame" in msg
    assert sorted(p.name for p in root.iterdir()) == ["one.mp4", "text.mp4"]  # no cache folder


def test_folder_with_no_videos(tmp_path):
    root = tmp_path / "r"
    (root / "deep").mkdir(parents=True)
    (root / "deep" / "notes.txt").write_text("nothing to see")
    with pytest.raises(FileNotFoundError, match=r"no videos .* under .*r$"):
        V.VideoClips(root, size=16)
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        V.VideoClips(tmp_path / "missing", size=16)
    assert sorted(p.name for p in root.iterdir()) == ["deep"]


def test_clips_of_different_sizes_and_a_size_change(tmp_path):
    root = tmp_path / "r"
    frames = root / "mixed"
    frames.mkdir(parents=True)
    for t, (w, h) in enumerate([(40, 30), (40, 30), (90, 120)]):
        Image.fromarray(frame_pattern(t, h, w)).save(frames / f"{t}.png")
    write_video(root / "big.mp4", 3, 160, 90)
    ds = V.VideoClips(root, size=12)
    assert ds.clips[1]["frame_sizes"] == [[40, 30, 2], [90, 120, 1]]
    assert ds.frames(1).shape == (3, 12, 12, 3) and ds.frames(0).shape == (3, 12, 12, 3)
    assert [red_of(torch.from_numpy(np.array(f)).permute(2, 0, 1).float() / 255) for f in ds.frames(1)] == [0, 1, 2]


_PEAK_RSS = """
import resource, sys
from fastlmk.data import video as V
ds = V.VideoClips(sys.argv[1], size=32, crop="center", cache_dir=sys.argv[2])
print(ds.clips[0]["frames"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_kb(root, cache):
    """(frames, peak resident memory in KiB) of a fresh process that decodes ``root``."""
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(V.__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", _PEAK_RSS, str(root), str(cache)], capture_output=True, text=True,
                         env={**__import__("os").environ, "PYTHONPATH": src}, check=True).stdout.split()
    return int(out[0]), int(out[1])


def test_4k_clip_decoded_at_training_size_memory_bounded(tmp_path):
    big, small = tmp_path / "uhd", tmp_path / "small"
    big.mkdir()
    small.mkdir()
    write_video(big / "uhd.mp4", 8, 3840, 2160)
    write_video(small / "s.mp4", 8, 64, 36)
    ds = V.VideoClips(big, size=32, crop="center", cache_dir=tmp_path / "c0")
    assert ds.frames(0).shape == (8, 32, 32, 3) and ds.clips[0]["frame_sizes"] == [[3840, 2160, 8]]
    assert [red_of(torch.from_numpy(np.array(f)).permute(2, 0, 1).float() / 255) for f in ds.frames(0)] == list(range(8))
    # peak memory of a fresh process decoding the 4K clip vs a 64 x 36 one: the decoder's own frames
    # (~60 MB here), never the clip (8 RGB frames of 3840 x 2160 = 199 MB)
    (n_big, rss_big), (n_small, rss_small) = peak_rss_kb(big, tmp_path / "c1"), peak_rss_kb(small, tmp_path / "c2")
    assert n_big == n_small == 8
    assert (rss_big - rss_small) * 1024 < 150e6, (rss_big, rss_small)


def test_without_av(clips, tmp_path, without_av):
    with pytest.raises(V.MissingVideoSupport) as e:
        V.VideoClips(clips, size=16, cache_dir=tmp_path / "cache")
    msg = str(e.value)
    assert "\n" not in msg and 'pip install "fastlmk[video]"' in msg and "a.mp4 is a video" in msg
    assert isinstance(e.value, ValueError)  # the training CLI prints it as one line
    assert not (tmp_path / "cache").exists()
    # folders of frames need no PyAV
    only_frames = clips / "sub" / "frames_c"
    ds = V.VideoClips(only_frames, size=16, cache_dir=tmp_path / "cache")
    assert len(ds) == 3


def test_unwritable_cache_is_one_line_error(clips, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(V.VideoError, match="video cache .*file exists and is not a directory"):
        V.VideoClips(clips, size=16, cache_dir=blocker)
    with pytest.raises(V.VideoError, match="/proc is not a writable directory"):
        V.VideoClips(clips, size=16, cache_dir="/proc/fastlmk-cache")


def test_argument_errors(clips):
    with pytest.raises(ValueError, match="frame_gap must satisfy"):
        V.VideoClips(clips, size=16, frame_gap=(5, 2))
    with pytest.raises(ValueError, match="crop must be one of"):
        V.VideoClips(clips, size=16, crop="pad")
    with pytest.raises(FileNotFoundError, match="needs root"):
        build_dataset("video", None)


def test_cache_meta_is_json(clips):
    ds = V.VideoClips(clips, size=16)
    meta = json.loads(ds.clips[0]["data"].with_suffix(".json").read_text())
    assert meta["frames"] == 12 and meta["size"] == 16 and meta["source"].endswith("a.mp4")


# --- SynthFaces clips (issue 23, item 3) ------------------------------------------------------
def test_synth_clip_params_smooth_with_blinks():
    from fastlmk.data import synth_clips as SC
    from fastlmk.data.synth import sample_params

    p = SC.clip_params(0, "train", 4, 49, "aligned", keyframe_every=12)
    view0 = sample_params(0, "train", [4], [0], "aligned", static_background=True, static_pose=True)
    for key in ("head_a", "skin", "rot", "scale", "tx", "bg_a"):  # identity, placement, background: view 0's
        torch.testing.assert_close(p[key], view0[key].expand_as(p[key]))
    keys = sample_params(0, "train", [4] * 6, list(range(6)), "aligned", static_background=True, static_pose=True)
    torch.testing.assert_close(p["yaw"][::12], keys["yaw"][:5])  # keyframes = the subject's views
    steps = p["yaw"].diff().abs()
    assert steps.max() <= 1.6 * (keys["yaw"][:5].diff().abs().max() / 12) + 1e-6  # smoothstep: slope <= 1.5x linear
    long = SC.clip_params(0, "train", 4, 400, "aligned")
    assert (long["eye_open"] < 0.1).any() and (long["eye_open"] > 0.7).float().mean() > 0.8  # blinks, mostly open


def test_export_synth_clips_roundtrip(tmp_path, capsys):
    from fastlmk import export
    from fastlmk.data import synth_clips as SC

    out = tmp_path / "clips"
    assert export.main(["synth-clips", str(out), "--num", "2", "--frames", "16", "--size", "32", "--no-progress"]) == 0
    assert "2 SynthFaces train clips x 16 frames" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["clip_0000.csv", "clip_0000.mp4", "clip_0001.csv", "clip_0001.mp4",
                                                    "export.json"]
    with av.open(str(out / "clip_0001.mp4")) as c:
        assert c.streams.video[0].codec_context.name == ("h264" if SC.video_codec() == "libx264" else "mpeg4")
    ds = V.VideoClips(out, size=32, cache_dir=tmp_path / "cache")
    assert [c["frames"] for c in ds.clips] == [16, 16] and ds.has_landmarks
    images, pts = SC.render_clip(0, "train", 1, 16, 32, "aligned")
    # the decoded video is the rendered clip up to compression; the landmark file, exactly its points
    decoded = torch.from_numpy(np.array(ds.frames(1))).permute(0, 3, 1, 2).float() / 255
    assert (decoded - images).abs().mean() < 0.03
    torch.testing.assert_close(ds._landmarks[1], pts, atol=2e-4, rtol=0)  # 3 decimals in the csv
    # errors: odd size, a non-empty folder without --force
    with pytest.raises(SystemExit, match="--size must be even"):
        export.main(["synth-clips", str(tmp_path / "x"), "--size", "33"])
    with pytest.raises(SystemExit, match="not empty"):
        export.main(["synth-clips", str(out), "--num", "1", "--frames", "2", "--size", "16"])
    assert not (tmp_path / "x").exists()
