"""The lr schedule: the paper's step decay, and the linear anneal over the last share of the steps."""

import shutil

import pytest
import torch

from fastlmk.training.config import TrainConfig, validate
from fastlmk.training.loop import lr_factor
from fastlmk.train import train


def test_step_decay_alone_is_the_papers():
    cfg = TrainConfig(steps=300, lr_decay_every=100, lr_decay=0.1)
    assert [lr_factor(cfg, s) for s in (0, 99, 100, 250)] == pytest.approx([1, 1, 0.1, 0.01])


def test_anneal_falls_linearly_to_zero_over_the_last_share():
    cfg = TrainConfig(steps=100, lr_anneal=0.4)  # flat to step 60, then 40 steps down
    got = [lr_factor(cfg, s) for s in (0, 59, 60, 70, 99, 100)]
    assert got == pytest.approx([1, 1, 1, 0.75, 0.025, 0])


def test_anneal_times_step_decay():
    cfg = TrainConfig(steps=200, lr_anneal=0.5, lr_decay_every=150, lr_decay=0.1)
    assert lr_factor(cfg, 150) == pytest.approx(0.1 * 0.5)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_anneal_out_of_range_names_the_flag(bad):
    with pytest.raises(ValueError, match="--lr-anneal"):
        validate(TrainConfig(lr_anneal=bad))


def test_training_follows_the_schedule_and_a_resume_continues_it(tmp_path):
    """The lr the optimiser used at each logged step is the schedule's, and a run resumed half-way
    logs the same lrs and losses as the run that went through."""
    from _standins import tiny_train_config

    cfg = tiny_train_config(tmp_path, "full", steps=8, ckpt_every=4, keep_last=3, lr_anneal=0.5)
    full = train(cfg, progress=False)
    # the logged lr is the one the next step uses: lr_factor(step) after `step` steps
    assert [r["lr"] for r in full["history"]] == pytest.approx([cfg.lr * lr_factor(cfg, s) for s in range(1, 9)])
    assert full["history"][-1]["lr"] == 0 and full["history"][2]["lr"] == cfg.lr
    half = tmp_path / "half"
    shutil.copytree(tmp_path / "full", half)
    (half / "checkpoints" / "step_00000008.pt").unlink()
    resumed = train(tiny_train_config(tmp_path, "half", steps=8, ckpt_every=4, keep_last=3, lr_anneal=0.5),
                    resume=str(half / "checkpoints" / "step_00000004.pt"), progress=False)
    again = resumed["history"]
    assert [r["step"] for r in again] == [5, 6, 7, 8]
    assert [r["lr"] for r in again] == pytest.approx([r["lr"] for r in full["history"][4:]])
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in full["history"][4:]], rel=1e-5)


def test_a_checkpoint_written_with_the_old_step_schedule_resumes(tmp_path):
    """Checkpoints of earlier versions hold a StepLR's state; they resume and continue exactly."""
    from _standins import tiny_train_config

    full = train(tiny_train_config(tmp_path, "full", steps=8, ckpt_every=4, keep_last=3), progress=False)
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "full", old)
    (old / "checkpoints" / "step_00000008.pt").unlink()
    path = old / "checkpoints" / "step_00000004.pt"
    ckpt = torch.load(path, weights_only=True)
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=ckpt["config"]["lr"])
    step_lr = torch.optim.lr_scheduler.StepLR(opt, step_size=ckpt["config"]["lr_decay_every"], gamma=0.1)
    for _ in range(4):
        opt.step()
        step_lr.step()
    ckpt["scheduler"] = step_lr.state_dict()
    torch.save(ckpt, path)
    again = train(tiny_train_config(tmp_path, "old", steps=8, ckpt_every=4, keep_last=3), resume=str(path),
                  progress=False)["history"]
    assert [r["loss"] for r in again] == pytest.approx([r["loss"] for r in full["history"][4:]], rel=1e-5)
    assert [r["lr"] for r in again] == pytest.approx([r["lr"] for r in full["history"][4:]])
