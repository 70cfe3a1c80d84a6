"""Learning curves: landmark error against training wall time, per method, over seeds.

Evaluates the checkpoints that ``python -m fastlmk.train`` kept along the way (train with
``--ckpt-every N --keep-last 1000`` so that they are kept), maps each checkpoint's step to the
run's elapsed wall time (``log.csv``), and plots the SAIC forward error (method.md section 6) per
method: one thin line per seed, the mean as a thick line with a +-1 std band, and the mean-shape
baseline and a supervised upper bound as horizontal lines. Results per checkpoint are cached in
``<run>/curve.json`` so that re-plotting costs nothing.

    PYTHONPATH=. python benchmarks/learning_curves.py runs/curve-* --out docs/learning_curves.png \\
        --supervised runs/bound/eval_synth/eval.json --table docs/learning_curves.md

Also reports, for the last checkpoint of every run, the fraction of discovered points that sit on
the face (SynthFaces' head mask), and the per-seed final errors.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import math
import os
import sys

import torch

from fastlmk.training.checkpoint import list_checkpoints, load_detector
from fastlmk.training.config import TrainConfig
from fastlmk.data import build_dataset
from fastlmk.evaluate import extract_points, mean_shape_baseline, regression_errors
from fastlmk.training.recipe import INTER_INTRA_COST, predicted_seconds


def _elapsed_at(run_dir: str) -> callable:
    """step -> elapsed seconds, interpolated from log.csv."""
    with open(os.path.join(run_dir, "log.csv")) as f:
        rows = [(int(r["step"]), float(r["elapsed_s"])) for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{run_dir}/log.csv has no rows")
    rows = [(0, 0.0)] + rows

    def at(step: int) -> float:
        for (s0, t0), (s1, t1) in zip(rows, rows[1:]):
            if s0 <= step <= s1:
                return t0 + (t1 - t0) * (step - s0) / max(s1 - s0, 1)
        s0, t0 = rows[-1]
        return t0 * step / max(s0, 1)

    return at


def _modelled_at(cfg: TrainConfig, per_intra_step: float) -> callable:
    """step -> seconds the run's schedule takes to that step at ``per_intra_step`` seconds per intra
    step (inter-intra steps cost recipe.INTER_INTRA_COST of them): the time axis of runs that
    shared the machine, whose wall clock measures their neighbours as much as themselves."""
    return lambda step: predicted_seconds(dataclasses.replace(cfg, steps=step), per_intra_step)


def _pick(paths: list, n: int) -> list:
    """Up to ``n`` evenly spaced entries of ``paths``, always including the last."""
    if len(paths) <= n:
        return paths
    idx = sorted({round(i * (len(paths) - 1) / (n - 1)) for i in range(n)})
    return [paths[i] for i in idx]


@torch.no_grad()
def _on_face(det, dataset, n: int) -> float:
    """Fraction of discovered points whose nearest pixel is covered by the head (SynthFaces)."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    b = base.render(list(range(min(n, len(base)))), return_params=True)
    pts = det(b["image"]).points  # (B, K, 2) in [-1, 1]
    S = b["image"].shape[-1]
    ij = ((pts + 1) * (S - 1) / 2).round().long().clamp(0, S - 1)
    head = b["head"][:, 0]  # (B, S, S)
    cover = head[torch.arange(pts.shape[0])[:, None], ij[..., 1], ij[..., 0]]
    return float((cover > 0.5).float().mean())


