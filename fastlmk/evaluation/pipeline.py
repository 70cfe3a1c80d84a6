"""A detector end to end: extract its points on both splits, run the protocol, optionally train
the supervised bound, write the report."""

from __future__ import annotations

import time
from typing import Sequence

from fastlmk.evaluation.protocol import (DEFAULT_REPEATS, DEFAULT_RIDGE, DEFAULT_SHOTS, evaluate_landmarks,
                                         extract_points, normalised_errors)
from fastlmk.evaluation.report import write_results
from fastlmk.evaluation.supervised import SupervisedSettings, describe, supervised_model, train_supervised


def detector_predict(detector):
    """``predict_fn`` of :func:`extract_points` for a Detector: images -> its points."""
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

    With ``supervised_steps > 0`` also trains the supervised upper bound and adds its row
    ("supervised", with its set-up under "config"): :func:`train_supervised` with the keywords
    ``supervised_config`` (``model``: the run's TrainConfig, ``settings``: SupervisedSettings,
    ``backend``, ``history``). The detector's train/eval mode is restored afterwards.
    """
    was_training = detector.training
    detector.eval()
    t0 = time.time()
    try:
        predict = detector_predict(detector)
        train_pts, train_gt = extract_points(predict, train_set, batch_size, device, progress, num_workers,
                                             "train points")
        test_pts, test_gt = extract_points(predict, test_set, batch_size, device, progress, num_workers, "test points")
    finally:
        detector.train(was_training)
    results = evaluate_landmarks(train_pts, train_gt, test_pts, test_gt, shots=shots, repeats=repeats,
                                 ridge=ridge, seed=seed)
    if supervised_steps:
        kw = dict(supervised_config or {})
        sup = train_supervised(train_set, supervised_steps, device=device, seed=seed, progress=progress,
                               num_workers=num_workers, **kw)
        sup_pts, sup_gt = extract_points(detector_predict(sup), test_set, batch_size, device, progress,
                                         num_workers, "supervised points")
        err = normalised_errors(sup_pts, sup_gt, sup_gt)  # direct: its 5 points are the landmarks
        settings = kw.get("settings", SupervisedSettings())
        model = supervised_model(kw.get("model"), sup.num_landmarks, sup.image_size, settings)
        results["supervised"] = {"error": float(err.mean()), "per_landmark": [float(e) for e in err.mean(0)],
                                 "steps": supervised_steps,
                                 "config": describe(model, settings, kw.get("backend", "auto"))}
    results["seconds"] = round(time.time() - t0, 2)
    if out_dir is not None:
        write_results(results, out_dir, title=title)
    return results
