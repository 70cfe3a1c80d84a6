"""The recipe: one place that turns the data's kind and the time budget into the run's settings.

Two questions decide how a CPU run trains, and both are answered here, once, before anything is
written:

1. **What pairs can the data give?** (:func:`for_data`, applied to the command line's config.)
   *Frames*: two frames of one face -- SynthFaces (which renders a subject several times) or a
   video data set. Then ``x`` and ``x'`` are two frames warped by one spline and differ where
   eyes, nose and mouth moved (``--pairs motion --shared-warp``), the recipe the ``cpu`` preset
   was measured with. *Stills*: one image per face -- a folder of photographs, CelebA, AFLW, or
   SynthFaces with ``--pairs warps``. Then the pairs can only be two TPS warps of that one image
   (IMM, the paper), and the ``cpu`` preset switches to :data:`STILL_RECIPE`. Keys the user gave
   (flags or ``--config``) always win; the start line names the recipe and why.

2. **What does the time budget buy on this machine?** (:func:`fit_budget`, at start-up.) With
   ``budget_fit`` (the ``cpu`` presets) and a ``max_minutes`` budget, the run times a few intra
   steps of its own model on its own data (:func:`calibrate`) and predicts the whole schedule
   (inter-intra steps cost ``INTER_INTRA_COST`` intra steps). If it fits, nothing changes: same
   machine, same seed, same threads, same result. If not, it plans the short recipe: as many steps
   as fit the budget, of the warm-up's objective (intra) when the run has a warm-up (:data:`SHORT`),
   else of its own, ending on a planned fall of the lr (``lr_anneal``, :data:`FIT_ANNEAL`), so that
   the cap never cuts it; an intra short recipe trains its first half on images of half the size
   (progressive resizing, ``early_size`` / ``early_share``, :data:`EARLY_SHARE`), whose cheaper steps
   buy more of them. The decision is written into the config (``method``, ``steps``,
   ``intra_warmup``, ``lr_anneal``, ``early_size``, ``early_share``, ``recipe_note``) with ``budget_fit`` turned off, so the
   checkpoints carry it and ``--resume`` continues the same schedule without timing again. What each
   choice gives is measured in docs/recipe.md: at half this VM's speed the short recipe ends at
   5.54 +- 0.66 % (test, 3 seeds; one third of the mean shape is 6.92), coarser than the full
   recipe at full speed (4.76 +- 0.83), and just beyond (2.24x) at 7.10 +- 0.54.
"""

from __future__ import annotations

import dataclasses
import math
import time

from fastlmk.training.config import TWO_VIEW_PAIRS, TrainConfig, size_multiple

KINDS = ("frames", "stills")
FRAME_DATASETS = ("video",)  # data sets whose items are two frames of one clip
MULTI_VIEW_DATASETS = ("synth",)  # data sets that render a subject several times (frames on request)

# The cpu preset on stills: two IMM warps of one image [ours: the warp jitter and terms of the cpu
# preset stay]. Measured on SynthFaces aligned stills (README "Measured results"); see docs/training.md.
STILL_RECIPE = dict(pairs="warps", shared_warp=False)
# What the cpu preset's budget buys on stills, and what ~45 minutes buy (the start line says it; README
# "Measured results" 6; the 60-minute learning curves of docs/recipe.md, test split, 3 seeds):
STILL_BUDGET_RESULT = ("what this budget buys on stills: coarse points (SynthFaces `aligned` stills, this recipe: "
                       "SAIC 14.8 +- 2.1 %, 0.71 of the mean shape, 3 seeds; two frames of one face: 0.23); "
                       "~45 min reach one third of the mean shape (--steps 2800 --max-minutes 0: 6.3 +- 0.4 % at one "
                       "thread, 3 seeds; docs/recipe.md) -- video of the same faces learns far more in the same time "
                       "(--dataset video)")

