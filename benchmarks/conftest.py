"""Shared machinery of the fastlmk benchmarks (``pytest benchmarks --benchmark-only``).

Every benchmark is one (op, mode, shape, device, provider) cell:

* providers: ``reference-eager`` (:mod:`fastlmk.reference`), ``reference-compile``
  (``torch.compile`` of the same reference function, compiled and warmed up before timing),
  ``kornia`` (where kornia computes the same function; the convention mapping is documented in
  each bench file), ``fastlmk-cpu`` on CPU tensors, ``fastlmk-cuda`` and ``fastlmk-triton`` on
  CUDA tensors. A provider whose kernel is not built (or not written yet), or that needs a device
  this machine lacks, is skipped with the reason. Triton under the CPU interpreter is never
  benchmarked (it measures the interpreter, not a kernel).
* modes: ``forward`` (inputs do not require grad) and ``forward+backward`` (one forward, then
  ``torch.autograd.grad`` of the outputs with a fixed random upstream gradient w.r.t. every
  differentiable input; no ``.grad`` accumulation is timed).
* shapes: ``paper`` and ``large`` (see each bench file); ``FASTLMK_BENCH_SHAPES`` picks among them
  and ``tiny`` (a few elements, for checking the machinery, not for timing).

Each benchmark first runs its step once and checks the answer (outputs and gradients): elementwise
against reference-eager in float32 over the whole batch, and on a few batch samples against the
reference run in float64, where it may be at most 2x further off than the float32 reference
(:func:`check_answer`; failures print the worst element). Only then is it timed. On CUDA every timed call ends with ``torch.cuda.synchronize()``. Rounds are sized to a
per-benchmark time budget so the whole CPU run stays short (``FASTLMK_BENCH_BUDGET`` seconds,
default 0.3, at least ``MIN_ROUNDS`` rounds). The metadata that :mod:`benchmarks.report` reads
(op, mode, shape, provider, device and, on CUDA, bytes moved and bandwidth) is stored in each
benchmark's ``extra_info``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Callable, Optional

import pytest


import torch

from fastlmk.ops import backends

HAS_CUDA = torch.cuda.is_available()
MODES = ("forward", "forward+backward")
# which shapes to run: FASTLMK_BENCH_SHAPES="paper,large" (default); "tiny" is a few-element
# problem per op for checking the benchmark machinery quickly (scripts/gpu_check.py --cpu-smoke)
SHAPES = tuple(s.strip() for s in os.environ.get("FASTLMK_BENCH_SHAPES", "paper,large").split(",") if s.strip())
REFERENCE = "reference-eager"
# device on which each provider runs; reference, compile and kornia run on every device present
PROVIDERS = ("reference-eager", "reference-compile", "kornia", "fastlmk-cpu", "fastlmk-cuda", "fastlmk-triton")
_FASTLMK_DEVICE = {"fastlmk-cpu": "cpu", "fastlmk-cuda": "cuda", "fastlmk-triton": "cuda"}

BUDGET_S = float(os.environ.get("FASTLMK_BENCH_BUDGET", "0.3"))  # timed seconds per benchmark
MIN_ROUNDS = 3
MAX_ROUNDS = 1000

# the reference functions are compiled once per (shape, mode, variant): allow that many graphs
for _name in ("recompile_limit", "cache_size_limit"):
    if hasattr(torch._dynamo.config, _name):
        setattr(torch._dynamo.config, _name, 64)


def device_providers(providers=PROVIDERS):
    """pytest params ``(device, provider)``: every provider on every device it can run on here.

    fastlmk-cuda / fastlmk-triton are always listed (on "cuda") so that a CPU-only run reports
    them as skipped, with the reason, instead of silently leaving them out.
    """
    params = []
    for device in ("cpu", "cuda"):
        for p in providers:
            if p in _FASTLMK_DEVICE:
                if _FASTLMK_DEVICE[p] != device:
                    continue
            elif device == "cuda" and not HAS_CUDA:
                continue
            params.append(pytest.param(device, p, id=f"{device}-{p}"))
    return params


# --- which fastlmk kernels exist --------------------------------------------------------------
def kernel_unavailable(op: str, backend: str, device: str) -> Optional[str]:
    """Why ``backend`` cannot run ``op`` on ``device`` here (None if it can): the package's rule
    (:func:`fastlmk.ops.backends.why_unavailable`), after the benchmarks' own two."""
    if device == "cuda" and not HAS_CUDA:
        return "no CUDA device on this machine"
    if backend == "triton" and (device == "cpu" or backends.triton_interpreted()):
        return "triton on CPU runs only in the interpreter (TRITON_INTERPRET=1), which is not benchmarked"
    return backends.why_unavailable(backend, torch.device(device), op)


