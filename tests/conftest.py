"""Shared test machinery: the backend matrix, tolerances, and an assert helper that names the
worst element.

Every kernel test runs over ``KERNEL_BACKENDS`` ("cpu", "triton", "cuda") and compares against
the pure-PyTorch reference (the oracle). A backend that cannot run here (no GPU, not built, triton
missing) is *skipped* with the reason; one that runs here but lacks an op's kernel fails.

Helpers are plain functions imported by the test modules (``from conftest import ...``).
"""

from __future__ import annotations

import os

import torch

# Triton kernels run on CPU tensors only in its interpreter, which must be switched on before
# triton is first imported (torch._dynamo imports it). Importing torch itself does not.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from fastlmk.ops import backends  # noqa: E402

KERNEL_BACKENDS = ("cpu", "triton", "cuda")
DTYPES = (torch.float32, torch.float64)

# The Triton interpreter runs kernels in numpy, one program at a time: keep its cases tiny.
TRITON_SMALL_ONLY = not torch.cuda.is_available()

# (atol, rtol) per dtype. Forward values of all ops are O(1); gradients of the TPS coefficients
# are sums over many pixels, so callers scale atol by the magnitude of the expected tensor.
TOL = {
    torch.float32: (2e-5, 2e-4),
    torch.float64: (1e-10, 1e-8),
}
GRAD_TOL = {
    torch.float32: (1e-4, 1e-3),
    torch.float64: (1e-9, 1e-7),
}


def backend_device(backend: str) -> torch.device:
    """The device a backend's kernels run on in this session."""
    if backend == "cuda":
        return torch.device("cuda")
    if backend == "triton":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


def require_kernel(backend: str, op: str) -> torch.device:
    """Skip the calling test unless ``backend`` can run here (a GPU for "cuda", the built module,
    triton); return the device to use. A backend that is available but lacks ``op``'s kernels
    fails: every backend implements every op. Both follow ``fastlmk.ops.backends.why_unavailable``."""
    device = backend_device(backend)
    why = backends.why_unavailable(backend, device)
    if why is not None:
        pytest.skip(f"{backend} backend not available on {device}: {why}")
    why = backends.why_unavailable(backend, device, op)
    if why is not None:
        pytest.fail(f"the {backend} backend cannot run {op}: {why}")
    return device


def backend_cases(small_cases, large_cases=(), backends=KERNEL_BACKENDS):
    """pytest params ``(backend, case)``: every backend gets the small cases; the large ones are
    left out for the Triton interpreter (slow), kept for Triton on a GPU."""
    params = []
    for b in backends:
        cases = list(small_cases) + ([] if (b == "triton" and TRITON_SMALL_ONLY) else list(large_cases))
        for c in cases:
            params.append(pytest.param(b, c, id=f"{b}-{c.get('id', c) if isinstance(c, dict) else c}"))
    return params


@pytest.fixture(autouse=True)
def _seed_global_rng():
    """Every test starts from the same global RNG state (tests that need randomness mostly use
    their own seeded generators; this makes the rest reproducible too)."""
    torch.manual_seed(0)


