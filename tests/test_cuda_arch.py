"""Which GPUs the CUDA module is built for (setup.py, fastlmk._cuda_targets) and what happens on a
GPU it holds no code for (fastlmk.ops.backends): "auto" falls back with one warning naming the
compute capability and the rebuild command, an explicit "cuda" raises the same. All on the CPU:
nvidia-smi, nvcc, the device's capability and the compiled module's targets are stubbed."""

import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import pytest
import torch

from fastlmk import _cuda_targets as ct
from fastlmk.ops import backends

OPS = ("soft_argmax", "gaussian_heatmaps", "tps_warp", "tps_transform_points")
NVCC_13 = {"75", "80", "86", "87", "88", "89", "90", "100", "103", "110", "120", "121"}  # `nvcc --list-gpu-code`
REPO = Path(__file__).resolve().parents[1]


def _run_returning(stdout="", returncode=0, raises=None):
    """A stand-in for subprocess.run: records the command, returns ``stdout`` (or raises)."""
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        if raises is not None:
            raise raises
        return subprocess.CompletedProcess(cmd, returncode, stdout=stdout, stderr="")

    run.calls = calls
    return run


# ------------------------------------------------------------------------------- build time
@pytest.mark.parametrize("value, archs", [
    ("75;80", ["75", "80"]),
    ("90,80 ; 75;", ["75", "80", "90"]),   # commas, spaces, a trailing separator; sorted
    ("7.5;8.0;8.0", ["75", "80"]),         # TORCH_CUDA_ARCH_LIST spelling, duplicates dropped
    ("120;100;90", ["90", "100", "120"]),  # sorted by capability, not as strings
])
def test_parse_archs(value, archs):
    assert ct.parse_archs(value) == archs


@pytest.mark.parametrize("value", ["sm_75", "8.x", "7.5+PTX", ";", "native"])
def test_parse_archs_rejects_other_spellings(value):
    with pytest.raises(ValueError, match=r"^FASTLMK_CUDA_ARCHS "):
        ct.parse_archs(value)


@pytest.mark.parametrize("stub, archs", [
    (_run_returning("7.5\n"), ["75"]),                                # a T4
    (_run_returning("8.6\n7.0\n8.6\n"), ["70", "86"]),                # two kinds of GPU, one twice
    (_run_returning("10.0\n12.1\n"), ["100", "121"]),
    (_run_returning("[N/A]\n"), []),                                  # field not reported
    (_run_returning("", returncode=9), []),                           # driver present, no GPU / too old
    (_run_returning(raises=FileNotFoundError("nvidia-smi")), []),    # no driver
    (_run_returning(raises=subprocess.TimeoutExpired("nvidia-smi", 30)), []),
])
def test_detect_gpu_archs_asks_nvidia_smi_and_fails_quietly(stub, archs):
    assert ct.detect_gpu_archs(run=stub) == archs
    assert stub.calls == [["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"]]


def test_nvcc_archs():
    stub = _run_returning("sm_75\nsm_80\nsm_90\nsm_100\n")
    assert ct.nvcc_archs("/opt/cuda/bin/nvcc", run=stub) == {"75", "80", "90", "100"}
    assert stub.calls == [["/opt/cuda/bin/nvcc", "--list-gpu-code"]]
    assert ct.nvcc_archs("nvcc", run=_run_returning(raises=FileNotFoundError("nvcc"))) is None
    assert ct.nvcc_archs("nvcc", run=_run_returning("", returncode=1)) is None


