"""Which C++/CUDA sources the compiled modules were built from.

``setup.py`` writes :data:`BUILD_FILE` next to the compiled modules (``_C_cpu``, ``_C_cuda``):
``{"csrc_sha256": <csrc_digest of the csrc/ they were compiled from>}``. A source checkout
without compiled modules of its own uses an installed build's modules only when that digest
equals the digest of its own ``csrc/`` (:mod:`fastlmk._source_tree`).

Standard library only, no torch: ``setup.py`` loads this file by path.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

BUILD_FILE = "_build.json"
SOURCE_SUFFIXES = (".c", ".cc", ".cpp", ".cu", ".cuh", ".h", ".hpp")


def csrc_digest(csrc) -> str:
    """SHA-256 over the relative path and the bytes of every C/C++/CUDA source under ``csrc``."""
    csrc = Path(csrc)
    files = sorted((p for p in csrc.rglob("*") if p.is_file() and p.suffix in SOURCE_SUFFIXES),
                   key=lambda p: p.relative_to(csrc).as_posix())
    h = hashlib.sha256()
    for p in files:
        h.update(p.relative_to(csrc).as_posix().encode() + b"\0")
        h.update(p.read_bytes() + b"\0")
    return h.hexdigest()


def write(package_dir, csrc) -> Path:
    """Record the digest of ``csrc`` in ``package_dir``/_build.json (called by setup.py)."""
    out = Path(package_dir) / BUILD_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"csrc_sha256": csrc_digest(csrc)}) + "\n")
    return out


def read(package_dir) -> str | None:
    """The digest recorded in ``package_dir``/_build.json, or None (absent or unreadable)."""
    try:
        return json.loads((Path(package_dir) / BUILD_FILE).read_text()).get("csrc_sha256")
    except (OSError, ValueError, AttributeError):
        return None
