"""Checkpoints: atomic writes, safe loads (``weights_only=True``), and loading a detector.

A checkpoint is a ``torch.save``'d dict of plain types and tensors::

    {"format": "fastlmk-checkpoint", "version": 1, "config": dict (TrainConfig), "step": int,
     "detector": state_dict, "generator": state_dict, "optimizer": state_dict,
     "scheduler": state_dict, "rng": {...}, ...}
"""

from __future__ import annotations

import glob
import os
import sys

import torch

FORMAT = "fastlmk-checkpoint"
VERSION = 1


def save_checkpoint(path: str, state: dict) -> str:
    """Write ``state`` to ``path`` atomically: a temporary file in the same directory, then
    ``os.replace`` (a crash leaves either the old file or the new one, never half a file)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = {"format": FORMAT, "version": VERSION, **state}
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def checkpoint_path(run_dir: str, step: int) -> str:
    return os.path.join(run_dir, "checkpoints", f"step_{step:08d}.pt")


def list_checkpoints(run_dir: str) -> list:
    """Checkpoint files of a run directory, oldest first."""
    return sorted(glob.glob(os.path.join(run_dir, "checkpoints", "step_*.pt")))


def prune_checkpoints(run_dir: str, keep_last: int) -> None:
    for old in list_checkpoints(run_dir)[:-keep_last]:
        os.remove(old)
    clean_temp_files(run_dir)


def clean_temp_files(run_dir: str) -> list:
    """Remove temporary checkpoint files (``*.pt.tmp<pid>``) left by killed processes; a
    temporary file of this process is kept. Returns the removed paths."""
    removed = []
    own = f".tmp{os.getpid()}"
    for tmp in glob.glob(os.path.join(run_dir, "checkpoints", "*.pt.tmp*")):
        if not tmp.endswith(own):
            try:
                os.remove(tmp)
                removed.append(tmp)
            except OSError:
                pass
    return removed


def resolve_checkpoint(path: str) -> str:
    """A checkpoint file, or a run directory -> its newest checkpoint."""
    if os.path.isdir(path):
        found = list_checkpoints(path)
        if not found:
            raise FileNotFoundError(f"no checkpoints in run directory {path} (expected {path}/checkpoints/step_*.pt)")
        return found[-1]
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path


def load_checkpoint(path: str, map_location="cpu", fallback: bool = False, for_resume: bool = False) -> dict:
    """Load a fastlmk checkpoint (file or run directory) with ``weights_only=True``.

    ``fallback`` (a run directory only): when the newest checkpoint cannot be loaded (truncated
    by a kill or a full disk), load the newest one that can, and say so on stderr.
    ``for_resume``: also check that it holds what resuming restores (:func:`check_resumable`).

    Raises FileNotFoundError (missing) or ValueError (unreadable / not a fastlmk checkpoint),
    both naming the path."""
    if fallback and os.path.isdir(path):
        found = list_checkpoints(path)
        errors = []
        for candidate in reversed(found):
            try:
                state = load_checkpoint(candidate, map_location, for_resume=for_resume)
            except ValueError as e:
                errors.append(str(e))
                continue
            for e in errors:
                print(f"warning: skipping {e}", file=sys.stderr)
            if errors:
                print(f"warning: resuming from {candidate}, the newest loadable checkpoint", file=sys.stderr)
            return state
        if errors:
            raise ValueError(f"no loadable checkpoint in {path}: " + "; ".join(errors))
    path = resolve_checkpoint(path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling/zip error: say which file
        raise ValueError(f"cannot load checkpoint {path}: corrupt or not a torch checkpoint "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a fastlmk checkpoint (no 'format': {FORMAT!r} entry)")
    missing = [k for k in ("config", "detector", "step") if k not in state]
    if missing:
        raise ValueError(f"{path}: fastlmk checkpoint lacks {missing}")
    state["path"] = path
    if for_resume:
        check_resumable(state)
    return state


RESUME_ENTRIES = ("config", "detector", "generator", "optimizer", "scheduler", "rng", "step")
STATE_DICTS = ("detector", "generator", "optimizer", "scheduler")
RNG_STREAMS = ("torch", "pairs", "aux")  # fastlmk.training.loop.RandomStreams.state()


def non_finite_weight(weights: dict) -> str | None:
    """The name of the first floating-point tensor of a state dict holding NaN or inf, or None."""
    for name, t in weights.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return name
    return None


def check_resumable(state: dict) -> None:
    """A loaded checkpoint holds what ``--resume`` restores, in the types fastlmk writes: a
    non-empty config, state dicts, an integer step, the random streams, finite weights.
    ValueError naming the file otherwise (before anything is built or written)."""
    path = state.get("path", "the checkpoint")

    def bad(why):
        return ValueError(f"{path}: cannot resume: {why}")

    if isinstance(state["config"], dict) and not state["config"]:
        raise bad("its config is empty")
    config_of(state)  # a mapping of known config keys (ValueError naming the file otherwise)
    missing = [k for k in RESUME_ENTRIES if k not in state]
    if missing:
        hint = " (a detector-only checkpoint: evaluate it or run detect with it)" if "generator" in missing else ""
        raise bad(f"the checkpoint lacks {missing}{hint}")
    for k in STATE_DICTS:
        if not isinstance(state[k], dict):
            raise bad(f"its {k!r} entry is a {type(state[k]).__name__}, not a state dict")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise bad(f"its 'step' is {step!r}, not a step count")
    world = state.get("world_size", 1)
    if not isinstance(world, int) or isinstance(world, bool) or world < 1:
        raise bad(f"its 'world_size' is {world!r}, not a number of processes")
    rng = state["rng"]
    per_rank = rng if isinstance(rng, list) and world > 1 else [rng]
    if len(per_rank) != world or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), torch.Tensor) and r[k].dtype == torch.uint8
                                        for k in RNG_STREAMS) for r in per_rank):
        raise bad(f"its 'rng' entry is not the random-stream state fastlmk writes ({world} process(es), "
                  f"each a dict of {', '.join(RNG_STREAMS)} generator states)")
    for k in ("detector", "generator"):
        name = non_finite_weight(state[k])
        if name is not None:
            raise bad(f"the {k} weights are not finite ({name} holds NaN or inf); resume an earlier checkpoint")


def config_of(state: dict):
    """The TrainConfig of a loaded checkpoint (keys it lacks, from older versions, take today's
    defaults; an unknown key is a ValueError naming the file)."""
    from fastlmk.training.config import TrainConfig

    return TrainConfig.from_dict(state["config"], where=state.get("path", "the checkpoint"))


def load_detector(path: str, map_location="cpu", backend: str = "auto"):
    """-> (Detector in eval mode with the trained weights, its TrainConfig). ``backend``: where
    the detector runs (a run-time choice; the backend the run trained with is not restored)."""
    from fastlmk.training.model import Detector

    state = load_checkpoint(path, map_location)
    weights = state["detector"]
    if not isinstance(weights, dict):
        raise ValueError(f"{state['path']}: its 'detector' entry is a {type(weights).__name__}, not a state dict")
    name = non_finite_weight(weights)
    if name is not None:  # a diverged run's weights would give NaN landmarks for every image
        raise ValueError(f"{state['path']}: the detector weights are not finite ({name} holds NaN or inf); "
                         "use an earlier checkpoint of the run")
    config = config_of(state)
    det = Detector.from_config(config, backend=backend)
    try:
        det.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{state['path']}: detector weights do not match its config: {e}") from e
    return det.to(map_location if isinstance(map_location, (str, torch.device)) else "cpu").eval(), config
