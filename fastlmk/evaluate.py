"""Evaluate a trained detector: ``python -m fastlmk.evaluate --checkpoint runs/<name>`` (docs/evaluation.md).

The command line of :mod:`fastlmk.evaluation` (the protocol, the supervised bound, the report);
the public names of that package are importable from here, as ever
(``from fastlmk.evaluate import evaluate_detector, evaluate_landmarks, extract_points, ...``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from fastlmk._cli import (UsageError, add_backend_argument, check_backend, check_device, check_finite,
                          check_output_dir, run)
from fastlmk.data.folder import DEFAULT_TEST_FRACTION, LANDMARKS_CSV, has_annotations
from fastlmk.evaluation.pipeline import evaluate_detector
from fastlmk.evaluation.protocol import (DEFAULT_REPEATS, DEFAULT_RIDGE, DEFAULT_SHOTS, VARIANTS, apply_linear,
                                         evaluate_landmarks, extract_points, fit_linear, mean_shape_baseline,
                                         normalised_errors, regression_errors)
from fastlmk.evaluation.report import results_markdown, write_results
from fastlmk.evaluation.supervised import SupervisedSettings, train_supervised

__all__ = ["DEFAULT_REPEATS", "DEFAULT_RIDGE", "DEFAULT_SHOTS", "VARIANTS", "SupervisedSettings", "apply_linear",
           "evaluate_detector", "evaluate_landmarks", "extract_points", "fit_linear", "main", "mean_shape_baseline",
           "normalised_errors", "regression_errors", "results_markdown", "train_supervised", "write_results"]

DATASETS = ("synth", "mafl", "aflw_zhang", "aflw_thewlis", "folder")  # annotated data sets (folder: with landmarks.csv)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastlmk.evaluate",
        description="Evaluate a trained landmark detector with the linear-regression protocol "
                    "(error in %% of inter-ocular distance, IMM and SAIC variants, N-shot rows, "
                    "backward error, mean-shape baseline, optional supervised upper bound).")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint written by python -m fastlmk.train, or a run directory (its newest checkpoint)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="annotated data set (default: the run's eval_dataset; else synth for synth, mafl for celeba, "
                        "folder for a folder with landmarks.csv)")
    p.add_argument("--data-root", default=None,
                   help="data set folder (default: the run's eval_data_root, else its data_root)")
    p.add_argument("--test-root", default=None, metavar="DIR",
                   help="folder only: report on the annotated images of this folder and fit the regressor on all "
                        "of --data-root's (default: split --data-root's annotated images, see --test-fraction)")
    p.add_argument("--test-fraction", type=float, default=None,
                   help="folder only, without --test-root: the last F of the annotated images in sorted file "
                        f"order are the test part, the others fit the regressor (default {DEFAULT_TEST_FRACTION})")
    p.add_argument("--out", default=None, help="output folder (default: <run dir>/eval_<dataset>)")
    p.add_argument("--supervised-steps", type=int, default=0,
                   help="also train the supervised upper bound for this many steps (0: skip)")
    p.add_argument("--supervised-batch-size", type=int, default=32)
    p.add_argument("--supervised-temperature", type=float, default=SupervisedSettings.temperature,
                   help="soft-argmax temperature of the supervised bound (default: the paper's 0.1; "
                        "0 = the run's own)")
    p.add_argument("--split", choices=("test", "val"), default=None,
                   help="split to report on (default test; synth has a val split for tuning; a folder has none)")
    p.add_argument("--num-train", type=int, default=None,
                   help="use only the first N training images (default: all for mafl/aflw; the run's "
                        "eval_train_size for synth; 0 = all)")
    p.add_argument("--num-test", type=int, default=None,
                   help="use only the first N test images (default: all for mafl/aflw; the run's "
                        "eval_test_size for synth; 0 = all)")
    p.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="random subsets per N-shot row")
    p.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help="relative ridge of the SAIC variant")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    add_backend_argument(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _data_set(prog: str, args, config) -> tuple[str, str | None]:
    """(data set name, root) to evaluate on: the flags, else the run's evaluation set (its
    eval_dataset / eval_data_root, else the default the training's evaluation takes)."""
    trained_on = config.dataset
    eval_root = getattr(config, "eval_data_root", "")
    run_eval = config.eval_dataset or (
        "mafl" if trained_on in ("celeba", "mafl") else
        "folder" if trained_on == "folder" and has_annotations(eval_root or config.data_root) else
        trained_on if trained_on in DATASETS and trained_on != "folder" else "synth")
    dataset = args.dataset or run_eval
    if dataset not in DATASETS:
        raise UsageError(f"{prog}: error: the checkpoint's eval_dataset {dataset!r} is not one of {DATASETS}; "
                         f"pass --dataset")
    if dataset == "synth":
        return dataset, None
    if args.data_root:
        return dataset, args.data_root
    return dataset, (eval_root if eval_root and dataset == run_eval else config.data_root) or None


