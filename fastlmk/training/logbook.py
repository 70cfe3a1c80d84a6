"""The training loop's bookkeeping, one small helper each: the loss window between two log rows,
the warm-up timing and its forecast, and :class:`RunLog`, what rank 0 writes while training
(log.csv, TensorBoard, the progress bar, sample grids, the loss curve)."""

from __future__ import annotations

import csv
import math
import os
import sys
import time
import warnings

import torch

from fastlmk.training.config import TrainConfig
from fastlmk.training.losses import LOSS_TERMS
from fastlmk.training.model import step_method
# the forecast of a run with an intra warm-up times intra steps and scales the rest by the cost of
# an inter-intra step in intra steps (measured; the budget fit uses the same figure)
from fastlmk.training.recipe import INTER_INTRA_COST, early_steps, step_cost

LOG_FIELDS = ["step", *LOSS_TERMS, "lr", "images_per_s", "elapsed_s"]  # the columns of log.csv
TIMED_STEPS = 5  # the warm-up forecast times steps 2..6 of a process (the first allocates / compiles)


def fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def loss_values(losses: dict, step: int) -> list:
    """The LOSS_TERMS of a step as floats (one CPU-GPU sync per step); a non-finite loss stops
    the run (FloatingPointError naming the step)."""
    values = torch.stack([losses[k].detach().float() for k in LOSS_TERMS]).tolist()
    if not math.isfinite(values[0]):
        raise FloatingPointError(f"loss is {values[0]} at step {step}; lower --lr or check the data")
    return values


class LossWindow:
    """Running sums of the loss terms between two log rows, with the images seen and the start time."""

    def __init__(self):
        self.sums, self.n, self.images, self.t = dict.fromkeys(LOSS_TERMS, 0.0), 0, 0, time.time()

    def add(self, values: list, images: int) -> None:
        for k, v in zip(LOSS_TERMS, values):
            self.sums[k] += v
        self.n += 1
        self.images += images

    def row(self, step: int, lr: float, t_start: float) -> dict:
        """The log row (a dict of LOG_FIELDS): mean losses over the window, images per second."""
        dt = time.time() - self.t
        return {"step": step, **{k: self.sums[k] / self.n for k in LOSS_TERMS}, "lr": lr,
                "images_per_s": self.images / max(dt, 1e-9), "elapsed_s": time.time() - t_start}


class WarmupTimer:
    """Seconds per step, measured once over steps 2..6 of this process: ``tick(step)`` after each
    step returns it at the end of step 6, else None."""

    def __init__(self, start_step: int):
        self.start_step, self.t_first = start_step, time.time()

    def tick(self, step: int) -> float | None:
        done = step - self.start_step
        if done == 1:
            self.t_first = time.time()
        return (time.time() - self.t_first) / TIMED_STEPS if done == 1 + TIMED_STEPS else None


@torch.no_grad()
def seconds_per_image(detector, images: torch.Tensor) -> float:
    """Time of one detector pass in eval mode (what the evaluation runs), per image."""
    t0 = time.time()
    detector.eval()
    detector(images)
    detector.train()
    return (time.time() - t0) / images.shape[0]


def forecast(cfg: TrainConfig, step: int, per_step: float, per_image_eval: float, world: int, elapsed: float) -> str:
    """The line printed after the warm-up: expected training and evaluation time, and where
    ``max_minutes`` will stop the run. ``per_step`` was timed at ``step``; while an inter-intra
    run is still in its intra warm-up, the steps after it are counted at ``INTER_INTRA_COST``."""
    def method(s):
        return step_method(cfg.method, cfg.intra_warmup, s)

    scaled = method(step) == "intra" and method(cfg.steps - 1) == "inter-intra"  # timed in the warm-up
    timed = step_cost(cfg, step - 1)  # the kind of step timed (inter-intra, early: recipe.step_cost)
    cost = [per_step * step_cost(cfg, s) / timed for s in range(step, cfg.steps)]
    t_left = sum(cost)
    msg = (f"timing: {per_step:.2f} s/step ({cfg.batch_size * world / per_step:.1f} images/s) -> expected "
           f"{fmt_time(t_left)} of training")
    if cfg.eval:  # one detector pass over the regressor's and the test images, twice, + 5 s
        n_eval = (cfg.eval_train_size or 20000) + (cfg.eval_test_size or 5000)
        msg += f" + ~{fmt_time(2 * per_image_eval * n_eval + 5)} of evaluation"
    if step - 1 < early_steps(cfg) < cfg.steps:  # timed on the early phase's smaller images
        msg += (f" (timed on {cfg.early_size} px images; steps {early_steps(cfg)}+ on {cfg.image_size} px, "
                f"~{step_cost(cfg, cfg.steps - 1) / timed:.1f}x the time each)")
    if scaled:
        warm_s = sum(cost[:cfg.intra_warmup - step])
        msg += (f" (steps {cfg.intra_warmup}+ inter-intra, ~{INTER_INTRA_COST:g}x an intra step; phases: intra warm-up "
                f"to step {cfg.intra_warmup} ~{fmt_time(warm_s)}, then inter-intra to step {cfg.steps} "
                f"~{fmt_time(t_left - warm_s)})")
    cap = 60 * cfg.max_minutes - elapsed
    if cfg.max_minutes and t_left > cap:
        done, t = 0, 0.0
        while t + cost[done] <= cap:
            t, done = t + cost[done], done + 1
        msg += f"; max_minutes={cfg.max_minutes:g} will stop training after about step {step + done} of {cfg.steps}"
        if cfg.method == "inter-intra" and step + done <= cfg.intra_warmup:
            msg += (f", inside the intra warm-up (to step {cfg.intra_warmup}), before any inter-intra step: "
                    "--max-minutes 0 lets the run finish")
    return msg


