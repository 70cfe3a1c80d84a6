"""Tests of the evaluation protocol (fastlmk.evaluate): exact cases, hand-computed numbers, and
one small end-to-end run through evaluate_detector."""

import json
import math

import pytest
import torch
from PIL import Image

from fastlmk import evaluate as ev
from fastlmk.training.config import TrainConfig
from _standins import BlobDetector, BlobFaces

# a frontal face with inter-ocular distance 1 (eyes at x = -0.5 and 0.5)
FACE = torch.tensor([[-0.5, 0.0], [0.5, 0.0], [0.0, 0.2], [-0.3, 0.5], [0.3, 0.5]], dtype=torch.float64)
SHIFT = torch.tensor([0.2, 0.0], dtype=torch.float64)


def random_faces(n, gen, jitter=0.1):
    return FACE + jitter * torch.randn(n, 5, 2, generator=gen, dtype=torch.float64)


def linear_points(gt, A, offset=None):
    """Discovered points that are an exact linear (affine with offset) function of the annotations."""
    pts = gt.flatten(1) @ A
    if offset is not None:
        pts = pts + offset
    return pts.view(gt.shape[0], -1, 2)


def test_exact_linear_function_gives_zero_error():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(10, 20, generator=g, dtype=torch.float64)  # K = 10 points, rank 10
    tr_gt, te_gt = random_faces(300, g), random_faces(100, g)
    res = ev.evaluate_landmarks(linear_points(tr_gt, A), tr_gt, linear_points(te_gt, A), te_gt)
    assert res["forward"]["imm"] < 1e-8
    assert res["forward"]["saic"] < 1e-2  # the small ridge biases the fit slightly
    assert res["backward"]["imm"] < 1e-8  # points are linear in the annotations too
    assert max(res["per_landmark"]["imm"]) < 1e-8
    # with >= 10 images the minimum-norm fit already recovers the map exactly
    for row in res["nshot"]:
        if row["n"] >= 10:
            assert row["imm"]["mean"] < 1e-6, row
    # and with ridge 0 the SAIC variant is exact as well
    res0 = ev.evaluate_landmarks(linear_points(tr_gt, A), tr_gt, linear_points(te_gt, A), te_gt, ridge=0.0)
    assert res0["forward"]["saic"] < 1e-8
    # sanity: far below predicting the mean shape
    assert res["mean_shape"] > 5.0


def test_affine_function_needs_the_bias():
    """K = 5 points = an invertible linear map of the annotations plus an offset: exact for the
    SAIC variant (bias), not for the bias-free IMM variant."""
    g = torch.Generator().manual_seed(1)
    A = torch.randn(10, 10, generator=g, dtype=torch.float64) + 3 * torch.eye(10, dtype=torch.float64)
    offset = torch.randn(10, generator=g, dtype=torch.float64)
    tr_gt, te_gt = random_faces(400, g), random_faces(100, g)
    res = ev.evaluate_landmarks(linear_points(tr_gt, A, offset), tr_gt, linear_points(te_gt, A, offset), te_gt,
                                ridge=0.0)
    assert res["forward"]["saic"] < 1e-8
    assert res["forward"]["imm"] > 0.5


