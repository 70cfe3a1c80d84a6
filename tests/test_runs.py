"""Runs and files are never lost (issue 11): every config number validated before anything is
written, no non-finite weights saved, a new run never takes over an existing directory, resuming
writes only into a run directory fastlmk made, a truncated newest checkpoint falls back to the
newest loadable one, stale temporary files are cleaned."""

import os
import subprocess
import sys

import pytest
import torch

from fastlmk.training import checkpoint as ckpt_io
from fastlmk.training.config import TrainConfig, validate
from fastlmk.train import main, train
from fastlmk.training.rundir import RUN_MARKER


def tiny(tmp_path, name, **kw):
    base = dict(image_size=32, batch_size=4, steps=2, detector_width=8, generator_width=8, generator_res=1,
                num_landmarks=4, log_every=1, sample_every=0, ckpt_every=0, keep_last=3, out_dir=str(tmp_path / "runs"),
                run_name=name, eval=False, train_length=32, backend="reference")
    base.update(kw)
    return TrainConfig(**base)


def _cli(tmp_path, name):
    return ["--preset", "cpu", "--image-size", "32", "--batch-size", "4", "--steps", "2", "--detector-width", "8",
            "--generator-width", "8", "--generator-res", "1", "--num-landmarks", "4", "--log-every", "1",
            "--sample-every", "0", "--ckpt-every", "1", "--no-eval", "--train-length", "32", "--backend", "reference",
            "--out-dir", str(tmp_path / "runs"), "--run-name", name]


# --- item 7 and siblings: every number checked before anything is written --------------------
@pytest.mark.parametrize("key,value,flag", [
    ("lr_decay", float("nan"), "--lr-decay"), ("lr", float("inf"), "--lr"), ("temperature", float("inf"), "--temperature"),
    ("gaussian_std", float("inf"), "--gaussian-std"), ("beta1", 2.0, "--beta1"), ("beta2", -0.1, "--beta2"),
    ("tps_grid", 1, "--tps-grid"), ("extra_warp_prob", 1.5, "--extra-warp-prob"), ("grad_clip", float("nan"), "--grad-clip"),
    ("max_minutes", float("inf"), "--max-minutes"), ("weight_decay", -1.0, "--weight-decay"),
    ("backend", "foo", "--backend"), ("device", "foo", "--device"), ("eval_dataset", "foo", "--eval-dataset"),
    ("threads", -1, "threads"),
])
def test_bad_config_numbers_and_names_fail_before_anything_is_written(tmp_path, key, value, flag):
    with pytest.raises(ValueError, match=flag):
        validate(tiny(tmp_path, "x", **{key: value}))
    with pytest.raises(ValueError, match=flag):
        train(tiny(tmp_path, "x", **{key: value}), progress=False)
    assert not (tmp_path / "runs").exists()