@pytest.mark.parametrize("env, detected, targets", [
    (None, [], ["sm_80", "sm_90", "compute_90"]),                          # no GPU: the defaults, as before
    ("", [], ["sm_80", "sm_90", "compute_90"]),                            # set but empty = unset
    (None, ["75"], ["sm_75", "sm_80", "sm_90", "compute_90"]),             # a T4 build machine
    (None, ["86", "90"], ["sm_80", "sm_86", "sm_90", "compute_90"]),
    (None, ["120"], ["sm_80", "sm_90", "sm_120", "compute_90"]),           # PTX stays the defaults'
    (None, ["70"], ["sm_80", "sm_90", "compute_90"]),                      # V100: nvcc 13 cannot, left out
    ("75", ["90"], ["sm_75", "compute_75"]),                               # the variable wins, no detection
    ("75;86", [], ["sm_75", "sm_86", "compute_86"]),
])
def test_choose_targets(env, detected, targets):
    chosen, why = ct.choose(env, detected, NVCC_13)
    assert chosen == targets
    if env:
        assert why == f"FASTLMK_CUDA_ARCHS={env!r}"
    else:
        assert why.startswith("FASTLMK_CUDA_ARCHS unset: the defaults 80;90")
        assert ("this machine's GPUs" in why) == any(a in NVCC_13 for a in detected)
        assert ("left out" in why) == ("70" in detected)


def test_choose_rejects_an_explicit_arch_nvcc_cannot_build():
    with pytest.raises(ValueError, match=r"^FASTLMK_CUDA_ARCHS='70;80': this nvcc cannot compile for sm_70 "
                                         r"\(it supports sm_75, "):
        ct.choose("70;80", [], NVCC_13)
    assert ct.choose("70;80", [], None)[0] == ["sm_70", "sm_80", "compute_80"]  # nvcc could not say: try


def test_gencode_flags():
    assert ct.gencode_flags(["sm_75", "sm_90", "compute_90"]) == [
        "-gencode", "arch=compute_75,code=sm_75", "-gencode", "arch=compute_90,code=sm_90",
        "-gencode", "arch=compute_90,code=compute_90"]


def _fake_tools(tmp_path, gpu_caps):
    """A fake CUDA toolkit (bin/nvcc answering --list-gpu-code like nvcc 13) and a fake
    nvidia-smi printing ``gpu_caps``; returns the environment for setup.py."""
    bin_dir = tmp_path / "cuda" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "nvcc").write_text("#!/bin/sh\n" + "".join(f"echo sm_{a}\n" for a in sorted(NVCC_13, key=ct.arch_key)))
    smi_dir = tmp_path / "smi"
    smi_dir.mkdir()
    (smi_dir / "nvidia-smi").write_text("#!/bin/sh\n" + "".join(f"echo {c}\n" for c in gpu_caps))
    for f in (bin_dir / "nvcc", smi_dir / "nvidia-smi"):
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("FASTLMK_CUDA_ARCHS", "CUDA_PATH")}
    env.update(CUDA_HOME=str(tmp_path / "cuda"), FASTLMK_CUDA="1", PATH=f"{smi_dir}{os.pathsep}{env['PATH']}")
    return env


def _setuptools_major():
    try:
        import setuptools
    except ImportError:
        return 0
    return int(setuptools.__version__.split(".")[0])


@pytest.mark.skipif(not (REPO / "setup.py").is_file(), reason="needs the source checkout's setup.py")
@pytest.mark.skipif(_setuptools_major() < 77, reason="setup.py needs setuptools >= 77 ([build-system] of pyproject.toml)")
@pytest.mark.parametrize("arch_env, expected", [
    (None, "fastlmk: CUDA code for sm_75, sm_80, sm_90 and PTX compute_90 (FASTLMK_CUDA_ARCHS unset: "
           "the defaults 80;90 plus this machine's GPUs (7.5))"),
    ("86", "fastlmk: CUDA code for sm_86 and PTX compute_86 (FASTLMK_CUDA_ARCHS='86')"),
    ("70", "fastlmk: FASTLMK_CUDA_ARCHS='70': this nvcc cannot compile for sm_70"),
    ("sm_75", "fastlmk: FASTLMK_CUDA_ARCHS must list compute capabilities"),
])
def test_setup_py_builds_for_the_machines_gpus(tmp_path, arch_env, expected):
    """setup.py itself, as `pip install .` runs it, on a build machine with a T4 (stubbed
    nvidia-smi and nvcc; `--name` stops before anything is compiled)."""
    env = _fake_tools(tmp_path, ["7.5"])
    if arch_env is not None:
        env["FASTLMK_CUDA_ARCHS"] = arch_env
    res = subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    assert expected in res.stderr, res.stderr
    failed = arch_env in ("70", "sm_75")
    assert (res.returncode != 0) == failed, res.stderr
    if not failed:
        assert res.stdout.strip().splitlines()[-1] == "fastlmk"