def open_log_csv(run_dir: str, step: int, continued: bool) -> str:
    """log.csv with its header; when a run is continued, the rows logged after ``step`` (the
    checkpoint it continues from) are dropped. Returns the path."""
    path = os.path.join(run_dir, "log.csv")
    if not continued or not os.path.exists(path):
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(LOG_FIELDS)
        return path
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, LOG_FIELDS)
        w.writeheader()
        w.writerows(rows)
    return path


def open_tensorboard(run_dir: str):
    """A SummaryWriter on ``<run>/tb``, or None (warned) when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn("--tensorboard: the tensorboard package is not installed; logging to log.csv only")
        return None
    return SummaryWriter(os.path.join(run_dir, "tb"))


def _optional(module: str):
    """Import a module written by another part of the project, or None (warned once)."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        warnings.warn(f"{module} is not available ({e}); skipping what needs it", RuntimeWarning, stacklevel=2)
        return None


class RunLog:
    """What rank 0 writes while training, into the run directory ``run_dir``: log.csv rows,
    TensorBoard scalars, the progress bar (``start_progress``), messages that do not break the
    bar, sample grids and, at the end, the loss curve."""

    def __init__(self, run_dir: str, step: int, continued: bool, tensorboard: bool):
        self.run_dir, self.bar = run_dir, None
        self.viz = _optional("fastlmk.viz")
        self.log_path = open_log_csv(run_dir, step, continued)
        self.tb = open_tensorboard(run_dir) if tensorboard else None

    def start_progress(self, step: int, total: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, initial=step, unit="step", dynamic_ncols=True, file=sys.stdout)

    def write(self, msg: str) -> None:
        (self.bar.write if self.bar else print)(msg)

    def log(self, row: dict) -> None:
        with open(self.log_path, "a", newline="") as f:
            csv.writer(f).writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in LOG_FIELDS])
        if self.tb is not None:
            for k in ("loss", "mse", "perceptual", "lr", "images_per_s"):
                self.tb.add_scalar(f"train/{k}", row[k], row["step"])
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}", refresh=False)

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def save_samples(self, step: int, rows: list) -> None:
        """``samples/step_<step>.png``: rows (title, images, points or None), the first 8 images."""
        if self.viz is None:
            return
        k = min(8, rows[0][1].shape[0])
        f = lambda t: t[:k].detach().float().cpu()  # noqa: E731
        self.viz.save_grid([f(r[1]) for r in rows], os.path.join(self.run_dir, "samples", f"step_{step:08d}.png"),
                           points=[None if r[2] is None else f(r[2]) for r in rows], row_titles=[r[0] for r in rows])

    def close_progress(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self, step: int, log_every: int, steps: int) -> None:
        """The loss curve (loss.png) once log.csv has a row, and the TensorBoard writer."""
        if self.viz is not None and step < min(log_every, steps):  # stopped before the first log row
            print(f"no loss curve yet: log.csv gets a row every {log_every} steps", flush=True)
        elif self.viz is not None:
            self.viz.plot_losses(self.log_path, os.path.join(self.run_dir, "loss.png"))
        if self.tb is not None:
            self.tb.close()