def evaluate_run(run_dir: str, points: int, n_train: int, n_test: int, split: str, also_steps=(),
                 per_intra_step: float = 0.0) -> dict:
    cache_path = os.path.join(run_dir, "curve.json")
    cache = json.load(open(cache_path)) if os.path.exists(cache_path) else {}
    key = f"{split}-{n_train}-{n_test}"
    entries = cache.setdefault(key, {})
    cfg = json.load(open(os.path.join(run_dir, "config.json")))
    run_cfg = TrainConfig.from_dict(cfg, where=run_dir)
    elapsed = _modelled_at(run_cfg, per_intra_step) if per_intra_step > 0 else _elapsed_at(run_dir)
    kw = run_cfg.dataset_kwargs("synth")
    sub = lambda ds, n: torch.utils.data.Subset(ds, range(min(n, len(ds))))  # noqa: E731
    train_set = sub(build_dataset("synth", split="train", **kw), n_train)
    test_set = sub(build_dataset("synth", split=split, **kw), n_test)
    also = set(also_steps)
    every = list_checkpoints(run_dir)
    ckpts = _pick(every, points)
    extra = [c for c in every if int(os.path.basename(c)[5:13]) in also and c not in ckpts]
    ckpts = sorted(ckpts + extra)
    for i, path in enumerate(ckpts):
        name = os.path.basename(path)
        if name in entries:
            continue
        det, c = load_detector(path)
        step = int(name.split("_")[1].split(".")[0])
        predict = lambda x: det(x).points  # noqa: E731
        ptr, gtr = extract_points(predict, train_set, progress=False)
        pte, gte = extract_points(predict, test_set, progress=False)
        e = {"step": step, "elapsed_s": elapsed(step),
             "saic": float(regression_errors(ptr, gtr, pte, gte, gte, "saic").mean()),
             "imm": float(regression_errors(ptr, gtr, pte, gte, gte, "imm").mean()),
             "mean_shape": mean_shape_baseline(gtr, gte)}
        if i == len(ckpts) - 1 or step in also:
            e["on_face"] = _on_face(det, test_set, 256)
        entries[name] = e
        print(f"  {run_dir} {name}: t={e['elapsed_s'] / 60:.1f} min SAIC {e['saic']:.2f} %", file=sys.stderr, flush=True)
        with open(cache_path + ".tmp", "w") as f:
            json.dump(cache, f, indent=1)
        os.replace(cache_path + ".tmp", cache_path)
    rows = sorted((dict(r, elapsed_s=elapsed(r["step"])) for r in entries.values()), key=lambda r: r["step"])
    return {"run": run_dir, "method": cfg["method"], "seed": cfg["seed"], "config": cfg, "rows": rows}


