"""Bad input found by trying it (issue 22, item 4): each is one line naming the file or the flag,
exit status non-zero, no traceback, and nothing written.

- detect / evaluate of a checkpoint whose weights hold NaN or inf refuse it (the shared loader);
- --out / --out-dir on a parent no one can write (/proc, /sys: root passes os.access there);
- --resume of a checkpoint whose structure is broken (empty config, detector a tensor, no rng,
  step a string, no generator);
- train --warp-std 1e30 (and the other warp sizes) is refused before a run directory exists;
- train --config of a binary file names the file.
"""

import os
import re
import subprocess
import sys

import pytest
import torch
from PIL import Image

from fastlmk import evaluate
from fastlmk._cli import UsageError, check_output_dir
from fastlmk.train import main as train_main
from fastlmk.train import train
from fastlmk.training import checkpoint as ckpt_io
from fastlmk.training.config import TrainConfig, validate
from fastlmk.training.rundir import check_out_dir
from _standins import tiny_checkpoint, tiny_train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONWARNINGS="ignore",  # the source tree, also from another working directory
           PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))


def _one_line_error(p: subprocess.CompletedProcess, *names: str) -> str:
    """The command failed with exactly one line on stderr naming ``names`` and no traceback."""
    assert p.returncode != 0, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    for name in names:
        assert name in lines[0], lines[0]
    return lines[0]


def _poisoned(tmp_path, value: float, name: str = "bad.pt"):
    """A real tiny checkpoint whose detector weights are all ``value`` (a diverged run)."""
    path, _ = tiny_checkpoint(tmp_path / "good.pt")
    state = torch.load(path, weights_only=True)
    state["detector"] = {k: torch.full_like(v, value) if v.is_floating_point() else v
                         for k, v in state["detector"].items()}
    torch.save(state, tmp_path / name)
    return tmp_path / name


# --- 1. NaN / inf weights: the shared loader refuses them ------------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_loader_refuses_non_finite_detector_weights(tmp_path, value):
    bad = _poisoned(tmp_path, value)
    with pytest.raises(ValueError, match=f"{bad}: the detector weights are not finite"):
        ckpt_io.load_detector(str(bad))
    det, _ = ckpt_io.load_detector(str(tmp_path / "good.pt"))  # the finite one still loads
    assert all(bool(torch.isfinite(p).all()) for p in det.parameters())


@pytest.mark.parametrize("command", ["detect", "evaluate"])
def test_detect_and_evaluate_refuse_nan_weights_in_one_line(tmp_path, command):
    bad = _poisoned(tmp_path, float("nan"))
    out = tmp_path / "out"
    if command == "detect":
        img = tmp_path / "a.png"
        Image.new("RGB", (40, 30), (120, 80, 60)).save(img)
        args = [str(img), "--checkpoint", str(bad), "--out", str(out), "--no-progress", "--device", "cpu"]
    else:
        args = ["--checkpoint", str(bad), "--out", str(out), "--no-progress", "--device", "cpu",
                "--num-train", "8", "--num-test", "8"]
    p = subprocess.run([sys.executable, "-m", f"fastlmk.{command}", *args], capture_output=True, text=True,
                       env=ENV, timeout=300)
    line = _one_line_error(p, str(bad), "not finite")
    assert line.startswith(f"fastlmk.{command}: error: ") and p.returncode == 2
    assert not out.exists()