def test_cuda_device_and_triton_backend_without_gpu_say_so(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    with pytest.raises(ValueError, match="--device cuda: no CUDA GPU"):
        validate(tiny(tmp_path, "x", device="cuda"))
    os.environ.pop("FASTLMK_BACKEND", None)
    from fastlmk.ops import backends
    if not backends.available("triton", torch.device("cpu")):
        with pytest.raises(ValueError, match="--backend triton cannot run on cpu"):
            validate(tiny(tmp_path, "x", backend="triton"))


def test_checkpoint_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "c.pt"
    ckpt_io.save_checkpoint(str(path), {"config": "hello", "detector": {}, "step": 1})
    with pytest.raises(ValueError, match="must be a mapping of config keys, got str"):
        main(["--resume", str(path)])


def poison_second_adam_step(monkeypatch) -> dict:
    """After the 2nd Adam step (counted in the returned dict's "n"; reset it to poison again), the
    first parameter is NaN: that step's loss was finite, the weights after it are not."""
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def poisoned(self, *a, **k):
        out = real_step(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.Adam, "step", poisoned)
    return calls


def test_non_finite_weights_are_never_saved(tmp_path, monkeypatch):
    poison_second_adam_step(monkeypatch)  # the last of 2 steps
    with pytest.raises(FloatingPointError, match="not finite after step 2"):
        train(tiny(tmp_path, "nan"), progress=False)
    # nothing was saved, and the new run directory (config.json, log.csv only) is not left behind
    assert not (tmp_path / "runs" / "nan").exists()


def test_a_failure_keeps_a_run_directory_that_holds_a_checkpoint(tmp_path, monkeypatch):
    """Only a new run's directory without a checkpoint is removed: a run that saved step 1 keeps it,
    and so does a resumed run (its directory holds the earlier checkpoints)."""
    calls = poison_second_adam_step(monkeypatch)
    run = tmp_path / "runs" / "half"
    with pytest.raises(FloatingPointError, match="not finite after step 2"):
        train(tiny(tmp_path, "half", ckpt_every=1), progress=False)
    assert [os.path.basename(c) for c in ckpt_io.list_checkpoints(str(run))] == ["step_00000001.pt"]
    calls["n"] = 0  # the resumed run is poisoned again
    with pytest.raises(FloatingPointError, match="not finite after step|loss is nan"):
        train(tiny(tmp_path, "half", steps=4), resume=str(run), progress=False)
    assert run.is_dir() and len(ckpt_io.list_checkpoints(str(run))) >= 1


# --- item 8: a new run never writes into an existing directory -----------------------------
def test_existing_run_name_is_an_error_unless_resuming(tmp_path):
    train(tiny(tmp_path, "a"), progress=False)
    run = tmp_path / "runs" / "a"
    log = (run / "log.csv").read_text()
    ckpts = ckpt_io.list_checkpoints(str(run))
    with pytest.raises(ValueError, match="already exists; continue that run with --resume"):
        train(tiny(tmp_path, "a", steps=4), progress=False)
    assert (run / "log.csv").read_text() == log and ckpt_io.list_checkpoints(str(run)) == ckpts
    # a user's own folder is not taken over either
    (tmp_path / "runs" / "mine").mkdir()
    with pytest.raises(ValueError, match="already exists"):
        train(tiny(tmp_path, "mine"), progress=False)
    assert os.listdir(tmp_path / "runs" / "mine") == []
    # resuming it is fine
    assert train(tiny(tmp_path, "a", steps=3), resume=str(run), progress=False)["step"] == 3


def test_default_run_names_are_unique(tmp_path, monkeypatch):
    import fastlmk.training.rundir as tr

    monkeypatch.setattr(tr.time, "strftime", lambda fmt, *a: "20260101-000000")  # the same second
    r1 = train(tiny(tmp_path, "", steps=1), progress=False)["run_dir"]
    r2 = train(tiny(tmp_path, "", steps=1), progress=False)["run_dir"]
    assert r1 != r2 and os.path.basename(r2) == os.path.basename(r1) + "-2"
    assert all(os.path.isfile(os.path.join(r, RUN_MARKER)) for r in (r1, r2))


# --- item 9: resume writes only into a run directory fastlmk made ---------------------------
def test_resume_from_a_checkpoint_outside_a_run_directory(tmp_path, capsys):
    train(tiny(tmp_path, "a"), progress=False)
    mine = tmp_path / "mine" / "keep"
    mine.mkdir(parents=True)
    ckpt = mine / "best.pt"
    ckpt.write_bytes(open(ckpt_io.list_checkpoints(str(tmp_path / "runs" / "a"))[-1], "rb").read())
    (tmp_path / "mine" / "config.json").write_text("my own config")
    (tmp_path / "mine" / "log.csv").write_text("my own log")
    r = train(tiny(tmp_path, "a", steps=3), resume=str(ckpt), progress=False)
    assert r["step"] == 3
    assert (tmp_path / "mine" / "config.json").read_text() == "my own config"
    assert (tmp_path / "mine" / "log.csv").read_text() == "my own log"
    assert sorted(os.listdir(tmp_path / "mine")) == ["config.json", "keep", "log.csv"]
    assert os.listdir(mine) == ["best.pt"]
    assert os.path.dirname(r["run_dir"]) == str(tmp_path / "runs") and r["run_dir"] != str(tmp_path / "runs" / "a")
    assert "not inside a fastlmk run directory" in capsys.readouterr().out


# --- item 10: a truncated newest checkpoint falls back; stale temporary files are cleaned -----
def test_resume_falls_back_to_the_newest_loadable_checkpoint(tmp_path, capsys):
    assert main(_cli(tmp_path, "r")) == 0
    run = tmp_path / "runs" / "r"
    ckpts = ckpt_io.list_checkpoints(str(run))
    assert [os.path.basename(c) for c in ckpts] == ["step_00000001.pt", "step_00000002.pt"]
    with open(ckpts[-1], "r+b") as f:  # a kill / full disk mid-copy
        f.truncate(100)
    stale = run / "checkpoints" / "step_00000003.pt.tmp99999999"
    stale.write_bytes(b"half")
    capsys.readouterr()
    assert main(["--resume", str(run), "--steps", "3"]) == 0
    err = capsys.readouterr().err
    assert "skipping cannot load checkpoint" in err and "step_00000002.pt" in err
    assert "resuming from" in err and "step_00000001.pt" in err
    assert ckpt_io.load_checkpoint(str(run))["step"] == 3
    assert not stale.exists()


def test_cli_user_error_is_one_line_exit_2(tmp_path):
    """The command line: one line on stderr naming the flag, exit status 2, nothing written."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    p = subprocess.run([sys.executable, "-m", "fastlmk.train", *_cli(tmp_path, "x"), "--lr-decay", "nan"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == ["error: --lr-decay must be a finite number, got nan"]
    assert not (tmp_path / "runs").exists()
