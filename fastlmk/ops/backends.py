"""Backend selection: the one place where an op's ``backend=`` argument is resolved.

Backends: ``"reference"`` (pure PyTorch, :mod:`fastlmk.reference`), ``"cpu"`` (C++/OpenMP,
``fastlmk._C_cpu``), ``"cuda"`` (CUDA C++, ``fastlmk._C_cuda``), ``"triton"``
(:mod:`fastlmk.ops.triton`; on CPU tensors only under ``TRITON_INTERPRET=1``).

``"auto"`` picks, for the tensor's device, the compiled kernel; on CUDA the per-op preference in
:data:`AUTO_CUDA` (overridable with the environment variable ``FASTLMK_BACKEND``). Where none is
available it falls back to the reference and warns once per (op, device type).

The CUDA module holds code for the GPUs it was compiled for only (its ``cuda_targets``, see
:mod:`fastlmk._cuda_targets`): on any other GPU "cuda" is unavailable, an explicit
``backend="cuda"`` raises, and "auto" runs the next backend (Triton where it runs, else the
reference) with one warning naming the GPU's compute capability and the rebuild command.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

from fastlmk import _cuda_targets
from fastlmk.ops._cpp import CppKernels

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")

# Which GPU backend "auto" tries first, per op, on CUDA tensors. It must say what measurements
# showed to be faster (scripts/gpu_check.py times both on a GPU; README "Performance"). No GPU has been
# available to this project yet, so the order below is the design default (CUDA C++ first: it
# has no JIT warm-up and the lowest launch overhead), not a measured choice.
AUTO_CUDA = {
    "soft_argmax": ("cuda", "triton"),
    "gaussian_heatmaps": ("cuda", "triton"),
    "tps_warp": ("cuda", "triton"),
    "tps_transform_points": ("cuda", "triton"),
}

# dtypes each compiled backend handles natively
DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
    "triton": (torch.float32, torch.float64, torch.float16, torch.bfloat16),
}

_modules: dict = {}
_errors: dict = {}
_warned: set = set()
_kernel_sets: dict = {}
_has_kernels_cache: dict = {}
_cuda_arch_checked: dict = {}  # (device index, module targets) -> None (runs there) or why not

_MODULE_NAMES = {"cpu": "fastlmk._C_cpu", "cuda": "fastlmk._C_cuda", "triton": "fastlmk.ops.triton"}


def _load(name: str):
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(name)
        except ImportError as e:  # not built / triton not installed
            _modules[name] = None
            _errors[name] = e
    return _modules[name]


def module(backend: str):
    """The module holding the kernels of ``backend`` ("cpu", "cuda" or "triton"), imported on
    first use; None where it is not built (or triton is not installed)."""
    if backend == "triton" and _load("triton") is None:
        return None
    return _load(_MODULE_NAMES[backend])


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _not_built(backend: str) -> str:
    """Why the module of ``backend`` could not be imported, and what to do about it."""
    if backend == "triton":
        why = _errors.get("triton") or _errors.get(_MODULE_NAMES["triton"])
        return f"the 'triton' backend needs the triton package ({why})"
    if backend == "cpu":
        from fastlmk import _source_tree

        if _source_tree.status:  # a source checkout without compiled modules: what to run
            return _source_tree.status
        return (f"fastlmk was installed without its CPU kernels ({_errors.get('fastlmk._C_cpu')}); "
                "reinstall with `pip install .`")
    return ("fastlmk was built without CUDA kernels (no nvcc at install time, or FASTLMK_CUDA=0); "
            f"reinstall with nvcc on the PATH ({_errors.get('fastlmk._C_cuda')})")


def why_unavailable(backend: str, device: torch.device, op: str | None = None) -> str | None:
    """Why ``backend`` cannot run (``op``, if given) on tensors of ``device`` here; None if it can.

    The one rule for "is this backend built and usable": :func:`resolve`, the tests' skips and
    the benchmarks' provider list all ask it. A backend runs where its module is built and
    importable, the device is its own (a CUDA GPU present for "cuda" and for Triton on CUDA;
    Triton on CPU tensors only in the interpreter), and -- if ``op`` is given -- the module has
    both ``<op>_forward`` and ``<op>_backward`` (a stale or partial build may lack an op).
    """
    if backend == "reference":
        return None
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            return f"the {backend!r} backend needs {backend.upper()} tensors, got a tensor on {device}"
        mod = module(backend)
        if mod is None:
            return _not_built(backend)
        if backend == "cuda":
            if not torch.cuda.is_available():
                return "the 'cuda' backend needs a CUDA GPU, and torch sees none"
            why = _cuda_arch_mismatch(mod, device)
            if why is not None:
                return why
    elif backend == "triton":
        if device.type == "cpu" and not triton_interpreted():
            # said without importing triton: imported outside the interpreter, it cannot enter it
            if "triton" in _modules and _modules["triton"] is None:
                return _not_built("triton")
            return ("the 'triton' backend runs on CPU tensors only in the interpreter: "
                    "set TRITON_INTERPRET=1 before importing triton")
        if device.type not in ("cpu", "cuda"):
            return f"the 'triton' backend does not support tensors on {device}"
        if device.type == "cuda" and not torch.cuda.is_available():
            return "the 'triton' backend needs a CUDA GPU for CUDA tensors, and torch sees none"
        mod = module("triton")
        if mod is None:
            return _not_built("triton")
    else:
        return f"backend must be one of {BACKENDS}, got {backend!r}"
    if op is not None and not _has_kernels(backend, mod, op):
        return (f"this installation's {backend!r} module has no {op} kernel (a stale build?); "
                "reinstall with `pip install .`")
    return None


def _cuda_arch_mismatch(mod, device: torch.device) -> str | None:
    """Why the compiled CUDA module ``mod`` holds no code the GPU of ``device`` can run (SASS of
    its major version and a minor <= its own, or PTX of a capability <= its own); None if it
    does, or if the module does not say what it was compiled for (a build older than the record).
    Asked on every call, so cached per (device, module targets)."""
    targets = getattr(mod, "cuda_targets", "")
    if not targets:
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    key = (index, targets)
    if key not in _cuda_arch_checked:
        major, minor = torch.cuda.get_device_capability(index)
        why = None
        if not _cuda_targets.runs_on(targets, (major, minor)):
            why = (f"this installation's CUDA kernels were compiled for {_cuda_targets.describe(targets)}, "
                   f"none of which runs on cuda:{index} (compute capability {major}.{minor}); rebuild them for "
                   f"it from the fastlmk source with `{_cuda_targets.ENV}=\"{major}{minor}\" pip install .`")
        _cuda_arch_checked[key] = why
    return _cuda_arch_checked[key]


def _has_kernels(backend: str, mod, op: str) -> bool:
    """``mod``, the module of ``backend``, has both ``<op>_forward`` and ``<op>_backward``.
    Asked on every call, so cached (per backend: its module is imported once, by _load)."""
    key = (backend, op)
    if key not in _has_kernels_cache:
        _has_kernels_cache[key] = hasattr(mod, f"{op}_forward") and hasattr(mod, f"{op}_backward")
    return _has_kernels_cache[key]


def available(backend: str, device: torch.device, op: str | None = None) -> bool:
    """True if ``backend`` can run (``op``, if given) on tensors of ``device`` here
    (:func:`why_unavailable` has no objection)."""
    return why_unavailable(backend, device, op) is None



def resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """Return the concrete backend that runs ``op`` on tensors of ``device``/``dtype``."""
    if backend == "auto":
        env = os.environ.get("FASTLMK_BACKEND")
        if env:
            if env not in BACKENDS or env == "auto":
                raise ValueError(f"FASTLMK_BACKEND must be one of {BACKENDS[1:]}, got {env!r}")
            backend = env
        else:
            if device.type == "cpu":
                prefs = ("cpu",)
            elif device.type == "cuda":
                prefs = AUTO_CUDA[op]
            else:
                prefs = ()
            chosen, arch_why = "reference", None
            for p in prefs:
                if dtype not in DTYPES[p]:
                    continue
                if available(p, device, op):
                    chosen = p
                    break
                if p == "cuda" and module("cuda") is not None and torch.cuda.is_available():
                    arch_why = _cuda_arch_mismatch(module("cuda"), device)
            if arch_why is not None:
                # the CUDA kernels exist but not for this GPU: one warning per GPU (not per op)
                # naming the capability and the rebuild command
                key = ("cuda-arch", arch_why, chosen)
                if key not in _warned:
                    _warned.add(key)
                    instead = ("the Triton kernels" if chosen == "triton"
                               else "the (slower) pure-PyTorch reference ops")
                    warnings.warn(f"fastlmk: {arch_why}. Until then backend 'auto' runs {instead} on this GPU.",
                                  RuntimeWarning, stacklevel=4)
                return chosen
            if chosen != "reference":
                return chosen
            key = (op, device.type, dtype)
            if key not in _warned:
                _warned.add(key)
                why = f" ({why_unavailable('cpu', device)})" if device.type == "cpu" and module("cpu") is None else ""
                warnings.warn(
                    f"fastlmk.{op}: no compiled kernel for {device.type} tensors of dtype {dtype} in this "
                    f"installation; falling back to the (slower) pure-PyTorch reference{why}.",
                    RuntimeWarning,
                    stacklevel=4,
                )
            return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"fastlmk.{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return backend
    why = why_unavailable(backend, device, op)
    if why is not None:
        raise RuntimeError(f"fastlmk.{op}: {why}")
    if dtype not in DTYPES[backend]:
        raise TypeError(
            f"fastlmk.{op}: the {backend!r} backend supports dtypes {DTYPES[backend]}, got {dtype}; "
            "use backend='reference' or convert the input"
        )
    return backend


def kernels(backend: str):
    """The kernel set of a concrete backend: the tensor-level functions of
    :mod:`fastlmk.ops._interface` (a :class:`~fastlmk.ops._cpp.CppKernels` for "cpu" and "cuda",
    the :mod:`fastlmk.ops.triton` module for "triton")."""
    try:
        return _kernel_sets[backend]
    except KeyError:
        pass
    if backend in ("cpu", "cuda"):
        ks = CppKernels(module(backend), backend)
    elif backend == "triton":
        ks = module("triton")
    else:
        raise ValueError(f"no kernels for backend {backend!r}")
    _kernel_sets[backend] = ks
    return ks