# An inter-intra step's cost in intra steps (two detector and four generator passes instead of
# one and one): measured with motion pairs, 0.49 vs 1.05 s/step, 2 threads (docs/training.md, WMA0).
INTER_INTRA_COST = 2.15
# The short recipe (fit_budget): when the whole schedule does not fit the budget, a run with an intra
# warm-up trains with the warm-up's objective throughout -- as many intra steps as fit, ending on the
# lr fall below -- rather than being cut by the cap or shrunk. Per second of training an intra step
# (2.15x cheaper) learns more than an inter-intra step at these budgets. Val split (docs/recipe.md):
# at issue 22's 2-thread speed (0.73 s per intra step) 1,090 intra steps gave 7.61 / 5.47 (seeds 0 / 1)
# where the schedule cut by the cap at step 1,070 gave 10.52 and 750 + 150 steps with the lr fall 9.38
# (seed 0); at half this VM's speed (0.92 s) 850 intra steps gave 10.26 / 7.83 where the former 48 px
# rung gave 10.56 / 9.84 (seeds 0 / 1) and 650 + 100 steps at 64 px with the fall 12.04 (seed 0).
SHORT = dict(method="intra", intra_warmup=0)
# A fitted run ends on a planned fall of the lr over its last FIT_ANNEAL share of steps (lr_anneal)
# instead of the constant lr: on the val split, at ~0.6x the default's compute, it gained 0.9-2.0
# points on each of three schedules (docs/recipe.md). A schedule that fits is left alone (the
# default's result, measured with the constant lr, stays what it was).
FIT_ANNEAL = 0.3
# Progressive resizing [ours]: a fitted short recipe trains its first EARLY_SHARE of the steps on the
# images resized to EARLY_RATIO of their size (32 px for the cpu preset's 64), where a step costs
# EARLY_FIXED + (1 - EARLY_FIXED) x (the share of the pixels) of a full one: the part that does not
# scale with the pixels (rendering the batch at full size, the optimizer, the small layers) is ~14 %
# (interleaved, one core, channels_last: 0.35x at 32 px, 0.48x at 40, 0.63x at 48; the model gives
# 0.355 / 0.476 / 0.624). The steps it saves buy more steps. Val split, the 2x budget (docs/recipe.md,
# seeds 0 / 1): 1400 steps, the first 50 % at 32 px, 6.64 / 5.51; 1250 steps, 40 % at 32 px,
# 6.39 / 7.24; 1550 steps, 60 %, 6.60 (seed 0); 1150 steps, 50 % at 48 px, 9.11 (seed 0); against
# 10.26 / 7.83 for 850 full-size steps (the plan before). Test, 3 seeds (README "Measured results" 4):
# 5.54 +- 0.66 at 2x (1400 steps), 4.31 +- 0.32 at 1.6x (1600), 7.10 +- 0.54 at 2.24x (1250).
EARLY_RATIO = 0.5
EARLY_SHARE = 0.5
EARLY_FIXED = 0.14
EARLY_MIN = 32  # smaller early images are not planned (8 x 8 landmark maps at 32 px)
PINNED = ("image_size", "steps", "intra_warmup", "method")  # set by the user, these switch the budget fit off
ROUND = 50  # fitted step counts are multiples of this (a few ms of timing noise rarely moves them;
# schedules under 10 x ROUND steps are fitted in whole steps)
MARGIN = 0.95  # the predicted training time must fit in this share of the budget (timing noise, checkpoints)


def data_kind(dataset: str, pairs: str) -> str:
    """``frames`` when the data set gives two frames of one face with these ``pairs``, else ``stills``."""
    if dataset in FRAME_DATASETS or (dataset in MULTI_VIEW_DATASETS and pairs in TWO_VIEW_PAIRS):
        return "frames"
    return "stills"


