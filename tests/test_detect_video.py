"""Tests of detection on videos (python -m fastlmk.detect on mp4 files and folders of them) and of
the library API fastlmk.detection (issue 23, item 5)."""

import csv
import json

import numpy as np
import pytest
import torch

av = pytest.importorskip("av")

from fastlmk import detect, detection  # noqa: E402
from fastlmk.training.config import TrainConfig  # noqa: E402
from _standins import BlobDetector, blob_image, tiny_checkpoint  # noqa: E402

W, H, FRAMES, FPS = 160, 96, 10, 25


def truth(t):
    """Blob centres (R, G, B) in pixels at frame t: they move a few pixels per frame."""
    return [(40.0 + 3 * t, 30.0), (120.0, 25.0 + 2 * t), (80.0 - 2 * t, 60.0)]


def write_blob_video(path, frames=FRAMES):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264" if "libx264" in av.codecs_available else "mpeg4", rate=FPS)
        s.width, s.height, s.pix_fmt = W, H, "yuv444p" if "libx264" in av.codecs_available else "yuv420p"
        s.options = {"crf": "0"} if s.codec_context.name in ("libx264", "h264") else {"qscale": "1"}
        for t in range(frames):
            img = (blob_image(H, W, truth(t), sigma=6.0).clamp(0, 1) * 255).round().to(torch.uint8)
            for p in s.encode(av.VideoFrame.from_ndarray(img.permute(1, 2, 0).numpy(), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


@pytest.fixture
def standin(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    torch.save({"config": {"image_size": 64}}, path)
    monkeypatch.setattr(detect, "load_detector",
                        lambda p, device, backend="auto": (BlobDetector(64), TrainConfig(image_size=64, num_landmarks=3)))
    return path


def frames_of(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_detect_video_file(tmp_path, standin, fmt, capsys):
    clip = write_blob_video(tmp_path / "clip.mp4")
    out = tmp_path / "det"
    assert detect.main([str(clip), "--checkpoint", str(standin), "--out", str(out), "--format", fmt,
                        "--no-progress"]) == 0
    assert "1 video(s), 10 frames" in capsys.readouterr().err
    if fmt == "json":
        doc = json.loads((out / "clip.landmarks.json").read_text())
        assert (doc["width"], doc["height"], doc["num_frames"], doc["fps"]) == (W, H, FRAMES, FPS)
        rows = [(r["frame"], r["time"], r["landmarks"]) for r in doc["frames"]]
    else:
        with open(out / "clip.landmarks.csv", newline="") as f:
            table = list(csv.reader(f))
        assert table[0] == ["frame", "time", "x0", "y0", "x1", "y1", "x2", "y2"]
        rows = [(int(r[0]), float(r[1]), np.array(r[2:], dtype=float).reshape(3, 2).tolist()) for r in table[1:]]
    assert [r[0] for r in rows] == list(range(FRAMES))
    assert [r[1] for r in rows] == pytest.approx([t / FPS for t in range(FRAMES)])
    for t, _, pts in rows:  # the points follow the moving blobs, in pixels of the 160 x 96 frame
        np.testing.assert_allclose(pts, truth(t), atol=1.0)
    # the overlay video: every frame, original size, a point drawn in its colour at the R blob
    over = frames_of(out / "clip.overlay.mp4")
    assert len(over) == FRAMES and over[0].shape == (H, W, 3)
    from fastlmk.viz import landmark_color
    x, y = (round(v) for v in truth(4)[0])
    assert np.abs(over[4][y, x].astype(int) - np.array([round(c * 255) for c in landmark_color(0)])).max() <= 40


def test_detect_folder_of_videos_and_images(tmp_path, standin, capsys):
    from PIL import Image

    d = tmp_path / "in"
    (d / "sub").mkdir(parents=True)
    write_blob_video(d / "a.mp4", 4)
    write_blob_video(d / "sub" / "b.mkv", 3)
    (d / "broken.mp4").write_text("not a video")
    img = (blob_image(H, W, truth(0), sigma=6.0) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(img).save(d / "still.png")
    out = tmp_path / "det"
    assert detect.main([str(d), "--checkpoint", str(standin), "--out", str(out), "--recursive", "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "skipping video" in err and "broken.mp4" in err and "2 video(s), 7 frames" in err and "1 image(s)" in err
    assert json.loads((out / "a.landmarks.json").read_text())["num_frames"] == 4
    assert json.loads((out / "sub" / "b.landmarks.json").read_text())["num_frames"] == 3
    assert (out / "sub" / "b.overlay.mp4").is_file() and (out / "overlays" / "still.png").is_file()
    assert json.loads((out / "landmarks.json").read_text())["images"][0]["file"] == "still.png"


def test_bad_videos(tmp_path, standin):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    out = tmp_path / "o"
    with pytest.raises(SystemExit, match=r"cannot read video .*bad\.mp4"):
        detect.main([str(bad), "--checkpoint", str(standin), "--out", str(out), "--no-progress"])
    empty = tmp_path / "empty.avi"
    with av.open(str(empty), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width = s.height = 32
        s.pix_fmt = "yuv420p"
        c.start_encoding()
    with pytest.raises(SystemExit, match=r"cannot read video .*empty\.avi: no frames"):
        detect.main([str(empty), "--checkpoint", str(standin), "--out", str(out), "--no-progress"])
    assert not list(out.glob("*.json")) and not list(out.glob("*.mp4"))


def test_detect_video_without_av(tmp_path, standin, without_av):
    clip = write_blob_video(tmp_path / "clip.mp4", 2)
    out = tmp_path / "o"
    with pytest.raises(SystemExit) as e:
        detect.main([str(clip), "--checkpoint", str(standin), "--out", str(out)])
    assert 'pip install "fastlmk[video]"' in str(e.value) and "clip.mp4" in str(e.value) and "\n" not in str(e.value)
    assert not out.exists()


def test_library_api_matches_the_command(tmp_path):
    """load(run) once, then landmarks for frames given as arrays / PIL / tensors: the same points as
    the model on its preprocessed input mapped to pixels, and the same as the video command writes;
    the run's eval.json regressor gives the named points."""
    from PIL import Image

    ckpt, model = tiny_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000001.pt", num_landmarks=4, image_size=32)
    Wr = torch.randn(8, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 0.1
    b = torch.linspace(-0.5, 0.5, 10, dtype=torch.float64)
    names = ["left eye", "right eye", "nose", "left mouth", "right mouth"]
    (tmp_path / "run" / "eval.json").write_text(json.dumps({"regressors": {"saic": {"W": Wr.tolist(), "b": b.tolist()}},
                                                            "per_landmark": {"names": names}}))
    det = detection.load(tmp_path / "run", device="cpu")
    assert det.names == names and det.image_size == 32 and "named" in repr(det)
    clip = write_blob_video(tmp_path / "clip.mp4", 3)
    frames = frames_of(clip)
    got = det([frames[0], Image.fromarray(frames[1]), torch.from_numpy(frames[2]).permute(2, 0, 1).float() / 255])
    assert got.points.shape == (3, 4, 2) and got.named.shape == (3, 5, 2)
    box = detection.crop_box(W, H)
    with torch.no_grad():
        x = detection.preprocess(Image.fromarray(frames[1]), 32, box)[None]
        p = model(x).points
    torch.testing.assert_close(got.points[1], detection.to_original_pixels(p[0], box, 32))
    named = (p.double().flatten(1) @ Wr + b).view(1, 5, 2)
    torch.testing.assert_close(got.named[1], detection.to_original_pixels(named[0], box, 32))
    r = det.video(clip, tmp_path / "api", progress=False)
    doc = json.loads((tmp_path / "api" / "clip.landmarks.json").read_text())
    assert r["frames"] == 3 and doc["named_landmark_names"] == names
    np.testing.assert_allclose(doc["frames"][1]["landmarks"], got.points[1].numpy(), atol=0.006)
    np.testing.assert_allclose(doc["frames"][1]["named_landmarks"], got.named[1].numpy(), atol=0.006)
    # no eval.json: points only
    det2 = detection.load(ckpt, device="cpu", regressor=None)
    assert det2.names is None and det2(frames[0]).named is None
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        detection.load(tmp_path / "nope")
