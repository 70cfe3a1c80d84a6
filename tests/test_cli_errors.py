"""User errors at the detect / evaluate command lines (issue 11): one line naming the argument or
file, exit status 2, checked before anything is written; an oversized image is skipped like any
unreadable one; non-finite predictions keep landmarks.json valid JSON."""

import json
import struct
import zlib
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from fastlmk import detect, evaluate
from fastlmk._cli import UsageError
from fastlmk.training.config import TrainConfig
from _standins import BlobDetector, blob_image


def _png(path, w=40, h=30):
    Image.fromarray((blob_image(h, w, [(10.0, 10.0)] * 3, sigma=3.0).permute(1, 2, 0).numpy() * 255)
                    .astype("uint8")).save(path)


def _bomb(path):
    """A PNG whose header claims 30000 x 30000 pixels (PIL refuses it as a decompression bomb)."""
    _png(path)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + b"IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", 30000, 30000)
    crc = zlib.crc32(bytes(data[12:ihdr + 13])) & 0xFFFFFFFF
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))


@pytest.fixture
def folder(tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    _png(d / "a.png")
    _bomb(d / "huge.png")
    return d


@pytest.fixture
def ckpt(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    torch.save({"config": {"image_size": 64}}, path)
    monkeypatch.setattr(detect, "load_detector", lambda p, device, backend="auto": (BlobDetector(64), TrainConfig(image_size=64)))
    return path


def test_oversized_image_is_skipped_not_fatal(folder, ckpt, tmp_path):
    out = tmp_path / "out"
    assert detect.main([str(folder), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress"]) == 0
    doc = json.loads((out / "landmarks.json").read_text())
    assert [r["file"] for r in doc["images"]] == ["a.png"]
    assert [s["file"] for s in doc["skipped"]] == ["huge.png"]


def test_non_finite_predictions_keep_the_json_valid(folder, ckpt, tmp_path, monkeypatch):
    class NaNDetector(BlobDetector):
        def forward(self, images):
            pts = super().forward(images).points
            return SimpleNamespace(points=torch.full_like(pts, float("nan")), heatmaps=None, maps=None)

    monkeypatch.setattr(detect, "load_detector", lambda p, device, backend="auto": (NaNDetector(64), TrainConfig(image_size=64)))
    out = tmp_path / "out"
    assert detect.main([str(folder / "a.png"), "--checkpoint", str(ckpt), "--out", str(out), "--no-progress",
                        "--no-overlays"]) == 0
    text = (out / "landmarks.json").read_text()
    assert "NaN" not in text
    doc = json.loads(text)
    assert doc["images"][0]["landmarks"][0] == [None, None]


@pytest.mark.parametrize("extra,msg", [
    (["--device", "foo"], "--device must be auto, cpu, cuda or cuda:N, got 'foo'"),
    (["--out", "FILE"], "--out .*exists and is not a directory"),
])
def test_detect_user_errors_exit_2_before_writing(folder, ckpt, tmp_path, extra, msg):
    f = tmp_path / "a_file"
    f.write_text("mine")
    args = [str(folder), "--checkpoint", str(ckpt), "--no-progress"]
    if "--out" not in extra:
        args += ["--out", str(tmp_path / "out")]
    with pytest.raises(UsageError, match=msg) as e:
        detect.main(args + [str(f) if a == "FILE" else a for a in extra])
    assert e.value.code == 2
    assert not (tmp_path / "out").exists() and f.read_text() == "mine"


@pytest.mark.parametrize("extra,msg", [
    (["--ridge", "nan"], "--ridge must be a finite number, got nan"),
    (["--ridge", "-1"], "--ridge must be >= 0.0"),
    (["--workers", "-1"], "--workers must be >= 0, got -1"),
    (["--supervised-batch-size", "0"], "--supervised-batch-size must be >= 1, got 0"),
    (["--device", "foo"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--out", "FILE"], "--out .*exists and is not a directory"),
])
def test_evaluate_user_errors_exit_2_before_the_evaluation(tmp_path, extra, msg):
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"never loaded: the arguments are checked first")
    f = tmp_path / "a_file"
    f.write_text("mine")
    with pytest.raises(UsageError, match=msg) as e:
        evaluate.main(["--checkpoint", str(ckpt), "--no-progress"] + [str(f) if a == "FILE" else a for a in extra])
    assert e.value.code == 2 and str(e.value).startswith("fastlmk.evaluate: error: ")
    assert f.read_text() == "mine"