def test_hand_computed_regression_case():
    """K = 1 discovered point, two training images with points (1, 0) and (0, 1) and annotations
    FACE and FACE + SHIFT. Test image a: point (0.5, 0.5), truth FACE; test image b: point (2, 0),
    truth 2 * FACE (inter-ocular distance 2).

    IMM (Y = X W): W's rows are the two training shapes, so a -> FACE + SHIFT/2 (every point off
    by 0.1, IOD 1: 10 %) and b -> 2 FACE (0 %): mean 5 %.
    SAIC with ridge 0 (min-norm W on centred data, see below): a -> the mean shape FACE + SHIFT/2
    (10 %), b -> FACE - SHIFT/2, compared with 2 FACE: distances 0.4, 0.6, sqrt(.05), sqrt(.29),
    sqrt(.41), mean over points / IOD 2 -> 24.02 %; mean (10 + 24.02) / 2 = 17.01 %.
    (Centred inputs (.5, -.5), (-.5, .5) and targets -d, +d with d = SHIFT/2 give the min-norm
    W = [-2d; 2d] / 2 = [-d; d]; b's centred input (1.5, -.5) gives -1.5 d - .5 d + mean = FACE - d.)
    """
    train_pts = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]], dtype=torch.float64)
    train_gt = torch.stack([FACE, FACE + SHIFT])
    test_pts = torch.tensor([[[0.5, 0.5]], [[2.0, 0.0]]], dtype=torch.float64)
    test_gt = torch.stack([FACE, 2 * FACE])
    res = ev.evaluate_landmarks(train_pts, train_gt, test_pts, test_gt, shots=(None,), ridge=0.0)
    b_err = (0.4 + 0.6 + math.sqrt(0.05) + math.sqrt(0.29) + math.sqrt(0.41)) / 5 / 2 * 100
    assert b_err == pytest.approx(24.0244, abs=1e-4)
    assert res["forward"]["imm"] == pytest.approx(5.0, abs=1e-9)
    assert res["forward"]["saic"] == pytest.approx((10.0 + b_err) / 2, abs=1e-9)
    # per landmark (IMM): image a contributes 10 % on every landmark, image b 0 %
    assert res["per_landmark"]["imm"] == pytest.approx([5.0] * 5, abs=1e-9)
    assert [r["label"] for r in res["nshot"]] == ["all"]
    # the stored regressors: IMM's W rows are the two training shapes, b = 0; SAIC's W = [-d; d]
    imm, saic = res["regressors"]["imm"], res["regressors"]["saic"]
    torch.testing.assert_close(torch.tensor(imm["W"], dtype=torch.float64), torch.stack([FACE, FACE + SHIFT]).flatten(1))
    assert imm["b"] == [0.0] * 10
    d = (SHIFT / 2).expand(5, 2).flatten()
    torch.testing.assert_close(torch.tensor(saic["W"], dtype=torch.float64), torch.stack([-d, d]))
    torch.testing.assert_close(torch.tensor(saic["b"], dtype=torch.float64), (FACE + SHIFT / 2).flatten() - torch.tensor(saic["W"], dtype=torch.float64).sum(0) / 2)


def test_hand_computed_mean_shape_baseline():
    """Training shapes FACE and FACE + SHIFT -> mean FACE + SHIFT/2. Test FACE: every point off by
    0.1, IOD 1 -> 10 %. Test 2 FACE: distances 0.6, 0.4, sqrt(.05), sqrt(.41), sqrt(.29), IOD 2."""
    train_gt = torch.stack([FACE, FACE + SHIFT])
    assert ev.mean_shape_baseline(train_gt, FACE[None]) == pytest.approx(10.0, abs=1e-9)
    second = (0.6 + 0.4 + math.sqrt(0.05) + math.sqrt(0.41) + math.sqrt(0.29)) / 5 / 2 * 100
    both = ev.mean_shape_baseline(train_gt, torch.stack([FACE, 2 * FACE]))
    assert both == pytest.approx((10.0 + second) / 2, abs=1e-9)
    # float32 inputs give the same number
    assert ev.mean_shape_baseline(train_gt.float(), FACE[None].float()) == pytest.approx(10.0, abs=1e-5)


