"""Importing fastlmk from a source checkout: where its compiled kernels come from.

A clean checkout has ``fastlmk/`` without the compiled modules (``_C_cpu``, ``_C_cuda``):
``pip install .`` puts them into site-packages, ``python setup.py build_ext --inplace`` (or
``pip install -e .``) next to the sources. Python puts the current directory first on
``sys.path`` for ``python -m ...`` and ``python -c``, and pytest puts the repository root there
for ``benchmarks/`` (a package), so from the repository root ``import fastlmk`` finds the
checkout, not the installed copy.

:func:`attach_installed_kernels` then appends the installed package's directory to
``fastlmk.__path__``: the Python modules still come from the checkout (your edits count), the
compiled modules from the installed build -- but only if that build was compiled from the same
C++/CUDA sources as this checkout's ``csrc/`` (:mod:`fastlmk._build_info`). Otherwise nothing
is attached, the ops fall back to the reference with a warning, and :data:`status` (quoted in
that warning) says why and what to run.
"""

from __future__ import annotations

import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

from fastlmk import _build_info

#: None when fastlmk is an installed package or a checkout built in place; otherwise one
#: sentence on where the compiled modules of this source checkout come from, or why none do.
status: str | None = None


def has_compiled_modules(package_dir: Path) -> bool:
    return any((package_dir / f"_C_cpu{suffix}").is_file() for suffix in EXTENSION_SUFFIXES)


def checkout_root(package_dir: Path) -> Path | None:
    """The repository root if ``package_dir`` is the ``fastlmk/`` of a source checkout."""
    root = package_dir.parent
    return root if (root / "setup.py").is_file() and (root / "csrc").is_dir() else None


def attach_installed_kernels(package_path: list) -> None:
    """Called by ``fastlmk/__init__.py`` with its ``__path__`` (see the module docstring)."""
    global status
    package_dir = Path(package_path[0]).resolve()
    root = checkout_root(package_dir)
    if root is None or has_compiled_modules(package_dir):
        return
    want = _build_info.csrc_digest(root / "csrc")
    stale = []
    for entry in sys.path:
        try:
            candidate = (Path(entry or ".").resolve() / "fastlmk")
        except (OSError, RuntimeError):
            continue
        if candidate == package_dir or not has_compiled_modules(candidate):
            continue
        if _build_info.read(candidate) == want:
            package_path.append(str(candidate))
            status = (f"fastlmk is imported from the source checkout {package_dir}, with the compiled modules "
                      f"of the installed build in {candidate}")
            return
        stale.append(str(candidate))
    fix = f"run `pip install .` (or `python setup.py build_ext --inplace`) in {root}"
    if stale:
        status = (f"fastlmk is imported from the source checkout {package_dir}, which has no compiled modules, "
                  f"and the installed build in {stale[0]} was compiled from other C++/CUDA sources than "
                  f"{root / 'csrc'}: {fix}")
    else:
        status = (f"fastlmk is imported from the source checkout {package_dir}, which has no compiled modules, "
                  f"and no installed build of fastlmk was found on sys.path: {fix}")