# --------------------------------------------------------------------------------- run time
@pytest.mark.parametrize("targets, capability, runs", [
    ("sm_80;sm_90;compute_90", (9, 0), True),
    ("sm_80;sm_90;compute_90", (8, 0), True),
    ("sm_80;sm_90;compute_90", (8, 6), True),     # SASS runs on a higher minor of its major
    ("sm_80;sm_90;compute_90", (8, 9), True),
    ("sm_80;sm_90;compute_90", (10, 0), True),    # by the PTX (JIT)
    ("sm_80;sm_90;compute_90", (12, 0), True),
    ("sm_80;sm_90;compute_90", (7, 5), False),    # T4
    ("sm_80;sm_90;compute_90", (7, 0), False),    # V100
    ("sm_80", (9, 0), False),                     # SASS never runs on another major
    ("sm_86", (8, 0), False),                     # ... nor on a lower minor
    ("sm_75;compute_75", (7, 5), True),
    ("sm_75;compute_75", (8, 6), True),
    ("sm_75;compute_75", (7, 0), False),
    ("sm_100;compute_100", (9, 0), False),
])
def test_runs_on(targets, capability, runs):
    assert ct.runs_on(targets, capability) is runs
    assert ct.runs_on(targets.split(";"), capability) is runs


def _kernel_module(**attrs):
    """A stand-in for a compiled module that has every op's kernels."""
    mod = types.SimpleNamespace(**attrs)
    for op in OPS:
        setattr(mod, f"{op}_forward", lambda *a: None)
        setattr(mod, f"{op}_backward", lambda *a: None)
    return mod


