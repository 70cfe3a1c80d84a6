"""The 'folder' data set with landmarks.csv: landmarks through the crop and resize, partial
annotations and the fit / test parts, every bad-input case as one line naming the csv and line,
and the evaluation on an annotated folder (python -m fastlmk.evaluate, and the training run's own)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastlmk import evaluate as ev
from fastlmk import export
from fastlmk.data import ImageFolder, SynthFaces, build_dataset
from fastlmk.data.folder import check_annotated_folder, landmarks_header, read_landmarks_csv

S = 32
HEADER = ",".join(landmarks_header())


def dot_image(path, w, h, centre, r=2.5):
    """Dark image with a white disc at the pixel centre ``centre`` = (x, y) (0-based)."""
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.full((h, w, 3), 20, np.uint8)
    arr[((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) <= r * r] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def centroid(img):
    """Brightness-weighted centroid of the bright disc of img (3, S, S) -> (x, y) in [-1, 1]."""
    w = (img.mean(0) - 0.5).clamp(min=0)
    c = torch.arange(img.shape[-1], dtype=torch.float32)
    return torch.stack([(w.sum(0) * c).sum(), (w.sum(1) * c).sum()]) / w.sum() * 2 / (img.shape[-1] - 1) - 1


def row(name, pts):
    return name + "," + ",".join(f"{v:g}" for p in pts for v in p)


# (file, width, height, 5 points in pixels; point 0 is where the disc is drawn)
IMAGES = [
    ("a.png", 60, 40, [(31.0, 18.5), (40, 18), (30, 25), (24, 30), (36, 30)]),
    ("sub/b.png", 40, 64, [(12.25, 40.0), (28, 20), (20, 30), (14, 40), (26, 40)]),
    ("sub/deeper/c.png", 50, 50, [(20.0, 33.0), (35, 20), (25, 28), (18, 36), (32, 36)]),
]


def make_folder(root, rows=None, extra_images=()):
    for name, w, h, pts in IMAGES:
        dot_image(root / name, w, h, pts[0])
    for name in extra_images:
        dot_image(root / name, 30, 30, (15, 15))
    lines = [HEADER] + ([row(n, p) for n, _, _, p in IMAGES] if rows is None else rows)
    (root / "landmarks.csv").write_text("\n".join(lines) + "\n")
    return root


def expected(pts, w, h, crop):
    """The crop-and-resize of a pixel point to [-1, 1] of the S x S item (stated here, as the reference)."""
    side_x, side_y = (min(w, h),) * 2 if crop == "center" else (w, h)
    left, top = (w - side_x) / 2, (h - side_y) / 2
    p = torch.tensor(pts, dtype=torch.float64)
    u = (p[:, 0] + 0.5 - left) * S / side_x - 0.5
    v = (p[:, 1] + 0.5 - top) * S / side_y - 0.5
    return torch.stack([u, v], -1) * 2 / (S - 1) - 1


@pytest.mark.parametrize("crop", ["center", "none"])
def test_landmarks_follow_the_crop_and_resize(tmp_path, crop):
    ds = build_dataset("folder", make_folder(tmp_path), size=S, crop=crop)
    assert len(ds) == 3 and ds.has_landmarks and ds.num_annotated == 3
    assert ds.annotations_path == tmp_path / "landmarks.csv"
    for i, (name, w, h, pts) in enumerate(IMAGES):
        item = ds[i]
        assert set(item) == {"image", "index", "landmarks"} and item["landmarks"].shape == (5, 2)
        assert ds.files[i] == tmp_path / name
        torch.testing.assert_close(item["landmarks"].double(), expected(pts, w, h, crop), atol=1e-6, rtol=0)
        # and it is where the image shows the disc (to a fraction of a pixel of the S x S item)
        torch.testing.assert_close(item["landmarks"][0], centroid(item["image"]), atol=0.6 * 2 / (S - 1), rtol=0)


def test_export_round_trip(tmp_path):
    """export -> folder loader: the images are the in-memory items rounded to 8 bits; the
    landmarks equal them at the export's size, and at another loader size they are the items'
    points moved by the resize (within a pixel of the smaller image)."""
    assert export.main(["synth", str(tmp_path), "--num", "6", "--size", str(S), "--pose", "wild",
                        "--no-progress"]) == 0
    ref = SynthFaces("train", size=S, pose="wild")
    ds = build_dataset("folder", tmp_path, size=S)
    for i in range(6):
        a, b = ds[i], ref[i]
        assert torch.equal(a["image"], b["image"].mul(255).round() / 255)
        torch.testing.assert_close(a["landmarks"], b["landmarks"], atol=4e-6, rtol=0)
    small = build_dataset("folder", tmp_path, size=20)
    for i in range(6):
        moved = ((ref[i]["landmarks"].double() + 1) / 2 * (S - 1) + 0.5) * 20 / S - 0.5  # pixels of the 20 x 20 image
        torch.testing.assert_close(small[i]["landmarks"].double(), moved * 2 / 19 - 1, atol=1e-5, rtol=0)
        assert (small[i]["landmarks"] - ref[i]["landmarks"]).abs().max() < 2 / 19


def test_partial_annotations_train_on_all_evaluate_on_the_annotated(tmp_path):
    """Images without a row: part 'all' keeps them all (items without landmarks, a uniform batch);
    'annotated' / 'fit' / 'test' keep the annotated ones; fit + test = annotated, the test part is
    the last test_fraction in sorted order."""
    make_folder(tmp_path, extra_images=("zz_unlabelled.png", "sub/u.png"))
    everything = ImageFolder(tmp_path, size=S)
    assert len(everything) == 5 and everything.num_annotated == 3 and not everything.has_landmarks
    assert all("landmarks" not in everything[i] for i in range(5))
    annotated = ImageFolder(tmp_path, size=S, part="annotated")
    assert [p.relative_to(tmp_path).as_posix() for p in annotated.files] == ["a.png", "sub/b.png", "sub/deeper/c.png"]
    fit = ImageFolder(tmp_path, size=S, part="fit", test_fraction=0.34)
    test = ImageFolder(tmp_path, size=S, part="test", test_fraction=0.34)
    assert fit.files == annotated.files[:2] and test.files == annotated.files[2:]
    torch.testing.assert_close(test[0]["landmarks"].double(), expected(IMAGES[2][3], 50, 50, "center"), atol=1e-6,
                               rtol=0)
    # at least one image on each side, whatever the fraction
    assert len(ImageFolder(tmp_path, size=S, part="test", test_fraction=0.01)) == 1
    assert len(ImageFolder(tmp_path, size=S, part="fit", test_fraction=0.99)) == 1


def test_no_annotations(tmp_path):
    dot_image(tmp_path / "x.png", 20, 20, (10, 10))
    ds = ImageFolder(tmp_path, size=S)
    assert ds.annotations_path is None and not ds.has_landmarks and set(ds[0]) == {"image", "index"}
    with pytest.raises(FileNotFoundError, match="part='fit' needs annotations: .*landmarks.csv not found"):
        ImageFolder(tmp_path, size=S, part="fit")
    # annotations=None ignores a csv that is there
    make_folder(tmp_path)
    assert not ImageFolder(tmp_path, size=S, annotations=None).has_landmarks


def test_names_with_other_separators_and_an_unreadable_image(tmp_path):
    """Rows may write ./name or Windows separators; a file too broken to scan is skipped with its
    row (the scan's warning names it), not an error."""
    rows = [row(n.replace("/", "\\") if i == 1 else "./" + n, p) for i, (n, _, _, p) in enumerate(IMAGES)]
    make_folder(tmp_path, rows=rows + [row("broken.png", IMAGES[0][3])])
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"skipped 1 unreadable.*broken\.png"):
        ds = ImageFolder(tmp_path, size=S)
    assert len(ds) == 3 and ds.has_landmarks