def fastlmk_backend(op: str, provider: str, device: str) -> str:
    """The fastlmk backend name of a ``fastlmk-*`` provider, or skip the test with the reason."""
    backend = provider.split("-", 1)[1]
    why = kernel_unavailable(op, backend, device)
    if why:
        pytest.skip(f"{provider}: {why}")
    return backend


def kornia_module():
    return pytest.importorskip("kornia", reason="kornia is not installed (pip install '.[test]')")


def provider_fn(provider: str, op: str, device: str, reference_fn: Callable, compiled_reference_fn: Callable,
                kornia_fn: Callable, fastlmk_fn: Callable) -> tuple:
    """(function of a case's inputs, untimed warm-up calls) for ``provider``: ``reference_fn``,
    ``compiled_reference_fn`` (one warm-up call compiles it), ``kornia_fn(kornia)`` or
    ``fastlmk_fn(backend)`` with the provider's backend; skips the test where it cannot run."""
    if provider == "reference-eager":
        return reference_fn, 0
    if provider == "reference-compile":
        return compiled_reference_fn, 1
    if provider == "kornia":
        return kornia_fn(kornia_module()), 0
    return fastlmk_fn(fastlmk_backend(op, provider, device)), 0


# --- the cases of a bench file, built once and freed after it -------------------------------
_CASE_CACHES: list = []


def case_cache(build: Callable) -> Callable:
    """``functools.lru_cache`` for a bench file's case builders (``_case(shape, device)``): each
    case is made once, and all are freed when the file's benchmarks are done (large inputs)."""
    cached = functools.lru_cache(maxsize=None)(build)
    _CASE_CACHES.append(cached)
    return cached


@pytest.fixture(scope="module", autouse=True)
def _free_cases():
    yield
    for cached in _CASE_CACHES:
        cached.cache_clear()


# --- a benchmark case -------------------------------------------------------------------------
@dataclasses.dataclass
class Case:
    """One (op, shape, device) problem: inputs, which of them are differentiated, tolerances.

    ``inputs`` is a tuple of tensors/values passed positionally to every provider function;
    ``diff`` the indices of the differentiable tensor inputs (their gradients are checked and
    timed in forward+backward mode); ``nbytes`` maps a mode to the minimal bytes an ideal
    kernel must move (for the achieved-bandwidth column on CUDA).

    The answer check has two parts (see :func:`check_answer`): every element against the
    float32 reference-eager result within ``rtol``/``atol`` (``grad_atol`` for gradients), and,
    on a few samples of the batch, the distance to the float64 reference at most
    ``F64_FACTOR`` times the float32 reference's own distance to it (``f64_check``).
    """

    op: str
    shape: str
    device: str
    desc: str
    inputs: tuple
    diff: tuple = ()
    rtol: float = 1e-4
    atol: float = 1e-5  # relative to the largest |expected| of each compared tensor
    grad_atol: Optional[float] = None  # same for gradients; default atol
    f64_check: bool = True  # needs every tensor output/input with the batch in dim 0 to be per-sample
    nbytes: dict = dataclasses.field(default_factory=dict)


F64_CHECK_SAMPLES = 4  # batch entries recomputed in float64 for the precision check
F64_FACTOR = 2.0  # "at most 2x further from float64 than the float32 reference" (style.md)
F64_SLACK = 1e-6  # plus this fraction of max|ref64|
# kornia computes pairwise TPS distances as |p|^2 + |c|^2 - 2 p.c (cancellation), less precise
# than the reference's (p - c)^2: its TPS coefficient gradient is ~1e-4 of the largest entry away
# from float64 where the reference is ~5e-6. It is a baseline, not what we ship: it must compute
# the same function, so it gets (factor, slack) = (4, 3e-4) instead of (2, 1e-6).
F64_TOLERANCE_PROVIDER = {"kornia": (4.0, 3e-4)}
_REF_CACHE: dict = {}


