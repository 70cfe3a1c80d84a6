"""Run fastlmk's CUDA kernels on the CPU under tools/cuda_emu and compare them with the reference.

There is no GPU on the development machines; this compiles csrc/cuda/*.cu + csrc/bindings_cuda.cpp
with g++ against the emulation headers in tools/cuda_emu/shim (each CUDA thread is an OS thread;
barriers, warp shuffles and atomics are real) and AddressSanitizer, then checks every kernel,
forward and backward, against fastlmk.reference over awkward shapes and all four dtypes.
It checks the kernels' logic (indexing, bounds, reductions, barriers); it says nothing about
speed or about nvcc-specific behaviour.

    python tools/cuda_emu/check.py            # builds into tools/cuda_emu/build, then checks
    python tools/cuda_emu/check.py soft_argmax  # only the checks whose name contains a filter

(The script re-executes itself with libasan preloaded.)
"""

from __future__ import annotations

import math
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUILD = HERE / "build"
SO = BUILD / ("_C_cuda" + sysconfig.get_config_var("EXT_SUFFIX"))


def build():
    import pybind11

    srcs = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    deps = srcs + sorted((ROOT / "csrc").rglob("*.h")) + sorted((ROOT / "csrc").rglob("*.cuh")) + \
        sorted((HERE / "shim").glob("*.h")) + [ROOT / "csrc" / "bindings_cuda.cpp"]
    if SO.exists() and SO.stat().st_mtime > max(p.stat().st_mtime for p in deps):
        return
    BUILD.mkdir(exist_ok=True)
    cmd = ["g++", "-std=c++20", "-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address,undefined",
           "-fno-sanitize-recover=undefined", "-fPIC", "-shared", "-pthread", "-DFASTLMK_CUDA_EMULATION",
           f"-I{HERE / 'shim'}", f"-I{ROOT / 'csrc'}", f"-I{pybind11.get_include()}",
           f"-I{sysconfig.get_paths()['include']}", "-x", "c++", *map(str, srcs), "-x", "none",
           str(ROOT / "csrc" / "bindings_cuda.cpp"), "-o", str(SO)]
    print("cuda_emu: building", SO.name, flush=True)
    subprocess.run(cmd, check=True)