BAD = [  # (csv lines after the header, or the whole file with header=False), line, message
    ([row("a.png", IMAGES[0][3]), "sub/b.png,1,2,3"], 3, r"expected 11 columns .* found 4"),
    ([row("a.png", IMAGES[0][3]) + ",7"], 2, "expected 11 columns"),
    (["a.png,1,2,3,4,5,6,7,8,9,ten"], 2, "right_mouth_y is not a number: 'ten'"),
    (["a.png,1,nan,3,4,5,6,7,8,9,10"], 2, "left_eye_y is not finite: 'nan'"),
    (["a.png,1,2,3,4,inf,6,7,8,9,10"], 2, "nose_x is not finite: 'inf'"),
    (["a.png,1,2,3,4,5,6,7,8,9,-1e999"], 2, "right_mouth_y is not finite"),
    ([row("a.png", IMAGES[0][3]), "", row("missing.png", IMAGES[0][3])], 4, r"missing\.png: no such file under"),
    ([row("notes.txt", IMAGES[0][3])], 2, r"notes\.txt: not a \.jpg/\.jpeg/\.png image"),
    ([row("a.png", IMAGES[0][3]), row("sub/b.png", IMAGES[1][3]), row("./a.png", IMAGES[0][3])], 4,
     r"a\.png already has a row \(line 2\)"),
    ([",1,2,3,4,5,6,7,8,9,10"], 2, "empty file name"),
]


