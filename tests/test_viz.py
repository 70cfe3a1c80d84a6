"""Tests of fastlmk.viz: markers land on the right pixels in the right colours, and the PNG
writers produce real PNGs of the promised size."""

import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

from fastlmk import viz
from fastlmk.data import LANDMARK_NAMES


def colour_u8(k):
    return np.array([round(c * 255) for c in viz.landmark_color(k)])


def test_draw_landmarks_positions_and_colours():
    images = torch.full((2, 3, 40, 60), 0.5)
    # (x, y) normalised; pixel column = (x + 1) / 2 * (W - 1)
    points = torch.tensor([[[-1.0, -1.0], [1.0, 1.0], [0.0, 0.0]],
                           [[float("nan"), 0.0], [0.5, -0.5], [0.0, 0.0]]])
    out = viz.draw_landmarks(images, points, radius=3)
    assert out.shape == images.shape and out.dtype == torch.float32
    assert torch.equal(images, torch.full((2, 3, 40, 60), 0.5))  # input untouched
    # the disc centre has exactly the landmark's colour
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor(viz.landmark_color(0)))
    torch.testing.assert_close(out[0, :, 39, 59], torch.tensor(viz.landmark_color(1)))
    # (0, 0) -> pixel (29.5, 19.5): its four neighbours are 0.71 px away, inside the disc
    torch.testing.assert_close(out[0, :, 19, 29], torch.tensor(viz.landmark_color(2)))
    torch.testing.assert_close(out[0, :, 20, 30], torch.tensor(viz.landmark_color(2)))
    u, v = 0.75 * 59, 0.25 * 39  # (x, y) = (0.5, -0.5) -> pixel (44.25, 9.75)
    torch.testing.assert_close(out[1, :, round(v), round(u)], torch.tensor(viz.landmark_color(1)))
    # far from every point nothing changes; the NaN point is not drawn
    assert torch.equal(out[0, :, 30, 5], images[0, :, 30, 5])
    assert torch.equal(out[1, :, 20, 0], images[1, :, 20, 0])
    # coverage: pixels painted ~ pi (r + ring)^2 per fully visible disc (anti-aliased edge)
    changed = (out[1] != images[1]).any(0).sum().item()
    assert 2 * math.pi * 3.5 ** 2 < changed < 2 * math.pi * 4.6 ** 2


def test_draw_landmarks_errors_and_single_image():
    img = torch.rand(3, 16, 16)
    assert viz.draw_landmarks(img, torch.zeros(1, 2)).shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match="points must have shape"):
        viz.draw_landmarks(torch.rand(2, 3, 8, 8), torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="images must have shape"):
        viz.draw_landmarks(torch.rand(2, 4, 8, 8), torch.zeros(2, 4, 2))
    with pytest.raises(TypeError, match="points must be a torch.Tensor"):
        viz.draw_landmarks(torch.rand(1, 3, 8, 8), [[0, 0]])


def test_save_grid_size_and_content(tmp_path):
    a = torch.zeros(5, 3, 32, 32)
    b = torch.ones(3, 1, 16, 16)  # grey and smaller: every image is resized to the cell (>= 64 px)
    pts = torch.zeros(5, 2, 2)  # both at the centre: the later landmark is drawn on top
    path = viz.save_grid([a, b], tmp_path / "sub" / "g.png", points=[pts, None], max_cols=4, pad=2)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        cell = 64
        assert im.size == (4 * (cell + 2) + 2, 2 * (cell + 2) + 2)
        arr = np.asarray(im)
    centre = arr[2 + cell // 2, 2 + cell // 2].astype(int)
    assert np.abs(centre - colour_u8(1)).max() <= 40
    assert (arr[2 + 3, 2 + 3] == 0).all()  # black image corner
    assert (arr[cell + 4 + 10, 2 + 10] == 255).all()  # the white row
    # titles add a left margin, the cell grid stays the same height
    path = viz.save_grid([a, b], tmp_path / "t.png", row_titles=["inputs", "maps"], max_cols=4)
    with Image.open(path) as im:
        assert im.size[0] > 4 * (cell + 2) + 2 and im.size[1] == 2 * (cell + 2) + 2


def test_save_grid_errors(tmp_path):
    with pytest.raises(ValueError, match="non-empty list"):
        viz.save_grid([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one entry per row"):
        viz.save_grid([torch.rand(2, 3, 8, 8)], tmp_path / "x.png", points=[None, None])
    with pytest.raises(ValueError, match="max_cols"):
        viz.save_grid([torch.rand(2, 3, 8, 8)], tmp_path / "x.png", max_cols=0)


def write_log(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "loss", "loss_rec", "lr", "images_per_s"])
        for s in range(rows):
            w.writerow([s * 10, 1.0 / (1 + s), 0.5 / (1 + s), 1e-3, 50.0])


def test_plot_losses(tmp_path):
    write_log(tmp_path / "log.csv", 120)
    out = viz.plot_losses(tmp_path / "log.csv", tmp_path / "plots" / "loss.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (880, 495)  # 8 x 4.5 in at 110 dpi
        colours = np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)
        assert len(colours) > 20  # curves, grid and text: not a blank canvas


def test_plot_losses_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        viz.plot_losses(tmp_path / "missing.csv", tmp_path / "x.png")
    (tmp_path / "bad.csv").write_text("step,lr,loss\n1,0.1,0\n")  # the only loss is never > 0
    with pytest.raises(ValueError, match="no loss column"):
        viz.plot_losses(tmp_path / "bad.csv", tmp_path / "x.png")
    write_log(tmp_path / "log.csv", 3)
    with pytest.raises(ValueError, match="not numeric columns"):
        viz.plot_losses(tmp_path / "log.csv", tmp_path / "x.png", columns=["nope"])


def test_loss_columns_of_the_training_log():
    header = ["step", "loss", "mse", "perceptual", "lr", "images_per_s", "elapsed_s"]  # fastlmk.train's log.csv
    assert viz.loss_columns(header) == ["loss", "mse", "perceptual"]


def test_ema_bias_corrected():
    assert viz.ema([2.0, 2.0, 2.0], 0.9) == pytest.approx([2.0, 2.0, 2.0])
    out = viz.ema([1.0, float("nan"), 3.0], 0.5)
    assert out[0] == pytest.approx(1.0) and out[1] == pytest.approx(1.0)
    assert out[2] == pytest.approx((0.5 * 0.5 * 1 + 0.5 * 3) / (0.5 * 0.5 + 0.5))


def test_plot_evaluation(tmp_path):
    row = {"mean": 5.0, "std": 0.5}
    results = {"nshot": [{"n": n, "label": str(n), "repeats": 3, "imm": row, "saic": row} for n in (1, 10, 100)],
               "per_landmark": {"names": list(LANDMARK_NAMES), "imm": [1, 2, 3, 4, 5], "saic": [1, 2, 3, 4, 5]},
               "mean_shape": 9.0, "supervised": {"error": 1.0, "per_landmark": [1, 1, 1, 1, 1]}}
    out = viz.plot_evaluation(results, tmp_path / "e.png", title="t")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (1210, 462)  # 11 x 4.2 in at 110 dpi
