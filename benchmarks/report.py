"""Turn pytest-benchmark JSON into markdown tables.

    pytest benchmarks --benchmark-only --benchmark-json=bench.json
    python -m benchmarks.report bench.json [--out table.md]

For every device: one row per (op, mode, shape, provider) with the median time, the
interquartile range, the minimum (on a shared machine the least disturbed round), the number of rounds and the ratio to reference-eager of the same
(op, mode, shape) -- ``x3.2`` means 3.2 times faster than reference-eager, ``x0.5`` twice as
slow -- plus, on CUDA, the achieved bandwidth (minimal bytes / median) and its fraction of the
measured device copy bandwidth. Then a summary: for each (op, mode, shape), how many times
faster the best fastlmk provider is than each baseline.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

OP_ORDER = ["soft_argmax[spatial]", "soft_argmax[marginal]", "soft_argmax", "gaussian_heatmaps", "tps_warp", "tps_pair_making",
            "tps_transform_points"]
MODE_ORDER = ["forward", "forward+backward"]
SHAPE_ORDER = ["paper", "large", "tiny"]
PROVIDER_ORDER = ["reference-eager", "reference-compile", "kornia", "fastlmk-cpu", "fastlmk-cuda", "fastlmk-triton"]
BASELINES = ["reference-eager", "reference-compile", "kornia"]
REFERENCE = "reference-eager"


def _rank(order, value):
    return (order.index(value), "") if value in order else (len(order), value)


def _op_rank(op):
    base = op.split(":", 1)[-1]
    return (op.startswith("overhead:"), _rank(OP_ORDER, base))


def fmt_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3g} ms"
    return f"{seconds * 1e6:.3g} us"


def fmt_ratio(r) -> str:
    if r is None:
        return ""
    return f"x{r:.3g}" if r < 100 else f"x{r:.0f}"


def load_rows(data: dict) -> list[dict]:
    rows = []
    for b in data.get("benchmarks", []):
        info = b.get("extra_info", {})
        if "op" not in info or not b.get("stats"):
            continue
        s = b["stats"]
        rows.append(dict(op=info["op"], mode=info["mode"], shape=info["shape"], provider=info["provider"],
                         device=info.get("device", "cpu"), desc=info.get("shape_desc", ""), median=s["median"], min=s["min"],
                         iqr=s["iqr"], rounds=s["rounds"], gbps=info.get("achieved_GBps"),
                         copy=info.get("copy_GBps"), frac=info.get("fraction_of_copy")))
    return rows


def _sort_key(r):
    return (_op_rank(r["op"]), _rank(MODE_ORDER, r["mode"]), _rank(SHAPE_ORDER, r["shape"]),
            _rank(PROVIDER_ORDER, r["provider"].split(" ")[0]), r["provider"])


def device_table(rows: list[dict]) -> str:
    ref = {(r["op"], r["mode"], r["shape"]): r["median"] for r in rows if r["provider"] == REFERENCE}
    gpu = any(r["gbps"] is not None for r in rows)
    head = ["op", "mode", "shape", "provider", "median", "IQR", "min", "rounds", "vs reference-eager"]
    if gpu:
        head += ["GB/s", "% of copy"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    for r in sorted(rows, key=_sort_key):
        base = ref.get((r["op"], r["mode"], r["shape"]))
        cells = [f"`{r['op']}`", r["mode"], f"{r['shape']} ({r['desc']})" if r["desc"] else r["shape"],
                 r["provider"], fmt_time(r["median"]), fmt_time(r["iqr"]), fmt_time(r["min"]), str(r["rounds"]),
                 fmt_ratio(base / r["median"]) if base else ""]
        if gpu:
            cells += [f"{r['gbps']:.0f}" if r["gbps"] is not None else "",
                      f"{100 * r['frac']:.0f}%" if r["frac"] is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_table(rows: list[dict]) -> str:
    """Speed-up of the fastest fastlmk provider over each baseline, per (op, mode, shape)."""
    cells = defaultdict(dict)
    for r in rows:
        if r["op"].startswith("overhead:"):
            continue
        cells[(r["op"], r["mode"], r["shape"])][r["provider"]] = r["median"]
    head = ["op", "mode", "shape", "best fastlmk", "median"] + [f"vs {b}" for b in BASELINES]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * 4 + ["---:"] * (len(head) - 4)) + "|"]
    for key in sorted(cells, key=lambda k: (_op_rank(k[0]), _rank(MODE_ORDER, k[1]), _rank(SHAPE_ORDER, k[2]))):
        c = cells[key]
        ours = {p: t for p, t in c.items() if p.startswith("fastlmk-")}
        if not ours:
            best, t = "(no fastlmk kernel)", None
        else:
            best = min(ours, key=ours.get)
            t = ours[best]
        ratios = [fmt_ratio(c[b] / t) if (t and b in c) else "" for b in BASELINES]
        lines.append("| " + " | ".join([f"`{key[0]}`", key[1], key[2], best, fmt_time(t) if t else ""] + ratios) + " |")
    return "\n".join(lines)


def machine_block(data: dict) -> str:
    """Where and when: date, CPU, cores/threads, versions, load average (shared machines)."""
    mi = data.get("machine_info", {})
    cpu = mi.get("cpu", {})
    lines = [f"- date: {data.get('datetime', '?')}"]
    lines.append(f"- CPU: {cpu.get('brand_raw', '?')}, {mi.get('cpu_count', cpu.get('count', '?'))} cores, "
                 f"torch threads {mi.get('torch_threads', '?')}")
    if "cuda_device" in mi:
        lines.append(f"- GPU: {mi['cuda_device']}, CUDA runtime {mi.get('cuda_runtime', '?')}, "
                     f"triton {mi.get('triton', '-')}")
    lines.append(f"- torch {mi.get('torch', '?')}, kornia {mi.get('kornia', '-')}, "
                 f"Python {mi.get('python_version', '?')}")
    commit = data.get("commit_info", {})
    if commit.get("id"):
        lines.append(f"- commit {commit['id'][:12]}{' (dirty)' if commit.get('dirty') else ''}")
    if "loadavg_at_start" in mi:
        fmt = lambda v: "/".join(f"{x:.1f}" for x in v)  # noqa: E731
        lines.append(f"- load average (1/5/15 min) at start {fmt(mi['loadavg_at_start'])}, "
                     f"at end {fmt(mi.get('loadavg_at_end', []))}")
    return "\n".join(lines) + "\n"


def render(data: dict, machine: bool = True) -> str:
    rows = load_rows(data)
    by_device = defaultdict(list)
    for r in rows:
        by_device[r["device"]].append(r)
    out = [machine_block(data)] if (machine and rows) else []
    for device in sorted(by_device, key=lambda d: (d != "cpu", d)):
        drows = by_device[device]
        main = [r for r in drows if not r["op"].startswith("overhead:")]
        overhead = [r for r in drows if r["op"].startswith("overhead:")]
        out.append(f"### {device}: fastlmk vs baselines (median; ratio > 1 = faster)\n")
        out.append(summary_table(drows) + "\n")
        if main:
            out.append(f"### {device}: all providers\n")
            out.append(device_table(main) + "\n")
        if overhead:
            out.append(f"### {device}: per-call overhead on tiny inputs\n")
            out.append(device_table(overhead) + "\n")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="file written by pytest --benchmark-json")
    ap.add_argument("--out", help="write the markdown here instead of stdout")
    args = ap.parse_args(argv)
    try:
        with open(args.json) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        ap.error(f"cannot read benchmark JSON {args.json!r}: {e}")
    text = render(data)
    if not text:
        ap.error(f"{args.json!r} holds no fastlmk benchmark results (run pytest benchmarks --benchmark-only)")
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