@pytest.fixture
def gpu(monkeypatch):
    """``gpu(capability, targets, triton=True)``: pretend torch sees one GPU of ``capability``,
    fastlmk._C_cuda was compiled for ``targets`` (None: a module that does not say), and the
    Triton kernels are (or are not) installed."""
    monkeypatch.delenv("FASTLMK_BACKEND", raising=False)
    monkeypatch.setattr(backends, "_warned", set())
    monkeypatch.setattr(backends, "_cuda_arch_checked", {})
    monkeypatch.setattr(backends, "_has_kernels_cache", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def setup(capability, targets, triton=True):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        cuda = _kernel_module() if targets is None else _kernel_module(cuda_targets=targets)
        monkeypatch.setitem(backends._modules, "fastlmk._C_cuda", cuda)
        monkeypatch.setitem(backends._modules, "triton", types.SimpleNamespace() if triton else None)
        monkeypatch.setitem(backends._modules, "fastlmk.ops.triton", _kernel_module() if triton else None)

    return setup


def _resolve_all(backend="auto", dtypes=(torch.float32,)):
    """Resolve every op for a CUDA tensor; returns ({op: backend}, the RuntimeWarnings given)."""
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        chosen = {(op, dt): backends.resolve(op, backend, torch.device("cuda"), dt) for op in OPS for dt in dtypes}
    return chosen, [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]


@pytest.mark.parametrize("capability", [(8, 0), (8, 6), (9, 0), (10, 0), (12, 0)])
def test_auto_uses_the_cuda_kernels_where_the_module_has_code(gpu, capability):
    gpu(capability, "sm_80;sm_90;compute_90")
    chosen, warned = _resolve_all()
    assert set(chosen.values()) == {"cuda"} and warned == []
    assert backends.resolve("tps_warp", "cuda", torch.device("cuda:0"), torch.float16) == "cuda"


def test_auto_falls_back_to_triton_with_one_warning(gpu):
    """A T4 (7.5) and the default build: every op runs Triton; ONE warning in all, naming the
    capability and the rebuild command."""
    gpu((7, 5), "sm_80;sm_90;compute_90")
    chosen, warned = _resolve_all(dtypes=(torch.float32, torch.float16))
    assert set(chosen.values()) == {"triton"}
    assert len(warned) == 1, warned
    assert warned[0] == (
        "fastlmk: this installation's CUDA kernels were compiled for sm_80, sm_90 and PTX compute_90, none of "
        "which runs on cuda:0 (compute capability 7.5); rebuild them for it from the fastlmk source with "
        "`FASTLMK_CUDA_ARCHS=\"75\" pip install .`. Until then backend 'auto' runs the Triton kernels on this GPU.")
    _, again = _resolve_all()
    assert again == [], "the warning is given once"


def test_auto_falls_back_to_the_reference_without_triton(gpu):
    """A V100 (7.0), no triton: the reference, with one warning (not one per op and dtype)."""
    gpu((7, 0), "sm_80;sm_90;compute_90", triton=False)
    chosen, warned = _resolve_all(dtypes=(torch.float32, torch.float64))
    assert set(chosen.values()) == {"reference"}
    assert len(warned) == 1, warned
    assert "compute capability 7.0" in warned[0] and 'FASTLMK_CUDA_ARCHS="70" pip install .' in warned[0]
    assert warned[0].endswith("runs the (slower) pure-PyTorch reference ops on this GPU.")


@pytest.mark.parametrize("op", OPS)
def test_explicit_cuda_on_a_gpu_without_code_raises(gpu, op):
    gpu((7, 5), "sm_80;sm_90;compute_90")
    device = torch.device("cuda")
    assert not backends.available("cuda", device, op)
    with pytest.raises(RuntimeError, match=rf"^fastlmk\.{op}: this installation's CUDA kernels were compiled for "
                                           r"sm_80, sm_90 and PTX compute_90, none of which runs on cuda:0 \(compute "
                                           r"capability 7\.5\); .*`FASTLMK_CUDA_ARCHS=\"75\" pip install \.`$"):
        backends.resolve(op, "cuda", device, torch.float32)


def test_the_environment_override_to_cuda_raises_too(gpu, monkeypatch):
    gpu((7, 5), "sm_80;sm_90;compute_90")
    monkeypatch.setenv("FASTLMK_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match=r"compute capability 7\.5"):
        backends.resolve("soft_argmax", "auto", torch.device("cuda"), torch.float32)


def test_a_build_for_the_gpu_runs_there(gpu):
    """After `FASTLMK_CUDA_ARCHS="75" pip install .` the T4 gets the CUDA kernels, no warning."""
    gpu((7, 5), "sm_75;compute_75")
    chosen, warned = _resolve_all()
    assert set(chosen.values()) == {"cuda"} and warned == []


def test_the_check_is_per_device(gpu, monkeypatch):
    """Two GPUs, an H100 (cuda:0) and a T4 (cuda:1): the default build runs on the first only."""
    gpu((9, 0), "sm_80;sm_90;compute_90")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: {0: (9, 0), 1: (7, 5)}[device])
    assert backends.available("cuda", torch.device("cuda:0"))
    assert "cuda:1 (compute capability 7.5)" in backends.why_unavailable("cuda", torch.device("cuda:1"))


def test_a_module_that_does_not_say_is_trusted(gpu):
    """A module built before the targets were recorded: no check (as before), no warning."""
    gpu((7, 5), None)
    chosen, warned = _resolve_all()
    assert set(chosen.values()) == {"cuda"} and warned == []


def test_the_built_module_records_its_targets():
    """The compiled fastlmk._C_cuda (where this installation has one) says what it holds, in the
    form the run-time check reads."""
    mod = backends.module("cuda")
    if mod is None:
        pytest.skip("no compiled CUDA module here")
    targets = getattr(mod, "cuda_targets", None)
    assert isinstance(targets, str) and targets, "setup.py did not compile the targets into the module"
    items = targets.split(";")
    assert all(re.fullmatch(r"(sm|compute)_\d{2,3}", t) for t in items), targets
    assert any(t.startswith("sm_") for t in items) and any(t.startswith("compute_") for t in items), targets
