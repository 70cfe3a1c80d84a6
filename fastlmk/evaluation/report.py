"""The evaluation report: eval.md (markdown tables), eval.json and eval.png."""

from __future__ import annotations

import json
from pathlib import Path

from fastlmk.evaluation.protocol import VARIANTS


def _fmt(row_v: dict, reps: int) -> str:
    return f"{row_v['mean']:.2f} ± {row_v['std']:.2f}" if reps > 1 else f"{row_v['mean']:.2f}"


def results_markdown(results: dict, title: str | None = None) -> str:
    """The evaluation as a markdown report (tables)."""
    K, ntr, nte = results["num_points"], results["num_train"], results["num_test"]
    ridge = results["protocol"]["ridge"]
    reps = results["protocol"]["repeats"]
    lines = [f"# {title or 'Landmark evaluation'}", "",
             f"Test error in % of the inter-ocular distance (lower is better): a linear regressor from the "
             f"K = {K} discovered points to the {len(results['per_landmark']['names'])} annotated landmarks "
             f"is fitted on "
             f"N training images ({ntr} in all) and applied to the {nte} test images. "
             f"IMM variant: no bias, no ridge. SAIC variant: bias + ridge ({ridge:g} x the largest feature "
             f"variance). "
             f"Rows with N < all: mean ± std over {reps} random training subsets.", "",
             "| training images N | IMM (no bias) | SAIC (bias + ridge) |", "|---:|---:|---:|"]
    for row in results["nshot"]:
        label = f"all ({row['n']})" if row["label"] == "all" else row["label"]
        lines.append(f"| {label} | {_fmt(row['imm'], row['repeats'])} | {_fmt(row['saic'], row['repeats'])} |")
    lines += ["", "| reference row | error % |", "|---|---:|",
              f"| forward error (all training images), IMM / SAIC | "
              f"{results['forward']['imm']:.2f} / {results['forward']['saic']:.2f} |",
              f"| backward error (discovered points from annotations), IMM / SAIC | "
              f"{results['backward']['imm']:.2f} / {results['backward']['saic']:.2f} |",
              f"| mean-shape baseline (mean training shape for every image) | {results['mean_shape']:.2f} |"]
    sup = results.get("supervised")
    if sup:
        lines.append(f"| supervised upper bound (same detector, {sup['steps']} steps on the annotations) | "
                     f"{sup['error']:.2f} |")
    names = results["per_landmark"]["names"]
    lines += ["", "Per annotated landmark (all training images):", "",
              "| variant | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for v in VARIANTS:
        lines.append(f"| {v.upper()} | " + " | ".join(f"{e:.2f}" for e in results["per_landmark"][v]) + " |")
    if sup:
        lines.append("| supervised | " + " | ".join(f"{e:.2f}" for e in sup["per_landmark"]) + " |")
    bpp = results["backward_per_point"]["saic"]
    lines += ["", "Backward error per discovered point (SAIC): "
              + ", ".join(f"{k}: {e:.2f}" for k, e in enumerate(bpp)), ""]
    return "\n".join(lines)


def write_results(results: dict, out_dir, title: str | None = None) -> dict:
    """Write eval.json, eval.md and eval.png into ``out_dir``; returns their paths."""
    from fastlmk.viz import plot_evaluation

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "eval.json", "md": out / "eval.md", "png": out / "eval.png"}
    paths["json"].write_text(json.dumps(results, indent=2) + "\n")
    paths["md"].write_text(results_markdown(results, title))
    plot_evaluation(results, paths["png"], title=title)
    return paths
