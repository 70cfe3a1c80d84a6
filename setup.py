"""Build script for fastlmk's compiled kernels.

The kernels are framework-free (raw pointers in, raw pointers out), so nothing here imports
torch. Two extension modules:

* ``fastlmk._C_cpu``  - csrc/cpu/*.cpp + csrc/bindings_cpu.cpp, always built (OpenMP).
* ``fastlmk._C_cuda`` - csrc/cuda/*.cu + csrc/bindings_cuda.cpp, built when nvcc is found.

Compilation is driven by ninja (parallel, incremental): each extension gets a build.ninja in
``build/`` and ``ninja`` compiles and links it. Environment knobs:

* ``FASTLMK_CUDA=0|1``       force the CUDA module off / on (default: on iff nvcc is found).
* ``FASTLMK_CUDA_ARCHS``     the GPUs to compile for, e.g. ``"75;80;90"``: SASS for each, PTX of the
                             highest too. Unset: ``80;90`` (+ PTX compute_90) plus the GPUs of the
                             build machine (``nvidia-smi``), see fastlmk/_cuda_targets.py.
* ``FASTLMK_CPU_ARCH``       value for ``-march`` (default ``native``; use e.g. ``x86-64-v3``
                             when building a wheel for other machines).
* ``FASTLMK_DEBUG=1``        ``-O0 -g``.
* ``MAX_JOBS``               ninja parallelism.
"""

import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def _env_flag(name):
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be 0 or 1, got {value!r}")


def _find_nvcc():
    candidates = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]) / "bin" / "nvcc")
    which = shutil.which("nvcc")
    if which:
        candidates.append(Path(which))
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for c in candidates:
        if c.exists():
            return c.resolve()
    return None


def _find_cuda_home(nvcc):
    """The toolkit root (with include/cuda_runtime.h). nvcc may be a wrapper script or symlink
    outside the toolkit (e.g. /usr/local/bin/nvcc), so its parent is only one candidate."""
    candidates = [Path(os.environ[v]) for v in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(v)]
    candidates += [nvcc.parent.parent, Path("/usr/local/cuda")]
    for c in candidates:
        if (c / "include" / "cuda_runtime.h").exists():
            return c.resolve()
    raise SystemExit(f"fastlmk: cannot find the CUDA toolkit headers for {nvcc}; set CUDA_HOME")


def _find_ninja():
    try:
        import ninja  # the PyPI package ships the binary

        exe = Path(ninja.BIN_DIR) / "ninja"
        if exe.exists():
            return str(exe)
    except ImportError:
        pass
    exe = shutil.which("ninja")
    if exe is None:
        raise SystemExit("fastlmk: ninja is needed to build the kernels (pip install ninja)")
    return exe


class NinjaExtension(Extension):
    """An extension compiled by ninja; ``kind`` is "cpu" or "cuda" (then ``cuda_targets`` lists
    the GPU code to compile, e.g. ["sm_80", "sm_90", "compute_90"])."""

    def __init__(self, name, sources, kind, cuda_targets=None):
        super().__init__(name, sources=[str(s) for s in sources])
        self.kind = kind
        self.cuda_targets = cuda_targets


def _q(path):
    return shlex.quote(str(path)).replace("$", "$$").replace(":", "$:")