def for_data(cfg: TrainConfig, given: set) -> TrainConfig:
    """The preset's config adapted to what the data can give (module docstring, 1). ``given``: the
    keys the user set (flags, ``--config``); those are never changed. Sets ``recipe``."""
    if cfg.preset == "cpu" and "pairs" not in given:
        if cfg.dataset in FRAME_DATASETS:
            cfg = dataclasses.replace(cfg, pairs="motion")
        elif cfg.dataset not in MULTI_VIEW_DATASETS:  # one image per face: the still recipe (below)
            cfg = dataclasses.replace(cfg, pairs=STILL_RECIPE["pairs"])
    if cfg.preset == "cpu" and cfg.pairs == "warps" and "shared_warp" not in given:  # stills, chosen or given
        cfg = dataclasses.replace(cfg, **{k: v for k, v in STILL_RECIPE.items() if k not in given})
    return dataclasses.replace(cfg, recipe=data_kind(cfg.dataset, cfg.pairs))


def why(cfg: TrainConfig) -> str:
    """The start line's words for the recipe and the reason it was chosen."""
    if cfg.recipe == "frames":
        source = ("a video data set: two frames of one clip" if cfg.dataset in FRAME_DATASETS
                  else f"{cfg.dataset} renders several frames of one face")
        return f"recipe: frames ({source}; x, x' = two frames{', one spline' if cfg.shared_warp else ''})"
    source = (f"{cfg.dataset} with --pairs warps" if cfg.dataset in MULTI_VIEW_DATASETS
              else f"{cfg.dataset} gives one image per face")
    line = f"recipe: stills ({source}; x, x' = two TPS warps of one image)"
    if cfg.preset == "cpu" and cfg.max_minutes > 0:  # what its budget buys on stills (measured with this preset)
        line += f"\n  {STILL_BUDGET_RESULT}"
    return line


def early_steps(cfg: TrainConfig) -> int:
    """How many of the first steps train on ``early_size`` images (0 when off)."""
    return round(cfg.early_share * cfg.steps) if cfg.early_size > 0 else 0


def size_cost(size: int, full: int) -> float:
    """A step's time on ``size`` px images, in steps on ``full`` px images (EARLY_FIXED's model)."""
    return EARLY_FIXED + (1.0 - EARLY_FIXED) * (size / full) ** 2


def step_cost(cfg: TrainConfig, step: int) -> float:
    """The time of 0-based ``step`` in intra steps at full size: an inter-intra step costs
    INTER_INTRA_COST of them, a step in the early phase ``size_cost`` of its full-size self."""
    cost = 1.0 if cfg.method == "intra" or step < cfg.intra_warmup else INTER_INTRA_COST
    return cost * (size_cost(cfg.early_size, cfg.image_size) if step < early_steps(cfg) else 1.0)


def predicted_seconds(cfg: TrainConfig, per_intra_step: float, start: int = 0) -> float:
    """Training time from step ``start`` to ``cfg.steps`` at ``per_intra_step`` seconds per intra step
    (at full size)."""
    early, warm = early_steps(cfg), min(cfg.intra_warmup, cfg.steps) if cfg.method != "intra" else cfg.steps
    # the steps fall into at most four kinds (early or not, intra or not): count each span
    bounds = sorted({start, cfg.steps, *(b for b in (early, warm) if start < b < cfg.steps)})
    return per_intra_step * sum((b - a) * step_cost(cfg, a) for a, b in zip(bounds, bounds[1:]))


def schedule(cfg: TrainConfig) -> str:
    """The phases of ``cfg``'s schedule in words, e.g. ``1000 intra + 200 inter-intra steps`` or
    ``1250 intra steps (the first 500 on 32 px images)``."""
    if cfg.method == "intra" or cfg.intra_warmup <= 0:
        words = f"{cfg.steps} {cfg.method} steps"
    else:
        warm = min(cfg.intra_warmup, cfg.steps)
        words = f"{warm} intra + {cfg.steps - warm} {cfg.method} steps" if cfg.steps > warm else f"{warm} intra steps"
    if early_steps(cfg):
        words += f" (the first {early_steps(cfg)} on {cfg.early_size} px images)"
    return words


