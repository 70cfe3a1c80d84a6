"""Backend resolution (fastlmk.ops.backends): "auto", the fallback warning, FASTLMK_BACKEND, and the
errors for backends that cannot run here."""

import re
import warnings

import pytest
import torch

import fastlmk
from fastlmk import reference
from fastlmk.ops import backends
from conftest import assert_close, make_generator, make_tps, require_kernel

OPS = ("soft_argmax", "gaussian_heatmaps", "tps_warp", "tps_transform_points")


def _call(op, backend="auto", dtype=torch.float32, device="cpu", requires_grad=False):
    """Run the public op on small inputs; returns (output, the differentiable input)."""
    g = make_generator(0)
    if op == "soft_argmax":
        x = torch.randn(2, 3, 5, 4, generator=g).to(device, dtype).requires_grad_(requires_grad)
        return fastlmk.soft_argmax(x, 0.5, backend=backend), x
    if op == "gaussian_heatmaps":
        x = (torch.rand(2, 3, 2, generator=g) * 2 - 1).to(device, dtype).requires_grad_(requires_grad)
        return fastlmk.gaussian_heatmaps(x, 5, 4, 0.2, backend=backend), x
    tps = make_tps("shared", 2, dtype if dtype in (torch.float32, torch.float64) else torch.float32, device)
    if op == "tps_warp":
        x = torch.randn(2, 2, 5, 4, generator=g).to(device, dtype).requires_grad_(requires_grad)
        return fastlmk.tps_warp(x, tps, backend=backend), x
    x = (torch.rand(2, 6, 2, generator=g) * 2 - 1).to(device, dtype).requires_grad_(requires_grad)
    return fastlmk.tps_transform_points(x, tps, backend=backend), x


@pytest.fixture
def fresh_warnings(monkeypatch):
    """Forget which fallback warnings were already given, and clear FASTLMK_BACKEND."""
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.delenv("FASTLMK_BACKEND", raising=False)


@pytest.fixture
def cpu_only_build(monkeypatch):
    """Pretend fastlmk was installed without its CUDA module."""
    monkeypatch.setitem(backends._modules, "fastlmk._C_cuda", None)
    monkeypatch.setitem(backends._errors, "fastlmk._C_cuda", ImportError("No module named 'fastlmk._C_cuda'"))


def test_backend_names():
    assert fastlmk.BACKENDS == ("auto", "reference", "cpu", "cuda", "triton")


@pytest.mark.parametrize("op", OPS)
def test_auto_on_cpu_uses_the_cpu_kernel(op, fresh_warnings):
    require_kernel("cpu", op)
    assert backends.resolve(op, "auto", torch.device("cpu"), torch.float32) == "cpu"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning when the kernel exists
        out, _ = _call(op, "auto")
    expected, _ = _call(op, "cpu")
    assert torch.equal(out, expected)


@pytest.mark.parametrize("op", OPS)
def test_auto_falls_back_to_reference_with_one_warning(op, fresh_warnings, monkeypatch):
    """No compiled CPU module: "auto" runs the reference (forward and backward) and warns once
    per (op, device type, dtype)."""
    monkeypatch.setitem(backends._modules, "fastlmk._C_cpu", None)
    with pytest.warns(RuntimeWarning, match=rf"fastlmk\.{op}: no compiled kernel for cpu .*falling back"):
        out, x = _call(op, "auto", dtype=torch.float64, requires_grad=True)
    ref, xr = _call(op, "reference", dtype=torch.float64, requires_grad=True)
    assert_close(out, ref, atol=0, rtol=0)
    out.sum().backward()
    ref.sum().backward()
    assert_close(x.grad, xr.grad, atol=0, rtol=0)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _call(op, "auto", dtype=torch.float64)
    assert not [m for m in w if issubclass(m.category, RuntimeWarning)], "the fallback warning must be given once"
    with pytest.warns(RuntimeWarning, match="float32"):  # a new dtype warns again
        _call(op, "auto", dtype=torch.float32)


