"""Run directories: a new run never writes into an existing directory; resuming writes only into
a run directory that fastlmk made (it holds :data:`RUN_MARKER`).

A run directory holds ``fastlmk_run.json`` (the marker), ``config.json``, ``log.csv``,
``checkpoints/step_*.pt``, ``samples/``, ``loss.png``, ``eval.json`` / ``eval.md`` / ``eval.png``
and, with ``--tensorboard``, ``tb/``.
"""

from __future__ import annotations

import json
import os
import shutil
import time

from fastlmk._cli import output_dir_problem
from fastlmk.training import checkpoint as ckpt_io
from fastlmk.training.config import TrainConfig

RUN_MARKER = "fastlmk_run.json"  # written into every run directory fastlmk creates


def is_run_dir(path: str) -> bool:
    """A directory fastlmk made: it has the marker (or, for runs made before the marker existed,
    both config.json and checkpoints/)."""
    return os.path.isfile(os.path.join(path, RUN_MARKER)) or (
        os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "checkpoints")))


def run_dir_of(checkpoint: str) -> str | None:
    """The run directory of a checkpoint ``<run>/checkpoints/step_*.pt``, or None when the file
    lies anywhere else (the user's own folder: never written into)."""
    p = os.path.abspath(checkpoint)
    folder, name = os.path.split(p)
    if os.path.basename(folder) != "checkpoints" or not (name.startswith("step_") and name.endswith(".pt")):
        return None
    run = os.path.dirname(folder)
    return run if is_run_dir(run) else None


def check_out_dir(out_dir: str) -> None:
    """--out-dir must be (or be creatable as) a writable directory: checked before anything is written."""
    problem = output_dir_problem(out_dir or ".")  # tries a directory: /proc, /sys and root pass os.access
    if problem:
        raise ValueError(f"--out-dir {out_dir}: {problem}")


def plan_run_dir(cfg: TrainConfig, state: dict | None) -> tuple[str, bool]:
    """-> (run directory, whether it exists already and is continued). Raises ValueError (before
    anything is written) for an existing --run-name of a new run."""
    if state is not None:
        run = run_dir_of(state["path"])
        if run is not None:
            return run, True
        print(f"note: {state['path']} is not inside a fastlmk run directory (<run>/checkpoints/step_*.pt); "
              "continuing in a new run directory, nothing is written next to the checkpoint", flush=True)
    check_out_dir(cfg.out_dir)
    if cfg.run_name:
        run = os.path.join(cfg.out_dir, cfg.run_name)
        if os.path.exists(run):
            if state is None:
                raise ValueError(f"--run-name {cfg.run_name}: {run} already exists; continue that run with "
                                 f"--resume {run}, or choose another --run-name")
            return default_run_dir(cfg), False
        return run, False
    return default_run_dir(cfg), False


def default_run_dir(cfg: TrainConfig) -> str:
    return os.path.join(cfg.out_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.dataset}-{cfg.method}")


def create_run_dir(run_dir: str, unique: bool) -> str:
    """mkdir the run directory atomically (never one that exists); ``unique``: on a clash (two
    runs started in the same second) take the next free ``<name>-2``, ``-3``, ..."""
    os.makedirs(os.path.dirname(os.path.abspath(run_dir)), exist_ok=True)
    base, n = run_dir, 1
    while True:
        try:
            os.mkdir(run_dir)
            break
        except FileExistsError:
            if not unique:
                raise ValueError(f"run directory {run_dir} already exists (created by another process?); "
                                 "choose another --run-name") from None
            n += 1
            run_dir = f"{base}-{n}"
    with open(os.path.join(run_dir, RUN_MARKER), "w") as f:
        json.dump({"format": "fastlmk-run", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
    return run_dir


def open_run_dir(run_dir: str, continued: bool, unique: bool, cfg: TrainConfig) -> str:
    """Create the planned run directory (unless ``continued``), drop temporary files of killed
    processes, make ``samples/`` and write ``config.json``. Returns the directory."""
    if not continued:
        run_dir = create_run_dir(run_dir, unique)
    ckpt_io.clean_temp_files(run_dir)
    os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        json.dump(cfg.to_dict(), f, indent=2)
    return run_dir


def discard_new_run_dir(run_dir: str) -> bool:
    """Remove a run directory this process created when training failed before its first
    checkpoint (it holds only config.json, the log and samples of a run that cannot be resumed).
    A directory with a checkpoint is kept. Returns whether it was removed."""
    if not run_dir or not os.path.isdir(run_dir) or ckpt_io.list_checkpoints(run_dir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return not os.path.exists(run_dir)
