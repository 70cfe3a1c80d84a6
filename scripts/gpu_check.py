#!/usr/bin/env python3
"""One prepared run that verifies and measures fastlmk's GPU path and leaves a complete report.

    python scripts/gpu_check.py --out gpu_check_out            # on a machine with one CUDA GPU (~8 min)
    python scripts/gpu_check.py --out /tmp/gc --cpu-smoke      # the same parts on the CPU, tiny sizes (~1-2 min)
    scripts/gpu_check.sh                                       # wrapper: $OUT-aware, logs the console too

Parts, in order; each runs in subprocesses with its own time budget, and a part that fails or
runs out of time is recorded and the next one starts:

1. ``device``: date, host, GPU, driver, CUDA, versions, git commit; the device's measured
   ceilings (device-to-device copy bandwidth, bf16 matrix-product rate).
2. ``build``: ``pip install --no-build-isolation --no-deps --no-index .`` (the CUDA module for the
   GPU's own architecture), then an import check and one call of every op on every backend
   against the reference.
3. ``tests``: ``pytest tests -k "cuda or images_device"`` (the GPU cases), then
   ``-k "triton and not cuda"``, each with a time budget (the session stops after the test that
   ends past it and says how many did not run).
4. ``bench``: the pytest-benchmark suite of ``benchmarks/`` on the GPU at the paper and large
   shapes (fastlmk-cuda, fastlmk-triton, reference eager, kornia when installed; forward and
   forward+backward; achieved bandwidth vs the measured copy bandwidth; every op at the paper
   shape first, then the large one), then the reference under ``torch.compile``; tables by
   ``benchmarks/report.py`` and a suggested ``AUTO_CUDA`` table.
5. ``train``: one training step of ``--preset gpu`` (``benchmarks/train_step.make_step``) timed
   for fused ops vs ``backend="reference"``, eager vs ``torch.compile``, bf16 autocast (plus
   fused in float32, and fused with the batch rendered on the GPU every step).
6. ``data``: SynthFaces at the preset's size: renders/s in one CPU process, through DataLoader
   workers (the preset's count and more), and on the GPU (``fastlmk.data.device_render``), with
   the GPU images' difference to the CPU ones.
7. ``train_cli``: ``python -m fastlmk.train --preset gpu`` for a fixed time (real data pipeline),
   its images/s from ``log.csv``; the summary then says whether training waits on data.

Everything goes under ``--out``: ``summary.md`` (could become ``benchmarks/RESULTS_GPU.md``),
``report.json``, ``commands.txt`` (every command with its environment, budget, exit status and
time), ``logs/`` and ``data/``. ``--pack DIR`` also writes ``summary.md``, ``report.json`` and a
``gpu_check.tar.gz`` of the whole folder into DIR (the few files a lent machine hands back);
both are rewritten after every part, so a run killed from outside still leaves its report.

``--cpu-smoke`` runs every part on the CPU with tiny sizes and short budgets (the build is
replaced by the import check, ``torch.compile`` variants are left out unless ``--smoke-compile``)
so that a mistake in this script costs no GPU time; ``tests/test_gpu_check.py`` runs it. Its
figures are CPU figures of toy sizes: never read them as GPU results.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
PARTS = ("device", "build", "tests", "bench", "train", "data", "train_cli")
# per part: (nominal seconds, minimum seconds); a part gets its share of the time left, at least
# its minimum, at most 1.5x nominal, and always leaves the minimums of the parts after it
BUDGETS = {
    "gpu": {"device": (30, 20), "build": (150, 150), "tests": (100, 40), "bench": (110, 50), "train": (150, 50),
            "data": (40, 25), "train_cli": (45, 25)},
    "smoke": {"device": (10, 5), "build": (15, 8), "tests": (25, 10), "bench": (25, 10), "train": (25, 10),
              "data": (15, 6), "train_cli": (20, 8)},
}
TOTAL = {"gpu": 480.0, "smoke": 150.0}
BENCH_FILES = ("bench_soft_argmax.py", "bench_gaussian_heatmaps.py", "bench_tps_warp.py", "bench_tps_transform_points.py")
# tiny model for --cpu-smoke: the gpu preset's structure (hourglass, inter-intra) at toy size
SMOKE_OVERRIDES = ["--image-size", "64", "--detector-width", "8", "--generator-width", "4", "--generator-res", "1",
                   "--batch-size", "4", "--num-landmarks", "4", "--device", "cpu", "--threads", "1"]


def now_utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


# ==============================================================================================
# workers: run in subprocesses (``--worker NAME``), write one JSON, import torch
# ==============================================================================================
def _emit(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, default=str)
    os.replace(tmp, path)


def _images_per_s(batch_fn, batch: int, window: float, first: int = 0, sync=None) -> float:
    """Call ``batch_fn(k)`` for k = first, first + 1, ... (each makes ``batch`` images) until
    ``window`` seconds have passed and at least two batches ran; images per second (``sync``, if
    given, waits for the device before the clock stops)."""
    n, k, t0 = 0, first, time.perf_counter()
    while time.perf_counter() - t0 < window or n < 2 * batch:
        batch_fn(k)
        n, k = n + batch, k + 1
    if sync is not None:
        sync()
    return n / (time.perf_counter() - t0)


def _sync(device):
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _quantiles(xs):
    xs = sorted(xs)
    q = lambda p: xs[min(len(xs) - 1, int(p * len(xs)))]  # noqa: E731
    return {"median": statistics.median(xs), "p20": q(0.2), "p80": q(0.8), "n": len(xs)}


def worker_device(a: dict, out: str) -> None:
    """Versions, the device's properties and its measured ceilings (copy bandwidth, matmul rate)."""
    import importlib.metadata as md

    import torch

    res: dict = {"packages": {}}
    for name in ("torch", "triton", "kornia", "numpy", "setuptools", "pybind11", "ninja", "pytest", "pytest-benchmark",
                 "fastlmk"):
        try:
            res["packages"][name] = md.version(name)
        except md.PackageNotFoundError:
            res["packages"][name] = None
    res["torch_cuda"] = torch.version.cuda
    res["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    res["cuda_available"] = torch.cuda.is_available()
    res["torch_threads"] = torch.get_num_threads()
    _emit(out, res)
    dev = a["device"]
    if dev == "cuda":
        p = torch.cuda.get_device_properties(0)
        res["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
                      "memory_GiB": round(p.total_memory / 2**30, 1),
                      "L2_MB": round(getattr(p, "L2_cache_size", 0) / 1e6, 1) or None, "count": torch.cuda.device_count()}
        _emit(out, res)
        # the copy bandwidth the benchmark tables divide by (benchmarks/conftest.py: 256 MiB, 20 copies)
        from benchmarks.conftest import device_copy_bandwidth

        res["copy_GBps_bench"] = device_copy_bandwidth("cuda")
        # a larger copy (2 GiB each way): read + write bytes / time, median of 10
        n = (2 << 30) // 4
        src = torch.empty(n, device="cuda").uniform_()
        dst = torch.empty_like(src)
        times = []
        for i in range(13):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            dst.copy_(src)
            e.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(s.elapsed_time(e) / 1e3)
        res["copy_GBps_2GiB"] = 2 * n * 4 / statistics.median(times) / 1e9
        del src, dst
        torch.cuda.empty_cache()
        _emit(out, res)
        # bf16 matrix product on random data (never zeros), 8192^3, median of 10 after 3 warm-ups
        m = 8192
        x = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        y = torch.randn(m, m, device="cuda", dtype=torch.bfloat16)
        times = []
        for i in range(13):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            torch.mm(x, y)
            e.record()
            torch.cuda.synchronize()
            if i >= 3:
                times.append(s.elapsed_time(e) / 1e3)
        res["bf16_matmul_TFLOPs"] = 2 * m**3 / statistics.median(times) / 1e12
        del x, y
    else:  # CPU stand-ins (labelled CPU in the report): a 64 MiB copy and a 1024^3 float32 product
        n = (64 << 20) // 4
        src, dst = torch.rand(n), torch.empty(n)
        times = []
        for i in range(8):
            t0 = time.perf_counter()
            dst.copy_(src)
            times.append(time.perf_counter() - t0)
        res["cpu_copy_GBps"] = 2 * n * 4 / statistics.median(times[2:]) / 1e9
        x, y = torch.randn(1024, 1024), torch.randn(1024, 1024)
        times = []
        for i in range(5):
            t0 = time.perf_counter()
            torch.mm(x, y)
            times.append(time.perf_counter() - t0)
        res["cpu_fp32_matmul_GFLOPs"] = 2 * 1024**3 / statistics.median(times[1:]) / 1e9
    _emit(out, res)


def worker_build_check(a: dict, out: str) -> None:
    """Which fastlmk is imported, which backends run here, and one call of each op per backend."""
    import torch

    import fastlmk
    from fastlmk import reference
    from fastlmk.ops import backends

    dev = torch.device(a["device"])
    res: dict = {"fastlmk_file": fastlmk.__file__, "version": getattr(fastlmk, "__version__", "?"), "backends": {},
                 "ops": []}
    for b in ("cpu", "cuda", "triton"):
        bdev = torch.device("cpu") if b == "cpu" else dev
        ok = backends.available(b, bdev)
        res["backends"][b] = {"available_on": str(bdev), "ok": ok,
                              "why_not": backends.why_unavailable(b, bdev)}
        mod = backends.module(b)
        res["backends"][b]["module"] = getattr(mod, "__file__", None) if mod is not None else None
    _emit(out, res)
    backends = [b for b in (("cuda", "triton") if dev.type == "cuda" else ("cpu",)) if res["backends"][b]["ok"]]
    g = torch.Generator().manual_seed(0)
    heat = torch.randn(4, 5, 16, 16, generator=g).to(dev)
    pts = (torch.rand(4, 5, 2, generator=g) * 2 - 1).to(dev)
    img = torch.rand(2, 3, 32, 32, generator=g).to(dev)
    tps = fastlmk.random_tps(2, 10, generator=torch.Generator().manual_seed(1), device=dev)
    calls = {
        "soft_argmax": (lambda be: fastlmk.soft_argmax(heat, 0.1, backend=be), lambda: reference.soft_argmax(heat, 0.1)),
        "gaussian_heatmaps": (lambda be: fastlmk.gaussian_heatmaps(pts, 16, 16, 0.1, backend=be),
                              lambda: reference.gaussian_heatmaps(pts, 16, 16, 0.1)),
        "tps_warp": (lambda be: fastlmk.tps_warp(img, tps, backend=be), lambda: reference.tps_warp(img, tps.ctrl, tps.coef)),
        "tps_transform_points": (lambda be: fastlmk.tps_transform_points(pts[:2], tps, backend=be),
                                 lambda: reference.tps_transform_points(pts[:2], tps.ctrl, tps.coef)),
    }
    for op, (fn, ref) in calls.items():
        want = ref()
        for b in backends:
            row = {"op": op, "backend": b, "device": str(dev)}
            try:
                got = fn(b)
                _sync(dev)
                row["max_abs_diff"] = (got.float() - want.float()).abs().max().item()
                row["finite"] = bool(torch.isfinite(got).all())
                row["ok"] = row["finite"] and row["max_abs_diff"] < 1e-3
            except Exception as e:  # recorded, not raised: the report lists it
                row.update(ok=False, error=f"{type(e).__name__}: {e}"[:800])
            res["ops"].append(row)
            _emit(out, res)


def worker_train_variant(a: dict, out: str) -> None:
    """Time one training-step variant (benchmarks/train_step.make_step) for a few seconds."""
    import torch

    from benchmarks.train_step import make_step
    from fastlmk.training.config import parse_args
    from fastlmk.data import build_dataset

    dev = a["device"]
    cfg, _ = parse_args(["--preset", a["preset"], *a["overrides"]], cuda=dev == "cuda")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if dev == "cuda":  # as fastlmk.train sets them
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.perceptual == "auto":  # what make_step and fastlmk.train resolve it to
        from fastlmk.training.losses import FALLBACK

        cfg = dataclasses.replace(cfg, perceptual="vgg" if cfg.vgg_weights else FALLBACK)
    res = {"variant": a["name"], "backend": a["backend"], "compile": a["compile"], "amp": a["amp"] and dev == "cuda",
           "render_on_device": a["render_on_device"], "device": dev,
           "config": {k: getattr(cfg, k) for k in ("preset", "image_size", "batch_size", "detector_arch", "detector_width",
                                                   "generator_width", "generator_res", "num_landmarks", "method",
                                                   "perceptual", "deterministic")}}
    _emit(out, res)
    ds = build_dataset(cfg.dataset, cfg.data_root or None, split="train", size=cfg.image_size)
    images = ds.render(range(cfg.batch_size))["image"]
    step = make_step(cfg, a["backend"], images, device=dev, amp=a["amp"], compile=a["compile"])
    if a["render_on_device"]:
        from fastlmk.data.device_render import DeviceBatches

        batches = iter(DeviceBatches(ds, cfg.batch_size, dev, seed=cfg.seed))
        one = lambda: step(next(batches)["image"])  # noqa: E731
    else:
        one = step
    if dev == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    res["first_loss"] = one()
    res["first_step_s"] = time.perf_counter() - t0  # includes torch.compile / autotuning / allocation
    _emit(out, res)
    for _ in range(a["warmup"]):
        one()
    times, t_end = [], time.perf_counter() + a["measure_s"]
    while len(times) < a["max_steps"] and (len(times) < a["min_steps"] or time.perf_counter() < t_end):
        t0 = time.perf_counter()
        loss = one()  # ends with loss.item(): the step is complete
        times.append(time.perf_counter() - t0)
        if len(times) % 5 == 0:
            res["step_s"] = _quantiles(times)
            _emit(out, res)
    res["step_s"] = _quantiles(times)
    res["images_per_s"] = cfg.batch_size / res["step_s"]["median"]
    res["last_loss"] = loss
    if dev == "cuda":
        res["peak_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    _emit(out, res)


def worker_data(a: dict, out: str) -> None:
    """SynthFaces renders/s: one CPU process, DataLoader workers, and on the device."""
    import torch
    from torch.utils.data import DataLoader

    from fastlmk.data import SynthFaces
    from fastlmk.data.device_render import render_on

    size, B, dev, window = a["size"], a["batch"], a["device"], a["measure_s"]
    ds = SynthFaces("train", size=size, length=10**6)
    res: dict = {"size": size, "batch": B, "device": dev, "cpu_count": os.cpu_count()}
    _emit(out, res)

    # 1. one process, one thread (what one DataLoader worker does)
    torch.set_num_threads(1)
    ds.render(range(B))
    res["cpu_1_thread_images_per_s"] = _images_per_s(lambda k: ds.render(range(k * B, (k + 1) * B)), B, window, 1)
    _emit(out, res)

    # 2. DataLoader workers (before any CUDA use in this process: the workers are forked)
    res["loader"] = []
    for workers in a["workers"]:
        loader = DataLoader(ds, batch_size=B, shuffle=True, drop_last=True, num_workers=workers,
                            pin_memory=dev == "cuda", persistent_workers=False)
        t_start = time.perf_counter()
        it = iter(loader)
        next(it)
        first = time.perf_counter() - t_start
        rate = _images_per_s(lambda k: next(it), B, window)
        del it, loader
        res["loader"].append({"workers": workers, "images_per_s": rate, "first_batch_s": first})
        _emit(out, res)

    # 3. parameters only (the CPU part of device rendering) and rendering on the device
    res["params_only_images_per_s"] = _images_per_s(lambda k: ds.params(range(k * B, (k + 1) * B)), B,
                                                    min(window, 2.0), 100)
    _emit(out, res)
    res["device_render"] = []
    for bs in a["device_batches"]:
        render_on(ds, range(bs), dev)
        _sync(dev)
        rate = _images_per_s(lambda k: render_on(ds, range(k * bs, (k + 1) * bs), dev), bs, window, 200,
                             sync=lambda: _sync(dev))
        res["device_render"].append({"batch": bs, "images_per_s": rate})
        _emit(out, res)
    # 4. the device images vs the CPU ones (same indices)
    ref = ds.render(range(B))
    got = render_on(ds, range(B), dev)
    d = (got["image"].cpu() - ref["image"]).abs()
    res["device_vs_cpu"] = {"image_max_abs": d.max().item(), "image_mean_abs": d.mean().item(),
                            "image_frac_over_1e-2": (d > 1e-2).float().mean().item(),
                            "landmarks_max_abs": (got["landmarks"].cpu() - ref["landmarks"]).abs().max().item()}
    _emit(out, res)


def worker_train_many(a: dict, out: str) -> None:
    """Several variants in this one process (cpu-smoke); an exception is recorded per variant."""
    res = {"variants": []}
    for i, w in enumerate(a["variants"]):
        path = f"{out}.{i}"
        try:
            worker_train_variant(w, path)
            res["variants"].append(json.loads(Path(path).read_text()))
        except Exception as e:
            d = json.loads(Path(path).read_text()) if Path(path).exists() else {"variant": w["name"]}
            d["error"] = f"{type(e).__name__}: {e}"[:800]
            traceback.print_exc()
            res["variants"].append(d)
        Path(path).unlink(missing_ok=True)
        _emit(out, res)


WORKERS = {"train_many": worker_train_many, "device": worker_device, "build_check": worker_build_check, "train_variant": worker_train_variant,
           "data": worker_data}


# ==============================================================================================
# the orchestrator: standard library only (no torch import here)
# ==============================================================================================
class Check:
    def __init__(self, args):
        self.args = args
        self.mode = "smoke" if args.cpu_smoke else "gpu"
        self.device = "cpu" if args.cpu_smoke else "cuda"
        self.out = Path(args.out).resolve()
        for sub in ("logs", "data", "work"):
            (self.out / sub).mkdir(parents=True, exist_ok=True)
        self.work = self.out / "work"
        self.t_start = time.time()
        self.deadline = self.t_start + (args.total_budget or TOTAL[self.mode])
        self.commands: list = []
        self.pythonpath_front: list = []  # set when the build falls back to an in-place build elsewhere
        self.report = {"mode": self.mode, "started": now_utc(), "command": shlex.join([sys.executable] + sys.argv),
                       "repo": str(REPO), "out": str(self.out), "total_budget_s": self.deadline - self.t_start,
                       "parts": {}, "host": {}}

    # ---- running commands ----------------------------------------------------------------
    def env(self, extra=None) -> dict:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        env.pop("PYTHONPATH", None)
        env["PYTHONPATH"] = os.pathsep.join(self.pythonpath_front + [str(SCRIPTS)])
        env.update(extra or {})
        return env

    def sh(self, part: str, label: str, cmd: list, timeout: float, extra_env=None, cwd=None) -> dict:
        """Run ``cmd`` in its own process group with a hard timeout; log to logs/<part>-<label>.log."""
        log = self.out / "logs" / f"{part}-{label}.log"
        timeout = max(1.0, timeout)
        rec = {"part": part, "label": label, "cmd": shlex.join(str(c) for c in cmd), "cwd": str(cwd or self.work),
               "env": {"PYTHONPATH": self.env()["PYTHONPATH"], **(extra_env or {})}, "timeout_s": round(timeout, 1), "log": str(log.relative_to(self.out)),
               "started": now_utc()}
        print(f"  [{part}] $ {rec['cmd'][:220]}  (budget {timeout:.0f} s)", flush=True)
        t0 = time.time()
        with open(log, "w") as f:
            f.write(f"# {rec['started']}\n# cwd {rec['cwd']}\n# env {json.dumps(rec['env'])}\n# $ {rec['cmd']}\n\n")
            f.flush()
            proc = subprocess.Popen([str(c) for c in cmd], stdout=f, stderr=subprocess.STDOUT, cwd=cwd or self.work,
                                    env=self.env(extra_env), start_new_session=True)
            try:
                rc = proc.wait(timeout=timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                timed_out = True
                self._kill(proc)
                rc = proc.returncode
                f.write(f"\n# gpu_check: killed after its budget of {timeout:.0f} s\n")
        rec.update(rc=rc, timed_out=timed_out, wall_s=round(time.time() - t0, 1))
        print(f"  [{part}]   -> rc {rc}{' (TIMED OUT)' if timed_out else ''} in {rec['wall_s']} s, log {rec['log']}",
              flush=True)
        self.commands.append(rec)
        self._write_commands()
        return rec

    @staticmethod
    def _kill(proc):
        """SIGTERM to the process group this script started, then SIGKILL."""
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def worker(self, part: str, label: str, name: str, wargs: dict, timeout: float) -> tuple[dict, dict]:
        path = self.out / "data" / f"{part}-{label}.json"
        if path.exists():
            path.unlink()
        rec = self.sh(part, label, [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--worker-args",
                                    json.dumps(wargs), "--worker-out", str(path)], timeout)
        data = json.loads(path.read_text()) if path.exists() else {}
        return rec, data

    def pytest(self, part, label, args, timeout, extra_env=None, import_append=False) -> tuple[dict, dict]:
        tally = self.out / "data" / f"{part}-{label}-tally.json"
        if tally.exists():
            tally.unlink()
        grace = min(15.0, max(3.0, 0.25 * timeout))  # for the test in progress, the summary and the exit
        cmd = [sys.executable, "-m", "pytest", "--rootdir", str(REPO), "-c", str(REPO / "pyproject.toml"),
               "-p", "gpu_check_pytest_budget", "-p", "no:cacheprovider", "--gc-budget", f"{timeout - grace:.0f}",
               "--gc-json", str(tally), "-q", "-rfE"]
        if import_append:  # the repo root goes to the end of sys.path: an installed fastlmk wins
            cmd += ["--import-mode=append"]
        rec = self.sh(part, label, cmd + list(args), timeout, extra_env)
        data = json.loads(tally.read_text()) if tally.exists() else {}
        return rec, data

    def _write_commands(self):
        with open(self.out / "commands.txt", "w") as f:
            for r in self.commands:
                env = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in r["env"].items())
                f.write(f"# [{r['part']}] {r['started']}, budget {r['timeout_s']} s -> rc {r['rc']}"
                        f"{' TIMED OUT' if r['timed_out'] else ''}, {r['wall_s']} s, log {r['log']}\n"
                        f"(cd {shlex.quote(r['cwd'])} && {env + ' ' if env else ''}{r['cmd']})\n\n")

    # ---- budgets -----------------------------------------------------------------------------
    def budget(self, part: str, later: list) -> float:
        b = BUDGETS[self.mode]
        left = self.deadline - time.time()
        nominal, minimum = b[part]
        reserve = sum(b[p][1] for p in later)
        share = left * nominal / sum(b[p][0] for p in [part] + later)
        cap = 1.5 * nominal * max(1.0, (self.deadline - self.t_start) / TOTAL[self.mode])  # a longer run: longer parts
        return max(0.0, min(max(share, minimum), cap, left - reserve))

    # ---- the parts -----------------------------------------------------------------------------
    def run(self) -> int:
        selected = [p for p in PARTS if p in self.args.parts and p not in self.args.skip]
        print(f"gpu_check ({self.mode}): parts {', '.join(selected)}; total budget "
              f"{self.deadline - self.t_start:.0f} s; output {self.out}", flush=True)
        self.host_info()
        for p in PARTS:
            if p not in selected:
                self.report["parts"][p] = {"status": "skipped", "notes": ["not selected (--parts / --skip)"]}
        self.save()
        for i, p in enumerate(selected):
            budget = self.budget(p, selected[i + 1:])
            part = {"status": "running", "budget_s": round(budget, 1), "started": now_utc(), "notes": [],
                    "commands": []}
            self.report["parts"][p] = part
            print(f"\n== {p}: budget {budget:.0f} s ({self.deadline - time.time():.0f} s left in total)", flush=True)
            t0 = time.time()
            n_cmd = len(self.commands)
            if budget < 3:
                part.update(status="skipped", notes=["no time left in the total budget"])
            else:
                try:
                    getattr(self, f"part_{p}")(part, t0 + budget)
                except Exception:
                    part["status"] = "failed"
                    part["notes"].append("the part raised in gpu_check itself:\n" + traceback.format_exc()[-3000:])
            part["wall_s"] = round(time.time() - t0, 1)
            part["commands"] = [c["label"] for c in self.commands[n_cmd:]]
            if part["status"] == "running":
                part["status"] = "ok"
            print(f"== {p}: {part['status']} in {part['wall_s']} s", flush=True)
            self.save()
        self.report["finished"] = now_utc()
        self.report["wall_s"] = round(time.time() - self.t_start, 1)
        self.save()
        print("\n" + self.status_table())
        print(f"\nreport: {self.out / 'summary.md'}" + (f" (packed into {self.args.pack})" if self.args.pack else ""))
        return 0 if all(self.report["parts"][p]["status"] in ("ok", "skipped") for p in selected) else 1

    @staticmethod
    def _worse(part, status, note=None):
        order = ["ok", "partial", "timeout", "failed"]
        if order.index(status) > order.index(part["status"] if part["status"] in order else "ok"):
            part["status"] = status
        if note:
            part["notes"].append(note)

    def _status_of(self, part, rec, what):
        if rec["timed_out"]:
            self._worse(part, "timeout", f"{what}: killed at its budget ({rec['timeout_s']} s); log {rec['log']}")
        elif rec["rc"] != 0:
            self._worse(part, "failed", f"{what}: exit status {rec['rc']}; log {rec['log']}")

    def host_info(self):
        h = self.report["host"]
        h["date"] = now_utc()
        h["hostname"] = platform.node()
        h["platform"] = platform.platform()
        h["python"] = sys.version.split()[0]
        h["python_exe"] = sys.executable
        h["cpu_count"] = os.cpu_count()
        h["loadavg"] = [round(x, 1) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
        try:
            h["cpu"] = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        except (OSError, StopIteration):
            h["cpu"] = platform.processor()
        try:
            h["mem_GiB"] = round(int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))) / 2**20, 1)
        except (OSError, StopIteration):
            pass

        def out(cmd):
            try:
                r = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
                return r.stdout.strip() if r.returncode == 0 else None
            except (OSError, subprocess.TimeoutExpired):
                return None

        h["git_commit"] = out(["git", "rev-parse", "HEAD"]) or self.args.commit or None
        h["git_branch"] = out(["git", "rev-parse", "--abbrev-ref", "HEAD"])
        status = out(["git", "status", "--porcelain", "--untracked-files=no"])
        h["git_dirty"] = None if status is None else bool(status)
        h["nvidia_smi"] = out(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap,clocks.sm,"
                                              "clocks.max.sm,clocks.mem,power.limit,temperature.gpu,persistence_mode,"
                                              "compute_mode", "--format=csv"]) \
            or out(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv"])  # older nvidia-smi
        full = out(["nvidia-smi"])
        if full:
            (self.out / "logs" / "nvidia-smi.txt").write_text(full + "\n")
        nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
        h["nvcc"] = (out([nvcc, "--version"]) or "").splitlines()[-1:] if nvcc else None

    def part_device(self, part, deadline):
        rec, data = self.worker("device", "info", "device", {"device": self.device}, deadline - time.time())
        self._status_of(part, rec, "device worker")
        part["data"] = data
        if self.device == "cuda" and not data.get("cuda_available", False):
            self._worse(part, "failed", "torch sees no CUDA device: the GPU parts below will fail")

    def part_build(self, part, deadline):
        how = self.args.build or ("none" if self.mode == "smoke" else "pip")
        part["how"] = how
        env = {"MAX_JOBS": os.environ.get("MAX_JOBS") or str(os.cpu_count() or 4)}
        cap = self.report["parts"].get("device", {}).get("data", {}).get("gpu", {}).get("capability")
        if self.device == "cuda" and cap and not os.environ.get("FASTLMK_CUDA_ARCHS"):
            env["FASTLMK_CUDA_ARCHS"] = cap.replace(".", "")  # this GPU's architecture only: half the nvcc time
        env["FASTLMK_CUDA"] = "1" if self.device == "cuda" else "0"  # a GPU run must build it; cpu-smoke never
        if self.args.wheels:
            wheels = sorted(str(p) for p in Path(self.args.wheels).glob("*.whl"))
            if wheels:
                rec = self.sh("build", "wheels", [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                                                  *wheels], min(60, deadline - time.time()))
                self._status_of(part, rec, "installing --wheels")
        if how == "none":
            part["notes"].append("no build (--build none, the cpu-smoke default): the importable fastlmk is checked")
        else:
            check_left = 25 if self.mode == "gpu" else 8
            if how == "pip":
                cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-v",
                       str(REPO)]
            else:  # editable
                cmd = [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index", "-v",
                       "-e", str(REPO)]
            rec = self.sh("build", how, cmd, deadline - time.time() - check_left, env)
            log = (self.out / rec["log"]).read_text(errors="replace")
            compile_error = "FAILED:" in log or "build stopped" in log  # ninja: a compiler error, not packaging
            if compile_error:
                part["notes"].append(f"a compiler error: see the FAILED: lines of {rec['log']}")
            if rec["rc"] != 0 and not rec["timed_out"] and not compile_error and deadline - time.time() > check_left + 20:
                # an older setuptools rejects pyproject.toml's metadata: build the extensions in a
                # copy without pyproject.toml (setup.py alone) and import fastlmk from that copy
                part["notes"].append(f"`pip install` failed (log {rec['log']}); fell back to `setup.py build_ext "
                                     "--inplace` in a copy of setup.py, csrc/ and fastlmk/ without pyproject.toml")
                src = self.work / "src_build"
                shutil.rmtree(src, ignore_errors=True)
                src.mkdir(parents=True)
                shutil.copy(REPO / "setup.py", src)
                shutil.copytree(REPO / "csrc", src / "csrc")
                shutil.copytree(REPO / "fastlmk", src / "fastlmk", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
                rec2 = self.sh("build", "setup-inplace", [sys.executable, "setup.py", "build_ext", "--inplace"],
                               deadline - time.time() - check_left, env, cwd=src)
                if rec2["rc"] == 0:
                    self.pythonpath_front = [str(src)]
                    self._worse(part, "partial", "built by the fallback; see the pip log for why pip failed")
                else:
                    self._status_of(part, rec2, "fallback build")
            else:
                self._status_of(part, rec, f"`pip install` ({how})")
        rec, data = self.worker("build", "check", "build_check", {"device": self.device}, deadline - time.time())
        self._status_of(part, rec, "import / op check")
        part["data"] = data
        bad = [f"{r['op']}[{r['backend']}]: {r.get('error') or 'max |diff| %.3g' % r.get('max_abs_diff', float('nan'))}"
               for r in data.get("ops", []) if not r.get("ok")]
        if bad:
            self._worse(part, "failed", "ops that disagree with the reference or fail: " + "; ".join(bad))
        want = ("cuda", "triton") if self.device == "cuda" else ("cpu",)
        for b in want:
            info = data.get("backends", {}).get(b, {})
            if not info.get("ok"):
                self._worse(part, "failed", f"backend {b} not available: {info.get('why_not')}")

    def part_tests(self, part, deadline):
        if self.mode == "gpu":
            common = [str(REPO / "tests"), "-m", "not slow", "--ignore", str(REPO / "tests" / "test_gpu_check.py")]
            sessions = [("cuda", common + ["-k", "cuda or images_device"], 0.45),
                        ("triton", common + ["-k", "triton and not cuda"], 1.0)]
        else:  # a small selection that exercises the budget plugin, the tally and the triton interpreter
            sessions = [("cuda", [str(REPO / "tests/test_backends.py"), "-k", "cuda"], 0.45),
                        ("triton", [str(REPO / "tests/test_gaussian_heatmaps.py"), "-k", "triton"], 1.0)]
        part["sessions"] = {}
        for label, args, frac in sessions:
            budget = (deadline - time.time()) * frac
            rec, tally = self.pytest("tests", label, args, budget)
            part["sessions"][label] = {"tally": tally, "rc": rec["rc"], "timed_out": rec["timed_out"], "log": rec["log"]}
            if rec["timed_out"]:
                self._worse(part, "timeout", f"{label}: killed at its budget; partial tally only")
            elif tally.get("failed") or tally.get("error"):
                self._worse(part, "failed", f"{label}: {tally.get('failed', 0)} failed, {tally.get('error', 0)} errors")
            elif rec["rc"] not in (0, 2, 5) or not tally:  # 2: stopped by the budget; 5: nothing collected
                self._worse(part, "failed", f"{label}: pytest exit status {rec['rc']} (log {rec['log']})")
            if tally.get("not_run"):
                self._worse(part, "partial", f"{label}: {tally['not_run']} of {tally['collected']} tests not run "
                                             f"({tally.get('stopped') or 'session ended early'})")

    def part_bench(self, part, deadline):
        dev = self.device
        files = [str(REPO / "benchmarks" / f) for f in BENCH_FILES]
        budget_env = {"FASTLMK_BENCH_BUDGET": "0.1" if self.mode == "gpu" else "0.01"}  # timed seconds per benchmark
        eager = f"{dev} and not reference-compile"
        if self.mode == "gpu":  # every op at the paper shape first, so a budget cut loses large shapes, not ops
            sessions = [("paper", "paper", eager, 0.35), ("large", "large", eager, 0.5),
                        ("compile", "paper,large", f"{dev} and reference-compile", 1.0)]
        else:  # cpu-smoke: forward+backward and pair making only (every code path, half the cases)
            sessions = [("main", "tiny", eager + " and (backward or pair_making)", 0.7)]
            if self.args.smoke_compile:
                sessions.append(("compile", "tiny", f"{dev} and reference-compile and backward", 1.0))
            else:
                part["notes"].append("reference-compile not run in cpu-smoke (inductor compile time; --smoke-compile "
                                     "runs it)")
        merged, part["sessions"] = None, {}
        for label, shapes, sel, frac in sessions:
            js = self.out / "data" / f"bench-{label}.json"
            if js.exists():
                js.unlink()
            budget = (deadline - time.time()) * frac
            rec, tally = self.pytest("bench", label, files + ["-k", sel, "--benchmark-only", f"--benchmark-json={js}"],
                                     budget, {"FASTLMK_BENCH_SHAPES": shapes, **budget_env}, import_append=True)
            part["sessions"][label] = {"tally": tally, "rc": rec["rc"], "timed_out": rec["timed_out"], "log": rec["log"]}
            if rec["timed_out"]:
                self._worse(part, "timeout", f"{label}: killed at its budget")
            elif tally.get("failed") or tally.get("error"):
                self._worse(part, "failed", f"{label}: {tally.get('failed', 0)} benchmarks failed their answer check or "
                                            f"raised")
            elif rec["rc"] not in (0, 2):
                self._worse(part, "failed", f"{label}: pytest exit status {rec['rc']}")
            if tally.get("not_run"):
                self._worse(part, "partial", f"{label}: {tally['not_run']} of {tally['collected']} benchmarks not run "
                                             "(time budget)")
            if js.exists():
                data = json.loads(js.read_text())
                for b in data.get("benchmarks", []):
                    b.get("stats", {}).pop("data", None)  # per-round samples: not needed for the tables
                if merged is None:
                    merged = data
                else:
                    merged["benchmarks"] += data.get("benchmarks", [])
        if merged is not None:
            (self.out / "data" / "bench.json").write_text(json.dumps(merged, indent=1))
            part["bench_json"] = "data/bench.json"
            part["n_results"] = len(merged.get("benchmarks", []))

    def _variants(self):
        # (name, backend, compile, amp, render on device); in priority order
        v = [("fused bf16", "auto", False, True, False), ("reference bf16", "reference", False, True, False),
             ("fused bf16 + GPU-rendered batch", "auto", False, True, True),
             ("fused bf16 compiled", "auto", True, True, False), ("reference bf16 compiled", "reference", True, True, False),
             ("fused fp32", "auto", False, False, False)]
        if self.mode == "smoke":
            v = [x for x in v if not x[2] or self.args.smoke_compile]
            v = [(n.replace("GPU-rendered", "device-rendered"), *rest) for n, *rest in v]
        return v

    def part_train(self, part, deadline):
        overrides = SMOKE_OVERRIDES if self.mode == "smoke" else []
        if self.mode == "smoke" and not self.args.smoke_compile:
            part["notes"].append("compiled variants not run in cpu-smoke (--smoke-compile runs them)")
        variants = self._variants()
        part["variants"] = []
        wlist = []
        for i, (name, backend, comp, amp, render) in enumerate(variants):
            wlist.append({"name": name, "preset": "gpu", "overrides": overrides, "device": self.device,
                          "backend": backend, "compile": comp, "amp": amp, "render_on_device": render,
                          "warmup": 3 if self.mode == "gpu" else 1, "measure_s": 0.5, "min_steps": 2, "max_steps": 200})
        if self.mode == "smoke":  # one process for all (each process start costs a torch import)
            rec, data = self.worker("train", "variants", "train_many", {"variants": wlist}, deadline - time.time())
            self._status_of(part, rec, "train worker")
            for w, d in zip(wlist, data.get("variants", [])):
                d.setdefault("variant", w["name"])
                d["status"] = "ok" if "images_per_s" in d else "failed"
                d["log"] = rec["log"]
                part["variants"].append(d)
                if d["status"] != "ok":
                    self._worse(part, "failed", f"variant {w['name']!r}: {d.get('error', 'no result')}")
            if len(part["variants"]) < len(wlist):
                self._worse(part, "partial", f"{len(wlist) - len(part['variants'])} variants not run")
        for i, wargs in enumerate(wlist if self.mode == "gpu" else []):
            name = wargs["name"]
            left = deadline - time.time()
            if left < 8:
                part["notes"].append(f"variant {name!r} not run: part budget spent")
                self._worse(part, "partial")
                continue
            weights = [3 if w["compile"] else 1 for w in wlist[i:]]
            budget = min(left, max(left * weights[0] / sum(weights), 60 if wargs["compile"] else 25))
            wargs.update(measure_s=min(5.0, budget * 0.25), min_steps=5)
            rec, data = self.worker("train", "v%d" % i, "train_variant", wargs, budget)
            data.setdefault("variant", name)
            data["status"] = "timeout" if rec["timed_out"] else ("ok" if rec["rc"] == 0 and "images_per_s" in data else "failed")
            data["log"] = rec["log"]
            part["variants"].append(data)
            if data["status"] != "ok":
                self._worse(part, "failed" if data["status"] == "failed" else "timeout",
                            f"variant {name!r}: {data['status']} (log {rec['log']})")
        ok = {v["variant"]: v for v in part["variants"] if v.get("status") == "ok"}
        if "fused bf16" in ok and "reference bf16" in ok:
            a, b = ok["fused bf16"]["first_loss"], ok["reference bf16"]["first_loss"]
            part["first_loss_rel_diff"] = abs(a - b) / max(abs(b), 1e-12)
            if part["first_loss_rel_diff"] > 2e-2:
                self._worse(part, "failed", f"first-step losses of fused and reference differ by "
                                            f"{part['first_loss_rel_diff']:.2e} (same weights, batch and warps)")

    def part_data(self, part, deadline):
        ncpu = os.cpu_count() or 2
        if self.mode == "gpu":
            wargs = {"size": 128, "batch": 32, "device": "cuda", "measure_s": 2.5,
                     "workers": sorted({4, max(4, ncpu - 2)}), "device_batches": [32, 128]}
        else:
            wargs = {"size": 32, "batch": 4, "device": "cpu", "measure_s": 0.3, "workers": [1], "device_batches": [4]}
        rec, data = self.worker("data", "render", "data", wargs, deadline - time.time())
        self._status_of(part, rec, "data worker")
        part["data"] = data
        dvc = data.get("device_vs_cpu")
        if dvc and dvc["image_max_abs"] > 2e-2:
            self._worse(part, "failed", f"device-rendered images differ from the CPU ones by up to {dvc['image_max_abs']:.3g}")

    def part_train_cli(self, part, deadline):
        budget = deadline - time.time()
        run_dir = self.work / "runs" / "preset_gpu"
        shutil.rmtree(run_dir, ignore_errors=True)
        startup = 25 if self.mode == "gpu" else 8
        minutes = max(0.05, (budget - startup) / 60)
        cmd = [sys.executable, "-m", "fastlmk.train", "--preset", "gpu", "--no-eval", "--sample-every", "0",
               "--ckpt-every", "0", "--keep-last", "1", "--out-dir", str(self.work / "runs"), "--run-name", "preset_gpu"]
        if self.mode == "gpu":
            cmd += ["--steps", "100000", "--max-minutes", f"{minutes:.2f}", "--log-every", "10"]
        else:
            cmd += SMOKE_OVERRIDES + ["--steps", "6", "--log-every", "2", "--num-workers", "1"]
        rec = self.sh("train_cli", "run", cmd, budget)
        self._status_of(part, rec, "python -m fastlmk.train --preset gpu")
        part["max_minutes"] = round(minutes, 2) if self.mode == "gpu" else None
        rows = []
        log_csv = run_dir / "log.csv"
        if log_csv.exists():
            import csv

            with open(log_csv) as f:
                rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
            for name in ("log.csv", "config.json"):
                if (run_dir / name).exists():
                    shutil.copy(run_dir / name, self.out / "data" / f"train_cli-{name}")
            if (run_dir / "config.json").exists():
                part["num_workers"] = json.loads((run_dir / "config.json").read_text()).get("num_workers")
        part["rows"] = len(rows)
        if rows:
            steady = rows[2:] if len(rows) > 4 else rows[1:] or rows
            part["steps"] = int(rows[-1]["step"])
            part["images_per_s_median"] = statistics.median(r["images_per_s"] for r in steady)
            part["images_per_s_rows"] = [round(r["images_per_s"], 1) for r in rows]
            part["loss_first_last"] = [rows[0]["loss"], rows[-1]["loss"]]
        elif rec["rc"] == 0:
            self._worse(part, "failed", "the run wrote no log.csv rows")
        text = (self.out / rec["log"]).read_text(errors="replace")
        timing = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip().startswith("timing:")]
        if timing:
            part["timing_line"] = timing[-1]

    # ---- report ------------------------------------------------------------------------------
    def status_table(self) -> str:
        return status_table(self.report)

    def save(self):
        self.report["commands"] = self.commands
        (self.out / "report.json").write_text(json.dumps(self.report, indent=1, default=str))
        try:
            md = render_summary(self.report, self.out)
        except Exception:
            md = "# gpu_check\n\nthe summary could not be rendered:\n\n```\n" + traceback.format_exc() + "```\n"
        (self.out / "summary.md").write_text(md)
        if self.args.pack:
            pack = Path(self.args.pack)
            pack.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.out / "summary.md", pack / "summary.md")
            shutil.copy(self.out / "report.json", pack / "report.json")
            tmp = pack / "gpu_check.tar.gz.tmp"
            with tarfile.open(tmp, "w:gz") as tar:
                for sub in ("summary.md", "report.json", "commands.txt", "logs", "data"):
                    if (self.out / sub).exists():
                        tar.add(self.out / sub, arcname=f"gpu_check/{sub}")
            os.replace(tmp, pack / "gpu_check.tar.gz")