@pytest.fixture
def without_av(monkeypatch):
    """Make ``import av`` fail as it does where PyAV is not installed (the video extra missing)."""
    import builtins

    real_import = builtins.__import__

    def no_av(name, *args, **kw):
        if name == "av" or name.startswith("av."):
            raise ImportError("No module named 'av'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_av)


def tolerances(dtype: torch.dtype, grad: bool = False):
    return (GRAD_TOL if grad else TOL)[dtype]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, atol: float | None = None,
                 rtol: float | None = None, scale: bool = False, grad: bool = False, name: str = "",
                 check_dtype: bool = True) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise (NaNs must match).

    Defaults come from ``TOL``/``GRAD_TOL`` for ``expected``'s dtype; ``scale=True`` multiplies
    atol by ``max(1, max|expected|)`` (for sums over many terms). The dtypes must agree unless
    ``check_dtype=False`` (a float32 result against a float64 oracle); values are compared in
    float64. On failure the message gives the number of bad elements and the worst one: its
    index, both values and the difference.
    """
    label = f"{name}: " if name else ""
    assert isinstance(actual, torch.Tensor), f"{label}expected a tensor, got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{label}shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    assert not check_dtype or actual.dtype == expected.dtype, f"{label}dtype {actual.dtype} != expected {expected.dtype}"
    if expected.numel() == 0:
        return
    d_atol, d_rtol = tolerances(expected.dtype if expected.dtype in TOL else torch.float32, grad)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    a = actual.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    if scale:
        finite = e[torch.isfinite(e)]
        atol = atol * max(1.0, finite.abs().max().item() if finite.numel() else 1.0)
    diff = (a - e).abs()
    allowed = atol + rtol * e.abs()
    nan_mismatch = torch.isnan(a) != torch.isnan(e)
    both_nan = torch.isnan(a) & torch.isnan(e)
    same_inf = torch.isinf(e) & (a == e)
    excess = torch.where(both_nan | same_inf, torch.zeros_like(diff), diff - allowed)
    excess = torch.where(nan_mismatch | torch.isnan(excess), torch.full_like(diff, float("inf")), excess)
    bad = excess > 0
    if bool(bad.any()):
        flat = int(torch.argmax(excess).item())
        idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), e.shape))
        raise AssertionError(
            f"{label}{int(bad.sum())} of {e.numel()} elements differ beyond atol={atol:.3g}, rtol={rtol:.3g}; "
            f"worst at index {idx}: got {a[idx].item()!r}, expected {e[idx].item()!r}, "
            f"|diff| = {diff[idx].item():.3g} (max |diff| over all = {torch.nan_to_num(diff, nan=float('inf')).max().item():.3g})"
        )


def grads(outputs: torch.Tensor, inputs, grad_output: torch.Tensor):
    """Gradients of ``(outputs * grad_output).sum()`` w.r.t. ``inputs`` (None where unused)."""
    return torch.autograd.grad(outputs, inputs, grad_output, allow_unused=True, retain_graph=True)


def make_generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_no_worse(actual: torch.Tensor, reference_same_dtype: torch.Tensor, oracle64: torch.Tensor,
                    factor: float = 2.0, atol: float = 1e-6, name: str = "") -> None:
    """For ill-conditioned cases: ``actual`` may be at most ``factor`` times further from the
    float64 oracle than the reference computed in the same dtype (plus ``atol``)."""
    label = f"{name}: " if name else ""
    e = oracle64.detach().to("cpu", torch.float64)
    ref_err = (reference_same_dtype.detach().to("cpu", torch.float64) - e).abs().max().item()
    diff = (actual.detach().to("cpu", torch.float64) - e).abs()
    worst = int(torch.argmax(torch.nan_to_num(diff, nan=float("inf"))).item())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(worst), e.shape))
    bound = factor * ref_err + atol
    assert diff.max().item() <= bound, (
        f"{label}max error vs float64 oracle {diff.max().item():.3g} at index {idx} (got {actual.detach().flatten()[worst].item()!r}, "
        f"oracle {e.flatten()[worst].item()!r}) exceeds {factor} x the reference's own error {ref_err:.3g} + {atol:.3g}"
    )


# --- thin-plate splines for the TPS tests ------------------------------------------------------
TPS_KINDS = ("shared", "per_sample", "batch1")


def make_tps(kind: str, batch: int, dtype: torch.dtype, device, seed: int = 0, grid_size: int = 4,
             num_ctrl: int = 7):
    """A random, clearly non-identity fastlmk.TPS, built in float64 then cast.

    ``"shared"``: one ``grid_size``^2 lattice for the batch (Bc = 1, the kernels' fast path);
    ``"per_sample"``: ``num_ctrl`` random control points per sample (Bc = B, fitted with tps_fit);
    ``"batch1"``: a batch-1 spline that the ops broadcast over the input batch.
    """
    import fastlmk

    g = make_generator(seed)
    if kind in ("shared", "batch1"):
        t = fastlmk.random_tps(1 if kind == "batch1" else batch, grid_size=grid_size, rotation_std=10.0,
                               scale_std=0.1, translation_std=0.1, warp_std=0.03, extra_warp_prob=0.5,
                               generator=g, dtype=torch.float64)
    elif kind == "per_sample":
        src = torch.rand(batch, num_ctrl, 2, generator=g, dtype=torch.float64) * 2 - 1
        dst = src + 0.08 * torch.randn(batch, num_ctrl, 2, generator=g, dtype=torch.float64)
        t = fastlmk.tps_fit(src, dst)
    else:
        raise ValueError(kind)
    return fastlmk.TPS(t.ctrl.to(device, dtype), t.coef.to(device, dtype))


def gradcheck(fn, inputs, backend: str) -> bool:
    """torch.autograd.gradcheck; under the (slow) Triton interpreter in fast mode (one random
    projection of the Jacobian instead of one forward pass per input element)."""
    return torch.autograd.gradcheck(fn, inputs, fast_mode=(backend == "triton" and TRITON_SMALL_ONLY))


def pytest_report_header(config):
    import fastlmk

    cpu = torch.device("cpu")
    built = [b for b in ("cpu", "cuda", "triton") if backends.available(b, torch.device("cuda") if b == "cuda" else cpu)]
    return [f"fastlmk {fastlmk.__version__} from {os.path.dirname(fastlmk.__file__)}; backends runnable here: {built}"]