def _load_by_path(name):
    """fastlmk/<name>.py, loaded by path (importing the package would import torch)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_fastlmk_{name}", ROOT / "fastlmk" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build_info():
    return _load_by_path("_build_info")


def _cuda_targets(nvcc):
    """The GPU code to compile (fastlmk/_cuda_targets.py: FASTLMK_CUDA_ARCHS, else the defaults
    plus this machine's GPUs), checked against what ``nvcc`` can compile; printed."""
    ct = _load_by_path("_cuda_targets")
    try:
        targets, why = ct.choose(os.environ.get(ct.ENV), ct.detect_gpu_archs(), ct.nvcc_archs(nvcc))
    except ValueError as e:
        raise SystemExit(f"fastlmk: {e}") from None
    print(f"fastlmk: CUDA code for {ct.describe(targets)} ({why})", file=sys.stderr)
    return targets


class NinjaBuildExt(build_ext):
    def run(self):
        super().run()
        # Record which csrc/ the modules were compiled from, next to them: a source checkout
        # without compiled modules borrows an installed build's only if it matches (see
        # fastlmk/_source_tree.py). build_lib feeds the wheel; in place feeds the checkout.
        info = _build_info()
        dirs = {Path(self.build_lib).resolve() / "fastlmk"}
        if self.inplace:
            dirs.add(Path(self.get_ext_fullpath("fastlmk._C_cpu")).resolve().parent)
        for d in dirs:
            info.write(d, ROOT / "csrc")

    def build_extension(self, ext):
        import pybind11

        debug = _env_flag("FASTLMK_DEBUG") or False
        opt = ["-O0", "-g"] if debug else ["-O3"]
        march = os.environ.get("FASTLMK_CPU_ARCH", "native")
        py_inc = sysconfig.get_paths()["include"]
        includes = [f"-I{ROOT / 'csrc'}", f"-I{pybind11.get_include()}", f"-I{py_inc}"]
        cxxflags = opt + ["-std=c++17", "-fPIC", "-fvisibility=hidden", "-fopenmp",
                          "-fno-math-errno", "-fno-trapping-math", "-Wall", "-Wno-unknown-pragmas"]
        if march:
            cxxflags.append(f"-march={march}")
        ldflags = ["-shared", "-fopenmp"]
        libs = []

        build_dir = Path(self.build_temp).resolve() / ext.name.replace(".", "_")
        build_dir.mkdir(parents=True, exist_ok=True)
        out = Path(self.get_ext_fullpath(ext.name)).resolve()
        out.parent.mkdir(parents=True, exist_ok=True)

        lines = [
            "ninja_required_version = 1.3",
            f"cxx = {os.environ.get('CXX', 'c++')}",
            f"cxxflags = {' '.join(_q(f) for f in includes + cxxflags)}",
            "rule cxx",
            "  command = $cxx -MMD -MF $out.d $cxxflags -c $in -o $out",
            "  depfile = $out.d",
            "  deps = gcc",
            "  description = CXX $in",
        ]
        if ext.kind == "cuda":
            nvcc = _find_nvcc()
            cuda_home = _find_cuda_home(nvcc)
            gencode = _load_by_path("_cuda_targets").gencode_flags(ext.cuda_targets)
            nvccflags = opt + ["-std=c++17", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
                               "-Xcompiler", "-Wall", "--expt-relaxed-constexpr",
                               "-lineinfo", f"-I{ROOT / 'csrc'}", f"-I{cuda_home / 'include'}"] + gencode
            lines += [
                f"nvcc = {_q(nvcc)}",
                f"nvccflags = {' '.join(_q(f) for f in nvccflags)}",
                "rule nvcc",
                "  command = $nvcc -MD -MF $out.d $nvccflags -c $in -o $out",
                "  depfile = $out.d",
                "  deps = gcc",
                "  description = NVCC $in",
            ]
            includes.append(f"-I{cuda_home / 'include'}")
            # the targets, for the module's `cuda_targets` (the run-time check of fastlmk.ops.backends)
            cxxflags.append(f'-DFASTLMK_CUDA_TARGETS="{";".join(ext.cuda_targets)}"')
            lines[2] = f"cxxflags = {' '.join(_q(f) for f in includes + cxxflags)}"
            # cudart is linked statically: the module then needs nothing but the driver.
            libdirs = [cuda_home / "lib64", cuda_home / "lib", cuda_home / "targets" / "x86_64-linux" / "lib"]
            libs = [f"-L{d}" for d in libdirs if d.exists()] + ["-lcudart_static", "-ldl", "-lrt", "-lpthread"]

        lines += [
            f"ldflags = {' '.join(_q(f) for f in ldflags + libs)}",
            "rule link",
            "  command = $cxx $in $ldflags -o $out",
            "  description = LINK $out",
        ]
        objects = []
        for src in ext.sources:
            src = (ROOT / src).resolve()
            obj = build_dir / (src.relative_to(ROOT).as_posix().replace("/", "_") + ".o")
            rule = "nvcc" if src.suffix == ".cu" else "cxx"
            lines.append(f"build {_q(obj)}: {rule} {_q(src)}")
            objects.append(obj)
        lines.append(f"build {_q(out)}: link {' '.join(_q(o) for o in objects)}")
        lines.append(f"default {_q(out)}")
        (build_dir / "build.ninja").write_text("\n".join(lines) + "\n")

        cmd = [_find_ninja(), "-C", str(build_dir)]
        if os.environ.get("MAX_JOBS"):
            cmd += ["-j", os.environ["MAX_JOBS"]]
        print(f"fastlmk: building {ext.name} with ninja in {build_dir}", flush=True)
        subprocess.run(cmd, check=True)


def _extensions():
    cpu_sources = sorted((ROOT / "csrc" / "cpu").glob("*.cpp")) + [ROOT / "csrc" / "bindings_cpu.cpp"]
    exts = [NinjaExtension("fastlmk._C_cpu", [p.relative_to(ROOT) for p in cpu_sources], "cpu")]

    want_cuda = _env_flag("FASTLMK_CUDA")
    nvcc = _find_nvcc()
    cu_sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    if want_cuda is None:
        want_cuda = nvcc is not None and bool(cu_sources)
    if want_cuda:
        if nvcc is None:
            raise SystemExit("fastlmk: FASTLMK_CUDA=1 but nvcc was not found (set CUDA_HOME)")
        if not cu_sources:
            raise SystemExit("fastlmk: FASTLMK_CUDA=1 but csrc/cuda has no .cu sources")
        sources = cu_sources + [ROOT / "csrc" / "bindings_cuda.cpp"]
        print(f"fastlmk: building the CUDA module with {nvcc}", file=sys.stderr)
        exts.append(NinjaExtension("fastlmk._C_cuda", [p.relative_to(ROOT) for p in sources], "cuda",
                                   cuda_targets=_cuda_targets(nvcc)))
    else:
        print("fastlmk: not building the CUDA module (no nvcc, or FASTLMK_CUDA=0)", file=sys.stderr)
    return exts


setup(ext_modules=_extensions(), cmdclass={"build_ext": NinjaBuildExt})