def test_evaluate_main_refuses_nan_weights(tmp_path):
    bad = _poisoned(tmp_path, float("nan"))
    with pytest.raises(UsageError, match=f"{bad}: the detector weights are not finite") as e:
        evaluate.main(["--checkpoint", str(bad), "--no-progress", "--device", "cpu", "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


# --- 2. --out / --out-dir on a parent no one can write ---------------------------------------
UNWRITABLE = [p for p in ("/proc/fastlmk_x", "/proc/fastlmk_x/y", "/sys/fastlmk_x")
              if os.path.isdir("/" + p.split("/")[1])]  # they exist and root passes os.access, yet refuse mkdir


@pytest.mark.skipif(not UNWRITABLE, reason="no /proc or /sys here")
@pytest.mark.parametrize("path", UNWRITABLE)
def test_out_on_an_unwritable_parent_is_one_line(tmp_path, path):
    with pytest.raises(UsageError, match=f"fastlmk.detect: error: --out {path}: cannot create a directory in /"):
        check_output_dir("fastlmk.detect", "--out", path)  # shared by detect and evaluate
    with pytest.raises(ValueError, match=f"--out-dir {path}: cannot create a directory in /"):
        check_out_dir(path)
    with pytest.raises(ValueError, match=f"--out-dir {path}: "):
        train(tiny_train_config(tmp_path, "x", out_dir=path), progress=False)
    ckpt = tmp_path / "c.pt"
    ckpt.write_bytes(b"never loaded: the arguments are checked first")
    with pytest.raises(UsageError, match=f"fastlmk.evaluate: error: --out {path}: ") as e:
        evaluate.main(["--checkpoint", str(ckpt), "--no-progress", "--device", "cpu", "--out", path])
    assert e.value.code == 2
    assert not os.path.exists(path)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="no /proc here")
def test_train_out_dir_on_proc_is_one_line_exit_2(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastlmk.train", "--preset", "cpu", "--steps", "1", "--no-eval",
                        "--threads", "1", "--out-dir", "/proc/fastlmk_x/runs"],
                       capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    _one_line_error(p, "--out-dir /proc/fastlmk_x/runs")
    assert p.returncode == 2 and os.listdir(tmp_path) == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into a 0500 directory")
def test_out_in_a_read_only_directory(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ValueError, match=f"--out-dir {ro}/runs: "):
            check_out_dir(str(ro / "runs"))
        with pytest.raises(UsageError, match=f"--out {ro}/o: "):
            check_output_dir("fastlmk.evaluate", "--out", ro / "o")
    finally:
        ro.chmod(0o700)


def test_writable_out_passes_and_the_probe_leaves_nothing(tmp_path):
    check_out_dir(str(tmp_path / "a" / "b"))
    check_output_dir("fastlmk.detect", "--out", tmp_path / "c")
    check_output_dir("fastlmk.detect", "--out", tmp_path)
    assert os.listdir(tmp_path) == []


# --- 3. --resume of a checkpoint with a broken structure -------------------------------------
@pytest.fixture(scope="module")
def resumable(tmp_path_factory):
    """A real checkpoint of a 1-step run (it resumes as it is)."""
    root = tmp_path_factory.mktemp("resumable")
    train(tiny_train_config(root, "base", steps=1, ckpt_every=0), progress=False)
    path = ckpt_io.list_checkpoints(str(root / "base"))[-1]
    return torch.load(path, weights_only=True)


def _broken(state: dict, how: str) -> dict:
    state = dict(state)
    if how == "empty config":
        state["config"] = {}
    elif how == "detector tensor":
        state["detector"] = torch.zeros(3)
    elif how == "no rng":
        del state["rng"]
    elif how == "string step":
        state["step"] = "1"
    elif how == "no generator":  # a detector-only checkpoint, e.g. tests/_standins.tiny_checkpoint
        del state["generator"]
    elif how == "rng not a state":
        state["rng"] = {"torch": "x"}
    elif how == "edited config":  # K changed by hand after the run: the weights no longer fit
        state["config"] = dict(state["config"], num_landmarks=state["config"]["num_landmarks"] + 1)
    elif how == "rng of another size":
        state["rng"] = dict(state["rng"], pairs=torch.zeros(7, dtype=torch.uint8))
    elif how == "nan generator":
        state["generator"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                              for k, v in state["generator"].items()}
    return state


BROKEN = [("empty config", "config is empty"), ("detector tensor", "'detector' entry is a Tensor, not a state dict"),
          ("no rng", "lacks ['rng']"), ("string step", "'step' is '1', not a step count"),
          ("no generator", "lacks ['generator']"), ("rng not a state", "'rng' entry is not"),
          ("nan generator", "generator weights are not finite"),
          ("edited config", "weights or optimizer state do not match its config"),
          ("rng of another size", "random-stream state does not fit")]


@pytest.mark.parametrize("how,msg", BROKEN)
def test_resume_of_a_broken_checkpoint_names_the_file(tmp_path, resumable, how, msg):
    path = tmp_path / "mine" / "broken.pt"
    path.parent.mkdir()
    torch.save(_broken(resumable, how), path)
    with pytest.raises(ValueError, match=re.escape(f"{path}: cannot resume: ") + ".*" + re.escape(msg)):
        train_main(["--resume", str(path), "--out-dir", str(tmp_path / "runs"), "--threads", "1"])
    assert os.listdir(tmp_path) == ["mine"] and os.listdir(path.parent) == ["broken.pt"]
    if how == "edited config":  # (train() takes the caller's config, which fits the weights)
        return
    with pytest.raises(ValueError, match=f"{path}: cannot resume: "):  # the loop's own entry point too
        train(tiny_train_config(tmp_path, "x"), resume=str(path), progress=False)
    assert os.listdir(tmp_path) == ["mine"]


def test_resume_of_a_broken_checkpoint_cli_is_one_line(tmp_path, resumable):
    path = tmp_path / "broken.pt"
    torch.save(_broken(resumable, "string step"), path)
    p = subprocess.run([sys.executable, "-m", "fastlmk.train", "--resume", str(path), "--threads", "1"],
                       capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    _one_line_error(p, str(path), "cannot resume")
    assert p.returncode == 2 and os.listdir(tmp_path) == ["broken.pt"]


def test_a_whole_checkpoint_still_resumes(tmp_path, resumable):
    path = tmp_path / "whole.pt"
    torch.save(resumable, path)
    assert ckpt_io.load_checkpoint(str(path), for_resume=True)["step"] == 1
    r = train(tiny_train_config(tmp_path, "x", steps=2), resume=str(path), progress=False)
    assert r["step"] == 2


# --- 4. warp sizes beyond the image are a user error, caught before anything is written ------
@pytest.mark.parametrize("key,flag", [("warp_std", "--warp-std"), ("translation_std", "--translation-std"),
                                      ("scale_std", "--scale-std")])
def test_huge_warps_are_refused_before_the_run_directory(tmp_path, key, flag):
    for value in (1e30, 1.5):
        with pytest.raises(ValueError, match=re.escape(f"{flag} must be >= 0.0 and <= 1.0, got {value}")):
            train(tiny_train_config(tmp_path / "runs", "x", **{key: value}), progress=False)
    assert not (tmp_path / "runs").exists()
    validate(TrainConfig(**{key: 1.0}))  # the edge is allowed


def test_warp_std_1e30_cli_writes_nothing(tmp_path):
    p = subprocess.run([sys.executable, "-m", "fastlmk.train", "--warp-std", "1e30", "--threads", "1",
                        "--out-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, env=ENV, timeout=300)
    _one_line_error(p, "--warp-std")
    assert p.returncode == 2 and not (tmp_path / "runs").exists()


# --- 5. --config of a binary file names the file -----------------------------------------------
def test_config_of_a_binary_file_names_it(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=f"--config {path}: not a UTF-8 text file"):
        train_main(["--config", str(path), "--out-dir", str(tmp_path / "runs")])
    assert not (tmp_path / "runs").exists()