def _annotated_sets(prog: str, args, config, dataset: str, root, build_dataset):
    """(set the regressor is fitted on, set the error is reported on). A folder: its annotated
    images split by --test-fraction, or all of them and --test-root's."""
    kw = config.dataset_kwargs(dataset)
    if dataset != "folder":
        for flag in ("test_root", "test_fraction"):
            if getattr(args, flag) is not None:
                raise UsageError(f"{prog}: error: --{flag.replace('_', '-')} is for --dataset folder, not {dataset}")
        return (build_dataset(dataset, root=root, split="train", **kw),
                build_dataset(dataset, root=root, split=args.split or "test", **kw))
    if args.split is not None:
        raise UsageError(f"{prog}: error: --split: a folder has no splits; its annotated images are split by "
                         f"--test-fraction, or --test-root DIR names the folder to report on")
    if args.test_root is not None and args.test_fraction is not None:
        raise UsageError(f"{prog}: error: --test-fraction splits --data-root; with --test-root it has no use")
    if args.test_fraction is not None and not 0 < args.test_fraction < 1:
        raise UsageError(f"{prog}: error: --test-fraction must be in (0, 1), got {args.test_fraction}")
    if root is None:
        raise UsageError(f"{prog}: error: --dataset folder needs --data-root DIR (a folder with {LANDMARKS_CSV})")
    for flag, d in (("--data-root", root), ("--test-root", args.test_root)):
        if d is not None and Path(d).is_dir() and not has_annotations(d):
            raise UsageError(f"{prog}: error: {flag} {d}: no {LANDMARKS_CSV}, nothing to evaluate against "
                             f"(its format: docs/data.md, 'Your own images')")
    if args.test_root is not None:
        return (build_dataset("folder", root=root, part="annotated", **kw),
                build_dataset("folder", root=args.test_root, part="annotated", **kw))
    fraction = args.test_fraction if args.test_fraction is not None else DEFAULT_TEST_FRACTION
    return (build_dataset("folder", root=root, part="fit", test_fraction=fraction, **kw),
            build_dataset("folder", root=root, part="test", test_fraction=fraction, **kw))


def _default_run_dir(checkpoint: Path) -> Path:
    parent = checkpoint.resolve().parent
    return parent.parent if parent.name == "checkpoints" else parent


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    prog = "fastlmk.evaluate"
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise UsageError(f"{prog}: error: checkpoint not found: {ckpt}")
    for name in ("num_train", "num_test", "supervised_steps", "repeats", "batch_size", "supervised_batch_size",
                 "workers"):
        v = getattr(args, name)
        low = 0 if name in ("supervised_steps", "num_train", "num_test", "workers") else 1
        if v is not None and v < low:
            raise UsageError(f"{prog}: error: --{name.replace('_', '-')} must be >= {low}, got {v}")
    check_finite(prog, "--ridge", args.ridge, low=0.0)
    device = check_device(prog, args.device)
    check_backend(prog, args.backend, device)
    if args.out:  # checked now, not after the whole evaluation
        check_output_dir(prog, "--out", args.out)
    from fastlmk.data import build_dataset
    from fastlmk.training.checkpoint import load_detector, resolve_checkpoint

    try:
        ckpt = Path(resolve_checkpoint(str(ckpt)))
        detector, config = load_detector(str(ckpt), map_location=device, backend=args.backend)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{prog}: error: {e}") from None
    detector.to(device)
    size = config.image_size

    dataset, root = _data_set(prog, args, config)
    try:
        train_set, test_set = _annotated_sets(prog, args, config, dataset, root, build_dataset)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{prog}: error: {e}") from None
    # sizes: --num-train/--num-test; else all images of a real data set (the published protocol),
    # and the run's eval_train_size/eval_test_size for SynthFaces (20k/2k images by default); 0 = all
    sized = dataset == "synth"
    n_train = args.num_train if args.num_train is not None else (config.eval_train_size if sized else 0)
    n_test = args.num_test if args.num_test is not None else (config.eval_test_size if sized else 0)
    if n_train:
        train_set = torch.utils.data.Subset(train_set, range(min(int(n_train), len(train_set))))
    if n_test:
        test_set = torch.utils.data.Subset(test_set, range(min(int(n_test), len(test_set))))
    out = Path(args.out) if args.out else _default_run_dir(ckpt) / f"eval_{dataset}"
    check_output_dir(prog, "--out", out)
    # the bound: the run's architecture, its own settings (0 = the run's temperature)
    settings = SupervisedSettings(batch_size=args.supervised_batch_size, temperature=args.supervised_temperature or None)
    sup_cfg = {"model": config, "settings": settings, "backend": args.backend}
    print(f"{prog}: {ckpt} on {dataset} ({len(train_set)} train / {len(test_set)} test images, "
          f"{size}x{size}, device {device})", file=sys.stderr)
    results = evaluate_detector(detector, train_set, test_set, device, out_dir=None, batch_size=args.batch_size,
                                progress=not args.no_progress, supervised_steps=args.supervised_steps,
                                supervised_config=sup_cfg, repeats=args.repeats, ridge=args.ridge,
                                seed=args.seed, num_workers=args.workers)
    results["checkpoint"] = str(ckpt)
    results["dataset"] = dataset
    if root is not None:
        results["data_root"] = str(root)
        if args.test_root is not None:
            results["test_root"] = str(args.test_root)
    title = f"{ckpt.name} on {dataset}"
    paths = write_results(results, out, title=title)
    print(results_markdown(results, title))
    print(f"{prog}: wrote {paths['json']}, {paths['md']}, {paths['png']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