def reexec_with_asan():
    if os.environ.get("_FASTLMK_EMU_ASAN"):
        return
    libasan = subprocess.run(["g++", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    libubsan = subprocess.run(["g++", "-print-file-name=libubsan.so"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, _FASTLMK_EMU_ASAN="1", LD_PRELOAD=f"{libasan}:{libubsan}",
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1", PYTHONPATH=str(ROOT))
    os.execvpe(sys.executable, [sys.executable, *sys.argv], env)


if __name__ == "__main__":
    build()
    reexec_with_asan()

import torch  # noqa: E402

from fastlmk import reference  # noqa: E402
from fastlmk.ops._cpp import CppKernels  # noqa: E402
from fastlmk.ops._interface import acc_dtype  # noqa: E402

torch.manual_seed(0)
FAILURES = []
CHECKS = 0
WORST = {}  # (check, dtype) -> worst error in units of the dtype's base tolerance
TOL = {torch.float64: 1e-9, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 1e-1}


def load():
    spec = importlib.util.spec_from_file_location("_C_cuda", SO)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # "cpu" kind: the launch context argument is an int (ignored by the emulator) and tensors stay on the CPU
    return CppKernels(mod, "cpu")


def close(name, got, want, dtype, scale=1.0):
    global CHECKS
    CHECKS += 1
    got, want = got.double(), want.double()
    tol = TOL[dtype] * scale
    same = (got == want) | (got.isnan() & want.isnan())  # equal infinities, NaN where the reference is NaN
    err = torch.where(same, torch.zeros_like(got), (got - want).abs())
    bound = tol * (1 + want.abs().nan_to_num(posinf=0.0))
    bad = ~(err <= bound)
    if got.shape == want.shape and err.numel():
        key = (name.split()[0] + " " + name.split()[-1], str(dtype).replace("torch.", ""))
        ratio = float((err / (TOL[dtype] * (1 + want.abs().nan_to_num(posinf=0.0)))).nan_to_num(nan=float("inf")).max())
        WORST[key] = max(WORST.get(key, 0.0), ratio)
    if got.shape != want.shape or bad.any():
        i = int(torch.argmax(torch.where(bad, err, torch.zeros_like(err)))) if got.shape == want.shape else -1
        msg = f"{name}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
        if i >= 0:
            msg += f"; worst at flat {i}: got {got.flatten()[i].item():.6g} want {want.flatten()[i].item():.6g} " \
                   f"({int(bad.sum())} bad of {bad.numel()})"
        FAILURES.append(msg)
        print("FAIL", msg, flush=True)


def check_soft_argmax(k):
    shapes = [(3, 1, 1), (2, 1, 7), (2, 5, 1), (5, 5, 7), (7, 32, 32), (2, 33, 65), (3, 64, 64), (1, 130, 129),
              (33, 8, 8), (1, 9, 300)]
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for (M, H, W) in shapes:
            for marginal in (False, True):
                if dtype in (torch.float16, torch.bfloat16) and (M, H, W) not in [(5, 5, 7), (3, 64, 64)]:
                    continue
                temp = 0.7
                x = (torch.randn(M, H, W, dtype=torch.float64) * 2).to(dtype)
                if M > 1 and H * W > 2:  # a masked entry, as softmax users do
                    x[1, 0, 0] = float("-inf")
                mode = "marginal" if marginal else "spatial"
                name = f"soft_argmax {mode} {dtype} {(M, H, W)}"
                pts, stats = k.soft_argmax_forward(x, 1 / temp, marginal)
                xr = x.double().requires_grad_(True)
                want = reference.soft_argmax(xr[None], temp, mode)[0]
                close(name + " fwd", pts, want, dtype)
                if marginal:
                    xs = torch.stack([torch.logsumexp(xr.detach().mean(1) / temp, -1),
                                      torch.logsumexp(xr.detach().mean(2) / temp, -1)], -1)
                else:
                    xs = torch.logsumexp(xr.detach().reshape(M, -1) / temp, -1, keepdim=True)
                # (max l, log2 sum 2^((l - max) c)) per softmax -> lse = max / T + log2 sum * ln 2
                pairs = stats.double().view(M, -1, 2)
                got = pairs[..., 0] / temp + pairs[..., 1] * math.log(2.0)
                got = got if marginal else got[:, :1]
                close(name + " stats", got, xs, torch.float32 if dtype != torch.float64 else dtype, 10)
                g = torch.randn(M, 2, dtype=torch.float64)
                (want * g).sum().backward()
                gl = k.soft_argmax_backward(g.to(dtype), x, stats, pts, 1 / temp, marginal)
                close(name + " bwd", gl, xr.grad, dtype, 4)


def check_soft_argmax_tall_marginal(k):
    # marginal backward with rows that do not fit in shared memory (grad_logits holds the row terms)
    for dtype in (torch.float64, torch.float32):
        M, H, W = 2, 12300 if dtype == torch.float32 else 6200, 3
        x = torch.randn(M, H, W, dtype=dtype) * 3
        pts, stats = k.soft_argmax_forward(x, 1.0, True)
        xr = x.double().requires_grad_(True)
        want = reference.soft_argmax(xr[None], 1.0, "marginal")[0]
        close(f"soft_argmax marginal tall {dtype} fwd", pts, want, dtype, 10)
        g = torch.randn(M, 2, dtype=torch.float64)
        (want * g).sum().backward()
        gl = k.soft_argmax_backward(g.to(dtype), x, stats, pts, 1.0, True)
        close(f"soft_argmax marginal tall {dtype} bwd", gl, xr.grad, dtype, 10)


def check_gaussian(k):
    shapes = [(1, 1, 1), (3, 1, 9), (2, 7, 1), (4, 5, 7), (3, 16, 16), (2, 13, 24), (5, 32, 32), (1, 9, 600)]
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for (M, H, W) in shapes:
            std = 0.15
            p = (torch.rand(M, 2, dtype=torch.float64) * 2.4 - 1.2).to(dtype)
            name = f"gaussian {dtype} {(M, H, W)}"
            out = k.gaussian_heatmaps_forward(p, H, W, 1 / (2 * std * std))
            pr = p.double().requires_grad_(True)
            want = reference.gaussian_heatmaps(pr[None], H, W, std)[0]
            close(name + " fwd", out, want, dtype, 2)
            g = torch.randn(M, H, W, dtype=torch.float64)
            (want * g).sum().backward()
            gp = k.gaussian_heatmaps_backward(g.to(dtype), p, 1 / (2 * std * std))
            close(name + " bwd", gp, pr.grad, dtype, 50)
    # unaligned output (the vector path must not be taken)
    p = torch.rand(3, 2) * 2 - 1
    out = k.gaussian_heatmaps_forward(p, 8, 8, 10.0)
    close("gaussian fwd contiguous reference", out, reference.gaussian_heatmaps(p[None].double(), 8, 8, (1 / 20) ** 0.5)[0],
          torch.float32, 2)


def random_spline(B, Bc, N, dtype, scale=0.3):
    ctrl = torch.rand(Bc, N, 2, dtype=torch.float64) * 2 - 1
    coef = torch.zeros(B, N + 3, 2, dtype=torch.float64)
    coef[:, N + 1, 0] = 1.0
    coef[:, N + 2, 1] = 1.0
    coef += torch.randn(B, N + 3, 2, dtype=torch.float64) * scale
    coef[:, :N] *= 0.2
    return ctrl.to(acc_dtype(dtype)), coef.to(acc_dtype(dtype))


def check_tps_warp(k):
    cases = [  # B, Bc, C, Hin, Win, Ho, Wo, N
        (1, 1, 1, 1, 1, 3, 2, 4), (2, 2, 2, 5, 7, 5, 7, 4), (3, 1, 3, 9, 6, 7, 11, 9), (9, 1, 2, 12, 10, 17, 16, 16),
        (2, 1, 1, 6, 1, 4, 4, 3), (1, 1, 2, 8, 8, 40, 40, 25), (2, 2, 1, 8, 8, 9, 9, 0), (2, 1, 1, 7, 9, 6, 6, 300),
        (6, 1, 1, 7, 9, 6, 6, 100), (2, 2, 3, 16, 16, 20, 20, 100)]
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for (B, Bc, C, Hin, Win, Ho, Wo, N) in cases:
            if dtype in (torch.float16, torch.bfloat16) and N > 30:
                continue
            for padding in ("zeros", "border"):
                ctrl, coef = random_spline(B, Bc, N, dtype)
                img = torch.randn(B, C, Hin, Win, dtype=torch.float64).to(dtype)
                name = f"tps_warp {padding} {dtype} B{B} Bc{Bc} C{C} {Hin}x{Win}->{Ho}x{Wo} N{N}"
                out = k.tps_warp_forward(img, ctrl, coef, Ho, Wo, padding == "border")
                ir = img.double().requires_grad_(True)
                cr = coef.double().requires_grad_(True)
                want = reference.tps_warp(ir, ctrl.double(), cr, (Ho, Wo), padding)
                close(name + " fwd", out, want, dtype, 4)
                g = torch.randn(B, C, Ho, Wo, dtype=torch.float64)
                (want * g).sum().backward()
                gi, gc = k.tps_warp_backward(g.to(dtype), img, ctrl, coef, padding == "border", True, True)
                close(name + " grad_image", gi, ir.grad, dtype, 4)
                # dL/dcoef goes through the bilinear kink: a sample within rounding of a pixel
                # boundary may pick the other side; compare with a looser tolerance
                close(name + " grad_coef", gc, cr.grad, dtype, 200)
                gi2, gc2 = k.tps_warp_backward(g.to(dtype), img, ctrl, coef, padding == "border", True, False)
                assert gc2 is None
                close(name + " grad_image only", gi2, gi, dtype, 1)
                gi3, gc3 = k.tps_warp_backward(g.to(dtype), img, ctrl, coef, padding == "border", False, True)
                close(name + " grad_coef only", gc3, gc, dtype, 1)


def check_tps_points(k):
    cases = [(1, 1, 1, 4), (3, 1, 10, 16), (2, 2, 300, 9), (2, 1, 5, 0), (2, 2, 7, 300), (4, 1, 600, 20)]
    for dtype in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        for (B, Bc, M, N) in cases:
            ctrl, coef = random_spline(B, Bc, N, dtype)
            p = (torch.rand(B, M, 2, dtype=torch.float64) * 2.2 - 1.1)
            if N > 0:
                p[0, 0] = ctrl[0, 0].double()  # exactly on a control point: U'(0) handling
            p = p.to(dtype)
            name = f"tps_points {dtype} B{B} Bc{Bc} M{M} N{N}"
            out = k.tps_transform_points_forward(p, ctrl, coef)
            pr = p.double().requires_grad_(True)
            cr = coef.double().requires_grad_(True)
            want = reference.tps_transform_points(pr, ctrl.double(), cr)
            close(name + " fwd", out, want, dtype, 4)
            g = torch.randn(B, M, 2, dtype=torch.float64)
            (want * g).sum().backward()
            gp, gc = k.tps_transform_points_backward(g.to(dtype), p, ctrl, coef, True, True)
            close(name + " grad_points", gp, pr.grad, dtype, 20)
            close(name + " grad_coef", gc, cr.grad, dtype, 20)


def check_errors(k):
    global CHECKS
    CHECKS += 1
    try:
        k.m.soft_argmax_forward(9, 0, 0, 0, 1, 2, 2, 1.0, False, 0)
        FAILURES.append("bad dtype accepted")
    except ValueError as e:
        assert "fastlmk.soft_argmax" in str(e), e
    try:
        k.m.tps_warp_forward(0, 0, 0, 0, 0, 1, 1, 1 << 25, 1, 1, 1, 1, True, False, 0)
        FAILURES.append("huge image accepted")
    except ValueError as e:
        assert "fastlmk.tps_warp (CUDA)" in str(e), e


if __name__ == "__main__":
    k = load()
    wanted = sys.argv[1:]  # optional name filters, e.g. `check.py soft_argmax`
    for fn in (check_errors, check_gaussian, check_tps_points, check_soft_argmax, check_soft_argmax_tall_marginal,
               check_tps_warp):
        if wanted and not any(w in fn.__name__ for w in wanted):
            continue
        fn(k)
        print(f"{fn.__name__}: done ({CHECKS} checks, {len(FAILURES)} failures so far)", flush=True)
    print("worst error / base tolerance (" + ", ".join(f"{str(d).replace('torch.', '')} {t:g}" for d, t in TOL.items()) + "):")
    for (check, dt), r in sorted(WORST.items()):
        print(f"  {check:32s} {dt:9s} {r:8.3g}")
    print(f"cuda_emu: {CHECKS} checks, {len(FAILURES)} failures")
    sys.exit(1 if FAILURES else 0)