def _interp(rows: list, t: float) -> float:
    ts = [r["elapsed_s"] for r in rows]
    if t < ts[0] or t > ts[-1] + 1e-6:
        return math.nan
    for r0, r1 in zip(rows, rows[1:]):
        if r0["elapsed_s"] <= t <= r1["elapsed_s"]:
            w = (t - r0["elapsed_s"]) / max(r1["elapsed_s"] - r0["elapsed_s"], 1e-9)
            return r0["saic"] + w * (r1["saic"] - r0["saic"])
    return rows[-1]["saic"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="run directories (with kept checkpoints)")
    p.add_argument("--points", type=int, default=8, help="checkpoints evaluated per run (evenly spaced)")
    p.add_argument("--train", type=int, default=2000, help="images to fit the regressor on")
    p.add_argument("--test", type=int, default=1000, help="images of the reported split")
    p.add_argument("--split", default="test", choices=("test", "val"))
    p.add_argument("--supervised", default="", help="eval.json holding a 'supervised' row (the upper bound)")
    p.add_argument("--out", default="docs/learning_curves.png")
    p.add_argument("--table", default="", help="also write a markdown table here")
    p.add_argument("--also-steps", type=int, nargs="*", default=[],
                   help="also evaluate the checkpoints of these steps (e.g. the default run's step count)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seconds-per-intra-step", type=float, default=0.0, metavar="S",
                   help="time axis: the schedule's predicted time at S s per intra step (an inter-intra step costs "
                        f"{INTER_INTRA_COST:g} of them) instead of the runs' wall clock (log.csv), for runs that shared the machine")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    for r in args.runs:
        if not os.path.isfile(os.path.join(r, "config.json")):
            raise SystemExit(f"error: {r} is not a run directory (no config.json)")
    runs = [evaluate_run(r, args.points, args.train, args.test, args.split, args.also_steps, args.seconds_per_intra_step)
            for r in args.runs]
    runs = [r for r in runs if r["rows"]]
    mean_shape = runs[0]["rows"][-1]["mean_shape"]
    sup = None
    if args.supervised:
        sup = json.load(open(args.supervised)).get("supervised", {}).get("error")

    methods = sorted({r["method"] for r in runs})
    t_end = min(r["rows"][-1]["elapsed_s"] for r in runs)
    grid = [t_end * i / 40 for i in range(1, 41)]
    summary = {}
    for m in methods:
        rs = [r for r in runs if r["method"] == m]
        curves = torch.tensor([[_interp(r["rows"], t) for t in grid] for r in rs], dtype=torch.float64)
        finals = torch.tensor([_interp(r["rows"], t_end) for r in rs], dtype=torch.float64)
        summary[m] = {"runs": rs, "curves": curves, "finals": finals}

    from fastlmk.viz import pyplot  # noqa: PLC0415

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {"inter-intra": "tab:blue", "intra": "tab:orange"}
    for m, s in summary.items():
        col = colours.get(m, None)
        for r in s["runs"]:
            ax.plot([x["elapsed_s"] / 60 for x in r["rows"]], [x["saic"] for x in r["rows"]], color=col, alpha=0.3, lw=0.8)
        mean, std = s["curves"].nanmean(0), torch.tensor([float(c[~c.isnan()].std()) if (~c.isnan()).sum() > 1 else math.nan
                                                           for c in s["curves"].T])
        tm = [t / 60 for t in grid]
        ax.plot(tm, mean.tolist(), color=col, lw=2.2, label=f"{m} (mean of {len(s['runs'])} seeds, band: +-1 std)")
        ax.fill_between(tm, (mean - std).tolist(), (mean + std).tolist(), color=col, alpha=0.15)
    ax.axhline(mean_shape, color="gray", ls="--", lw=1.2, label=f"mean shape ({mean_shape:.1f} %)")
    ax.axhline(mean_shape / 3, color="gray", ls=":", lw=1.0, label=f"target: mean shape / 3 ({mean_shape / 3:.1f} %)")
    if sup is not None:
        ax.axhline(sup, color="tab:green", ls="-.", lw=1.2, label=f"supervised upper bound ({sup:.1f} %)")
    ax.set_xlabel("training time (min)" + (f", modelled at {args.seconds_per_intra_step:g} s per intra step"
                                             if args.seconds_per_intra_step else ", wall clock"))
    ax.set_ylabel(f"SAIC forward error, % IOD ({args.split} split)")
    ax.set_ylim(0, max(mean_shape * 1.15, 5))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("SynthFaces: landmark error vs training time")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}", file=sys.stderr)

    lines = [f"SAIC forward error (% IOD, {args.split} split, {args.train} / {args.test} images) at equal training time "
             f"({t_end / 60:.1f} min, the shortest run); mean-shape baseline {mean_shape:.2f} %"
             + (f", supervised bound {sup:.2f} %" if sup is not None else ""), "",
             "| method | seeds | per seed | mean | std | steps reached | points on the face |", "|---|---|---|---:|---:|---|---|"]
    for m, s in summary.items():
        f = s["finals"]
        lines.append(f"| {m} | {', '.join(str(r['seed']) for r in s['runs'])} | {', '.join(f'{v:.2f}' for v in f.tolist())} | "
                     f"{float(f.mean()):.2f} | {float(f.std()) if len(f) > 1 else float('nan'):.2f} | "
                     f"{', '.join(str(r['rows'][-1]['step']) for r in s['runs'])} | "
                     f"{', '.join(format(r['rows'][-1].get('on_face', float('nan')), '.0%') for r in s['runs'])} |")
    lines.append("")
    for m, s in summary.items():  # when the mean curve first reaches one third of the mean shape
        mean = s["curves"].nanmean(0).tolist()
        hit = next((t for t, v in zip(grid, mean) if v <= mean_shape / 3), None)
        lines.append(f"{m}: the mean of {len(s['runs'])} seeds reaches one third of the mean shape "
                     f"({mean_shape / 3:.2f} %) " + (f"at ~{hit / 60:.0f} min" if hit is not None
                                                     else f"nowhere up to {t_end / 60:.0f} min (lowest {min(v for v in mean if v == v):.2f} %)"))
    if len(summary) == 2:
        (m1, s1), (m2, s2) = summary.items()
        d = s1["finals"].mean() - s2["finals"].mean()
        se = math.sqrt(float(s1["finals"].var()) / len(s1["finals"]) + float(s2["finals"].var()) / len(s2["finals"])) \
            if len(s1["finals"]) > 1 and len(s2["finals"]) > 1 else math.nan
        lines += ["", f"difference {m1} - {m2}: {float(d):+.2f} points (standard error {se:.2f})"]
    text = "\n".join(lines)
    print(text)
    if args.table:
        with open(args.table, "w") as fh:
            fh.write(text + "\n")


if __name__ == "__main__":
    main()
