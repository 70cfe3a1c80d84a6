"""Command-line boundary shared by fastlmk.detect and fastlmk.evaluate: a user error is one line
on stderr naming the argument or the file, exit status 2, checked before anything is written."""

from __future__ import annotations

import math
import os
import sys
import tempfile


class UsageError(SystemExit):
    """A user error: exit status 2; ``str()`` is the one-line message (printed by :func:`run`)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def run(main) -> None:
    """``sys.exit(main())``, printing a UsageError's message on stderr first."""
    try:
        code = main()
    except UsageError as e:
        print(e, file=sys.stderr)
        code = 2
    sys.exit(code)


def output_dir_problem(path) -> str | None:
    """Why ``path`` cannot be a directory this process creates and writes, or None.

    ``os.access`` alone is not enough: root passes it everywhere, and /proc and /sys (or a
    read-only mount) say "writable" yet refuse every new entry. So the nearest existing folder is
    also tried by creating a temporary directory in it, removed at once (nothing is left)."""
    path = os.path.abspath(str(path))
    if os.path.lexists(path) and not os.path.isdir(path):
        return "exists and is not a directory"
    probe = path
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not a writable directory"
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".fastlmk-probe-", dir=probe))
    except OSError as e:
        return f"cannot create a directory in {probe} ({e.strerror or type(e).__name__})"
    return None


def check_output_dir(prog: str, flag: str, path) -> None:
    """``path`` must be a directory, or creatable as one, that this process can write."""
    problem = output_dir_problem(path)
    if problem:
        raise UsageError(f"{prog}: error: {flag} {os.path.abspath(str(path))}: {problem}")


def check_device(prog: str, spec):
    """--device -> torch.device that exists here (UsageError otherwise); None -> cuda if any, else cpu."""
    from fastlmk.training.config import check_device as _check

    try:
        return _check(spec or "auto")
    except ValueError as e:
        raise UsageError(f"{prog}: error: {e}") from None


def add_backend_argument(parser) -> None:
    """--backend: where the fastlmk ops run, chosen per command (not restored from a checkpoint)."""
    parser.add_argument("--backend", default="auto",
                        help="backend of the fastlmk ops: auto | reference | cpu | cuda | triton (default auto; "
                             "the backend the run trained with is not restored)")


def check_backend(prog: str, backend: str, device) -> None:
    """--backend: a backend name that can run on ``device`` here (UsageError otherwise)."""
    from fastlmk.training.config import check_backend as _check

    try:
        _check(backend, device)
    except ValueError as e:
        raise UsageError(f"{prog}: error: {e}") from None


def check_finite(prog: str, flag: str, value, low=None, low_inclusive=True) -> None:
    if value is None:
        return
    if not math.isfinite(value):
        raise UsageError(f"{prog}: error: {flag} must be a finite number, got {value}")
    if low is not None and (value < low if low_inclusive else value <= low):
        raise UsageError(f"{prog}: error: {flag} must be {'>=' if low_inclusive else '>'} {low}, got {value}")