@pytest.mark.parametrize("op", ("soft_argmax", "gaussian_heatmaps"))
def test_auto_falls_back_for_dtypes_without_a_cpu_kernel(op, fresh_warnings):
    """bfloat16 has no CPU kernel: "auto" runs the reference and says so."""
    with pytest.warns(RuntimeWarning, match=r"dtype torch\.bfloat16"):
        out, _ = _call(op, "auto", dtype=torch.bfloat16)
    ref, _ = _call(op, "reference", dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, ref)


def test_environment_override(fresh_warnings, monkeypatch):
    calls = []
    real = reference.soft_argmax

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(reference, "soft_argmax", spy)
    monkeypatch.setenv("FASTLMK_BACKEND", "reference")
    cpu = torch.device("cpu")
    for op in OPS:
        assert backends.resolve(op, "auto", cpu, torch.float32) == "reference"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a chosen backend is no fallback: no warning
        _call("soft_argmax", "auto")
    assert calls == [1], "FASTLMK_BACKEND=reference must route 'auto' to the reference"
    # an explicit backend= wins over the environment
    if backends.available("cpu", cpu):
        _call("soft_argmax", "cpu")
        assert calls == [1]
        monkeypatch.setenv("FASTLMK_BACKEND", "cpu")
        assert backends.resolve("soft_argmax", "auto", cpu, torch.float32) == "cpu"


@pytest.mark.parametrize("value", ["bogus", "auto", "CPU"])
def test_environment_override_rejects_bad_values(value, monkeypatch):
    monkeypatch.setenv("FASTLMK_BACKEND", value)
    with pytest.raises(ValueError, match=rf"FASTLMK_BACKEND must be one of .*{value!r}"):
        _call("soft_argmax", "auto")


