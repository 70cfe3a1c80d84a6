"""Tests of fastlmk.detect: landmarks come back in pixels of the original image, and the command
writes the files it promises (or fails with a clear message)."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from fastlmk import detect
from fastlmk.training.config import TrainConfig
from _standins import BlobDetector, blob_image


def save_rgb(path, chw):
    arr = (chw.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    Image.fromarray(arr).save(path)


@pytest.fixture
def image_folder(tmp_path):
    """Two non-square images with R/G/B blobs at known pixels, an unreadable .jpg, a text file."""
    d = tmp_path / "imgs"
    d.mkdir()
    truth = {"wide.png": (200, 120, [(150.0, 40.0), (30.0, 90.0), (100.0, 60.0)]),
             "tall.png": (90, 160, [(20.0, 130.0), (70.0, 25.0), (45.0, 80.0)])}
    for name, (w, h, pts) in truth.items():
        save_rgb(d / name, blob_image(h, w, pts, sigma=6.0))
    (d / "broken.jpg").write_bytes(b"this is not a jpeg")
    (d / "notes.txt").write_text("ignored: not an image extension")
    return d, truth


def test_pixel_mapping_roundtrip():
    """Pixel centres of the S x S input map to the matching pixel-centre positions of the box."""
    box = (10.0, 20.0, 110.0, 70.0)  # 100 x 50 region resized to 4 x 4
    pts = torch.tensor([[-1.0, -1.0], [1.0, 1.0]])  # centres of input pixels 0 and 3
    pix = detect.to_original_pixels(pts, box, 4)
    # input pixel 0 covers [10, 35) in x: centre 22.5 in edge coordinates = pixel 22.0
    torch.testing.assert_close(pix, torch.tensor([[22.0, 25.75], [97.0, 63.25]], dtype=torch.float64))
    assert detect.crop_box(200, 100, "center", 0.8) == (60.0, 10.0, 140.0, 90.0)
    assert detect.crop_box(200, 100) == (0.0, 0.0, 200.0, 100.0)


@pytest.mark.parametrize("crop,scale", [("none", 1.0), ("center", 0.9)])
def test_detect_images_reports_original_pixels(image_folder, tmp_path, crop, scale):
    d, truth = image_folder
    files, root = detect.list_images(d)
    assert [f.name for f in files] == ["broken.jpg", "tall.png", "wide.png"]
    records, skipped = detect.detect_images(BlobDetector(64), files, root, 64, out_dir=tmp_path / "out",
                                            crop=crop, crop_scale=scale, progress=False)
    assert [s["file"] for s in skipped] == ["broken.jpg"]
    assert [r["file"] for r in records] == ["tall.png", "wide.png"]
    for r in records:
        w, h, pts = truth[r["file"]]
        assert (r["width"], r["height"]) == (w, h)
        box = detect.crop_box(w, h, crop, scale)
        checked = 0
        for (x, y), (tx, ty) in zip(r["landmarks"], pts):
            inside = box[0] + 12 < tx < box[2] - 12 and box[1] + 12 < ty < box[3] - 12
            if inside:  # blobs cut by the crop cannot be found exactly
                assert abs(x - tx) < 0.6 and abs(y - ty) < 0.6, (r["file"], (x, y), (tx, ty))
                checked += 1
        assert checked >= 1
        with Image.open(tmp_path / "out" / "overlays" / r["file"]) as im:
            assert im.format == "PNG" and im.size == (w, h)


def test_detect_strict_single_file(tmp_path, image_folder):
    d, _ = image_folder
    with pytest.raises(detect.DetectError, match="cannot read image .*broken.jpg"):
        detect.detect_images(BlobDetector(32), [d / "broken.jpg"], d, 32, overlays=False, strict=True,
                             progress=False)


def test_overlay_name_collisions(tmp_path):
    files = [tmp_path / "a.jpg", tmp_path / "a.png", tmp_path / "b.jpg"]
    names = detect.overlay_names(files, tmp_path)
    assert sorted(str(n) for n in names.values()) == ["a_jpg.png", "a_png.png", "b.png"]


def test_large_image_overlay_is_shrunk(tmp_path):
    im = Image.new("RGB", (2000, 500), (10, 20, 30))
    detect.save_overlay(im, torch.tensor([[1000.0, 250.0]], dtype=torch.float64), tmp_path / "o.png", max_size=1000)
    with Image.open(tmp_path / "o.png") as o:
        assert o.size == (1000, 250)
        centre = np.asarray(o)[125, 500].astype(int)  # pixel 1000 -> 499.75 after the 1/2 resize
    from fastlmk.viz import landmark_color
    assert np.abs(centre - np.array([round(c * 255) for c in landmark_color(0)])).max() <= 2


# --- the command line ---------------------------------------------------------------------
@pytest.fixture
def standin_checkpoint(tmp_path, monkeypatch):
    """A checkpoint file and a loader returning the blob stand-in (the CLI plumbing is what is
    tested here; the real-checkpoint test is below)."""
    path = tmp_path / "ckpt.pt"
    torch.save({"config": {"image_size": 64}}, path)
    monkeypatch.setattr(detect, "load_detector", lambda p, device, backend="auto": (BlobDetector(64), TrainConfig(image_size=64)))
    return path


@pytest.mark.parametrize("fmt", ["json", "csv"])
def test_cli_folder(image_folder, standin_checkpoint, tmp_path, fmt, capsys):
    d, truth = image_folder
    out = tmp_path / "det"
    rc = detect.main([str(d), "--checkpoint", str(standin_checkpoint), "--out", str(out), "--format", fmt,
                      "--no-progress"])
    assert rc == 0
    err = capsys.readouterr().err
    assert "warning: skipping" in err and "broken.jpg" in err and "skipped 1 unreadable image(s)" in err
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["tall.png", "wide.png"]
    if fmt == "json":
        doc = json.loads((out / "landmarks.json").read_text())
        assert doc["image_size"] == 64 and doc["num_landmarks"] == 3
        assert [r["file"] for r in doc["images"]] == ["tall.png", "wide.png"]
        assert doc["skipped"][0]["file"] == "broken.jpg"
        first = doc["images"][1]["landmarks"][0]
    else:
        with open(out / "landmarks.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["file", "width", "height", "x0", "y0", "x1", "y1", "x2", "y2"]
        assert [r[0] for r in rows[1:]] == ["tall.png", "wide.png"]
        first = [float(v) for v in rows[2][3:5]]
    assert first == pytest.approx([150.0, 40.0], abs=0.6)


def test_cli_single_file_and_errors(image_folder, standin_checkpoint, tmp_path):
    d, _ = image_folder
    out = tmp_path / "one"
    assert detect.main([str(d / "wide.png"), "--checkpoint", str(standin_checkpoint), "--out", str(out),
                        "--no-progress", "--no-overlays"]) == 0
    assert (out / "landmarks.json").is_file() and not (out / "overlays").exists()
    with pytest.raises(SystemExit, match="input not found: .*missing.png"):
        detect.main([str(d / "missing.png"), "--checkpoint", str(standin_checkpoint), "--out", str(out)])
    with pytest.raises(SystemExit, match="checkpoint not found: .*nope.pt"):
        detect.main([str(d), "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(out)])
    with pytest.raises(SystemExit, match="cannot read image .*broken.jpg"):
        detect.main([str(d / "broken.jpg"), "--checkpoint", str(standin_checkpoint), "--out", str(out)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="no image files"):
        detect.main([str(empty), "--checkpoint", str(standin_checkpoint), "--out", str(out)])


def test_cli_real_checkpoint(image_folder, tmp_path):
    """A real (randomly initialised) Detector checkpoint: the CLI loads its weights and reports
    K points per image, the same points as the in-memory detector, inside the image."""
    from _standins import tiny_checkpoint

    d, truth = image_folder
    ckpt, det = tiny_checkpoint(tmp_path / "run" / "checkpoints" / "step_00000001.pt", num_landmarks=4, image_size=32)
    out = tmp_path / "det"
    # a run directory stands for its newest checkpoint
    assert detect.main([str(d), "--checkpoint", str(tmp_path / "run"), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "landmarks.json").read_text())
    assert doc["image_size"] == 32 and doc["num_landmarks"] == 4
    for r in doc["images"]:
        w, h, _ = truth[r["file"]]
        assert len(r["landmarks"]) == 4
        assert all(0 <= x <= w - 1 and 0 <= y <= h - 1 for x, y in r["landmarks"])
        im = detect.load_image(d / r["file"])
        box = detect.crop_box(w, h)
        with torch.no_grad():
            expected = detect.to_original_pixels(det(detect.preprocess(im, 32, box)[None]).points[0], box, 32)
        got = torch.tensor(r["landmarks"], dtype=torch.float64)
        torch.testing.assert_close(got, expected, atol=0.006, rtol=0)  # 2 decimals in the file
        with Image.open(out / "overlays" / r["file"]) as o:
            assert o.size == (w, h)


def test_cli_corrupt_checkpoint(image_folder, tmp_path):
    d, _ = image_folder
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00not a checkpoint")
    with pytest.raises(SystemExit, match="bad.pt.*corrupt"):
        detect.main([str(d), "--checkpoint", str(bad), "--out", str(tmp_path / "o")])


def test_cli_named_landmarks_from_eval_regressor(image_folder, standin_checkpoint, tmp_path):
    """--regressor applies the linear map stored in an eval.json: here landmarks 0-2 = the three
    points, landmark 3 = point 2 + (-0.1, 0.2), landmark 4 = the midpoint of points 0 and 1
    (normalised coordinates of the 64 x 64 input), checked in original pixels."""
    d, truth = image_folder
    W = torch.zeros(6, 10, dtype=torch.float64)
    for i in range(6):
        W[i, i] = 1.0
    W[4, 6] = W[5, 7] = 1.0  # landmark 3 <- point 2
    W[0, 8] = W[2, 8] = W[1, 9] = W[3, 9] = 0.5  # landmark 4 <- (point 0 + point 1) / 2
    b = torch.zeros(10, dtype=torch.float64)
    b[6], b[7] = -0.1, 0.2
    names = ["left eye", "right eye", "nose", "left mouth", "right mouth"]
    reg = tmp_path / "eval.json"
    reg.write_text(json.dumps({"regressors": {"saic": {"W": W.tolist(), "b": b.tolist()}},
                               "per_landmark": {"names": names}}))
    out = tmp_path / "named"
    assert detect.main([str(d), "--checkpoint", str(standin_checkpoint), "--out", str(out), "--regressor",
                        str(reg), "--no-progress", "--no-overlays", "--format", "csv"]) == 0
    with open(out / "landmarks.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    wide = next(r for r in rows if r["file"] == "wide.png")
    (x0, y0), (x1, y1), (x2, y2) = truth["wide.png"][2]
    s = 63 / 2  # normalised unit -> input pixels; input pixels -> original: x 200/64, y 120/64
    expected = {"left_eye": (x0, y0), "nose": (x2, y2), "right_mouth": ((x0 + x1) / 2, (y0 + y1) / 2),
                "left_mouth": (x2 - 0.1 * s * 200 / 64, y2 + 0.2 * s * 120 / 64)}
    for name, (ex, ey) in expected.items():
        assert float(wide[f"{name}_x"]) == pytest.approx(ex, abs=0.6), name
        assert float(wide[f"{name}_y"]) == pytest.approx(ey, abs=0.6), name
    # errors: missing file, no regressor inside, wrong number of points
    with pytest.raises(SystemExit, match="regressor file not found"):
        detect.main([str(d), "--checkpoint", str(standin_checkpoint), "--out", str(out), "--regressor", "nope.json"])
    (tmp_path / "plain.json").write_text("{}")
    with pytest.raises(SystemExit, match="no usable 'saic' regressor"):
        detect.main([str(d), "--checkpoint", str(standin_checkpoint), "--out", str(out), "--regressor",
                     str(tmp_path / "plain.json")])
    reg.write_text(json.dumps({"regressors": {"saic": {"W": W[:4].tolist(), "b": b.tolist()}}}))
    with pytest.raises(SystemExit, match="expects 2 discovered points, the detector gives 3"):
        detect.main([str(d), "--checkpoint", str(standin_checkpoint), "--out", str(out), "--regressor", str(reg),
                     "--no-progress"])


# --- issue 22's faults: a malformed eval.json names entry, --out where nothing can be created ----
@pytest.mark.parametrize("per_landmark", [{"names": 5}, {"names": ["a", "b"]}, {"names": [1, 2, 3, 4, 5]},
                                          ["left eye"], "names"])
def test_regressor_malformed_names_is_one_line(image_folder, standin_checkpoint, tmp_path, per_landmark):
    d, _ = image_folder
    reg = tmp_path / "eval.json"
    reg.write_text(json.dumps({"regressors": {"saic": {"W": torch.zeros(6, 10).tolist(), "b": [0.0] * 10}},
                               "per_landmark": per_landmark}))
    with pytest.raises(SystemExit) as e:
        detect.main([str(d), "--checkpoint", str(standin_checkpoint), "--out", str(tmp_path / "o"),
                     "--regressor", str(reg), "--no-progress"])
    msg = str(e.value)
    assert "\n" not in msg and str(reg) in msg and "malformed 'per_landmark'" in msg, msg
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("out", ["/proc/fastlmk-x", "/sys/fastlmk-x", "/proc/fastlmk-x/y"])
def test_out_on_a_pseudo_file_system_is_one_line(image_folder, standin_checkpoint, out):
    d, _ = image_folder
    with pytest.raises(SystemExit) as e:
        detect.main([str(d), "--checkpoint", str(standin_checkpoint), "--out", out, "--no-progress"])
    msg = str(e.value)
    assert e.value.code == 2 and "\n" not in msg and "--out" in msg and out.split("/")[1] in msg, msg