def early_plan(cfg: TrainConfig) -> dict:
    """The progressive resizing a fitted short recipe plans (EARLY_*): the user's ``early_size`` /
    ``early_share`` when given, else EARLY_RATIO of the image size for EARLY_SHARE of the steps; none
    when that size is below EARLY_MIN or not one the detector takes."""
    mult = size_multiple(cfg.detector_arch)
    size = cfg.early_size or mult * int(EARLY_RATIO * cfg.image_size // mult)
    if size < max(EARLY_MIN, mult) or size >= cfg.image_size:
        return dict(early_size=cfg.early_size, early_share=cfg.early_share)
    return dict(early_size=size, early_share=cfg.early_share or EARLY_SHARE)


def fit_budget(cfg: TrainConfig, per_intra_step: float, budget_s: float) -> TrainConfig:
    """The schedule that fits ``budget_s`` seconds of training, given an intra step of
    ``per_intra_step`` seconds (module docstring, 2). Returns the config with the decision written
    in (``budget_fit`` off, ``recipe_note`` set)."""
    full = predicted_seconds(cfg, per_intra_step)
    limit = MARGIN * budget_s
    note = (f"timed {per_intra_step:.2f} s per intra step at {cfg.image_size} px: {schedule(cfg)} take "
            f"~{full / 60:.1f} min")
    done = dict(budget_fit=False)
    if full <= limit:
        return dataclasses.replace(cfg, **done, recipe_note=f"{note}, within {budget_s / 60:g} min: kept")
    # the short recipe: the steps that fit, of the warm-up's objective when the run has one (SHORT)
    warm0 = min(cfg.intra_warmup, cfg.steps) if cfg.method == "inter-intra" else 0
    short = dict(SHORT) if 0 < warm0 < cfg.steps else {}
    intra = bool(short) or cfg.method == "intra"
    cost = 1.0 if intra else INTER_INTRA_COST
    # progressive resizing, measured with the intra recipe only (an inter-intra run keeps the user's)
    early = early_plan(cfg) if intra else dict(early_size=cfg.early_size, early_share=cfg.early_share)
    if early["early_size"]:  # the mean cost of a step over the schedule
        cost *= 1.0 - early["early_share"] * (1.0 - size_cost(early["early_size"], cfg.image_size))
    n = limit / (per_intra_step * cost)
    unit = ROUND if n >= 10 * ROUND else 1  # short (test) schedules: whole steps
    steps = max(1, unit * math.floor(n / unit))
    anneal = cfg.lr_anneal or FIT_ANNEAL  # a value the user gave is kept
    fitted = dataclasses.replace(cfg, **done, **short, **early, steps=steps, lr_anneal=anneal)
    while steps > 1 and predicted_seconds(fitted, per_intra_step) > limit:  # rounding of the early steps
        steps -= unit if steps > unit else 1
        fitted = dataclasses.replace(fitted, steps=steps)
    t = predicted_seconds(fitted, per_intra_step)
    why_short = " (the warm-up's objective throughout: per second it learns more than the inter-intra step)" if short else ""
    if early_steps(fitted) and not cfg.early_size:
        why_short += (f"; a step on {fitted.early_size} px images takes ~{size_cost(fitted.early_size, cfg.image_size):.2f}x "
                      f"one on {cfg.image_size} px: more steps in the same time")
    return dataclasses.replace(fitted, recipe_note=(
        f"{note} > {budget_s / 60:g}: {schedule(fitted)} instead{why_short}, lr falling to 0 over the last "
        f"{anneal:.0%} of the steps, ~{t / 60:.1f} min; expect coarser points than the full recipe (docs/recipe.md), "
        f"which --max-minutes 0 runs here in ~{full / 60:.0f} min"))


def calibrate(step_fn, batches, steps: int = 5) -> float:
    """Seconds per step of ``step_fn(batch)``: one untimed step (allocations), then the fastest of
    ``steps`` timed ones. The fastest, not the median: on a shared machine a neighbour's burst
    during the few seconds of timing made one run read 0.88 s per step where the next two read
    0.69 and 0.62 on the same core, and took the 48 px rung of that day's fit (12.04 %) instead of the 64 px
    schedule (4.76 %, docs/recipe.md). ``batches``: an iterator of batches (rendering is timed)."""
    step_fn(next(batches))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step_fn(next(batches))
        times.append(time.perf_counter() - t0)
    return min(times)