def test_environment_override_to_an_unavailable_backend_raises(monkeypatch, cpu_only_build):
    monkeypatch.setenv("FASTLMK_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match=r"fastlmk\.gaussian_heatmaps: the 'cuda' backend needs CUDA tensors"):
        _call("gaussian_heatmaps", "auto")


@pytest.mark.parametrize("op", OPS)
def test_unknown_backend(op):
    with pytest.raises(ValueError, match=rf"fastlmk\.{op}: backend must be one of .*'gpu'"):
        _call(op, "gpu")


@pytest.mark.parametrize("op", OPS)
def test_cuda_requested_in_a_cpu_only_build(op, cpu_only_build):
    # on CPU tensors: the reason is the device
    with pytest.raises(RuntimeError, match=rf"fastlmk\.{op}: the 'cuda' backend needs CUDA tensors, got a tensor on cpu"):
        _call(op, "cuda")
    # on CUDA tensors (resolution only, so this runs without a GPU): the reason is the build
    assert not backends.available("cuda", torch.device("cuda"))
    with pytest.raises(RuntimeError, match=rf"fastlmk\.{op}: fastlmk was built without CUDA kernels .*nvcc"):
        backends.resolve(op, "cuda", torch.device("cuda"), torch.float32)


def test_auto_on_a_gpu_in_a_cpu_only_build(fresh_warnings, cpu_only_build, monkeypatch):
    """A GPU, no CUDA module, no triton (stubbed, so no GPU needed): the reference with the
    per-op fallback warning (the GPU-architecture warning of tests/test_cuda_arch.py is for a
    CUDA module that exists but holds no code for the GPU)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(backends._modules, "triton", None)
    with pytest.warns(RuntimeWarning, match=r"^fastlmk\.soft_argmax: no compiled kernel for cuda tensors") as w:
        assert backends.resolve("soft_argmax", "auto", torch.device("cuda"), torch.float32) == "reference"
    assert len(w) == 1 and "compute capability" not in str(w[0].message)


@pytest.mark.parametrize("op", OPS)
def test_triton_on_cpu_without_the_interpreter(op, monkeypatch):
    # import fastlmk.ops.triton (and triton) first, with the interpreter as the session set it: the
    # interpreter is chosen when the kernels are decorated, at import
    module = backends.module("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not backends.available("triton", torch.device("cpu"))
    reason = "TRITON_INTERPRET=1" if module is not None else "needs the triton package"
    with pytest.raises(RuntimeError, match=rf"fastlmk\.{op}: the 'triton' backend .*{re.escape(reason)}"):
        _call(op, "triton")


@pytest.mark.parametrize("op", ("soft_argmax", "tps_warp"))
def test_explicit_backend_with_an_unsupported_dtype(op):
    require_kernel("cpu", op)
    with pytest.raises(TypeError, match=rf"fastlmk\.{op}: the 'cpu' backend supports dtypes .*bfloat16.*backend='reference'"):
        _call(op, "cpu", dtype=torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("op", OPS)
def test_auto_on_cuda_follows_the_preference_table(op, fresh_warnings):
    dev = torch.device("cuda")
    avail = [b for b in backends.AUTO_CUDA[op] if backends.available(b, dev)]
    if not avail:
        pytest.skip(f"no GPU kernel of {op} in this build")
    assert backends.resolve(op, "auto", dev, torch.float32) == avail[0]
    out, _ = _call(op, "auto", device="cuda")
    ref, _ = _call(op, "reference", device="cuda")
    assert_close(out, ref, atol=1e-4, rtol=1e-3)


# ------------------------------------------------------------------ source checkout vs install
def _fake_checkout_and_install(tmp_path, digest_matches=True, installed=True, in_place=False):
    """tmp_path/repo: a checkout (setup.py, csrc/, fastlmk/); tmp_path/site/fastlmk: an install
    whose _C_cpu is an empty stand-in file and whose _build.json records csrc's digest (or not)."""
    from importlib.machinery import EXTENSION_SUFFIXES

    from fastlmk import _build_info

    repo = tmp_path / "repo"
    (repo / "csrc" / "cpu").mkdir(parents=True)
    (repo / "csrc" / "cpu" / "op.cpp").write_text("int f() { return 1; }\n")
    (repo / "setup.py").write_text("")
    (repo / "fastlmk").mkdir()
    if in_place:
        (repo / "fastlmk" / f"_C_cpu{EXTENSION_SUFFIXES[0]}").write_text("")
    site = tmp_path / "site"
    if installed:
        (site / "fastlmk").mkdir(parents=True)
        (site / "fastlmk" / f"_C_cpu{EXTENSION_SUFFIXES[0]}").write_text("")
        _build_info.write(site / "fastlmk", repo / "csrc")
        if not digest_matches:
            (repo / "csrc" / "cpu" / "op.cpp").write_text("int f() { return 2; }\n")  # edited after the install
    return repo, site


@pytest.mark.parametrize("case", ["matching install", "stale install", "no install", "built in place"])
def test_source_checkout_borrows_only_a_matching_installed_build(tmp_path, monkeypatch, case):
    """`python -m fastlmk.train` from the repository root imports the checkout's fastlmk/: it
    takes the compiled modules from an installed build compiled from the same csrc/, and
    otherwise says why not and what to run."""
    from fastlmk import _source_tree

    repo, site = _fake_checkout_and_install(tmp_path, digest_matches=case != "stale install",
                                            installed=case != "no install", in_place=case == "built in place")
    monkeypatch.setattr(_source_tree, "status", None)
    monkeypatch.setattr("sys.path", [str(repo), str(site)])
    path = [str(repo / "fastlmk")]
    _source_tree.attach_installed_kernels(path)
    if case == "matching install":
        assert path == [str(repo / "fastlmk"), str((site / "fastlmk").resolve())]
        assert "with the compiled modules of the installed build" in _source_tree.status
        return
    assert path == [str(repo / "fastlmk")]
    if case == "built in place":
        assert _source_tree.status is None
        return
    assert "which has no compiled modules" in _source_tree.status and "pip install ." in _source_tree.status
    assert ("other C++/CUDA sources" if case == "stale install" else "no installed build") in _source_tree.status


def test_the_build_records_its_sources():
    """The imported fastlmk's compiled modules sit next to a _build.json naming their csrc/ (only
    checked where this is the installed package or an in-place build, and csrc/ is at hand)."""
    import pathlib

    from fastlmk import _build_info

    mod = backends.module("cpu")
    if mod is None:
        pytest.skip("no compiled CPU module here")
    recorded = _build_info.read(pathlib.Path(mod.__file__).parent)
    assert recorded is not None and len(recorded) == 64, "setup.py did not write _build.json next to the modules"
