"""Compile every fastlmk Triton kernel for an NVIDIA GPU target, without a GPU.

Run as a script (``python tests/triton_aot_compile.py [--arch 90] [--level full]``, from the repo root
with the package importable, and WITHOUT ``TRITON_INTERPRET``); tests/test_triton.py runs it in
a subprocess. The host functions of ``fastlmk.ops.triton`` are called on small CPU tensors with the
kernel launch replaced by a recorder; each recorded launch is turned into the signature Triton
would specialise on a GPU (pointer dtypes, ints, ints equal to 1 as constants, the constexprs)
and compiled ahead of time to a cubin with ``triton.compile`` (ptxas included). This catches
compile errors of the real (non-interpreted) Triton path, e.g. constructs the interpreter accepts
but the compiler does not. It says nothing about correctness or speed on a GPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("run without TRITON_INTERPRET: the interpreter replaces the kernels that are to be compiled")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from fastlmk.ops.triton import gaussian_heatmaps as gh  # noqa: E402
from fastlmk.ops.triton import soft_argmax as sa  # noqa: E402
from fastlmk.ops.triton import tps_transform_points as tp  # noqa: E402
from fastlmk.ops.triton import tps_warp as tw  # noqa: E402

_TL = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16",
       torch.int32: "i32", torch.int64: "i64"}

launches: dict = {}


def _record(kernel, grid):
    def run(*args, **kwargs):
        params = kernel.params
        constexprs, signature = {}, {}
        opts = {k: kwargs.pop(k) for k in ("num_warps", "num_stages") if k in kwargs}
        values = dict(zip([p.name for p in params], args))
        values.update(kwargs)
        for p in params:
            v = values[p.name]
            if p.is_constexpr:
                signature[p.name] = "constexpr"
                constexprs[p.name] = v
            elif isinstance(v, torch.Tensor):
                signature[p.name] = "*" + _TL[v.dtype]
            elif isinstance(v, bool):
                signature[p.name] = "i1"
            elif isinstance(v, int):
                if v == 1:  # Triton specialises integer arguments equal to 1 into constants
                    signature[p.name] = "constexpr"
                    constexprs[p.name] = 1
                else:
                    signature[p.name] = "i32" if -2**31 <= v < 2**31 else "i64"
            elif isinstance(v, float):
                signature[p.name] = "fp32"
            else:
                raise TypeError(f"{kernel.fn.__name__}: unhandled argument {p.name}={v!r}")
        key = (kernel.fn.__qualname__, tuple(sorted(signature.items())), tuple(sorted((k, str(v)) for k, v in constexprs.items())),
               tuple(sorted(opts.items())))
        launches[key] = (kernel, signature, constexprs, opts)

    return run


def _smoke_cases():
    """Every kernel and code path once, float32, plus the float64 variants of one forward and one
    backward (libdevice exp/log, float64 atomics)."""
    for dt in (torch.float32, torch.float64):
        x = torch.zeros(3, 5, 7, dtype=dt)
        pts, stats = sa.soft_argmax_forward(x, 2.0, False)
        sa.soft_argmax_backward(torch.zeros_like(pts), x, stats, pts, 2.0, False)
        if dt == torch.float64:
            break
        pts, stats = sa.soft_argmax_forward(x, 2.0, True)
        sa.soft_argmax_backward(torch.zeros_like(pts), x, stats, pts, 2.0, True)
        gh.gaussian_heatmaps_forward(pts, 5, 7, 3.0)
        gh.gaussian_heatmaps_backward(x, pts, 3.0)
        for B, shared in ((3, True), (2, False)):
            ctrl, coef = torch.zeros(1 if shared else B, 9, 2), torch.zeros(B, 12, 2)
            p = torch.zeros(B, 5, 2)
            tp.tps_transform_points_forward(p, ctrl, coef)
            tp.tps_transform_points_backward(p, p, ctrl, coef, True, True)
            img = torch.zeros(B, 3, 6, 7)
            tw.tps_warp_forward(img, ctrl, coef, 5, 4, shared)
            tw.tps_warp_backward(torch.zeros(B, 3, 5, 4), img, ctrl, coef, not shared, True, True)
    img, ctrl, coef = torch.zeros(3, 2, 6, 7, dtype=torch.float64), torch.zeros(1, 9, 2, dtype=torch.float64), torch.zeros(3, 12, 2, dtype=torch.float64)
    tw.tps_warp_backward(torch.zeros(3, 2, 5, 4, dtype=torch.float64), img, ctrl, coef, False, True, True)


def _cases(level: str):
    """quick: float32 and float16, sizes that hit Triton's specialisation of 1; full: all dtypes."""
    if level == "smoke":
        return _smoke_cases()
    dtypes = (torch.float32, torch.float16) if level == "quick" else (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    acc = lambda dt: torch.float64 if dt == torch.float64 else torch.float32  # noqa: E731
    for dt in dtypes:
        for (M, H, W) in ((3, 5, 7), (2, 1, 1), (2, 64, 96)):
            x = torch.zeros(M, H, W, dtype=dt)
            for marginal in (False, True):
                pts = torch.zeros(M, 2, dtype=dt)
                stats = torch.zeros(M, 2 if marginal else 1, dtype=acc(dt))
                sa.soft_argmax_forward(x, 2.0, marginal)
                sa.soft_argmax_backward(torch.zeros(M, 2, dtype=dt), x, stats, pts, 2.0, marginal)
            gh.gaussian_heatmaps_forward(torch.zeros(M, 2, dtype=dt), H, W, 3.0)
            gh.gaussian_heatmaps_backward(torch.zeros(M, H, W, dtype=dt), torch.zeros(M, 2, dtype=dt), 3.0)
        for (B, shared) in ((3, True), (2, False), (1, True)):
            N = 9
            ctrl = torch.zeros(1 if shared else B, N, 2, dtype=acc(dt))
            coef = torch.zeros(B, N + 3, 2, dtype=acc(dt))
            p = torch.zeros(B, 5, 2, dtype=dt)
            tp.tps_transform_points_forward(p, ctrl, coef)
            for need in ((True, True), (True, False), (False, True)):
                tp.tps_transform_points_backward(p, p, ctrl, coef, *need)
            img = torch.zeros(B, 3, 6, 7, dtype=dt)
            for border in (False, True):
                tw.tps_warp_forward(img, ctrl, coef, 5, 4, border)
                for need in ((True, True), (True, False), (False, True)):
                    tw.tps_warp_backward(torch.zeros(B, 3, 5, 4, dtype=dt), img, ctrl, coef, border, *need)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="CUDA compute capability, e.g. 80 or 90")
    ap.add_argument("--level", choices=("smoke", "quick", "full"), default="full",
                    help="smoke: each kernel path once (float32, some float64); quick: float32 and "
                         "float16 incl. size-1 specialisations; full: all four dtypes")
    args = ap.parse_args()
    for mod in (sa, gh, tp, tw):
        mod.launch = _record
    _cases(args.level)
    target = GPUTarget("cuda", args.arch, 32)
    t0 = time.time()
    failures = 0
    for (name, *_), (kernel, signature, constexprs, opts) in sorted(launches.items(), key=lambda kv: str(kv[0])):
        try:
            compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=target, options=opts)
            assert "cubin" in compiled.asm
        except Exception as e:  # report every failing specialisation, then fail
            failures += 1
            print(f"FAILED {name} {signature} {constexprs}: {type(e).__name__}: {e}", file=sys.stderr)
    print(f"compiled {len(launches) - failures}/{len(launches)} kernel specialisations for sm_{args.arch} "
          f"in {time.time() - t0:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
