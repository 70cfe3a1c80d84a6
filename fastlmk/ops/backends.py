"""Backend selection: the one place where an op's ``backend=`` argument is resolved.

Backends: ``"reference"`` (pure PyTorch, :mod:`fastlmk.reference`), ``"cpu"`` (C++/OpenMP,
``fastlmk._C_cpu``), ``"cuda"`` (CUDA C++, ``fastlmk._C_cuda``), ``"triton"``
(:mod:`fastlmk.ops.triton`; on CPU tensors only under ``TRITON_INTERPRET=1``).

``"auto"`` picks, for the tensor's device, the compiled kernel; on CUDA the per-op preference in
:data:`AUTO_CUDA` (overridable with the environment variable ``FASTLMK_BACKEND``). Where none is
available it falls back to the reference and warns once per (op, device type).
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

from fastlmk.ops._cpp import CppKernels

BACKENDS = ("auto", "reference", "cpu", "cuda", "triton")

# Which GPU backend "auto" tries first, per op, on CUDA tensors. Keep this table in sync with
# benchmarks/RESULTS.md: it must say what measurements showed to be faster. No GPU has been
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
_cpp_kernels: dict = {}


def _load(name: str):
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(name)
        except ImportError as e:  # not built / triton not installed
            _modules[name] = None
            _errors[name] = e
    return _modules[name]


def cpu_module():
    return _load("fastlmk._C_cpu")


def cuda_module():
    return _load("fastlmk._C_cuda")


def triton_module():
    if _load("triton") is None:
        return None
    return _load("fastlmk.ops.triton")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def _has_op(module, op) -> bool:
    # a stale or partial build may lack an op's kernel: treat that op as not built
    return module is not None and (op is None or hasattr(module, f"{op}_forward"))


def available(backend: str, device: torch.device, op: str | None = None) -> bool:
    """True if ``backend`` can run (``op``, if given) on tensors of ``device`` here."""
    if backend == "reference":
        return True
    if backend == "cpu":
        return device.type == "cpu" and _has_op(cpu_module(), op)
    if backend == "cuda":
        return device.type == "cuda" and torch.cuda.is_available() and _has_op(cuda_module(), op)
    if backend == "triton":
        if device.type == "cpu" and not triton_interpreted():
            return False
        if device.type == "cuda" and not torch.cuda.is_available():
            return False
        return device.type in ("cpu", "cuda") and _has_op(triton_module(), op)
    return False


def _why_unavailable(backend: str, device: torch.device) -> str:
    if backend == "cpu":
        if device.type != "cpu":
            return f"the 'cpu' backend needs CPU tensors, got a tensor on {device}"
        from fastlmk import _source_tree

        if _source_tree.status and cpu_module() is None:
            return _source_tree.status
        return f"fastlmk was installed without its CPU kernels ({_errors.get('fastlmk._C_cpu')}); reinstall with `pip install .`"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the 'cuda' backend needs CUDA tensors, got a tensor on {device}"
        return (
            "fastlmk was built without CUDA kernels (no nvcc at install time, or FASTLMK_CUDA=0); "
            f"reinstall with nvcc on the PATH ({_errors.get('fastlmk._C_cuda')})"
        )
    if backend == "triton":
        if triton_module() is None:
            return f"the 'triton' backend needs the triton package ({_errors.get('triton') or _errors.get('fastlmk.ops.triton')})"
        if device.type == "cpu":
            return "the 'triton' backend runs on CPU tensors only in the interpreter: set TRITON_INTERPRET=1 before importing triton"
        return f"the 'triton' backend does not support tensors on {device}"
    return f"backend {backend!r} is not available"


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
            for p in prefs:
                if dtype in DTYPES[p] and available(p, device, op):
                    return p
            key = (op, device.type, dtype)
            if key not in _warned:
                _warned.add(key)
                why = f" ({_why_unavailable('cpu', device)})" if device.type == "cpu" and cpu_module() is None else ""
                warnings.warn(
                    f"fastlmk.{op}: no compiled kernel for {device.type} tensors of dtype {dtype} in this "
                    f"installation; falling back to the (slower) pure-PyTorch reference{why}.",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return "reference"
    if backend not in BACKENDS:
        raise ValueError(f"fastlmk.{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "reference":
        return backend
    if not available(backend, device):
        raise RuntimeError(f"fastlmk.{op}: {_why_unavailable(backend, device)}")
    if not available(backend, device, op):
        raise RuntimeError(f"fastlmk.{op}: this installation's {backend!r} module has no {op} kernel "
                           "(a stale build?); reinstall with `pip install .`")
    if dtype not in DTYPES[backend]:
        raise TypeError(
            f"fastlmk.{op}: the {backend!r} backend supports dtypes {DTYPES[backend]}, got {dtype}; "
            "use backend='reference' or convert the input"
        )
    return backend


def kernels(backend: str):
    """The object holding the tensor-level kernel functions of a concrete backend."""
    if backend in ("cpu", "cuda"):
        if backend not in _cpp_kernels:
            module = cpu_module() if backend == "cpu" else cuda_module()
            _cpp_kernels[backend] = CppKernels(module, backend)
        return _cpp_kernels[backend]
    if backend == "triton":
        return triton_module()
    raise ValueError(f"no kernels for backend {backend!r}")