# ==============================================================================================
# the summary markdown (from report.json alone: ``--render report.json`` redoes it)
# ==============================================================================================
def status_table(rep: dict) -> str:
    lines = ["| part | status | wall | budget | notes |", "|---|---|---:|---:|---|"]
    for p in PARTS:
        r = rep["parts"].get(p, {})
        notes = "; ".join(n.splitlines()[0] for n in r.get("notes", []))[:300]
        lines.append(f"| {p} | {r.get('status', '-')} | {r.get('wall_s', '-')} s | {r.get('budget_s', '-')} s | {notes} |")
    return "\n".join(lines)


def _f(x, fmt="{:.1f}", none="-"):
    return none if x is None else fmt.format(x)


def render_summary(rep: dict, out: Path) -> str:
    smoke = rep["mode"] == "smoke"
    P = rep["parts"]
    h = rep.get("host", {})
    dev = P.get("device", {}).get("data", {})
    gpu = dev.get("gpu", {})
    L = []
    title = "fastlmk GPU check" + (" -- CPU SMOKE RUN (toy sizes on the CPU: NOT GPU figures)" if smoke else "")
    L += [f"# {title}", ""]
    if smoke:
        L += ["> This report comes from `--cpu-smoke`: every part ran on the CPU with tiny sizes to check the",
              "> script. None of its numbers is a GPU measurement or a meaningful CPU benchmark.", ""]
    L += [f"- date: {rep.get('started')} -> {rep.get('finished', '(running)')}, wall {rep.get('wall_s', '-')} s "
          f"(total budget {rep.get('total_budget_s', 0):.0f} s)",
          f"- device: {gpu.get('name', 'CPU (no GPU used)')}"
          + (f", compute capability {gpu.get('capability')}, {gpu.get('multiprocessors')} SMs, "
             f"{gpu.get('memory_GiB')} GiB, L2 {gpu.get('L2_MB')} MB" if gpu else ""),
          f"- nvidia-smi: {(h.get('nvidia_smi') or 'not available').splitlines()[-1]}",
          f"- nvcc: {' '.join(h.get('nvcc') or ['not found'])}",
          f"- host: {h.get('cpu')}, {h.get('cpu_count')} CPUs, {h.get('mem_GiB', '?')} GiB, load {h.get('loadavg')}; "
          f"{h.get('platform')}",
          f"- Python {h.get('python')}; " + ", ".join(f"{k} {v}" for k, v in dev.get("packages", {}).items() if v)
          + f"; torch CUDA {dev.get('torch_cuda')}, cuDNN {dev.get('cudnn')}",
          f"- commit: {h.get('git_commit') or 'unknown (no git)'}{' (dirty)' if h.get('git_dirty') else ''} "
          f"({h.get('git_branch') or '-'})",
          f"- command: `{rep.get('command')}`", ""]
    L += ["## Parts", "", status_table(rep), ""]
    # ceilings
    L += ["## Device ceilings (measured by this run)", ""]
    if "copy_GBps_bench" in dev:
        L += [f"- device-to-device copy: {dev['copy_GBps_bench']:.0f} GB/s (256 MiB, the benchmark tables' reference), "
              f"{_f(dev.get('copy_GBps_2GiB'), '{:.0f}')} GB/s (2 GiB); read + write bytes / time",
              f"- bf16 matrix product 8192^3, random data: {_f(dev.get('bf16_matmul_TFLOPs'), '{:.0f}')} TFLOP/s", ""]
    elif "cpu_copy_GBps" in dev:
        L += [f"- CPU stand-ins (smoke): copy {dev['cpu_copy_GBps']:.1f} GB/s, float32 1024^3 product "
              f"{dev['cpu_fp32_matmul_GFLOPs']:.1f} GFLOP/s", ""]
    else:
        L += ["- not measured (the device part did not finish)", ""]
    # build
    b = P.get("build", {})
    L += ["## Build", "", f"- how: {b.get('how', '-')}; status {b.get('status', '-')}"]
    bd = b.get("data", {})
    if bd:
        L.append(f"- fastlmk imported from {bd.get('fastlmk_file')}")
        for k, v in bd.get("backends", {}).items():
            L.append(f"- backend {k} on {v['available_on']}: {'available' if v['ok'] else 'NOT available: ' + str(v['why_not'])}")
        if bd.get("ops"):
            L += ["", "| op | backend | max abs diff vs reference | ok |", "|---|---|---:|---|"]
            for r in bd["ops"]:
                L.append(f"| {r['op']} | {r['backend']} | {_f(r.get('max_abs_diff'), '{:.2e}', r.get('error', '-'))} | "
                         f"{'yes' if r.get('ok') else 'NO'} |")
    L.append("")
    # tests
    t = P.get("tests", {})
    L += ["## Tests", ""]
    if t.get("sessions"):
        L += ["| session | collected | passed | failed | errors | skipped | not run (budget) | time |",
              "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for k, s in t["sessions"].items():
            ty = s.get("tally", {})
            L.append(f"| {k} | {ty.get('collected', '?')} | {ty.get('passed', '?')} | {ty.get('failed', '?')} | "
                     f"{ty.get('error', '?')} | {ty.get('skipped', '?')} | {ty.get('not_run', '?')} | "
                     f"{ty.get('duration_s', '?')} s |")
        for k, s in t["sessions"].items():
            ty = s.get("tally", {})
            if ty.get("failures"):
                L += ["", f"Failures in {k} (first 10; full text in {s.get('log')}):", ""]
                for fl in ty["failures"][:10]:
                    last = [ln for ln in fl["message"].splitlines() if ln.strip()][-3:]
                    L.append(f"- `{fl['nodeid']}` ({fl['when']}): " + " / ".join(x.strip()[:200] for x in last))
            if ty.get("skip_reasons"):
                L += ["", f"Skip reasons in {k}: " + "; ".join(f"{r} (x{n})" for r, n in list(ty["skip_reasons"].items())[:8])]
    else:
        L.append("- not run")
    L.append("")
    # benchmarks
    bp = P.get("bench", {})
    L += ["## Kernel benchmarks", ""]
    bj = out / "data" / "bench.json"
    if bj.exists():
        sys.path.append(str(REPO))
        from benchmarks import report as bench_report

        data = json.loads(bj.read_text())
        L += ["Method: `benchmarks/conftest.py` (answer checked against the reference first; medians; ratio > 1 = "
              "fastlmk faster; GB/s = minimal bytes / median, % of the copy bandwidth above).", ""]
        L.append(bench_report.render(data, machine=False))
        L += auto_table(bench_report.load_rows(data))
    else:
        L.append("- no results (" + "; ".join(bp.get("notes", [])) + ")" if bp else "- not run")
    for k, s in bp.get("sessions", {}).items():
        ty = s.get("tally", {})
        if ty.get("failures"):
            L += ["", f"Failed benchmarks in {k} (first 10):", ""]
            for fl in ty["failures"][:10]:
                last = [ln for ln in fl["message"].splitlines() if ln.strip()][-2:]
                L.append(f"- `{fl['nodeid']}`: " + " / ".join(x.strip()[:200] for x in last))
        if ty.get("skip_reasons"):
            L += ["", f"Skipped in {k}: " + "; ".join(f"{r} (x{n})" for r, n in list(ty["skip_reasons"].items())[:8])]
    L.append("")
    # training
    tr = P.get("train", {})
    L += ["## Training step throughput (`--preset gpu`" + (", toy sizes" if smoke else "") + ")", ""]
    vs = tr.get("variants", [])
    if vs:
        c = vs[0].get("config", {})
        L += [f"One full step of `fastlmk.train` (TPS pairs, detector x3 / generator x4 passes, loss, backward, clip, "
              f"Adam; `benchmarks/train_step.make_step`), same batch every step unless rendered on the device: "
              f"{c.get('method')}, {c.get('detector_arch')} w{c.get('detector_width')}, generator "
              f"w{c.get('generator_width')}x{c.get('generator_res')}, {c.get('image_size')} px, batch {c.get('batch_size')}, "
              f"K={c.get('num_landmarks')}, perceptual {c.get('perceptual')}, cuDNN deterministic {c.get('deterministic')}.",
              "", "| variant | status | bf16 autocast | step median | p20 | p80 | steps | images/s | first step (compile) | "
                  "peak mem | loss step 1 |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for v in vs:
            s = v.get("step_s", {})
            L.append(f"| {v['variant']} | {v.get('status')} | {'yes' if v.get('amp') else 'no'} | {_f(s.get('median'), '{:.4f} s')} | {_f(s.get('p20'), '{:.4f}')} | "
                     f"{_f(s.get('p80'), '{:.4f}')} | {s.get('n', '-')} | {_f(v.get('images_per_s'))} | "
                     f"{_f(v.get('first_step_s'), '{:.1f} s')} | {_f(v.get('peak_memory_GiB'), '{:.2f} GiB')} | "
                     f"{_f(v.get('first_loss'), '{:.5f}')} |")
        ok = {v["variant"]: v.get("images_per_s") for v in vs if v.get("status") == "ok"}
        pairs = [("fused bf16", "reference bf16"), ("fused bf16 compiled", "reference bf16 compiled"),
                 ("fused bf16 compiled", "fused bf16"), ("fused bf16", "fused fp32")]
        sp = [f"{a} vs {b}: x{ok[a] / ok[b]:.2f}" for a, b in pairs if ok.get(a) and ok.get(b)]
        if sp:
            L += ["", "Speed-ups (images/s ratios): " + "; ".join(sp)]
        if "first_loss_rel_diff" in tr:
            L += [f"First-step loss, fused vs reference (same weights, batch, warps): relative difference "
                  f"{tr['first_loss_rel_diff']:.2e}."]
    else:
        L.append("- not run")
    L.append("")
    # data
    dp = P.get("data", {}).get("data", {})
    L += ["## Data: SynthFaces rendering", ""]
    if dp:
        L += [f"{dp.get('size')} px, batch {dp.get('batch')}, {dp.get('cpu_count')} CPUs on this machine.", "",
              "| where | images/s |", "|---|---:|",
              f"| one CPU process, 1 thread | {_f(dp.get('cpu_1_thread_images_per_s'))} |"]
        for r in dp.get("loader", []):
            L.append(f"| DataLoader, {r['workers']} workers (first batch after {r['first_batch_s']:.1f} s) | "
                     f"{r['images_per_s']:.1f} |")
        L.append(f"| parameter sampling only (CPU part of device rendering) | {_f(dp.get('params_only_images_per_s'))} |")
        for r in dp.get("device_render", []):
            L.append(f"| rendered on {dp.get('device')} (`fastlmk.data.device_render`), batch {r['batch']} | "
                     f"{r['images_per_s']:.1f} |")
        d = dp.get("device_vs_cpu")
        if d:
            L += ["", f"Device vs CPU images (same indices): max |diff| {d['image_max_abs']:.2e}, mean "
                      f"{d['image_mean_abs']:.2e}, fraction of pixels off by > 1e-2: {d['image_frac_over_1e-2']:.2e}; "
                      f"landmarks max |diff| {d['landmarks_max_abs']:.2e}."]
    else:
        L.append("- not run")
    L.append("")
    # CLI run + verdict
    cl = P.get("train_cli", {})
    L += ["## `python -m fastlmk.train --preset gpu` (real data pipeline)", ""]
    if cl.get("rows"):
        limit = f"in the time limit ({cl['max_minutes']} min)" if cl.get("max_minutes") else "(a fixed step count)"
        L += [f"- {cl.get('steps')} steps {limit}, {cl.get('num_workers', '?')} DataLoader workers; median "
              f"{cl['images_per_s_median']:.1f} "
              f"images/s over the logged windows after warm-up; per window: {cl.get('images_per_s_rows')}",
              f"- loss first / last window: {cl['loss_first_last'][0]:.4f} / {cl['loss_first_last'][1]:.4f}",
              f"- {cl.get('timing_line', '')}"]
    else:
        L.append("- no log rows (" + "; ".join(cl.get("notes", [])) + ")")
    L.append("")
    L += ["## Does training wait on data?", ""] + data_verdict(P, smoke) + [""]
    L += ["## Files", "", "`report.json` (everything above, machine-readable), `commands.txt` (each command with its "
          "environment, budget, exit status and time; rerun a part with `--parts NAME`), `logs/` (one log per command), "
          "`data/` (worker JSON, pytest tallies, `bench.json` in pytest-benchmark format: "
          "`python -m benchmarks.report data/bench.json` redoes the tables).", ""]
    return "\n".join(L)


def auto_table(rows) -> list:
    """Suggested AUTO_CUDA order per op: the faster of fastlmk-cuda / fastlmk-triton, forward+backward."""
    cells: dict = {}
    for r in rows:
        if r["device"] != "cuda" or r["provider"] not in ("fastlmk-cuda", "fastlmk-triton"):
            continue
        op = r["op"].split("[")[0]
        cells.setdefault(op, {}).setdefault((r["op"], r["mode"], r["shape"]), {})[r["provider"]] = r["median"]
    if not cells:
        return []
    L = ["", "### Suggested `AUTO_CUDA` (faster of cuda / triton; forward+backward at the paper shape decides)", "",
         "| op | case | cuda | triton | faster |", "|---|---|---:|---:|---|"]
    suggestion = {}
    for op, cases in cells.items():
        for (name, mode, shape), c in sorted(cases.items()):
            if len(c) == 2:
                win = min(c, key=c.get).split("-")[1]
                L.append(f"| {name} | {mode}, {shape} | {c['fastlmk-cuda'] * 1e6:.1f} us | {c['fastlmk-triton'] * 1e6:.1f} us | "
                         f"{win} (x{max(c.values()) / min(c.values()):.2f}) |")
                if mode == "forward+backward" and shape == "paper" and op not in suggestion:
                    suggestion[op] = (win, "triton" if win == "cuda" else "cuda")
    if suggestion:
        L += ["", "```python", "AUTO_CUDA = {"] + [f"    {op!r}: {v!r}," for op, v in suggestion.items()] + ["}", "```"]
    return L


def data_verdict(P: dict, smoke: bool) -> list:
    vs = {v["variant"]: v for v in P.get("train", {}).get("variants", []) if v.get("status") == "ok"}
    dp = P.get("data", {}).get("data", {})
    cl = P.get("train_cli", {})
    demand = vs.get("fused bf16", {}).get("images_per_s")
    if demand is None:
        return ["- cannot say: the fused training-step variant did not finish."]
    L = [f"- a `--preset gpu` step with the fused ops consumes {demand:.0f} images/s when its batch is ready "
         "(fused bf16 above)."]
    loaders = dp.get("loader", [])
    for r in loaders:
        verdict = "enough" if r["images_per_s"] >= 1.1 * demand else "NOT enough: training would wait"
        L.append(f"- DataLoader with {r['workers']} workers supplies {r['images_per_s']:.0f} images/s: {verdict}.")
    dr = dp.get("device_render", [])
    if dr:
        best = max(dr, key=lambda r: r["images_per_s"])
        L.append(f"- rendering on the device supplies {best['images_per_s']:.0f} images/s (batch {best['batch']}); the "
                 "step with a batch rendered on the device every step runs at "
                 f"{_f(vs.get('fused bf16 + GPU-rendered batch', vs.get('fused bf16 + device-rendered batch', {})).get('images_per_s'), '{:.0f}')} images/s.")
    if cl.get("images_per_s_median"):
        ratio = cl["images_per_s_median"] / demand
        L.append(f"- the real run (`python -m fastlmk.train --preset gpu`, {cl.get('num_workers', '?')} workers) reached "
                 f"{cl['images_per_s_median']:.0f} images/s, {100 * ratio:.0f}% of the step's own rate: "
                 + ("training waits (on data or on the loop around the step)." if ratio < 0.85 else
                    "training does not wait noticeably."))
    if smoke:
        L.append("- (cpu-smoke: toy sizes; this only shows that the comparison is computed.)")
    return L


# ==============================================================================================
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="gpu_check_out", help="output folder (default ./gpu_check_out)")
    ap.add_argument("--pack", default="", help="also write summary.md, report.json and gpu_check.tar.gz here")
    ap.add_argument("--cpu-smoke", action="store_true", help="every part on the CPU, tiny sizes, short budgets")
    ap.add_argument("--smoke-compile", action="store_true", help="in --cpu-smoke, also run the torch.compile variants")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--skip", default="", help="comma-separated parts to leave out")
    ap.add_argument("--total-budget", type=float, default=0.0,
                    help=f"seconds for the whole run (default {TOTAL['gpu']:.0f} on a GPU, {TOTAL['smoke']:.0f} in cpu-smoke)")
    ap.add_argument("--build", choices=("pip", "editable", "none"), default=None,
                    help="pip: pip install --no-build-isolation . (GPU default); editable: the same with -e; "
                         "none: use the importable fastlmk (cpu-smoke default)")
    ap.add_argument("--wheels", default="", help="pip install --no-index --no-deps these *.whl first (e.g. kornia)")
    ap.add_argument("--commit", default="", help="the commit to record where the checkout has no .git")
    ap.add_argument("--render", metavar="REPORT_JSON", help="only re-render summary.md from a report.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--worker-args", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        sys.path.append(str(REPO))  # benchmarks/, and fastlmk where it is not installed (an installed one wins)
        WORKERS[args.worker](json.loads(args.worker_args), args.worker_out)
        return 0
    if args.render:
        rep = json.loads(Path(args.render).read_text())
        sys.stdout.write(render_summary(rep, Path(args.render).resolve().parent))
        return 0
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.skip = [p.strip() for p in args.skip.split(",") if p.strip()]
    unknown = set(args.parts + args.skip) - set(PARTS)
    if unknown:
        ap.error(f"unknown part(s) {sorted(unknown)}; parts: {', '.join(PARTS)}")
    return Check(args).run()


if __name__ == "__main__":
    sys.exit(main())
