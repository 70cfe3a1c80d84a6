"""Train the landmark detector: ``python -m fastlmk.train [--flags]`` (docs/training.md).

The command line of :mod:`fastlmk.training`: parse the flags into a TrainConfig (on ``--resume``,
the checkpoint's config changed only by the keys given), run :func:`fastlmk.training.loop.train`,
and turn signals and errors into exit codes. Multi-GPU / multi-node: ``torchrun --nproc_per_node N
-m fastlmk.train ...``.
"""

from __future__ import annotations

import dataclasses
import signal
import sys

import torch
import torch.distributed as dist

from fastlmk.training import checkpoint as ckpt_io
from fastlmk.training import recipe
from fastlmk.training.config import parse_args, parse_command
from fastlmk.training.loop import Terminated, is_main_thread, raise_terminated, train

__all__ = ["main", "train"]


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    cfg, resume, given = parse_command(argv, cuda=cuda)
    cfg = recipe.for_data(cfg, given)  # the pairs the data can give (frames or stills), unless given
    if given & set(recipe.PINNED) and "budget_fit" not in given:  # the user's schedule, not the budget's
        cfg = dataclasses.replace(cfg, budget_fit=False)
    if resume:  # continue with the checkpoint's config, changed only by the keys given
        state = ckpt_io.load_checkpoint(resume, fallback=True, for_resume=True)
        cfg, _ = parse_args(argv, cuda=cuda, base=ckpt_io.config_of(state))
        resume = state["path"]  # the checkpoint actually loaded (a run directory's newest loadable one)
    old_sigterm = signal.signal(signal.SIGTERM, raise_terminated) if is_main_thread() else None
    try:
        result = train(cfg, resume=resume)
    except KeyboardInterrupt as e:  # a stop before the loop (nothing trained yet) or a second Ctrl-C
        print("\ninterrupted; no checkpoint of the current step was written (a run directory's last "
              "checkpoint, if any, continues with: python -m fastlmk.train --resume runs/<name>)", file=sys.stderr)
        return 0 if isinstance(e, Terminated) else 130
    finally:
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)
        if dist.is_initialized():
            dist.destroy_process_group()
    return 130 if result["stopped"] == "SIGINT" else 0  # 130: the shell's code for a Ctrl-C


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FloatingPointError, OSError) as e:  # a fault (NaN weights, disk full): earlier checkpoints stay
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
