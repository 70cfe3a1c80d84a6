"""Landmark evaluation: the protocol of method.md section 6, and ``python -m fastlmk.evaluate``.

An unsupervised detector finds K points that have no names. The field measures them by how well
a *linear* map from the K discovered points (2K numbers) predicts the 5 annotated landmarks
(10 numbers): the map is fitted on the training split, and the error is reported on the test
split as the mean point-to-point distance divided by the inter-ocular distance (distance between
the two annotated eye centres, landmarks 0 and 1), in percent.

Two regression variants, both reported, because papers differ:

* ``"imm"`` (Jakab et al. 2018): ``Y = X W``, no bias, no ridge (least squares; the
  minimum-norm solution when there are fewer images than 2K).
* ``"saic"`` (Sanchez & Tzimiropoulos 2019, and the seed paper's code): ``Y = X W + b`` with
  a small ridge on W. X and Y are centred (so the bias is not penalised) and the ridge is
  relative to the data: ``W = (Xc^T Xc + ridge * max_j (Xc^T Xc)_jj * I)^-1 Xc^T Yc`` with
  ``ridge = 1e-5`` by default, which makes it independent of the coordinate units.

Also: the N-shot rows (the regressor fitted on N random training images, averaged over
``repeats`` random subsets), the *backward* error (a regressor from the annotations to the
discovered points; for each test image, the mean distance between predicted and discovered
points divided by that image's annotated inter-ocular distance, in %), per-landmark errors,
the mean-shape baseline (predict the mean training shape for every test image) and a supervised
upper bound (the same detector class trained on the annotations).

Coordinates are fastlmk's normalised (x, y) in [-1, 1] on square images, so x and y have the
same unit and the ratios above are the same as in pixels.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from fastlmk._cli import UsageError, check_device, check_finite, check_output_dir, run
from fastlmk.viz import LANDMARK_NAMES

DEFAULT_SHOTS: tuple = (1, 5, 10, 100, 500, 1000, 5000, None)  # None = all training images
DEFAULT_RIDGE = 1e-5  # SAIC ridge, relative to the largest feature variance (seed code: 1e-5)
DEFAULT_REPEATS = 10  # random training subsets averaged for every N-shot row with N < all
VARIANTS = ("imm", "saic")


# --- data --------------------------------------------------------------------------------
def _collate(batch):
    """Collate a batch from a Dataset: a list of item dicts, or a dict already batched by a
    dataset's ``__getitems__`` (SynthFaces renders whole batches at once)."""
    if isinstance(batch, dict):
        return batch
    return torch.utils.data.default_collate(batch)


@torch.no_grad()
def extract_points(predict_fn: Callable[[torch.Tensor], torch.Tensor], dataset, batch_size: int = 64,
                   device="cpu", progress: bool = True, num_workers: int = 0, desc: str = "points"):
    """Run ``predict_fn`` over an annotated dataset.

    Args:
        predict_fn: images (B, 3, S, S) on ``device`` -> points (B, K, 2) in [-1, 1].
        dataset: items are dicts with "image" (3, S, S) and "landmarks" (L, 2).
        batch_size, device, num_workers: how to run it.
        progress: show a tqdm bar.

    Returns:
        (points (N, K, 2), landmarks (N, L, 2)), float32 on the CPU, in dataset order.
    """
    from tqdm.auto import tqdm

    if len(dataset) == 0:
        raise ValueError("fastlmk.evaluate.extract_points: the dataset is empty")
    device = torch.device(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=_collate, pin_memory=device.type == "cuda")
    points, landmarks = [], []
    for batch in tqdm(loader, desc=desc, disable=not progress, unit="batch", leave=False):
        if "landmarks" not in batch:
            raise ValueError("fastlmk.evaluate.extract_points: dataset items have no 'landmarks'; "
                             "evaluation needs an annotated split (e.g. mafl, aflw_*, synth)")
        images = batch["image"].to(device, non_blocking=True)
        pts = predict_fn(images)
        if not (isinstance(pts, torch.Tensor) and pts.dim() == 3 and pts.shape[0] == images.shape[0]
                and pts.shape[2] == 2):
            got = tuple(pts.shape) if isinstance(pts, torch.Tensor) else type(pts).__name__
            raise ValueError(f"fastlmk.evaluate.extract_points: predict_fn must return (B={images.shape[0]}, K, 2), "
                             f"got {got}")
        points.append(pts.detach().float().cpu())
        landmarks.append(batch["landmarks"].float().cpu())
    return torch.cat(points), torch.cat(landmarks)