@pytest.fixture(autouse=True, scope="module")
def _clear_reference_cache():
    yield
    _REF_CACHE.clear()
    if HAS_CUDA:
        torch.cuda.empty_cache()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def make_step(fn: Callable, case: Case, mode: str, inputs: Optional[tuple] = None,
              grad_out: Optional[torch.Tensor] = None) -> Callable:
    """The timed unit: forward, or forward then autograd.grad w.r.t. the differentiable inputs.

    ``inputs`` default to the case's; ``grad_out`` (the upstream gradient) to
    :func:`upstream_grad` of the first output.
    """
    inputs = case.inputs if inputs is None else inputs
    if mode == "forward":
        inputs = tuple(x.detach() if torch.is_tensor(x) else x for x in inputs)

        def step():
            return fn(*inputs)

        return step
    inputs = tuple(x.detach().clone().requires_grad_(i in case.diff) if torch.is_tensor(x) else x
                   for i, x in enumerate(inputs))
    leaves = [inputs[i] for i in case.diff]
    fixed = {} if grad_out is None else {"g": grad_out}

    def step():
        out = fn(*inputs)
        if "g" not in fixed:
            fixed["g"] = upstream_grad(out)
        grads = torch.autograd.grad(out, leaves, fixed["g"])
        return (out, *grads)

    return step


def upstream_grad(out: torch.Tensor) -> torch.Tensor:
    """The fixed random gradient fed to backward: the same for every provider of a case."""
    return torch.randn(out.shape, generator=seeded(1234), dtype=out.dtype).to(out.device)


def _worst(excess: torch.Tensor) -> tuple:
    return tuple(int(i) for i in torch.unravel_index(torch.argmax(torch.nan_to_num(excess, nan=math.inf)), excess.shape))


