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
   machine, same seed, same threads, same result. If not, it takes the first rung of
   :data:`LADDER` that fits -- a smaller image side with the same schedule -- and, when even the
   last rung does not fit, that rung with the warm-up and the
   inter-intra phase shortened in proportion (step counts rounded down to multiples of
   ``ROUND``), so that the run still reaches its inter-intra phase instead of being cut inside
   the warm-up. Either way it ends on a planned fall of the lr (``lr_anneal``, :data:`FIT_ANNEAL`).
   The decision is written into the config (``image_size``, ``steps``,
   ``intra_warmup``, ``lr_anneal``, ``recipe_note``) with ``budget_fit`` turned off, so the checkpoints carry
   it and ``--resume`` continues the same schedule without timing again. A schedule whose
   warm-up fits but whose inter-intra phase the cap would cut is kept (a late cut measured
   better than the smaller rung). What each choice gives is measured in docs/recipe.md: no
   rung keeps the full-speed result at half the speed.
"""

from __future__ import annotations

import dataclasses
import math
import time

from fastlmk.training.config import TWO_VIEW_PAIRS, TrainConfig

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
# Rungs of the budget fit, cheapest last: (image side, step time relative to 64 px). 48 px: an
# intra step of the cpu preset, 1 thread, interleaved in one process (benchmarks/step_variants.py:
# 0.58-0.66). Measured on the val split (docs/recipe.md): the full schedule at 48 px gave 12.37 /
# 10.69 % (seeds 0 / 1; 64 px: 6.02 / 4.53); the other ways to halve the compute were worse (batch 8:
# 18.50; 500 + 100 steps at lr 2e-3: 18.90; a cut inside the warm-up: 16.73, issue 22), and a cut late
# in the inter-intra phase better (9.49 at step ~1,075, issue 22). So the rung is taken only when the
# cap would stop the 64 px schedule before its inter-intra phase.
LADDER = ((64, 1.0), (48, 0.58))
# A fitted run that gives up part of the recipe (a smaller rung, shorter phases) ends on a planned fall
# of the lr over its last FIT_ANNEAL share of steps (lr_anneal) instead of the constant lr: on the val
# split the 48 px rung gave 10.56 / 9.84 (seeds 0 / 1) with it against 12.37 / 10.69 without, and 650 intra +
# 100 inter-intra steps at 64 px 12.04 against 14.05 (seed 0; docs/recipe.md). A schedule that fits is
# left alone (the default's result, measured with the constant lr, stays what it was).
FIT_ANNEAL = 0.3
PINNED = ("image_size", "steps", "intra_warmup")  # set by the user, these switch the budget fit off
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


def predicted_seconds(cfg: TrainConfig, per_intra_step: float, start: int = 0) -> float:
    """Training time from step ``start`` to ``cfg.steps`` at ``per_intra_step`` seconds per intra step."""
    if cfg.method == "intra":
        return per_intra_step * (cfg.steps - start)
    warm = max(0, min(cfg.intra_warmup, cfg.steps) - start)
    return per_intra_step * (warm + INTER_INTRA_COST * (cfg.steps - start - warm))


def schedule(cfg: TrainConfig) -> str:
    """The phases of ``cfg``'s schedule in words, e.g. ``1000 intra + 200 inter-intra steps``."""
    if cfg.method == "intra" or cfg.intra_warmup <= 0:
        return f"{cfg.steps} {cfg.method} steps"
    warm = min(cfg.intra_warmup, cfg.steps)
    return f"{warm} intra + {cfg.steps - warm} {cfg.method} steps" if cfg.steps > warm else f"{warm} intra steps"