# --- the regressor and the error -----------------------------------------------------------
def fit_linear(X: torch.Tensor, Y: torch.Tensor, bias: bool, ridge: float = 0.0):
    """Least squares ``Y ~ X W (+ b)`` in float64.

    Args:
        X: (N, D) inputs; Y: (N, O) targets.
        bias: fit an (unpenalised) bias b; X and Y are centred first.
        ridge: relative ridge: the penalty is ``ridge * max_j (Xc^T Xc)_jj * |W|^2``. With
            ``ridge == 0`` (or all-constant X) the minimum-norm least-squares solution is used.

    Returns:
        (W (D, O), b (O,)) float64; b is zero when ``bias`` is False.
    """
    X = X.double()
    Y = Y.double()
    if bias:
        x0, y0 = X.mean(0), Y.mean(0)
    else:
        x0, y0 = X.new_zeros(X.shape[1]), Y.new_zeros(Y.shape[1])
    Xc, Yc = X - x0, Y - y0
    C = Xc.T @ Xc  # (D, D)
    lam = ridge * float(C.diagonal().max()) if ridge > 0 and C.numel() else 0.0
    if lam > 0:
        W = torch.linalg.solve(C + lam * torch.eye(C.shape[0], dtype=C.dtype), Xc.T @ Yc)
    else:
        # gelsd: SVD based, handles rank deficiency (N < D) with the minimum-norm solution
        W = torch.linalg.lstsq(Xc.cpu(), Yc.cpu(), driver="gelsd").solution.to(X.device)
    return W, y0 - x0 @ W


