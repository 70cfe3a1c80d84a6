"""Which GPUs the CUDA module is compiled for, and which GPUs its code runs on.

Build time (``setup.py`` loads this file by path: standard library only, no torch): the targets
come from ``FASTLMK_CUDA_ARCHS`` when it is set (e.g. ``"75;80"``: SASS for each, PTX of the
highest), otherwise from :data:`DEFAULT_ARCHS` (SASS + PTX of the highest) plus SASS for every GPU
of the build machine (``nvidia-smi``; nothing when there is no driver or GPU). The chosen
targets are compiled into ``fastlmk._C_cuda`` as its ``cuda_targets`` attribute, e.g.
``"sm_75;sm_80;sm_90;compute_90"``.

Run time (:mod:`fastlmk.ops.backends`): :func:`runs_on` says whether such a target list holds code
for a GPU of a given compute capability. CUDA's rules: SASS for ``sm_XY`` runs on devices of the
same major version X with minor >= Y; PTX for ``compute_XY`` is JIT-compiled by the driver for any
device of capability >= X.Y.
"""

from __future__ import annotations

import re
import subprocess

ENV = "FASTLMK_CUDA_ARCHS"
#: SASS for these, PTX for the highest (forward compatibility with newer GPUs).
DEFAULT_ARCHS = ("80", "90")

_ARCH = re.compile(r"^(\d+)\.?(\d)$")  # "75", "7.5", "100", "10.0", "120"


def arch_key(arch: str) -> tuple[int, int]:
    """``"75"`` -> (7, 5), ``"100"`` -> (10, 0): the compute capability an arch number names."""
    return int(arch[:-1]), int(arch[-1])


def parse_archs(value: str) -> list[str]:
    """The arch numbers of a ``FASTLMK_CUDA_ARCHS`` value (``"75;80"``, ``"7.5,8.0"``), sorted by
    capability, duplicates dropped. Raises ValueError (one line naming the variable) on anything
    else."""
    archs = []
    for item in value.replace(",", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        m = _ARCH.match(item)
        if m is None:
            raise ValueError(f"{ENV} must list compute capabilities such as \"75;80;90\" (or \"7.5;8.0\"), "
                             f"got {value!r}")
        archs.append(m.group(1) + m.group(2))
    if not archs:
        raise ValueError(f"{ENV} is set but names no architecture: {value!r} (unset it for the default)")
    return sorted(set(archs), key=arch_key)


def detect_gpu_archs(run=subprocess.run) -> list[str]:
    """The compute capabilities of this machine's GPUs as arch numbers (``["75"]`` for a T4),
    from ``nvidia-smi``; ``[]`` when there is no nvidia-smi, no GPU, or a driver too old to
    report it. ``run`` is :func:`subprocess.run` (a parameter so tests can stub it)."""
    try:
        res = run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                  capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if res.returncode != 0:
        return []
    archs = set()
    for line in res.stdout.splitlines():
        m = _ARCH.match(line.strip())
        if m is not None:
            archs.add(m.group(1) + m.group(2))
    return sorted(archs, key=arch_key)


def nvcc_archs(nvcc, run=subprocess.run) -> set[str] | None:
    """The SASS archs ``nvcc`` can compile for (``nvcc --list-gpu-code``), or None if it cannot say."""
    try:
        res = run([str(nvcc), "--list-gpu-code"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    if res.returncode != 0:
        return None
    found = {m.group(1) for m in re.finditer(r"\bsm_(\d+)\b", res.stdout)}
    return found or None


def choose(env_value: str | None, detected: list[str], supported: set[str] | None) -> tuple[list[str], str]:
    """The targets to compile for, e.g. ``["sm_75", "sm_80", "sm_90", "compute_90"]``, and a
    sentence saying why.

    ``env_value``: ``FASTLMK_CUDA_ARCHS`` (None or "" when unset); ``detected``: the build
    machine's GPUs (:func:`detect_gpu_archs`); ``supported``: what nvcc can compile
    (:func:`nvcc_archs`, None if unknown). An explicit arch nvcc cannot compile raises ValueError;
    a detected one is left out (said in the sentence: the run-time check then warns on that GPU).
    """
    if env_value:
        archs = parse_archs(env_value)
        bad = [a for a in archs if supported is not None and a not in supported]
        if bad:
            raise ValueError(f"{ENV}={env_value!r}: this nvcc cannot compile for "
                             f"{', '.join('sm_' + a for a in bad)} (it supports "
                             f"{', '.join('sm_' + a for a in sorted(supported, key=arch_key))}); "
                             "use a CUDA toolkit that does")
        sass, ptx = archs, archs[-1]
        why = f"{ENV}={env_value!r}"
    else:
        usable = [a for a in detected if supported is None or a in supported]
        skipped = [a for a in detected if a not in usable]
        # PTX of the highest *default*, not of a detected GPU: the PTX is what newer GPUs run, and
        # compute_120 PTX (say) would not run on a 10.0 device that compute_90 PTX serves.
        sass, ptx = sorted(set(DEFAULT_ARCHS) | set(usable), key=arch_key), DEFAULT_ARCHS[-1]
        why = (f"{ENV} unset: the defaults {';'.join(DEFAULT_ARCHS)}"
               + (f" plus this machine's GPUs ({', '.join(_dotted(a) for a in usable)})" if usable else "")
               + (f"; this nvcc cannot compile for the GPUs of compute capability "
                  f"{', '.join(_dotted(a) for a in skipped)}, left out" if skipped else ""))
    return [f"sm_{a}" for a in sass] + [f"compute_{ptx}"], why


def gencode_flags(targets: list[str]) -> list[str]:
    """nvcc ``-gencode`` flags for a target list of :func:`choose`."""
    flags = []
    for t in targets:
        kind, arch = t.split("_")
        flags += ["-gencode", f"arch=compute_{arch},code={kind}_{arch}"]
    return flags


def runs_on(targets: str | list[str], capability: tuple[int, int]) -> bool:
    """True if a module compiled for ``targets`` (a list, or the module's ``cuda_targets``
    string ``"sm_80;sm_90;compute_90"``) holds code a GPU of ``capability`` (major, minor) runs."""
    if isinstance(targets, str):
        targets = [t for t in targets.split(";") if t]
    major, minor = capability
    for t in targets:
        kind, _, arch = t.partition("_")
        if not arch.isdigit() or len(arch) < 2:
            continue
        t_major, t_minor = arch_key(arch)
        if kind == "sm" and t_major == major and t_minor <= minor:
            return True
        if kind == "compute" and (t_major, t_minor) <= (major, minor):
            return True
    return False


def _dotted(arch: str) -> str:
    major, minor = arch_key(arch)
    return f"{major}.{minor}"


def describe(targets: str | list[str]) -> str:
    """``"sm_80;sm_90;compute_90"`` -> ``"sm_80, sm_90 and PTX compute_90"`` (for messages)."""
    if isinstance(targets, str):
        targets = [t for t in targets.split(";") if t]
    sass = [t for t in targets if t.startswith("sm_")]
    ptx = [t for t in targets if t.startswith("compute_")]
    parts = [", ".join(sass)] if sass else []
    if ptx:
        parts.append("PTX " + ", ".join(ptx))
    return " and ".join(parts) or "no GPU"