def assert_close(actual, expected, what: str, rtol: float, atol_rel: float) -> None:
    """``|a - e| <= atol_rel * max|e| + rtol * |e|`` elementwise; reports the worst element."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    if not e.numel():
        return
    atol = atol_rel * e.abs().max().item()
    err = (a - e).abs()
    excess = err - (atol + rtol * e.abs())
    if excess.max().item() > 0 or not torch.isfinite(a).all():
        idx = _worst(excess)
        raise AssertionError(
            f"{what}: mismatch against reference-eager, worst at {idx}: got {a[idx].item():.6g}, "
            f"expected {e[idx].item():.6g} (|diff| {err[idx].item():.3g}, atol {atol:.3g}, rtol {rtol:g}); "
            f"max |diff| {err.max().item():.3g}")


def _as_tuple(x):
    return x if isinstance(x, tuple) else (x,)


def _names(case: Case, mode: str, n: int) -> list:
    grads = [f"grad[input {i}]" for i in case.diff] if mode == "forward+backward" else []
    return [f"output {i}" for i in range(n - len(grads))] + grads


def _samples(batch: int) -> torch.Tensor:
    if batch <= F64_CHECK_SAMPLES:
        return torch.arange(batch)
    return torch.linspace(0, batch - 1, F64_CHECK_SAMPLES).round().long()  # spread over the batch


def _select(x, idx: torch.Tensor, batch: int):
    if torch.is_tensor(x) and x.dim() and x.shape[0] == batch:
        return x.index_select(0, idx.to(x.device))
    return x


def check_answer(result, reference, case: Case, provider: str, mode: str) -> None:
    """Compare a provider's (output, *gradients) with the reference's.

    1. Elementwise against the float32 reference-eager result, over the whole batch.
    2. Where ``case.f64_check``: on a few batch samples, ``max|ours - ref64| <= F64_FACTOR *
       max|ref32 - ref64| + F64_SLACK max|ref64|`` per tensor (looser for kornia, see
       ``F64_TOLERANCE_PROVIDER``), where ref64 is the reference run in
       float64. This is the fair criterion for long float32 sums (e.g. the TPS coefficient
       gradient adds S*S*C terms of both signs), where two correct float32 results can differ
       from each other by more than a fixed tolerance.
    """
    ref32, idx, ref64 = reference
    result = _as_tuple(result)
    assert len(result) == len(ref32), f"{case.op} {provider}: {len(result)} results, reference has {len(ref32)}"
    names = _names(case, mode, len(result))
    for i, (name, a, e) in enumerate(zip(names, result, ref32)):
        atol = case.grad_atol if (name.startswith("grad") and case.grad_atol is not None) else case.atol
        assert_close(a, e, f"{case.op} {mode} {case.shape} {provider} {name}", case.rtol, atol)
    if ref64 is None:
        return
    batch = case.inputs[0].shape[0]
    for name, a, e32, e64 in zip(names, result, ref32, ref64):
        a, e32 = _select(a, idx, batch).double(), _select(e32, idx, batch).double()
        ours, theirs = (a - e64).abs().max().item(), (e32 - e64).abs().max().item()
        factor, slack = F64_TOLERANCE_PROVIDER.get(provider, (F64_FACTOR, F64_SLACK))
        scale = e64.abs().max().item()
        bound = factor * theirs + slack * scale
        assert ours <= bound, (
            f"{case.op} {mode} {case.shape} {provider} {name}: max |ours - float64 reference| = {ours:.3g} on "
            f"samples {idx.tolist()}, more than {factor:g}x the float32 reference's own {theirs:.3g} "
            f"(bound {bound:.3g}, max |ref64| {scale:.3g}); worst at {_worst((a - e64).abs())}")


def reference_result(case: Case, mode: str, reference_fn: Callable, ref32=None):
    """(float32 reference result, checked sample indices, float64 reference on them), cached."""
    key = (case.op, case.shape, case.device, mode)
    if key not in _REF_CACHE:
        if ref32 is None:
            ref32 = make_step(reference_fn, case, mode)()
        ref32 = _as_tuple(ref32)
        idx, ref64 = None, None
        if case.f64_check:
            batch = case.inputs[0].shape[0]
            idx = _samples(batch)
            inputs = tuple(_select(x, idx, batch).double() if torch.is_tensor(x) and x.is_floating_point() else x
                           for x in case.inputs)
            g = None
            if mode == "forward+backward":
                g = _select(upstream_grad(ref32[0]), idx, batch).double()
            ref64 = _as_tuple(make_step(reference_fn, case, mode, inputs=inputs, grad_out=g)())
        _sync(case.device)
        _REF_CACHE[key] = (ref32, idx, ref64)
    return _REF_CACHE[key]


_COPY_BW: dict = {}


def device_copy_bandwidth(device: str) -> float:
    """Measured device-to-device copy bandwidth in GB/s (read + write bytes / time), cached."""
    if device not in _COPY_BW:
        n = 256 * 2**20 // 4  # 256 MiB of float32
        src = torch.empty(n, device=device).uniform_()
        dst = torch.empty_like(src)
        for _ in range(3):
            dst.copy_(src)
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        reps = 20
        start.record()
        for _ in range(reps):
            dst.copy_(src)
        end.record()
        torch.cuda.synchronize()
        seconds = start.elapsed_time(end) / 1e3 / reps
        _COPY_BW[device] = 2 * src.numel() * src.element_size() / seconds / 1e9
        del src, dst
    return _COPY_BW[device]


def run(benchmark, case: Case, provider: str, mode: str, fn: Optional[Callable], reference_fn: Callable,
        warm: int = 0, extra: Optional[dict] = None, step: Optional[Callable] = None):
    """Check ``fn`` against ``reference_fn`` on ``case``, then time it with pytest-benchmark.

    ``warm`` extra untimed calls come before the check (compile providers pass 1 or more so
    compilation is out of the way; the checked call then also warms the compiled code up).
    ``step`` replaces ``make_step(fn, case, mode)`` where a provider does its own backward (it
    must return what make_step's step returns: the output, then the gradients).
    """
    step = step or make_step(fn, case, mode)
    for _ in range(warm):
        step()
    _sync(case.device)
    t0 = time.perf_counter()
    result = step()
    _sync(case.device)
    t_first = time.perf_counter() - t0
    if provider == REFERENCE:  # its result is the float32 reference the others are checked against
        reference_result(case, mode, reference_fn, ref32=result)
    else:
        check_answer(result, reference_result(case, mode, reference_fn), case, provider, mode)
    del result

    warmup = 1 if t_first < 0.05 else 0
    if case.device == "cuda":
        def timed():
            out = step()
            torch.cuda.synchronize()
            return out
    else:
        timed = step

    benchmark.group = f"{case.op} | {mode} | {case.shape} | {case.device}"
    benchmark.extra_info.update(op=case.op, mode=mode, shape=case.shape, shape_desc=case.desc, provider=provider,
                                device=case.device, torch=torch.__version__, threads=torch.get_num_threads())
    if extra:
        benchmark.extra_info.update(extra)
    time_rounds(benchmark, timed, warmup)

    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if case.device == "cuda" and mode in case.nbytes and stats is not None:
        median = stats.stats.median
        copy_bw = device_copy_bandwidth(case.device)
        achieved = case.nbytes[mode] / median / 1e9
        benchmark.extra_info.update(min_bytes=case.nbytes[mode], achieved_GBps=achieved, copy_GBps=copy_bw,
                                    fraction_of_copy=achieved / copy_bw, device_name=torch.cuda.get_device_name())


def time_rounds(benchmark, timed: Callable, warmup: int) -> None:
    """MIN_ROUNDS rounds through ``benchmark.pedantic``, then more until BUDGET_S is spent.

    A rounds count fixed in advance from a calibration call (what pytest-benchmark does) can
    run for minutes on a shared machine when the load jumps after calibrating (seen: a 0.3 ms
    call calibrated to 863 rounds that then took 48 ms each). Here the budget is a deadline:
    after the first MIN_ROUNDS rounds, further rounds are timed with the same clock
    (``time.perf_counter``, pytest-benchmark's default timer) and added to the fixture's
    statistics until the deadline or MAX_ROUNDS.
    """
    start = time.perf_counter()
    benchmark.pedantic(timed, rounds=MIN_ROUNDS, warmup_rounds=warmup, iterations=1)
    stats = getattr(benchmark, "stats", None)  # None under --benchmark-disable
    if stats is None:
        return
    deadline = start + BUDGET_S
    for _ in range(MAX_ROUNDS - MIN_ROUNDS):
        if time.perf_counter() >= deadline:
            break
        t0 = time.perf_counter()
        timed()
        stats.stats.update(time.perf_counter() - t0)


def compiled(fn: Callable) -> Callable:
    """torch.compile of a reference function (static shapes: one specialised graph per shape)."""
    return torch.compile(fn, dynamic=False)


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# --- kornia's TPS convention ------------------------------------------------------------------
def kornia_tps(ctrl: torch.Tensor, coef: torch.Tensor):
    """Our ``TPS(ctrl, coef)`` as kornia's ``(kernel_centers, kernel_weights, affine_weights)``.

    kornia evaluates ``f(p) = a_0 + x a_x + y a_y + sum_i k_i * 0.5 r_i^2 log r_i^2`` (its radial
    function is ``r^2 log r``, half of our ``U = r^2 log r^2``), with ``affine_weights`` rows
    ``(a_0, a_x, a_y)`` in our order and (x, y) columns. So the same spline has kernel weights
    ``2 w`` and the same affine part; kernel centres are our control points, one set per sample
    (kornia has no shared-lattice form, so ``ctrl`` is expanded to the batch). Done inside the
    timed kornia functions, from ``coef``, so gradients w.r.t. ``coef`` compare with ours.
    For images, kornia's ``warp_image_tps(..., align_corners=True)`` then samples the input at
    ``f(output pixel)`` on the ``linspace(-1, 1)`` grid: our backward mapping and convention.
    """
    B, N = coef.shape[0], ctrl.shape[1]
    return ctrl.expand(B, -1, -1), 2.0 * coef[:, :N], coef[:, N:]


def smooth_images(batch: int, channels: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Smooth images in [0, 1] that fade to 0 at the border (8x8 noise upsampled bicubically,
    times a sine window).

    Bilinear warping is not differentiable where a sample crosses a pixel centre; with white
    noise (or with a bright border under zero padding) the slope jumps there by O(1), so two
    correct implementations whose sample positions differ by float rounding can disagree on the
    gradient w.r.t. the spline far beyond rounding. Smooth content that fades out at the border
    keeps every jump small, so the answer check can be tight.
    """
    coarse = torch.rand(batch, channels, 8, 8, generator=generator)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True).clamp_(0, 1)
    window = torch.sin(torch.linspace(0, torch.pi, size))  # 0 at the border pixel centres
    return img * window[:, None] * window[None, :]



# --- machine description stored in the JSON (with the load average: this machine is shared) ---
def _versions() -> dict:
    info = {"torch": torch.__version__, "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()}
    try:
        import kornia

        info["kornia"] = kornia.__version__
    except ImportError:
        pass
    if HAS_CUDA:
        info["cuda_device"] = torch.cuda.get_device_name()
        info["cuda_runtime"] = torch.version.cuda
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


_LOADAVG_AT_START = list(os.getloadavg())  # at collection, before anything is timed


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info.update(_versions())
    machine_info["loadavg_at_start"] = _LOADAVG_AT_START


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["machine_info"]["loadavg_at_end"] = list(os.getloadavg())