def apply_linear(X: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return X.double() @ W + b


def normalised_errors(pred: torch.Tensor, target: torch.Tensor, annotations: torch.Tensor,
                      eyes: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Point-to-point distances divided by the inter-ocular distance.

    Args:
        pred, target: (N, M, 2) predicted and true points.
        annotations: (N, L, 2) annotated landmarks giving each image's inter-ocular distance,
            ``|annotations[:, eyes[0]] - annotations[:, eyes[1]]|``.

    Returns:
        (N, M) float64, in percent of the inter-ocular distance.
    """
    iod = (annotations[:, eyes[0]].double() - annotations[:, eyes[1]].double()).norm(dim=-1)  # (N,)
    bad = ~(iod > 0)
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(f"fastlmk.evaluate: image {i} has inter-ocular distance {float(iod[i])} "
                         f"(eye landmarks {eyes} coincide or are not finite)")
    d = (pred.double() - target.double()).norm(dim=-1)  # (N, M)
    return 100.0 * d / iod[:, None]


def _check_pair(name: str, pts: torch.Tensor, gt: torch.Tensor) -> None:
    for n, t in ((f"{name}_pts", pts), (f"{name}_gt", gt)):
        if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[-1] != 2:
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"fastlmk.evaluate: {n} must be a tensor of shape (N, K, 2), got {got}")
        if not torch.isfinite(t).all():
            raise ValueError(f"fastlmk.evaluate: {n} has non-finite values")
    if pts.shape[0] != gt.shape[0]:
        raise ValueError(f"fastlmk.evaluate: {name}_pts has {pts.shape[0]} images but {name}_gt has {gt.shape[0]}")
    if pts.shape[0] == 0:
        raise ValueError(f"fastlmk.evaluate: {name} split is empty")
    if gt.shape[1] < 2:
        raise ValueError(f"fastlmk.evaluate: {name}_gt needs at least the two eye landmarks, got {gt.shape[1]}")


def _variant(name: str, ridge: float) -> tuple[bool, float]:
    if name == "imm":
        return False, 0.0
    if name == "saic":
        return True, ridge
    raise ValueError(f"fastlmk.evaluate: variant must be one of {VARIANTS}, got {name!r}")


def regression_errors(train_x, train_y, test_x, test_y, test_gt, variant: str, ridge: float = DEFAULT_RIDGE):
    """Fit ``train_x -> train_y`` (both (N, *, 2)) with a variant, predict on ``test_x``, and
    return the (N_test, M) errors in % of the inter-ocular distance of ``test_gt``."""
    bias, r = _variant(variant, ridge)
    W, b = fit_linear(train_x.flatten(1), train_y.flatten(1), bias, r)
    pred = apply_linear(test_x.flatten(1), W, b).view(test_y.shape)
    return normalised_errors(pred, test_y, test_gt)


def mean_shape_baseline(train_gt: torch.Tensor, test_gt: torch.Tensor) -> float:
    """Error (% of inter-ocular distance) of predicting the mean training shape for every test image."""
    _check_pair("train", train_gt, train_gt)
    _check_pair("test", test_gt, test_gt)
    train_gt, test_gt = train_gt.detach().cpu().double(), test_gt.detach().cpu().double()
    mean = train_gt.double().mean(0, keepdim=True).expand_as(test_gt)
    return float(normalised_errors(mean, test_gt, test_gt).mean())


def evaluate_landmarks(train_pts: torch.Tensor, train_gt: torch.Tensor, test_pts: torch.Tensor,
                       test_gt: torch.Tensor, shots: Sequence[int | None] = DEFAULT_SHOTS,
                       repeats: int = DEFAULT_REPEATS, ridge: float = DEFAULT_RIDGE, seed: int = 0,
                       landmark_names: Sequence[str] | None = None) -> dict:
    """The section-6 protocol on extracted points.

    Args:
        train_pts, test_pts: (N, K, 2) discovered points; train_gt, test_gt: (N, L, 2)
            annotations (L = 5 in MAFL order; landmarks 0 and 1 are the eyes).
        shots: N-shot rows; ``None`` (or N >= number of training images) = all images.
        repeats: random training subsets averaged per row with N < all (seeded by ``seed``).
        ridge: the SAIC variant's relative ridge.

    Returns:
        A JSON-ready dict: "forward" {imm, saic} (all training images), "backward" {imm, saic},
        "nshot" [{n, label, repeats, imm: {mean, std}, saic: {mean, std}}], "per_landmark"
        {names, imm, saic}, "backward_per_point" {imm, saic}, "mean_shape", sizes, a
        "protocol" description, and "regressors" {imm, saic: {W (2K x 2L), b (2L)}} fitted on all
        training images (landmarks = points.flatten() @ W + b, normalised coordinates).
        Errors in % of inter-ocular distance.
    """
    _check_pair("train", train_pts, train_gt)
    _check_pair("test", test_pts, test_gt)
    # the regression is tiny: float64 on the CPU whatever the inputs' device
    train_pts, train_gt, test_pts, test_gt = (t.detach().cpu().double()
                                              for t in (train_pts, train_gt, test_pts, test_gt))
    if train_pts.shape[1] != test_pts.shape[1] or train_gt.shape[1] != test_gt.shape[1]:
        raise ValueError(f"fastlmk.evaluate: train and test disagree on point counts: "
                         f"{tuple(train_pts.shape)}/{tuple(train_gt.shape)} vs "
                         f"{tuple(test_pts.shape)}/{tuple(test_gt.shape)}")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"fastlmk.evaluate: repeats must be an int >= 1, got {repeats!r}")
    if not (ridge >= 0 and math.isfinite(ridge)):
        raise ValueError(f"fastlmk.evaluate: ridge must be finite and >= 0, got {ridge}")
    n_train, K = train_pts.shape[:2]
    L = train_gt.shape[1]
    if landmark_names:
        names = list(landmark_names)
    else:
        names = list(LANDMARK_NAMES) if L == 5 else [f"landmark {i}" for i in range(L)]

    # N-shot rows (the "all" row is the forward error)
    sizes = []
    for n in shots:
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise ValueError(f"fastlmk.evaluate: shots must be ints >= 1 or None (all), got {n!r}")
        size = n_train if n is None or n >= n_train else n
        if size not in sizes:
            sizes.append(size)
    if n_train not in sizes:
        sizes.append(n_train)
    sizes.sort()
    gen = torch.Generator().manual_seed(seed)
    nshot, full = [], {}
    for size in sizes:
        reps = 1 if size == n_train else repeats
        per_variant = {v: [] for v in VARIANTS}
        for _ in range(reps):
            idx = torch.randperm(n_train, generator=gen)[:size] if size < n_train else torch.arange(n_train)
            for v in VARIANTS:
                err = regression_errors(train_pts[idx], train_gt[idx], test_pts, test_gt, test_gt, v, ridge)
                per_variant[v].append(float(err.mean()))
                if size == n_train:
                    full[v] = err  # (N_test, L)
        row = {"n": size, "label": "all" if size == n_train else str(size), "repeats": reps}
        for v in VARIANTS:
            vals = torch.tensor(per_variant[v], dtype=torch.float64)
            row[v] = {"mean": float(vals.mean()), "std": float(vals.std()) if reps > 1 else 0.0}
        nshot.append(row)

    backward, backward_pp = {}, {}
    for v in VARIANTS:
        err = regression_errors(train_gt, train_pts, test_gt, test_pts, test_gt, v, ridge)  # (N_test, K)
        backward[v] = float(err.mean())
        backward_pp[v] = [float(e) for e in err.mean(0)]

    # the regressors fitted on all training images, for applying to new images (fastlmk.detect --regressor)
    regressors = {}
    for v in VARIANTS:
        bias, r = _variant(v, ridge)
        W, b = fit_linear(train_pts.flatten(1), train_gt.flatten(1), bias, r)
        regressors[v] = {"W": W.tolist(), "b": b.tolist()}

    return {
        "protocol": {
            "metric": "mean point-to-point distance / inter-ocular distance (annotated eye centres), %",
            "imm": "Y = X W, no bias, no ridge (minimum-norm least squares)",
            "saic": f"Y = X W + b, ridge {ridge:g} x max diagonal of the centred X^T X",
            "backward": "regress discovered points from annotations; mean over discovered points of the "
                        "distance / the image's annotated inter-ocular distance, %",
            "ridge": ridge,
            "repeats": repeats,
            "seed": seed,
        },
        "num_train": n_train,
        "num_test": int(test_pts.shape[0]),
        "num_points": K,
        "forward": {v: float(full[v].mean()) for v in VARIANTS},
        "backward": backward,
        "nshot": nshot,
        "per_landmark": {"names": names, **{v: [float(e) for e in full[v].mean(0)] for v in VARIANTS}},
        "backward_per_point": backward_pp,
        "mean_shape": mean_shape_baseline(train_gt, test_gt),
        "regressors": regressors,
    }


# --- supervised upper bound ------------------------------------------------------------------
def train_supervised(train_set, steps: int, arch: str = "conv", image_size: int | None = None,
                     batch_size: int = 32, lr: float = 1e-3, weight_decay: float = 0.0,
                     betas: tuple = (0.9, 0.999), device="cpu",
                     seed: int = 0, progress: bool = True, num_workers: int = 0, history: list | None = None,
                     **detector_kwargs):
    """Train ``fastlmk.training.model.Detector(num_landmarks=5, ...)`` on the annotations (upper bound).

    The loss is the MSE between the detector's soft-argmax points and the annotated landmarks
    (normalised coordinates); Adam (``lr``, ``betas``, ``weight_decay``: defaults suited to
    supervised regression, not the unsupervised run's). ``detector_kwargs`` (width, temperature,
    std, backend, ...) go to the Detector unchanged, so the bound uses the same architecture as the
    unsupervised model it is compared with (:func:`supervised_config_from` picks them, with the
    paper's sharp temperature 0.1: a supervised target needs no broad start). No augmentation. When a
    ``history`` list is given, the loss of every step is appended to it.

    Returns:
        The trained Detector, in eval mode, on ``device``.
    """
    from tqdm.auto import tqdm

    from fastlmk.training.model import Detector  # lazy: the model is not needed to evaluate points

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"fastlmk.evaluate.train_supervised: steps must be an int >= 1, got {steps!r}")
    device = torch.device(device)
    first = train_set[0]
    if "landmarks" not in first:
        raise ValueError("fastlmk.evaluate.train_supervised: train_set items have no 'landmarks'")
    size = image_size or int(first["image"].shape[-1])
    L = int(first["landmarks"].shape[0])
    torch.manual_seed(seed)
    detector = Detector(num_landmarks=L, arch=arch, image_size=size, **detector_kwargs).to(device)
    opt = torch.optim.Adam(detector.parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True,
                                         drop_last=len(train_set) > batch_size,
                                         generator=gen, num_workers=num_workers, collate_fn=_collate,
                                         pin_memory=device.type == "cuda")
    detector.train()
    it = iter(loader)
    bar = tqdm(range(steps), desc="supervised", disable=not progress, leave=False)
    for _ in bar:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        images = batch["image"].to(device, non_blocking=True)
        target = batch["landmarks"].to(device, non_blocking=True).float()
        loss = F.mse_loss(detector(images).points.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(detector.parameters(), 1.0)
        opt.step()
        loss_value = loss.item()  # note: a sync point, fine at this scale
        bar.set_postfix(loss=f"{loss_value:.2e}")
        if history is not None:
            history.append(loss_value)
    detector.eval()
    return detector


# --- the detector-level entry point ----------------------------------------------------------
def _detector_predict(detector):
    def predict(images):
        return detector(images).points
    return predict


def evaluate_detector(detector, train_set, test_set, device="cpu", out_dir=None,
                      shots: Sequence[int | None] = DEFAULT_SHOTS, batch_size: int = 64, progress: bool = True,
                      supervised_steps: int = 0, supervised_config: dict | None = None,
                      repeats: int = DEFAULT_REPEATS, ridge: float = DEFAULT_RIDGE, seed: int = 0,
                      title: str | None = None, num_workers: int = 0) -> dict:
    """Evaluate a (frozen) detector: extract points on both splits, run the protocol, and write
    ``eval.json``, ``eval.md`` and ``eval.png`` into ``out_dir`` when given.

    With ``supervised_steps > 0`` also trains the supervised upper bound
    (:func:`train_supervised` with ``supervised_config``) and adds its row ("supervised").
    The detector's train/eval mode is restored afterwards.
    """
    was_training = detector.training
    detector.eval()
    t0 = time.time()
    try:
        predict = _detector_predict(detector)
        train_pts, train_gt = extract_points(predict, train_set, batch_size, device, progress, num_workers,
                                             "train points")
        test_pts, test_gt = extract_points(predict, test_set, batch_size, device, progress, num_workers, "test points")
    finally:
        detector.train(was_training)
    results = evaluate_landmarks(train_pts, train_gt, test_pts, test_gt, shots=shots, repeats=repeats,
                                 ridge=ridge, seed=seed)
    if supervised_steps:
        cfg = dict(supervised_config or {})
        sup = train_supervised(train_set, supervised_steps, device=device, seed=seed, progress=progress,
                               num_workers=num_workers, **cfg)
        sup_pts, sup_gt = extract_points(_detector_predict(sup), test_set, batch_size, device, progress,
                                         num_workers, "supervised points")
        err = normalised_errors(sup_pts, sup_gt, sup_gt)  # direct: its 5 points are the landmarks
        results["supervised"] = {"error": float(err.mean()), "per_landmark": [float(e) for e in err.mean(0)],
                                 "steps": supervised_steps, "config": {k: v for k, v in cfg.items()
                                                                       if isinstance(v, (int, float, str, bool))}}
    results["seconds"] = round(time.time() - t0, 2)
    if out_dir is not None:
        write_results(results, out_dir, title=title)
    return results


# --- reports -------------------------------------------------------------------------------
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


# --- command line ----------------------------------------------------------------------------
DATASETS = ("synth", "mafl", "aflw_zhang", "aflw_thewlis")


def _config_get(config: dict, *keys, default=None):
    for k in keys:
        if isinstance(config, dict) and config.get(k) is not None:
            return config[k]
    return default


def detector_image_size(detector, config: dict | None) -> int:
    """Input side the detector was trained at (config "image_size", else the model's attribute)."""
    size = _config_get(config or {}, "image_size", "size")
    if size is None:
        size = getattr(detector, "image_size", None)
    return int(size or 128)


SUPERVISED_TEMPERATURE = 0.1  # the paper's soft-argmax temperature: sharp maps suit a supervised target


def supervised_config_from(detector, config: dict | None, temperature: float | None = SUPERVISED_TEMPERATURE) -> dict:
    """Detector arguments for the supervised bound: the unsupervised model's architecture
    (TrainConfig keys detector_arch, detector_width, backend, soft_argmax; else the detector's own
    attributes) with soft-argmax ``temperature`` (default the paper's 0.1; ``None`` = the run's).
    The run's own temperature can be a poor choice for supervised training: the cpu preset's 1.0
    (a broad start for unsupervised learning) did not converge in 1,500 supervised steps (37 %)."""
    cfg = {}
    keys = [("arch", "detector_arch", "arch"), ("width", "detector_width", "width"),
            ("backend", "backend", "backend"), ("mode", "soft_argmax", "mode")]
    if temperature is None:
        keys.append(("temperature", "temperature", "temperature"))
    else:
        cfg["temperature"] = float(temperature)
    for key, conf_key, attr in keys:
        v = _config_get(config or {}, conf_key)
        if v is None:
            v = getattr(detector, attr, None)
        if v is not None and isinstance(v, (int, float, str)):
            cfg[key] = v
    return cfg


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastlmk.evaluate",
        description="Evaluate a trained landmark detector with the linear-regression protocol "
                    "(error in %% of inter-ocular distance, IMM and SAIC variants, N-shot rows, "
                    "backward error, mean-shape baseline, optional supervised upper bound).")
    p.add_argument("--checkpoint", required=True,
                   help="checkpoint written by python -m fastlmk.train, or a run directory (its newest checkpoint)")
    p.add_argument("--dataset", choices=DATASETS, default=None,
                   help="annotated data set (default: the run's eval_dataset; else synth for synth, mafl for celeba)")
    p.add_argument("--data-root", default=None, help="data set folder (default: the one in the checkpoint config)")
    p.add_argument("--out", default=None, help="output folder (default: <run dir>/eval_<dataset>)")
    p.add_argument("--supervised-steps", type=int, default=0,
                   help="also train the supervised upper bound for this many steps (0: skip)")
    p.add_argument("--supervised-batch-size", type=int, default=32)
    p.add_argument("--supervised-temperature", type=float, default=SUPERVISED_TEMPERATURE,
                   help="soft-argmax temperature of the supervised bound (default: the paper's 0.1; "
                        "0 = the run's own)")
    p.add_argument("--split", choices=("test", "val"), default="test",
                   help="split to report on (synth has a val split for tuning)")
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


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
    if args.out:  # checked now, not after the whole evaluation
        check_output_dir(prog, "--out", args.out)
    from fastlmk.training.checkpoint import load_detector, resolve_checkpoint
    from fastlmk.data import build_dataset

    try:
        ckpt = Path(resolve_checkpoint(str(ckpt)))
        detector, config = load_detector(str(ckpt), map_location=device)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{prog}: error: {e}") from None
    detector.to(device)
    size = detector_image_size(detector, config)

    trained_on = str(_config_get(config, "dataset", default="synth"))
    dataset = args.dataset or _config_get(config, "eval_dataset") or (
        "mafl" if trained_on in ("celeba", "mafl") else trained_on if trained_on in DATASETS else "synth")
    if dataset not in DATASETS:
        raise UsageError(f"{prog}: error: the checkpoint's eval_dataset {dataset!r} is not one of {DATASETS}; "
                         f"pass --dataset")
    root = args.data_root or (_config_get(config, "data_root") or None if dataset != "synth" else None)
    try:
        kw = {"pose": _config_get(config, "synth_pose", default="wild")} if dataset == "synth" else {}
        train_set = build_dataset(dataset, root=root, split="train", size=size, **kw)
        test_set = build_dataset(dataset, root=root, split=args.split, size=size, **kw)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"{prog}: error: {e}") from None
    # sizes: --num-train/--num-test; else all images of a real data set (the published protocol),
    # and the run's eval_train_size/eval_test_size for SynthFaces (20k/2k images by default); 0 = all
    sized = dataset == "synth"
    n_train = args.num_train if args.num_train is not None else (
        _config_get(config, "eval_train_size", default=0) if sized else 0)
    n_test = args.num_test if args.num_test is not None else (
        _config_get(config, "eval_test_size", default=0) if sized else 0)
    if n_train:
        train_set = torch.utils.data.Subset(train_set, range(min(int(n_train), len(train_set))))
    if n_test:
        test_set = torch.utils.data.Subset(test_set, range(min(int(n_test), len(test_set))))
    out = Path(args.out) if args.out else _default_run_dir(ckpt) / f"eval_{dataset}"
    check_output_dir(prog, "--out", out)
    sup_cfg = supervised_config_from(detector, config, args.supervised_temperature or None)
    sup_cfg["batch_size"] = args.supervised_batch_size
    print(f"{prog}: {ckpt} on {dataset} ({len(train_set)} train / {len(test_set)} test images, "
          f"{size}x{size}, device {device})", file=sys.stderr)
    results = evaluate_detector(detector, train_set, test_set, device, out_dir=None, batch_size=args.batch_size,
                                progress=not args.no_progress, supervised_steps=args.supervised_steps,
                                supervised_config=sup_cfg, repeats=args.repeats, ridge=args.ridge,
                                seed=args.seed, num_workers=args.workers)
    results["checkpoint"] = str(ckpt)
    results["dataset"] = dataset
    title = f"{ckpt.name} on {dataset}"
    paths = write_results(results, out, title=title)
    print(results_markdown(results, title))
    print(f"{prog}: wrote {paths['json']}, {paths['md']}, {paths['png']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    run(main)
