"""The evaluation protocol of method.md section 6: from discovered points to errors.

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
and the mean-shape baseline (predict the mean training shape for every test image). The
supervised upper bound is in :mod:`fastlmk.evaluation.supervised`.

Coordinates are fastlmk's normalised (x, y) in [-1, 1] on square images, so x and y have the
same unit and the ratios above are the same as in pixels.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from fastlmk.data.landmarks import EYES, LANDMARK_NAMES


DEFAULT_SHOTS: tuple = (1, 5, 10, 100, 500, 1000, 5000, None)  # None = all training images
DEFAULT_RIDGE = 1e-5  # SAIC ridge, relative to the largest feature variance (seed code: 1e-5)
DEFAULT_REPEATS = 10  # random training subsets averaged for every N-shot row with N < all
VARIANTS = ("imm", "saic")


# --- data --------------------------------------------------------------------------------
def collate(batch):
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
                                         collate_fn=collate, pin_memory=device.type == "cuda")
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
                      eyes: tuple[int, int] = EYES) -> torch.Tensor:
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

