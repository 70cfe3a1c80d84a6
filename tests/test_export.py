"""python -m fastlmk.export: the files it writes (format, pixel convention, the same images as the
in-memory split), determinism, and its refusals (a non-empty DIR, bad numbers)."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastlmk import export
from fastlmk.data import LANDMARK_NAMES, SynthFaces, build_dataset

S = 32  # image side of the exports here (small: fast)


def run_export(*args) -> int:
    return export.main(["synth", *map(str, args), "--no-progress"])


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def as_uint8(images: torch.Tensor) -> np.ndarray:
    """(B, 3, S, S) in [0, 1] -> (B, S, S, 3) uint8, rounded to nearest (written here, not with
    the exporter's helper, as the reference)."""
    return np.clip(np.rint(images.numpy() * 255.0), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


@pytest.mark.parametrize("split,pose,seed", [("train", "aligned", 0), ("val", "wild", 3), ("test", "wild", 0)])
def test_files_hold_the_in_memory_split(tmp_path, split, pose, seed):
    """File i is item i of build_dataset("synth", split, size, pose, seed) rounded to 8 bits; its
    row gives the item's landmarks in pixels, u = (x + 1) / 2 * (S - 1), MAFL order."""
    n = 10
    assert run_export(tmp_path / "d", "--split", split, "--num", n, "--size", S, "--pose", pose, "--seed", seed) == 0
    header, rows = read_csv(tmp_path / "d" / "landmarks.csv")
    assert header == ["file"] + [f"{name.replace(' ', '_')}_{c}" for name in LANDMARK_NAMES for c in "xy"]
    assert header[1:3] == ["left_eye_x", "left_eye_y"] and header[-2:] == ["right_mouth_x", "right_mouth_y"]
    assert [r[0] for r in rows] == [f"images/{i:06d}.png" for i in range(n)]
    assert all(len(r) == 11 for r in rows)
    assert sorted(p.name for p in (tmp_path / "d" / "images").iterdir()) == [f"{i:06d}.png" for i in range(n)]

    ref = build_dataset("synth", split=split, size=S, pose=pose, seed=seed)
    items = [ref[i] for i in range(n)]
    expected_images = as_uint8(torch.stack([it["image"] for it in items]))
    expected_px = (torch.stack([it["landmarks"] for it in items]).double().numpy() + 1) / 2 * (S - 1)  # (n, 5, 2)
    for i, row in enumerate(rows):
        with Image.open(tmp_path / "d" / row[0]) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (S, S)
            np.testing.assert_array_equal(np.asarray(im), expected_images[i])
        px = np.array([float(v) for v in row[1:]]).reshape(5, 2)
        np.testing.assert_allclose(px, expected_px[i], atol=6e-5, rtol=0)  # 4 decimals written
    # the eye landmark sits on the drawn iris: x of the left eye < x of the right eye, both inside
    assert (expected_px[:, 0, 0] < expected_px[:, 1, 0]).all() and ((expected_px > 0) & (expected_px < S - 1)).all()


def test_the_train_export_is_the_training_data(tmp_path):
    """Training on an export of the train split is training on the images the default run's
    synth data set gives (the training loop's own data set, not a re-statement of it)."""
    from fastlmk.training.config import TrainConfig
    from fastlmk.training.loop import training_data

    assert run_export(tmp_path / "d", "--num", 8, "--size", S) == 0  # the defaults: train, aligned, seed 0
    cfg = TrainConfig(image_size=S, synth_pose="aligned", pairs="warps", batch_size=4)
    dataset, _ = training_data(cfg, 1)
    folder = build_dataset("folder", tmp_path / "d", size=S)
    assert len(folder) == 8 and folder.has_landmarks
    for i in range(8):
        mine, theirs = folder[i], dataset[i]
        assert torch.equal(mine["image"], torch.from_numpy(as_uint8(theirs["image"][None])[0]).permute(2, 0, 1) / 255.0)
        torch.testing.assert_close(mine["landmarks"], theirs["landmarks"], atol=4e-6, rtol=0)


def test_defaults_are_the_default_runs_data(tmp_path):
    """No --size / --pose / --split: the cpu preset's image size and pose, the train split."""
    from fastlmk.training.config import preset

    assert run_export(tmp_path / "d", "--num", 2) == 0

    meta = json.loads((tmp_path / "d" / "export.json").read_text())
    assert (meta["size"], meta["pose"], meta["split"], meta["seed"], meta["num"]) == (
        preset("cpu").image_size, preset("cpu").synth_pose, "train", 0, 2)
    with Image.open(tmp_path / "d" / "images" / "000001.png") as im:
        assert im.size == (preset("cpu").image_size,) * 2


def test_num_defaults_to_the_split_length(monkeypatch, tmp_path):
    """--num left out: the split's own length (20,000 train / 2,000 val and test), asked of
    SynthFaces itself (the rendering is replaced by a stub: only the count is checked)."""
    seen = {}

    def fake_export(out_dir, split, num, **kw):
        seen[split] = len(SynthFaces(split=split, length=num))
        return {"images": seen[split], "dir": str(out_dir), "csv": "x", "removed": 0, "seconds": 1.0,
                "images_per_s": 1.0}

    monkeypatch.setattr(export, "export_synth", fake_export)
    for split in ("train", "val", "test"):
        assert run_export(tmp_path / split, "--split", split) == 0
    assert seen == {"train": 20000, "val": 2000, "test": 2000}


def digest(d):
    return {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


def test_deterministic_for_a_seed(tmp_path):
    for name in ("a", "b"):
        assert run_export(tmp_path / name, "--num", 6, "--size", S, "--seed", 7) == 0
    a, b = digest(tmp_path / "a"), digest(tmp_path / "b")
    assert a == b and len(a) == 6 + 2  # images, landmarks.csv, export.json
    assert run_export(tmp_path / "c", "--num", 6, "--size", S, "--seed", 8) == 0
    c = digest(tmp_path / "c")
    assert all(c[k] != a[k] for k in a if k.startswith("images/")) and c["landmarks.csv"] != a["landmarks.csv"]


def test_non_empty_dir_is_refused_unless_forced(tmp_path, capsys):
    d = tmp_path / "d"
    d.mkdir()
    (d / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as e:
        export.main(["synth", str(d), "--num", "3", "--size", str(S), "--no-progress"])
    assert e.value.code == 2
    msg = str(e.value)
    assert "\n" not in msg and str(d) in msg and "not empty" in msg and "--force" in msg
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]  # nothing written

    # --force: written; a later --overwrite with fewer images replaces the earlier export's PNGs
    # (the numbered ones it wrote) and keeps the user's other files
    assert run_export(d, "--num", 5, "--size", S, "--force") == 0
    assert len(list((d / "images").iterdir())) == 5
    (d / "images" / "keep.png").write_bytes((d / "images" / "000000.png").read_bytes())
    assert run_export(d, "--num", 3, "--size", S, "--overwrite") == 0
    assert sorted(p.name for p in (d / "images").iterdir()) == ["000000.png", "000001.png", "000002.png", "keep.png"]
    assert (d / "notes.txt").read_text() == "mine"
    assert len(read_csv(d / "landmarks.csv")[1]) == 3
    assert "removed 2 image(s) of an earlier export" in capsys.readouterr().err


@pytest.mark.parametrize("args,msg", [
    (["--num", "0"], "--num must be >= 1, got 0"),
    (["--size", "8"], "--size must be >= 16, got 8"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_bad_numbers_are_one_line_errors_before_writing(tmp_path, args, msg):
    d = tmp_path / "new"
    with pytest.raises(SystemExit, match=msg) as e:
        export.main(["synth", str(d), *args, "--no-progress"])
    assert e.value.code == 2 and "\n" not in str(e.value)
    assert not d.exists()


def test_a_file_as_dir_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(SystemExit, match="exists and is not a directory"):
        export.main(["synth", str(f), "--num", "1", "--no-progress"])


def test_subcommands_are_a_registry(monkeypatch, tmp_path):
    """A new subcommand is one SUBCOMMANDS entry: it gets its own arguments plus the shared
    --force / --threads / --no-progress, and prepare_output_dir's refusal."""
    calls = []

    def add(p):
        p.add_argument("dir")
        p.add_argument("--clips", type=int, default=2)

    def run_(args):
        export.prepare_output_dir(export.PROG, args.dir, args.force)
        calls.append((args.dir, args.clips, args.force, args.threads))
        return 0

    monkeypatch.setitem(export.SUBCOMMANDS, "demo", ("a demo", add, run_))
    assert export.main(["demo", str(tmp_path / "x"), "--clips", "4"]) == 0
    assert calls == [(str(tmp_path / "x"), 4, False, 1)]
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "f").write_text("")
    with pytest.raises(SystemExit, match="not empty"):
        export.main(["demo", str(tmp_path / "y")])
    with pytest.raises(SystemExit) as e:  # no subcommand: argparse's usage error
        export.main([])
    assert e.value.code == 2


def test_command_line(tmp_path):
    """python -m fastlmk.export as a user runs it: exit 0, the summary line; a refusal: exit 2,
    one line on stderr."""
    d = tmp_path / "d"
    repo = Path(__file__).resolve().parents[1]  # the source tree's fastlmk
    r = subprocess.run([sys.executable, "-m", "fastlmk.export", "synth", str(d), "--num", "4", "--size", str(S),
                        "--no-progress"], capture_output=True, text=True, timeout=300, cwd=repo)
    assert r.returncode == 0, r.stderr
    assert f"4 SynthFaces train images ({S}x{S}" in r.stderr and "images/s" in r.stderr
    r = subprocess.run([sys.executable, "-m", "fastlmk.export", "synth", str(d), "--num", "4"],
                       capture_output=True, text=True, timeout=300, cwd=repo)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and str(d) in r.stderr
