"""scripts/gpu_check.py: its CPU mode runs every part and leaves a complete report, and a GPU
report (which no machine here can produce) renders with every table.

The CPU run (``--cpu-smoke``) takes ~40 s on 2 idle cores: nine short subprocesses, each with a
torch import. On a heavily loaded machine a part may run out of its budget; that is recorded as
"timeout" (allowed here), while a part that breaks is "failed" (not allowed).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gpu_check.py"
pytestmark = pytest.mark.skipif(not SCRIPT.exists(), reason="scripts/gpu_check.py is not in this checkout")

SECTIONS = ["## Parts", "## Device ceilings", "## Build", "## Tests", "## Kernel benchmarks",
            "## Training step throughput", "## Data: SynthFaces rendering", "## `python -m fastlmk.train --preset gpu`",
            "## Does training wait on data?", "## Files"]


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cpu_smoke_report_is_complete(tmp_path):
    gc = _module()
    out, pack = tmp_path / "out", tmp_path / "pack"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--cpu-smoke", "--out", str(out), "--pack", str(pack),
                           "--total-budget", "120"], capture_output=True, text=True, timeout=200, cwd=tmp_path)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    rep = json.loads((out / "report.json").read_text())
    assert rep["mode"] == "smoke" and rep.get("finished")
    status = {p: rep["parts"][p]["status"] for p in gc.PARTS}
    assert not [p for p, s in status.items() if s not in ("ok", "partial", "timeout")], (status, proc.stdout[-4000:])
    assert proc.returncode == (0 if all(s == "ok" for s in status.values()) else 1)

    # every command is recorded with its budget, exit status and log, and every log exists
    assert rep["commands"] and (out / "commands.txt").read_text().count("\n(cd ") == len(rep["commands"])
    for c in rep["commands"]:
        assert {"cmd", "rc", "timeout_s", "wall_s", "log"} <= set(c) and (out / c["log"]).exists()

    # what each part that finished must have found
    P = rep["parts"]
    if status["device"] == "ok":
        assert P["device"]["data"]["packages"]["torch"] and P["device"]["data"]["cpu_copy_GBps"] > 0
    if status["build"] == "ok":
        assert {r["op"] for r in P["build"]["data"]["ops"]} == {"soft_argmax", "gaussian_heatmaps", "tps_warp",
                                                               "tps_transform_points"}
    if status["tests"] == "ok":
        assert all(s["tally"]["passed"] + s["tally"]["skipped"] > 0 for s in P["tests"]["sessions"].values())
    if status["bench"] == "ok":
        data = json.loads((out / "data" / "bench.json").read_text())
        ops = {b["extra_info"]["op"] for b in data["benchmarks"]}
        assert {"soft_argmax[spatial]", "gaussian_heatmaps", "tps_warp", "tps_transform_points"} <= ops
    if status["train"] == "ok":
        names = [v["variant"] for v in P["train"]["variants"]]
        assert "fused bf16" in names and "reference bf16" in names
        assert all(v["images_per_s"] > 0 for v in P["train"]["variants"])
        assert P["train"]["first_loss_rel_diff"] < 1e-3
    if status["data"] == "ok":
        d = P["data"]["data"]
        assert d["device_vs_cpu"]["image_max_abs"] == 0.0  # the device path on the CPU: the same images
        assert d["loader"][0]["images_per_s"] > 0
    if status["train_cli"] == "ok":
        assert P["train_cli"]["steps"] == 6 and P["train_cli"]["images_per_s_median"] > 0

    md = (out / "summary.md").read_text()
    assert "CPU SMOKE RUN" in md and "NOT GPU figures" in md
    for s in SECTIONS:
        assert s in md, s
    # the packed copy: what a lent machine hands back
    assert (pack / "summary.md").read_text() == md
    with tarfile.open(pack / "gpu_check.tar.gz") as tar:
        names = tar.getnames()
    assert "gpu_check/summary.md" in names and "gpu_check/commands.txt" in names
    assert any(n.startswith("gpu_check/logs/") for n in names)


def _bench_entry(op, mode, shape, provider, median, gbps=None):
    info = {"op": op, "mode": mode, "shape": shape, "provider": provider, "device": "cuda", "shape_desc": "x"}
    if gbps is not None:
        info.update(achieved_GBps=gbps, copy_GBps=4000.0, fraction_of_copy=gbps / 4000.0)
    return {"extra_info": info, "stats": {"median": median, "min": median, "iqr": 0.0, "rounds": 10}}


def test_summary_of_a_gpu_report(tmp_path):
    """What a GPU run's report.json looks like (written by hand): the summary shows the
    bandwidth columns, the suggested AUTO_CUDA table and the data verdict."""
    gc = _module()
    (tmp_path / "data").mkdir()
    rows = []
    for op in ("soft_argmax[spatial]", "gaussian_heatmaps", "tps_warp", "tps_transform_points"):
        for shape in ("paper", "large"):
            rows += [_bench_entry(op, "forward+backward", shape, "reference-eager", 1e-3),
                     _bench_entry(op, "forward+backward", shape, "fastlmk-cuda", 2e-5, 900.0),
                     _bench_entry(op, "forward+backward", shape, "fastlmk-triton", 3e-5 if op != "tps_warp" else 1e-5, 600.0)]
    (tmp_path / "data" / "bench.json").write_text(json.dumps({"benchmarks": rows, "machine_info": {}}))
    variant = lambda name, ips, comp=False: {  # noqa: E731
        "variant": name, "status": "ok", "amp": "fp32" not in name, "compile": comp, "images_per_s": ips,
        "step_s": {"median": 32 / ips, "p20": 32 / ips, "p80": 32 / ips, "n": 20}, "first_step_s": 1.0,
        "first_loss": 0.5, "peak_memory_GiB": 3.2,
        "config": {"method": "inter-intra", "detector_arch": "hourglass", "detector_width": 128, "image_size": 128,
                   "batch_size": 32, "generator_width": 32, "generator_res": 6, "num_landmarks": 10,
                   "perceptual": "laplacian", "deterministic": True}}
    rep = {"mode": "gpu", "started": "2026-12-02 08:00:00 UTC", "finished": "2026-12-02 08:08:00 UTC", "wall_s": 470,
           "total_budget_s": 480, "command": "python scripts/gpu_check.py", "host": {"nvidia_smi": "name\nNVIDIA H200, 580"},
           "parts": {
               "device": {"status": "ok", "data": {"gpu": {"name": "NVIDIA H200", "capability": "9.0"}, "copy_GBps_bench": 4100.0,
                                                  "copy_GBps_2GiB": 4300.0, "bf16_matmul_TFLOPs": 780.0, "packages": {"torch": "2.11"}}},
               "build": {"status": "ok", "how": "pip", "data": {"fastlmk_file": "x", "backends": {
                   "cuda": {"available_on": "cuda", "ok": True, "why_not": None}},
                   "ops": [{"op": "tps_warp", "backend": "cuda", "max_abs_diff": 1e-6, "ok": True}]}},
               "tests": {"status": "failed", "sessions": {"cuda": {"log": "logs/tests-cuda.log", "tally": {
                   "collected": 210, "passed": 208, "failed": 1, "error": 0, "skipped": 1, "not_run": 0, "duration_s": 50,
                   "failures": [{"nodeid": "tests/test_tps_warp.py::test_x[cuda]", "when": "call",
                                 "message": "E   AssertionError: 3 of 10 elements differ"}],
                   "skip_reasons": {"kornia is not installed": 1}}}}},
               "bench": {"status": "ok", "sessions": {}},
               "train": {"status": "ok", "first_loss_rel_diff": 1e-3, "variants": [
                   variant("fused bf16", 800.0), variant("reference bf16", 400.0),
                   variant("fused bf16 + GPU-rendered batch", 700.0), variant("fused bf16 compiled", 900.0, True),
                   variant("fused fp32", 500.0)]},
               "data": {"status": "ok", "data": {"size": 128, "batch": 32, "cpu_count": 16, "device": "cuda",
                                                 "cpu_1_thread_images_per_s": 40.0,
                                                 "loader": [{"workers": 4, "images_per_s": 150.0, "first_batch_s": 1.0},
                                                            {"workers": 14, "images_per_s": 520.0, "first_batch_s": 1.2}],
                                                 "params_only_images_per_s": 9000.0,
                                                 "device_render": [{"batch": 32, "images_per_s": 6000.0}],
                                                 "device_vs_cpu": {"image_max_abs": 1e-5, "image_mean_abs": 1e-7,
                                                                   "image_frac_over_1e-2": 0.0, "landmarks_max_abs": 1e-7}}},
               "train_cli": {"status": "ok", "rows": 8, "steps": 80, "max_minutes": 0.3, "num_workers": 4,
                             "images_per_s_median": 150.0, "images_per_s_rows": [100.0, 150.0],
                             "loss_first_last": [0.5, 0.4], "timing_line": "timing: 0.2 s/step"}}}
    md = gc.render_summary(rep, tmp_path)
    assert "CPU SMOKE" not in md and "NVIDIA H200" in md and "4100 GB/s" in md and "780 TFLOP/s" in md
    assert "| GB/s | % of copy |" in md  # the bandwidth columns of benchmarks/report.py
    assert "AUTO_CUDA = {" in md and "'tps_warp': ('triton', 'cuda')" in md and "'soft_argmax': ('cuda', 'triton')" in md
    assert "test_x[cuda]" in md and "3 of 10 elements differ" in md
    assert "DataLoader with 4 workers supplies 150 images/s: NOT enough" in md
    assert "DataLoader with 14 workers supplies 520 images/s: NOT enough" in md
    assert "reached 150 images/s, 19% of the step's own rate: training waits" in md
    assert "fused bf16 vs reference bf16: x2.00" in md
    for s in SECTIONS:
        assert s in md, s


def test_budgets_leave_the_later_parts_their_minimum(tmp_path):
    gc = _module()
    for mode in ("gpu", "smoke"):  # the minimums fit in the default total
        assert sum(m for _, m in gc.BUDGETS[mode].values()) < gc.TOTAL[mode]
    args = type("A", (), {"cpu_smoke": False, "out": str(tmp_path), "total_budget": 0.0, "pack": ""})()
    check = gc.Check(args)
    later = list(gc.PARTS[2:])
    b = check.budget("build", later)
    assert b >= gc.BUDGETS["gpu"]["build"][1] - 1  # the build gets at least its minimum...
    assert b <= gc.TOTAL["gpu"] - sum(gc.BUDGETS["gpu"][p][1] for p in later) + 1  # ...and leaves the others theirs
    assert check.budget("tests", later[1:]) <= 1.5 * gc.BUDGETS["gpu"]["tests"][0]