@pytest.mark.parametrize("lines,line,msg", BAD)
def test_bad_rows_name_the_file_and_line(tmp_path, lines, line, msg):
    make_folder(tmp_path, rows=lines)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match=msg) as e:
        ImageFolder(tmp_path, size=S)
    text = str(e.value)
    assert f"{tmp_path / 'landmarks.csv'}, line {line}:" in text and "\n" not in text


@pytest.mark.parametrize("content,msg", [
    ("a.png,1,2,3,4,5,6,7,8,9,10\n", "line 1: the first row must be a header"),
    ("", "line 1: the file is empty; expected a header row"),
    ("file,x,y\n", r"line 1: expected 11 columns"),
])
def test_bad_header(tmp_path, content, msg):
    make_folder(tmp_path)
    (tmp_path / "landmarks.csv").write_text(content)
    with pytest.raises(ValueError, match=msg):
        ImageFolder(tmp_path, size=S)


def test_read_landmarks_csv_values(tmp_path):
    (tmp_path / "l.csv").write_text("\ufeff" + HEADER + "\n" + "x.png, 1.5 ,2,3,4,5,6,7,8,9,10\n\n")
    rows = read_landmarks_csv(tmp_path / "l.csv")
    assert list(rows) == ["x.png"] and rows["x.png"][0] == 2
    np.testing.assert_array_equal(rows["x.png"][1], [[1.5, 2], [3, 4], [5, 6], [7, 8], [9, 10]])


def test_check_annotated_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="--eval-data-root: no such directory"):
        check_annotated_folder(tmp_path / "nope", "--eval-data-root")
    dot_image(tmp_path / "x.png", 20, 20, (10, 10))
    with pytest.raises(FileNotFoundError, match="no landmarks.csv"):
        check_annotated_folder(tmp_path)
    (tmp_path / "landmarks.csv").write_text(HEADER + "\n" + row("x.png", IMAGES[0][3]) + "\n")
    with pytest.raises(ValueError, match="at least 2 annotated images"):
        check_annotated_folder(tmp_path)
    make_folder(tmp_path)
    check_annotated_folder(tmp_path)


# ------------------------------------------------------------------------------------------ evaluation

def synth_landmarks(split, n):
    return SynthFaces(split, size=S, pose="aligned").render(range(n))["landmarks"]


@pytest.fixture()
def exported(tmp_path):
    """40 train and 10 test images of SynthFaces aligned, 32 px, exported."""
    for split, n in (("train", 40), ("test", 10)):
        assert export.main(["synth", str(tmp_path / split), "--split", split, "--num", str(n), "--size", str(S),
                            "--pose", "aligned", "--no-progress"]) == 0
    return tmp_path