def test_backward_error_is_normalised_by_the_annotated_iod():
    """One discovered point = the annotated left eye (an exact linear function of the annotations
    on the training set); on the test set it sits 0.1 to the right of the left eye. The backward
    regressor predicts the left eye, so the error is 0.1 / IOD: 10 % for IOD 1, 5 % for IOD 2."""
    g = torch.Generator().manual_seed(2)
    tr_gt = random_faces(200, g)
    te_gt = torch.stack([FACE, 2 * FACE])
    te_pts = te_gt[:, :1] + torch.tensor([0.1, 0.0], dtype=torch.float64)
    res = ev.evaluate_landmarks(tr_gt[:, :1].clone(), tr_gt, te_pts, te_gt, shots=(None,), ridge=0.0)
    assert res["backward"]["imm"] == pytest.approx(7.5, abs=1e-8)
    assert res["backward"]["saic"] == pytest.approx(7.5, abs=1e-8)
    assert res["backward_per_point"]["saic"] == pytest.approx([7.5], abs=1e-8)


def test_ridge_matches_augmented_least_squares():
    """The SAIC ridge solution equals plain least squares on [Xc; sqrt(lam) I] -> [Yc; 0]."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(30, 6, generator=g, dtype=torch.float64) * torch.tensor([1, 2, 3, 4, 5, 6.0], dtype=torch.float64)
    Y = torch.randn(30, 4, generator=g, dtype=torch.float64) + 2
    ridge = 0.05
    W, b = ev.fit_linear(X, Y, bias=True, ridge=ridge)
    Xc, Yc = X - X.mean(0), Y - Y.mean(0)
    lam = ridge * (Xc * Xc).sum(0).max()
    Xa = torch.cat([Xc, lam.sqrt() * torch.eye(6, dtype=torch.float64)])
    Ya = torch.cat([Yc, torch.zeros(6, 4, dtype=torch.float64)])
    W_ref = torch.linalg.lstsq(Xa, Ya).solution
    torch.testing.assert_close(W, W_ref, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(b, Y.mean(0) - X.mean(0) @ W_ref, rtol=1e-9, atol=1e-10)


def test_nshot_rows():
    g = torch.Generator().manual_seed(4)
    A = torch.randn(10, 8, generator=g, dtype=torch.float64)
    tr_gt, te_gt = random_faces(600, g), random_faces(50, g)
    tr_pts = linear_points(tr_gt, A) + 0.01 * torch.randn(600, 4, 2, generator=g, dtype=torch.float64)
    te_pts = linear_points(te_gt, A)
    res = ev.evaluate_landmarks(tr_pts, tr_gt, te_pts, te_gt, repeats=4)
    assert [r["label"] for r in res["nshot"]] == ["1", "5", "10", "100", "500", "all"]
    assert [r["n"] for r in res["nshot"]] == [1, 5, 10, 100, 500, 600]
    assert [r["repeats"] for r in res["nshot"]] == [4, 4, 4, 4, 4, 1]
    for r in res["nshot"]:
        for v in ("imm", "saic"):
            assert math.isfinite(r[v]["mean"]) and r[v]["std"] >= 0
    assert res["nshot"][-1]["saic"]["mean"] == res["forward"]["saic"]
    # more data helps: 1 image is far worse than all of them
    assert res["nshot"][0]["saic"]["mean"] > 3 * res["forward"]["saic"]
    # the same seed gives the same numbers, another seed other subsets
    again = ev.evaluate_landmarks(tr_pts, tr_gt, te_pts, te_gt, repeats=4)
    assert again["nshot"] == res["nshot"]
    other = ev.evaluate_landmarks(tr_pts, tr_gt, te_pts, te_gt, repeats=4, seed=1)
    assert other["nshot"][1]["imm"] != res["nshot"][1]["imm"]
    # exactly 1000 training images: the 1000 row is the "all" row, 5000 is dropped
    res = ev.evaluate_landmarks(tr_pts[:1], tr_gt[:1], te_pts, te_gt, shots=(1, 5, None))
    assert [(r["n"], r["label"]) for r in res["nshot"]] == [(1, "all")]


def test_bad_inputs_raise_clear_errors():
    pts, gt = torch.zeros(4, 3, 2), FACE.expand(4, 5, 2).float()
    with pytest.raises(ValueError, match="train_pts must be a tensor of shape"):
        ev.evaluate_landmarks(torch.zeros(4, 3), gt, pts, gt)
    with pytest.raises(ValueError, match="4 images but train_gt has 3"):
        ev.evaluate_landmarks(pts, gt[:3], pts, gt)
    with pytest.raises(ValueError, match="non-finite"):
        ev.evaluate_landmarks(pts, gt, pts * float("nan"), gt)
    with pytest.raises(ValueError, match="shots"):
        ev.evaluate_landmarks(pts, gt, pts, gt, shots=(0,))
    with pytest.raises(ValueError, match="inter-ocular distance"):
        ev.mean_shape_baseline(gt, torch.zeros(2, 5, 2))


def test_evaluate_detector_end_to_end(tmp_path):
    """A stand-in detector that finds the eyes and nose exactly; the mouth corners are an affine
    function of them, so the SAIC regressor (with bias) recovers all five landmarks, and the
    bias-free IMM one only approximately; files are written."""
    train, test = BlobFaces(120, seed=0), BlobFaces(40, seed=1)
    res = ev.evaluate_detector(BlobDetector(), train, test, "cpu", out_dir=tmp_path, batch_size=32, progress=False)
    assert res["num_train"] == 120 and res["num_test"] == 40 and res["num_points"] == 3
    assert res["forward"]["saic"] < 0.01
    assert 0.5 < res["forward"]["imm"] < res["mean_shape"] / 2
    assert res["mean_shape"] > 5.0
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["forward"] == pytest.approx(res["forward"])
    md = (tmp_path / "eval.md").read_text()
    assert "| all (120) |" in md and "mean-shape baseline" in md
    with Image.open(tmp_path / "eval.png") as im:
        assert im.format == "PNG" and im.size[0] > 400 and im.size[1] > 200


def test_extract_points_checks_predictions():
    train = BlobFaces(4)
    with pytest.raises(ValueError, match=r"predict_fn must return \(B=4, K, 2\)"):
        ev.extract_points(lambda x: x.mean(1), train, batch_size=4, progress=False)
    unlabelled = [{"image": torch.zeros(3, 8, 8)} for _ in range(2)]
    with pytest.raises(ValueError, match="no 'landmarks'"):
        ev.extract_points(lambda x: torch.zeros(len(x), 2, 2), unlabelled, progress=False)


def test_supervised_upper_bound_trains_and_is_reported(tmp_path):
    """train_supervised (the real fastlmk.training.model.Detector, 5 landmarks) lowers its MSE on a fixed
    batch, and evaluate_detector adds the supervised row to the results and the report."""
    train, test = BlobFaces(8, size=16, seed=0), BlobFaces(8, size=16, seed=1)
    history = []
    res = ev.evaluate_detector(BlobDetector(16), train, test, "cpu", out_dir=tmp_path, progress=False,
                               supervised_steps=20, repeats=2,
                               supervised_config={"model": TrainConfig(detector_width=8), "history": history,
                                                  "settings": ev.SupervisedSettings(batch_size=8, lr=3e-3)})
    assert len(history) == 20 and all(math.isfinite(h) for h in history)
    assert sum(history[-5:]) / 5 < 0.7 * history[0], history
    sup = res["supervised"]
    assert sup["steps"] == 20 and len(sup["per_landmark"]) == 5 and math.isfinite(sup["error"])
    assert sup["error"] == pytest.approx(sum(sup["per_landmark"]) / 5)
    assert "supervised upper bound" in (tmp_path / "eval.md").read_text()
    assert sup["config"]["betas"] == [0.9, 0.999] and sup["config"]["weight_decay"] == 0.0  # stated in eval.json
    det = ev.train_supervised(train, 1, TrainConfig(detector_width=8), ev.SupervisedSettings(batch_size=4),
                              progress=False)
    assert det.num_landmarks == 5 and not det.training


# --- the command line ---------------------------------------------------------------------
@pytest.fixture
def blob_data(monkeypatch):
    """fastlmk.data.build_dataset replaced by BlobFaces (fast, and independent of the data
    package): the CLI plumbing is what is tested here."""
    import sys
    import types

    calls = []

    def build_dataset(name, root=None, split="train", size=128, **kw):
        calls.append((name, root, split, size))
        if name != "synth":
            raise FileNotFoundError(f"dataset folder not found: {root}")
        return BlobFaces(200 if split == "train" else 50, size=size, seed=0 if split == "train" else 1)

    mod = types.ModuleType("fastlmk.data")
    mod.build_dataset = build_dataset
    monkeypatch.setitem(sys.modules, "fastlmk.data", mod)
    return calls


def test_cli_writes_the_report(tmp_path, blob_data, capsys):
    from _standins import tiny_checkpoint

    run = tmp_path / "run"
    tiny_checkpoint(run / "checkpoints" / "step_00000010.pt", num_landmarks=4, image_size=32)
    assert ev.main(["--checkpoint", str(run), "--num-train", "120", "--repeats", "2", "--no-progress"]) == 0
    assert blob_data == [("synth", None, "train", 32), ("synth", None, "test", 32)]
    out = run / "eval_synth"  # default: next to the run's checkpoints
    res = json.loads((out / "eval.json").read_text())
    assert (res["num_train"], res["num_test"], res["num_points"]) == (120, 50, 4)
    assert res["dataset"] == "synth" and res["checkpoint"].endswith("step_00000010.pt")
    assert [r["label"] for r in res["nshot"]] == ["1", "5", "10", "100", "all"]
    assert math.isfinite(res["forward"]["saic"]) and res["mean_shape"] > 5
    assert (out / "eval.md").read_text() == ev.results_markdown(res, "step_00000010.pt on synth")
    assert "| training images N |" in capsys.readouterr().out
    with Image.open(out / "eval.png") as im:
        assert im.format == "PNG"


def test_cli_errors(tmp_path, blob_data):
    from _standins import tiny_checkpoint

    with pytest.raises(SystemExit, match="checkpoint not found: .*nope.pt"):
        ev.main(["--checkpoint", str(tmp_path / "nope.pt")])
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(SystemExit, match="bad.pt.*corrupt"):
        ev.main(["--checkpoint", str(bad)])
    ckpt, _ = tiny_checkpoint(tmp_path / "c.pt", image_size=32)
    with pytest.raises(SystemExit, match="dataset folder not found: /no/such/dir"):
        ev.main(["--checkpoint", str(ckpt), "--dataset", "mafl", "--data-root", "/no/such/dir"])
    with pytest.raises(SystemExit, match="--num-test must be >= 0"):
        ev.main(["--checkpoint", str(ckpt), "--num-test", "-1"])
    with pytest.raises(SystemExit) as e:  # argparse: invalid choice, exit status 2
        ev.main(["--checkpoint", str(ckpt), "--dataset", "imagenet"])
    assert e.value.code == 2


def test_cli_on_synthfaces(tmp_path):
    """The real data package (SynthFaces) end to end, on a few images."""
    pytest.importorskip("fastlmk.data")
    from _standins import tiny_checkpoint

    ckpt, _ = tiny_checkpoint(tmp_path / "c.pt", num_landmarks=4, image_size=32)
    assert ev.main(["--checkpoint", str(ckpt), "--dataset", "synth", "--num-train", "24", "--num-test", "8",
                    "--out", str(tmp_path / "ev"), "--repeats", "2", "--no-progress"]) == 0
    res = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert (res["num_train"], res["num_test"], res["num_points"]) == (24, 8, 4)
    assert all(math.isfinite(res["forward"][v]) for v in ("imm", "saic")) and res["mean_shape"] > 0
