"""Progressive resizing [ours]: the first ``early_share`` of the steps train on the images resized to
``early_size`` (TrainConfig; the budget fit plans it, fastlmk.training.recipe.EARLY_*)."""

import contextlib
import dataclasses
import shutil

import pytest
import torch
import torch.nn.functional as F

import fastlmk
from fastlmk.training.config import TrainConfig, validate
from fastlmk.training.loop import early_phase
from fastlmk.training.model import Detector

torch.set_num_threads(1)


def test_a_detector_in_training_takes_smaller_images_and_draws_maps_at_their_size():
    det = Detector(4, "conv", 8, image_size=64, std=1.0, backend="reference").train()
    for s in (32, 48, 64):
        out = det(torch.rand(2, 3, s, s, generator=torch.Generator().manual_seed(s)))
        h = s // 4
        assert out.heatmaps.shape == out.maps.shape == (2, 4, h, h)
        # G(mu) keeps its std in pixels of the map it is drawn on (1 px here)
        ref = fastlmk.reference.gaussian_heatmaps(out.points, h, h, 1.0 * 2 / (h - 1))
        torch.testing.assert_close(out.maps, ref)
    # in eval mode (evaluation, detection) only the size it was built for
    det.eval()
    with pytest.raises(ValueError, match=r"expected images \(B, 3, 64, 64\)"):
        det(torch.rand(2, 3, 32, 32))
    det.train()
    for bad in ((2, 3, 30, 30), (2, 3, 128, 128), (2, 3, 32, 48), (3, 32, 32)):  # not /4, larger, not square, 3-D
        with pytest.raises(ValueError, match="expected images"):
            det(torch.rand(*bad))
    hourglass = Detector(4, "hourglass", 16, image_size=128, backend="reference").train()
    assert hourglass(torch.rand(2, 3, 64, 64)).maps.shape == (2, 4, 16, 16)
    with pytest.raises(ValueError, match="expected images"):
        hourglass(torch.rand(2, 3, 96, 96))


@pytest.mark.parametrize("kw,flag", [(dict(early_size=30), "early_size"), (dict(early_size=64), "early_size"),
                                     (dict(early_size=-4), "early_size"), (dict(early_share=0.5), "early_share"),
                                     (dict(early_size=32, early_share=1.0), "--early-share"),
                                     (dict(early_size=32, early_share=float("nan")), "--early-share"),
                                     (dict(detector_arch="hourglass", image_size=128, early_size=96), "early_size")])
def test_bad_early_settings_name_the_key(kw, flag):
    with pytest.raises(ValueError, match=flag):
        validate(TrainConfig(**kw))


def test_the_early_phase_is_the_first_share_of_the_steps():
    cfg = TrainConfig(steps=10, early_size=32, early_share=0.4)
    assert [early_phase(cfg, s) for s in range(10)] == [True] * 4 + [False] * 6
    assert not any(early_phase(dataclasses.replace(cfg, early_size=0), s) for s in range(10))  # off
    assert not any(early_phase(dataclasses.replace(cfg, early_share=0.0), s) for s in range(10))


def test_an_early_step_trains_on_the_resized_pairs(tmp_path):
    """The step's pairs are the TPS pairs of the images resized (bilinear, antialiased) to early_size,
    drawn from the same random stream; after the early phase, of the full-size images."""
    from _standins import tiny_train_config
    from fastlmk.training.loop import Processes, RandomStreams, batch_stream, train_step, training_data
    from fastlmk.training.losses import TrainingLoss
    from fastlmk.training.model import LandmarkAutoencoder

    cfg = tiny_train_config(tmp_path, "x", method="intra", steps=4, early_size=16, early_share=0.5, perceptual="laplacian")
    procs = Processes(world=1, rank=0, local_rank=0, device=torch.device("cpu"), threads=1)
    dataset, make_pairs = training_data(cfg, 1)
    torch.manual_seed(0)
    model = LandmarkAutoencoder.from_config(cfg)
    objective = TrainingLoss.from_config(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    streams, batches = RandomStreams(0, 0, procs.device), batch_stream(dataset, cfg, procs, 0)
    for step in range(4):
        batch = next(batches)
        state = streams.pairs.get_state()
        images, pairs, out, losses = train_step(cfg, model, model, objective, optimizer, make_pairs, streams, batch,
                                                step, procs.device, contextlib.nullcontext())
        s = 16 if step < 2 else 32
        assert images.shape[-1] == 32 and pairs.x.shape[-1] == s and out["x_hat_prime"].shape[-1] == s
        assert out["heatmaps_prime"].shape[-1] == s // 4 and torch.isfinite(losses["loss"])
        # the same pairs, made here from the resized images with the same random draws
        small = batch["image"] if s == 32 else F.interpolate(batch["image"], size=(16, 16), mode="bilinear",
                                                             antialias=True, align_corners=False)
        again = make_pairs(small, generator=torch.Generator().set_state(state),
                           equivariance_partner=cfg.equivariance_weight > 0, shared_warp=cfg.shared_warp)
        torch.testing.assert_close(pairs.x, again.x)
        torch.testing.assert_close(pairs.x_prime, again.x_prime)


def test_a_run_with_an_early_phase_resumes_to_the_same_losses(tmp_path):
    """A run resumed inside the early phase continues it and ends on the losses of the run that went
    through; the start line says the early phase."""
    from _standins import tiny_train_config
    from fastlmk.train import train

    kw = dict(steps=8, ckpt_every=2, keep_last=4, early_size=16, early_share=0.5, method="intra")
    full = train(tiny_train_config(tmp_path, "full", **kw), progress=False)
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "full", half)
    for s in (4, 6, 8):
        (half / "checkpoints" / f"step_{s:08d}.pt").unlink()
    again = train(tiny_train_config(tmp_path, "half", **kw), resume=str(half / "checkpoints" / "step_00000002.pt"),
                  progress=False)["history"]
    assert [r["step"] for r in again] == [3, 4, 5, 6, 7, 8]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in full["history"][2:]], rel=1e-5)


def test_the_start_line_names_the_early_phase(tmp_path, capsys):
    from _standins import tiny_train_config
    from fastlmk.train import train

    train(tiny_train_config(tmp_path, "a", steps=2, early_size=16, early_share=0.5), progress=False)
    assert "32px (16px for the first 1 step)" in capsys.readouterr().out


def test_the_forecast_counts_the_full_size_steps_after_an_early_phase():
    from fastlmk.training import recipe
    from fastlmk.training.logbook import forecast

    cfg = TrainConfig(method="intra", steps=100, early_size=32, early_share=0.4, eval=False, max_minutes=0.0)
    c = recipe.size_cost(32, 64)
    line = forecast(cfg, 6, c, 0.0, 1, 0.0)  # timed on early steps of c seconds: full-size steps take 1 s
    assert f"expected {int(round(34 * c + 60)) // 60}m{int(round(34 * c + 60)) % 60:02d}s of training" in line
    assert f"(timed on 32 px images; steps 40+ on 64 px, ~{1 / c:.1f}x the time each)" in line
    assert "timed on" not in forecast(cfg, 46, 1.0, 0.0, 1, 0.0)  # timed after it: every step left is full size
    assert "expected 0m54s" in forecast(cfg, 46, 1.0, 0.0, 1, 0.0)