def fit_budget(cfg: TrainConfig, per_intra_step: float, budget_s: float) -> TrainConfig:
    """The rung of :data:`LADDER` whose schedule fits ``budget_s`` seconds of training, given an
    intra step of ``per_intra_step`` seconds at ``cfg.image_size`` (module docstring, 2). Returns
    the config with the decision written in (``budget_fit`` off, ``recipe_note`` set)."""
    full = predicted_seconds(cfg, per_intra_step)
    limit = MARGIN * budget_s
    note = (f"timed {per_intra_step:.2f} s per intra step at {cfg.image_size} px: {schedule(cfg)} take "
            f"~{full / 60:.1f} min")
    done = dict(budget_fit=False)
    costs = dict(LADDER)
    rungs = [(size, cost / costs[cfg.image_size]) for size, cost in LADDER
             if cfg.image_size in costs and size < cfg.image_size]
    if full <= limit:
        return dataclasses.replace(cfg, **done, recipe_note=f"{note}, within {budget_s / 60:g} min: kept")
    warm0 = min(cfg.intra_warmup, cfg.steps) if cfg.method == "inter-intra" else 0
    if 0 < warm0 < cfg.steps and per_intra_step * warm0 <= limit:  # the cap stops it in the inter-intra phase
        reached = warm0 + int((limit - per_intra_step * warm0) // (per_intra_step * INTER_INTRA_COST))
        return dataclasses.replace(cfg, **done, recipe_note=(
            f"{note} > {budget_s / 60:g}: kept; max_minutes stops it near step {reached}, in its inter-intra phase "
            f"(measured better than a smaller rung there)"))
    # what the fitted run gives up, and how to get the full recipe on this machine
    full_hint = (f"; expect coarser points than the full recipe (docs/recipe.md), which "
                 f"--max-minutes 0 runs here in ~{full / 60:.0f} min")
    if not rungs:
        return dataclasses.replace(cfg, **done, recipe_note=(
            f"{note} > {budget_s / 60:g} min; no smaller rung for {cfg.image_size} px: max_minutes will stop it early"
            f"{full_hint}"))
    anneal = dict(lr_anneal=cfg.lr_anneal or FIT_ANNEAL)  # a value the user gave is kept
    said = f", lr falling to 0 over the last {anneal['lr_anneal']:.0%} of the steps"
    for size, rel in rungs:
        if full * rel <= limit:
            return dataclasses.replace(cfg, **done, **anneal, image_size=size, recipe_note=(
                f"{note} > {budget_s / 60:g}: {size} px images instead (~{rel:.2f}x the step), same schedule{said}, "
                f"~{full * rel / 60:.1f} min{full_hint}"))
    size, rel = rungs[-1]
    scale = limit / (full * rel)
    unit = ROUND if cfg.steps >= 10 * ROUND else 1  # short (test) schedules: whole steps
    warm = unit * math.floor(warm0 * scale / unit)
    rest = min(cfg.steps - warm0, max(unit, unit * math.floor((cfg.steps - warm0) * scale / unit)))
    fitted = dataclasses.replace(cfg, **done, **anneal, image_size=size, steps=warm + rest, intra_warmup=warm)
    t = predicted_seconds(fitted, per_intra_step * rel)
    return dataclasses.replace(fitted, recipe_note=(
        f"{note} > {budget_s / 60:g}, {full * rel / 60:.1f} even at {size} px: {size} px and {scale:.2f}x the steps, "
        f"{schedule(fitted)}{said}, ~{t / 60:.1f} min{full_hint}"))


def calibrate(step_fn, batches, steps: int = 5) -> float:
    """Seconds per step of ``step_fn(batch)``: one untimed step (allocations), then the fastest of
    ``steps`` timed ones. The fastest, not the median: on a shared machine a neighbour's burst
    during the few seconds of timing made one run read 0.88 s per step where the next two read
    0.69 and 0.62 on the same core, and took the 48 px rung (12.04 %) instead of the 64 px
    schedule (4.76 %, docs/recipe.md). ``batches``: an iterator of batches (rendering is timed)."""
    step_fn(next(batches))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step_fn(next(batches))
        times.append(time.perf_counter() - t0)
    return min(times)