def test_evaluate_on_an_exported_folder(exported, tmp_path):
    """python -m fastlmk.evaluate --dataset folder: the last 20 % of the annotated images are the
    test part; the mean-shape row equals the one computed from the in-memory SynthFaces landmarks.
    With --test-root: fitted on all of --data-root, reported on the other folder."""
    from _standins import tiny_checkpoint

    ckpt, _ = tiny_checkpoint(tmp_path / "c.pt", num_landmarks=4, image_size=S)
    gt = synth_landmarks("train", 40)
    out = tmp_path / "ev"
    assert ev.main(["--checkpoint", str(ckpt), "--dataset", "folder", "--data-root", str(exported / "train"),
                    "--out", str(out), "--repeats", "1", "--no-progress"]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert (res["dataset"], res["num_train"], res["num_test"], res["num_points"]) == ("folder", 32, 8, 4)
    assert res["mean_shape"] == pytest.approx(ev.mean_shape_baseline(gt[:32], gt[32:]), abs=1e-3)
    assert all(math.isfinite(res["forward"][v]) for v in ("imm", "saic"))

    assert ev.main(["--checkpoint", str(ckpt), "--dataset", "folder", "--data-root", str(exported / "train"),
                    "--test-root", str(exported / "test"), "--out", str(out), "--repeats", "1",
                    "--no-progress"]) == 0
    res = json.loads((out / "eval.json").read_text())
    assert (res["num_train"], res["num_test"], res["test_root"]) == (40, 10, str(exported / "test"))
    assert res["mean_shape"] == pytest.approx(ev.mean_shape_baseline(gt, synth_landmarks("test", 10)), abs=1e-3)

    assert ev.main(["--checkpoint", str(ckpt), "--dataset", "folder", "--data-root", str(exported / "train"),
                    "--test-fraction", "0.5", "--out", str(out), "--repeats", "1", "--no-progress"]) == 0
    assert json.loads((out / "eval.json").read_text())["num_test"] == 20


def test_evaluate_folder_errors(exported, tmp_path):
    from _standins import tiny_checkpoint

    ckpt, _ = tiny_checkpoint(tmp_path / "c.pt", num_landmarks=4, image_size=S)
    plain = tmp_path / "plain"
    dot_image(plain / "x.png", 20, 20, (10, 10))
    base = ["--checkpoint", str(ckpt), "--dataset", "folder", "--no-progress"]
    cases = [
        (["--data-root", str(plain)], f"--data-root {plain}: no landmarks.csv"),
        ([], "--dataset folder needs --data-root DIR"),
        (["--data-root", str(exported / "train"), "--split", "val"], "--split: a folder has no splits"),
        (["--data-root", str(exported / "train"), "--test-fraction", "1.5"], r"--test-fraction must be in \(0, 1\)"),
        (["--data-root", str(exported / "train"), "--test-root", str(tmp_path / "nope")], "image folder not found"),
    ]
    for extra, msg in cases:
        with pytest.raises(SystemExit, match=msg) as e:
            ev.main(base + extra)
        assert e.value.code == 2 and "\n" not in str(e.value)
    (exported / "train" / "landmarks.csv").write_text(HEADER + "\nimages/000000.png,1,2\n")
    with pytest.raises(SystemExit, match=r"landmarks\.csv, line 2: expected 11 columns"):
        ev.main(base + ["--data-root", str(exported / "train")])
    with pytest.raises(SystemExit, match="--test-root is for --dataset folder"):
        ev.main(["--checkpoint", str(ckpt), "--dataset", "synth", "--test-root", str(plain)])


def test_training_evaluates_on_an_annotated_folder(exported, tmp_path, capsys):
    """The train command's end-of-run evaluation: --eval-dataset folder --eval-data-root DIR (fit /
    test parts of DIR); a training folder without landmarks.csv: the run says it skips the
    evaluation; the eval folder is checked before training."""
    from _standins import tiny_train_config

    from fastlmk.training.config import validate
    from fastlmk.training.loop import evaluate, eval_sets, train

    plain = tmp_path / "plain"
    for i in range(8):
        dot_image(plain / f"{i}.png", 24, 24, (12, 12))
    cfg = tiny_train_config(tmp_path, "run", dataset="folder", data_root=str(plain), steps=2, eval=True,
                            eval_dataset="folder", eval_data_root=str(exported / "train"), eval_train_size=0,
                            eval_test_size=0)
    fit, test = eval_sets(cfg, build_dataset)
    assert (len(fit), len(test)) == (32, 8) and "landmarks" in test[0]
    result = train(cfg, progress=False)
    assert result["eval"]["num_train"] == 32 and result["eval"]["num_test"] == 8
    assert (tmp_path / "run" / "eval.json").is_file()

    # the training folder without annotations: no evaluation set, the run says it skips it
    unannotated = tiny_train_config(tmp_path, "run2", dataset="folder", data_root=str(plain), eval=True)
    assert eval_sets(unannotated, build_dataset) is None
    assert evaluate(None, unannotated, str(tmp_path), "cpu") is None
    assert "skipping the evaluation" in capsys.readouterr().out
    # ... and with it (the training folder is the default evaluation folder)
    annotated = tiny_train_config(tmp_path, "run3", dataset="folder", data_root=str(exported / "train"), eval=True)
    assert [len(s) for s in eval_sets(annotated, build_dataset)] == [32, 8]

    # checked before training: a missing folder, one without landmarks.csv, a bad row, --eval-split val
    for root, err, msg in [(tmp_path / "nope", FileNotFoundError, "--eval-data-root: no such directory"),
                           (plain, FileNotFoundError, "no landmarks.csv"),
                           (exported / "test", None, None)]:
        c = tiny_train_config(tmp_path, "x", eval=True, eval_dataset="folder", eval_data_root=str(root))
        if err is None:
            validate(c)
        else:
            with pytest.raises(err, match=msg):
                validate(c)
    with pytest.raises(ValueError, match="--eval-split val: a folder has no val split"):
        validate(tiny_train_config(tmp_path, "x", eval=True, eval_dataset="folder",
                                   eval_data_root=str(exported / "test"), eval_split="val"))
    (exported / "test" / "landmarks.csv").write_text(HEADER + "\nimages/000000.png,1,2,3,4,5,6,7,8,9,nan\n")
    with pytest.raises(ValueError, match=r"landmarks\.csv, line 2: right_mouth_y is not finite"):
        validate(tiny_train_config(tmp_path, "x", eval=True, eval_dataset="folder",
                                   eval_data_root=str(exported / "test")))
