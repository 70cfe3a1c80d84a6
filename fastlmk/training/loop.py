"""The training loop: ``train(cfg)`` (``python -m fastlmk.train``, docs/training.md).

Top to bottom: config -> processes -> data -> model -> (resume) -> loop { TPS pairs, auxiliary
subjects, forward, loss, backward, clip, step; then the bookkeeping } -> checkpoint -> evaluate.
The step is in the middle of :func:`train`; the bookkeeping is in :mod:`fastlmk.training.logbook`,
the run directory in :mod:`fastlmk.training.rundir`.
Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m fastlmk.train ...`` (DDP, detected from
RANK / WORLD_SIZE / LOCAL_RANK); only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset

from fastlmk.training import checkpoint as ckpt_io
from fastlmk.training import recipe
from fastlmk.training.config import TWO_VIEW_PAIRS, TrainConfig, validate
from fastlmk.training.logbook import (LossWindow, RunLog, WarmupTimer, _optional, fmt_time, forecast, loss_values,
                                      seconds_per_image)
from fastlmk.training.losses import FALLBACK, TrainingLoss
from fastlmk.training.model import Detector, LandmarkAutoencoder
from fastlmk.training.rundir import default_run_dir, discard_new_run_dir, open_run_dir, plan_run_dir


# --------------------------------------------------------------------------------------------
# the training loop
# --------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> dict:
    """Train with ``cfg`` (continuing the checkpoint ``resume`` when given).

    Returns a summary dict: run_dir, step, history (list of logged rows), eval (dict or None),
    stopped ("" or why training stopped early), model (the trained LandmarkAutoencoder)."""
    validate(cfg)  # every user error is reported before anything is created or written
    procs = Processes.start(cfg)
    device = procs.device
    use_amp = cfg.amp and device.type == "cuda"  # bf16 autocast; on the CPU: plain float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    # ---- resume: the checkpoint's config wins (the caller applied command-line changes) ----
    state = ckpt_io.load_checkpoint(resume, for_resume=True) if resume else None
    if cfg.perceptual == "auto":  # (validated above: "vgg" only when the weights file exists)
        cfg = dataclasses.replace(cfg, perceptual="vgg" if cfg.vgg_weights else FALLBACK)
    run_dir, continued = plan_run_dir(cfg, state) if procs.master else ("", state is not None)

    # ---- data: images from the data set, pairs made on the training device ----
    if not cfg.recipe:  # a config made in Python: name its data kind for the start line
        cfg = dataclasses.replace(cfg, recipe=recipe.data_kind(cfg.dataset, cfg.pairs))
    dataset, make_pairs = training_data(cfg, procs.world)

    # ---- the budget: what max_minutes buys on this machine (fastlmk.training.recipe; a resumed
    # run keeps the schedule its checkpoint's config holds) ----
    if cfg.budget_fit and cfg.max_minutes > 0 and state is None:
        fitted = fit_to_budget(cfg, dataset, make_pairs, procs, autocast)
        if procs.master and not cfg.run_name and fitted.method != cfg.method:  # named after what it trains
            run_dir = default_run_dir(fitted)
        cfg = fitted

    # ---- model: detector D, generator P, one Adam over both (method.md section 4); the loss ----
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    model = LandmarkAutoencoder.from_config(cfg).to(device, memory_format=memory_format(cfg, device))
    objective = TrainingLoss.from_config(cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                 weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, cfg))
    streams = RandomStreams(cfg.seed, procs.rank, device)  # TPS warps, auxiliary subjects
    step = 0 if state is None else restore(state, model, optimizer, scheduler, streams, procs)
    core = model  # the LandmarkAutoencoder, for state dicts, clipping and the step's set-up
    if procs.ddp:
        model = DDP(model, device_ids=[procs.local_rank] if device.type == "cuda" else None)
    forward = torch.compile(model) if cfg.compile else model
    batches = batch_stream(dataset, cfg, procs, step)

    # ---- run directory (rank 0 writes everything; planned and checked above) ----
    book = None
    if procs.master:
        run_dir = open_run_dir(run_dir, continued, unique=not (cfg.run_name and state is None), cfg=cfg)
        book = RunLog(run_dir, step, continued, cfg.tensorboard)
        print(describe(cfg, run_dir, procs, step, use_amp, data_note=getattr(dataset, "summary", lambda: "")()),
              flush=True)
        if progress:
            book.start_progress(step, cfg.steps)

    def save(at_step):
        save_state(at_step, cfg, procs, run_dir, core, optimizer, scheduler, streams)

    # ---- the loop ----
    model.train()
    history, stopped, t_start = [], "", time.time()
    window, timer, last = LossWindow(), WarmupTimer(step), None
    try:  # a failure before the first checkpoint (e.g. a NaN loss at step 2) leaves no new run directory
        with StopFlag() as stop:
            while step < cfg.steps:
                images, pairs, out, losses = train_step(cfg, core, forward, objective, optimizer, make_pairs, streams,
                                                        next(batches), step, device, autocast)
                scheduler.step()
                step += 1

                # ---- bookkeeping ----
                window.add(loss_values(losses, step), images.shape[0] * procs.world)
                per_step = timer.tick(step)
                if per_step is not None and book:
                    book.write(forecast(cfg, step, per_step, seconds_per_image(core.detector, images), procs.world,
                                        time.time() - t_start))
                if step % cfg.log_every == 0 or step == cfg.steps:
                    history.append(window.row(step, scheduler.get_last_lr()[0], t_start))
                    if book:
                        book.log(history[-1])
                    window = LossWindow()
                if book:
                    book.advance()
                    if cfg.sample_every and step % cfg.sample_every == 0:
                        book.save_samples(step, core.sample_rows(pairs.x, pairs.x_prime, out))
                last = (pairs, out)
                if stop_requested(stop, cfg, t_start, procs) and step < cfg.steps:
                    stopped = stop.reason or (f"time limit ({cfg.max_minutes:g} min)" if cfg.max_minutes
                                              else "another rank stopped")
                    break
                if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                    save(step)
        if book:
            book.close_progress()
        save(step)
    except Exception:
        if book:
            book.close_progress()
            if not continued and discard_new_run_dir(run_dir):
                print(f"training failed before its first checkpoint; removed the new run directory {run_dir}",
                      file=sys.stderr, flush=True)
        raise

    # ---- wrap-up: last samples, loss curve, evaluation (rank 0) ----
    result = {"run_dir": run_dir, "step": step, "history": history, "eval": None, "stopped": stopped, "model": core}
    if book:
        if last is not None:
            book.save_samples(step, core.sample_rows(last[0].x, last[0].x_prime, last[1]))
        book.close(step, cfg.log_every, cfg.steps)
        finish(cfg, core.detector, run_dir, step, device, result)
    if procs.ddp:
        dist.barrier()
    return result


def train_step(cfg: TrainConfig, core: LandmarkAutoencoder, forward, objective: TrainingLoss, optimizer, make_pairs,
               streams: RandomStreams, batch: dict, step: int, device, autocast):
    """One optimisation step (0-based ``step``) on ``batch``; -> (images, pairs, out, losses), ``images``
    the batch's images at full size (those of ``pairs`` are ``early_size`` in the early phase)."""
    images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S) in [0, 1]
    second = batch["image2"].to(device, non_blocking=True) if "image2" in batch else None
    first = images
    if early_phase(cfg, step):  # [ours] progressive resizing: the first steps on smaller images
        first, second = (None if t is None else F.interpolate(t, size=(cfg.early_size, cfg.early_size), mode="bilinear",
                                                             antialias=True, align_corners=False) for t in (first, second))
    # 1. intra-subject pair: two random TPS warps of each image (or of two views), border masks
    pairs = make_pairs(first, generator=streams.pairs, second=second,
                       equivariance_partner=cfg.equivariance_weight > 0, shared_warp=cfg.shared_warp)
    # 2. the step's objective and auxiliary subjects: a derangement of the batch (intra: none)
    aux = core.begin_step(step, images.shape[0], streams.aux)
    # 3-4. detector and generator passes (fastlmk.training.model.LandmarkAutoencoder)
    with autocast:
        out = forward(pairs.x, pairs.x_prime, aux, pairs.x_eq)
    # 5. loss: masked MSE + perceptual on each reconstruction (+ [ours] terms), in float32
    losses = objective(out, pairs)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if cfg.grad_clip > 0:  # detector and generator clipped separately
        torch.nn.utils.clip_grad_norm_(core.detector.parameters(), cfg.grad_clip)
        torch.nn.utils.clip_grad_norm_(core.generator.parameters(), cfg.grad_clip)
    optimizer.step()
    return images, pairs, out, losses


# --------------------------------------------------------------------------------------------
# the pieces train() calls, in its order
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Processes:
    """This process in the (torchrun) group: world size, ranks, its device and CPU threads."""

    world: int
    rank: int
    local_rank: int
    device: torch.device
    threads: int

    @property
    def ddp(self) -> bool:
        return self.world > 1

    @property
    def master(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, cfg: TrainConfig) -> Processes:
        """Read RANK / WORLD_SIZE / LOCAL_RANK, pick the device, set threads and cuDNN, and join
        the process group when there are several processes."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        threads = cfg.threads or auto_threads()
        torch.set_num_threads(threads)
        if cfg.device == "auto":
            device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
        else:
            device = torch.device(cfg.device)
            if device.type == "cuda" and world > 1:
                device = torch.device(f"cuda:{local_rank}")
        if device.type == "cuda":
            torch.cuda.set_device(device)
            torch.backends.cudnn.deterministic = cfg.deterministic
            torch.backends.cudnn.benchmark = not cfg.deterministic
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(world, rank, local_rank, device, threads)


def busy_cores(sample_s: float = 0.5) -> float | None:
    """How many cores other processes keep busy *now*: the non-idle share of /proc/stat's CPU
    time over ``sample_s`` seconds, times the machine's CPU count (Linux; None elsewhere). The
    1-minute load average lags by about a minute: right after other work ends it still reads
    ~1 on an idle machine, which made a newcomer's default run take 1 thread and twice as long."""
    def totals():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle  # user..steal (guest time is already inside user)

    try:
        t0, i0 = totals()
        time.sleep(sample_s)
        t1, i1 = totals()
    except (OSError, ValueError, IndexError):
        return None
    if t1 <= t0:
        return None
    return (1.0 - (i1 - i0) / (t1 - t0)) * (os.cpu_count() or 1)


def auto_threads() -> int:
    """CPU threads for ``threads=0``: the cores not already busy (cores minus the cores other
    processes use now, rounded, at least 1; where /proc/stat is missing, the 1-minute load
    average). On a shared machine more torch threads than free cores make OpenMP's waiting
    threads spin against the neighbours: measured on the 2-core VM with one other busy process,
    2 threads took 3.3-3.6 s per default step and 1 thread 1.3-1.5 s."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = busy_cores()
    if busy is None:
        try:
            busy = os.getloadavg()[0]
        except (AttributeError, OSError):  # not available on this platform
            busy = 0.0
    return max(1, min(cores, cores - int(round(busy))))


def training_data(cfg: TrainConfig, world: int):
    """-> (the training data set, the pair maker): images from ``fastlmk.data``, pairs made on the
    training device by ``TPSPairs`` (x and x' from two views of one subject with ``pairs='views'``)."""
    from fastlmk.data import TPSPairs, ViewPairs, build_dataset  # noqa: PLC0415 (the data package is heavy)

    kw = cfg.dataset_kwargs()
    if cfg.dataset == "synth":
        kw["static_background"] = cfg.pairs in TWO_VIEW_PAIRS
        kw["static_pose"] = cfg.pairs == "motion"
        if cfg.train_length:
            kw["length"] = cfg.train_length
    if cfg.dataset == "video":  # decodes new clips into its cache (a progress bar), once
        kw["progress"] = True
    dataset = build_dataset(cfg.dataset, cfg.data_root or None, split="train", **kw)
    if cfg.pairs in TWO_VIEW_PAIRS and cfg.dataset == "synth":  # [ours] (a video data set's items are frame pairs)
        dataset = ViewPairs(dataset)
    if len(dataset) < cfg.batch_size * world:
        raise ValueError(f"dataset {cfg.dataset!r} has {len(dataset)} images, fewer than one global batch "
                         f"({cfg.batch_size} x {world} processes)")
    make_pairs = TPSPairs(grid_size=cfg.tps_grid, rotation_std=cfg.rotation_std, scale_std=cfg.scale_std,
                          translation_std=cfg.translation_std, warp_std=cfg.warp_std,
                          extra_warp_prob=cfg.extra_warp_prob, mask_margin=cfg.mask_margin, backend=cfg.backend)
    return dataset, make_pairs


def fit_to_budget(cfg: TrainConfig, dataset, make_pairs, procs: Processes, autocast) -> TrainConfig:
    """Time intra steps of a throw-away copy of this run's model on its data (the warm-up's step;
    its own random streams, before the run seeds anything) and fit the recipe to ``max_minutes``
    (:func:`fastlmk.training.recipe.fit_budget`). Several processes: not fitted (each would time
    its own share), said in the note."""
    if procs.ddp:
        return dataclasses.replace(cfg, budget_fit=False, recipe_note="budget fit skipped: several processes")
    # every step intra and at full size: what the warm-up costs (early steps: recipe.size_cost)
    probe = dataclasses.replace(cfg, intra_warmup=cfg.steps, early_size=0, early_share=0.0)
    model = LandmarkAutoencoder.from_config(probe).to(procs.device, memory_format=memory_format(cfg, procs.device))
    objective = TrainingLoss.from_config(probe).to(procs.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    streams = RandomStreams(cfg.seed + 1, procs.rank, procs.device)
    batches = batch_stream(dataset, cfg, procs, 0)
    per_step = recipe.calibrate(lambda batch: train_step(probe, model, model, objective, optimizer, make_pairs,
                                                         streams, batch, 0, procs.device, autocast), batches)
    return recipe.fit_budget(cfg, per_step, 60 * cfg.max_minutes)


def memory_format(cfg: TrainConfig, device: torch.device) -> torch.memory_format:
    """The layout of the model's weights: ``channels_last`` on the CPU for ``auto`` (oneDNN's NHWC
    convolutions; 0.82-0.91x the intra step in five interleaved runs of benchmarks/step_variants.py,
    2026-12-07), ``contiguous`` elsewhere (not measured). Only the weights are laid out: a
    convolution follows its weight's layout, and the images reach the detector through the TPS warp,
    whose kernel makes its input contiguous (converting the batch too gave the same step, bit for
    bit). The fused ops take any layout."""
    if cfg.memory_format == "channels_last" or (cfg.memory_format == "auto" and device.type == "cpu"):
        return torch.channels_last
    return torch.contiguous_format


class RandomStreams:
    """The step's own random streams, seeded per process: ``pairs`` (TPS warps, on the training
    device) and ``aux`` (auxiliary subjects, on the CPU). Checkpoints keep their states with
    torch's global ones."""

    def __init__(self, seed: int, rank: int, device: torch.device):
        self.pairs = torch.Generator(device=device).manual_seed(seed * 1009 + rank + 1)
        self.aux = torch.Generator().manual_seed(seed * 1009 + rank + 7919)

    def state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "pairs": self.pairs.get_state(), "aux": self.aux.get_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def set_state(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        self.pairs.set_state(state["pairs"])
        self.aux.set_state(state["aux"])
        if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])


def early_phase(cfg: TrainConfig, step: int) -> bool:
    """Whether 0-based ``step`` trains on ``early_size`` images (progressive resizing [ours]: the first
    ``early_share`` of the steps; recipe.EARLY_SHARE, measured in docs/recipe.md)."""
    return step < recipe.early_steps(cfg)  # (0 when early_size is 0)


def lr_factor(cfg: TrainConfig, step: int) -> float:
    """The lr multiplier of 0-based ``step``: ``lr_decay`` every ``lr_decay_every`` steps (the
    paper's step decay), times a linear fall to 0 over the last ``lr_anneal`` share of ``steps``
    [ours: a short budget ends on small steps instead of Adam's full-size noise]."""
    factor = cfg.lr_decay ** (step // cfg.lr_decay_every)
    span = cfg.lr_anneal * cfg.steps
    if span > 0:
        factor *= min(1.0, max(0.0, (cfg.steps - step) / span))
    return factor


def restore(state: dict, model: LandmarkAutoencoder, optimizer, scheduler, streams: RandomStreams,
            procs: Processes) -> int:
    """Load a checkpoint's weights, optimizer, schedule and random streams; returns its step."""
    try:  # (its structure was checked on loading: ckpt_io.check_resumable)
        model.detector.load_state_dict(state["detector"])
        model.generator.load_state_dict(state["generator"])
        optimizer.load_state_dict(state["optimizer"])
        sched = dict(state["scheduler"])
        if "lr_lambdas" not in sched:  # written before lr_anneal, by a StepLR: the schedule is a function of
            sched = {k: v for k, v in sched.items() if k not in ("step_size", "gamma")}  # the config and the step
            sched["lr_lambdas"] = [None] * len(optimizer.param_groups)
        scheduler.load_state_dict(sched)
    except (RuntimeError, ValueError, KeyError, TypeError) as e:  # e.g. a config edited after the run
        why = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())[:300]
        raise ValueError(f"{state['path']}: cannot resume: its weights or optimizer state do not match its "
                         f"config ({type(e).__name__}: {why})") from None
    if state.get("world_size", 1) != procs.world:
        raise ValueError(f"{state['path']} was written by {state.get('world_size', 1)} process(es); resume with "
                         f"as many (data order and random streams are per process), not {procs.world}")
    try:
        streams.set_state(state["rng"][procs.rank] if procs.ddp else state["rng"])
    except (RuntimeError, ValueError, TypeError) as e:
        raise ValueError(f"{state['path']}: cannot resume: its random-stream state does not fit this "
                         f"device ({type(e).__name__}: {' '.join(str(e).split())[:200]})") from None
    return state["step"]


def batch_stream(dataset, cfg: TrainConfig, procs: Processes, start_step: int):
    """Endless batches from ``start_step`` on. Data order: DistributedSampler's per-epoch
    permutation (seeded); resuming skips the batches already used in the current epoch at the
    index level (no image is loaded)."""
    sampler = DistributedSampler(dataset, num_replicas=procs.world, rank=procs.rank, shuffle=True, seed=cfg.seed,
                                 drop_last=True)
    per_epoch = len(sampler) // cfg.batch_size
    epoch, skip = divmod(start_step, per_epoch)
    while True:
        sampler.set_epoch(epoch)
        order = list(sampler)[skip * cfg.batch_size: per_epoch * cfg.batch_size]
        yield from DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, drop_last=True,
                              num_workers=cfg.num_workers, pin_memory=procs.device.type == "cuda",
                              persistent_workers=False)
        epoch, skip = epoch + 1, 0


def describe(cfg: TrainConfig, run_dir: str, procs: Processes, step: int, use_amp: bool, data_note: str = "") -> str:
    """The lines printed when a run starts. ``data_note``: the data set's own summary line (videos:
    clips, frames, skips, decoding throughput)."""
    method = cfg.method
    if cfg.method == "inter-intra" and 0 < cfg.intra_warmup < cfg.steps:
        method = f"intra warm-up to step {cfg.intra_warmup}, then inter-intra"
    elif cfg.method == "inter-intra" and cfg.intra_warmup >= cfg.steps:
        method = f"intra (warm-up of {cfg.intra_warmup} steps >= steps: no inter-intra step)"
    pairs = "" if cfg.pairs == "warps" else f", {cfg.pairs} pairs{' (one spline)' if cfg.shared_warp else ''}"
    data = f"{cfg.dataset} ({cfg.synth_pose})" if cfg.dataset == "synth" else cfg.dataset
    fit = f"\nbudget ({cfg.max_minutes:g} min): {cfg.recipe_note}" if cfg.recipe_note else ""
    found = f"\n{cfg.dataset}: {data_note}" if data_note else ""
    n = recipe.early_steps(cfg)
    early = f" ({cfg.early_size}px for the first {n} step{'s' if n > 1 else ''})" if n else ""
    return (f"run directory: {run_dir}\n{recipe.why(cfg)}{found}{fit}\n{procs.world} process(es) on {procs.device}, {data}, {method}{pairs}, "
            f"{cfg.detector_arch} detector, K={cfg.num_landmarks}, {cfg.image_size}px{early}, batch "
            f"{cfg.batch_size}x{procs.world}, perceptual={cfg.perceptual}, backend={cfg.backend}"
            f"{', bf16 autocast' if use_amp else ''}{', compiled' if cfg.compile else ''}"
            f"{', channels_last' if memory_format(cfg, procs.device) is torch.channels_last else ''}"
            f"{f', {procs.threads} CPU thread(s)' if procs.device.type == 'cpu' else ''}; step {step} -> {cfg.steps}")


def check_finite_weights(model, step: int) -> None:
    """Never save non-finite weights as if they were a result."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise FloatingPointError(f"the weights are not finite after step {step} ({name}); not saving them. "
                                     "Earlier checkpoints are kept; lower --lr or check the data and config")


def save_state(step: int, cfg: TrainConfig, procs: Processes, run_dir: str, model: LandmarkAutoencoder,
               optimizer, scheduler, streams: RandomStreams) -> None:
    """Checkpoint ``step``: every rank calls it (the random states are gathered), rank 0 writes."""
    check_finite_weights(model, step)
    rng = streams.state()
    if procs.ddp:
        every = [None] * procs.world
        dist.all_gather_object(every, rng)
        rng = every
    if procs.master:
        ckpt_io.save_checkpoint(ckpt_io.checkpoint_path(run_dir, step), {
            "config": cfg.to_dict(), "step": step, "world_size": procs.world,
            "detector": model.detector.state_dict(), "generator": model.generator.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng})
        ckpt_io.prune_checkpoints(run_dir, cfg.keep_last)


def stop_requested(stop: StopFlag, cfg: TrainConfig, t_start: float, procs: Processes) -> bool:
    """A signal or the time limit, agreed by all ranks (a tiny all-reduce keeps them in step)."""
    want = stop.set or (cfg.max_minutes > 0 and time.time() - t_start > 60 * cfg.max_minutes)
    if procs.ddp:
        flag = torch.tensor([float(want)], device=procs.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        want = bool(flag.item())
    return want


def finish(cfg: TrainConfig, detector: Detector, run_dir: str, step: int, device, result: dict) -> None:
    """After the last checkpoint (rank 0): say how to continue a stopped run, else evaluate."""
    stopped = result["stopped"]
    if stopped and stopped in ("SIGINT", "SIGTERM"):
        print(f"stopped by {stopped} at step {step}; checkpoint saved. Continue with: "
              f"python -m fastlmk.train --resume {run_dir}", flush=True)
    elif cfg.eval:
        try:
            result["eval"] = evaluate(detector, cfg, run_dir, device)
        except KeyboardInterrupt as e:  # training is complete and saved; resuming re-runs the evaluation
            result["stopped"] = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
            print(f"\nevaluation interrupted; checkpoint saved at step {step}. Evaluate with: "
                  f"python -m fastlmk.train --resume {run_dir}", flush=True)


# --------------------------------------------------------------------------------------------
# the final evaluation
# --------------------------------------------------------------------------------------------
def eval_sets(cfg: TrainConfig, build_dataset):
    """(train_set, test_set) with ground-truth landmarks for the final evaluation, or None."""
    name = cfg.eval_dataset or {"synth": "synth", "celeba": "mafl"}.get(cfg.dataset, cfg.dataset)
    if name == "video":  # clips have no test split: --eval-dataset synth or an annotated folder
        return None
    root = cfg.eval_data_root or cfg.data_root or None
    kw = cfg.dataset_kwargs(name)
    if name == "folder":  # its annotated images (landmarks.csv), split into a fit and a test part; none: None
        from fastlmk.data.folder import has_annotations

        if not has_annotations(root):
            return None
        train, test = (build_dataset(name, root, part=part, **kw) for part in ("fit", "test"))
    else:
        train = build_dataset(name, root, split="train", **kw)
        test = build_dataset(name, root, split=cfg.eval_split, **kw)
    if cfg.eval_train_size and len(train) > cfg.eval_train_size:
        train = Subset(train, range(cfg.eval_train_size))
    if cfg.eval_test_size and len(test) > cfg.eval_test_size:
        test = Subset(test, range(cfg.eval_test_size))
    return train, test


def evaluate(detector: Detector, cfg: TrainConfig, run_dir: str, device) -> dict | None:
    """fastlmk.evaluate.evaluate_detector on the annotated splits; writes eval.json / eval.md."""
    ev = _optional("fastlmk.evaluate")
    if ev is None:
        return None
    from fastlmk.data import build_dataset

    sets = eval_sets(cfg, build_dataset)
    if sets is None:
        print(f"no annotated evaluation set for dataset {cfg.dataset!r} (give --eval-dataset synth, or a folder "
              f"with a landmarks.csv: docs/data.md); skipping the evaluation")
        return None
    detector.eval()
    t0 = time.time()
    result = ev.evaluate_detector(detector, sets[0], sets[1], device, out_dir=run_dir)
    if not os.path.exists(os.path.join(run_dir, "eval.json")):
        with open(os.path.join(run_dir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2, default=str)
    print(f"evaluation ({fmt_time(time.time() - t0)}) written to {run_dir}/eval.json and eval.md", flush=True)
    fwd, base = result.get("forward"), result.get("mean_shape")
    if isinstance(fwd, dict) and "saic" in fwd and base:  # the headline number, where people look for it
        print(f"landmark error (SAIC, {cfg.eval_split} split, {result.get('num_test')} images): {fwd['saic']:.2f} % of the "
              f"inter-ocular distance; the mean shape: {base:.2f} % ({fwd['saic'] / base:.2f} of it; lower is better)",
              flush=True)
    return result


# --------------------------------------------------------------------------------------------
# stopping: SIGINT / SIGTERM
# --------------------------------------------------------------------------------------------
class StopFlag:
    """SIGINT / SIGTERM set a flag; the loop checkpoints at the end of the current step and
    exits. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.set, self.reason, self._old = False, "", {}

    def __enter__(self):
        if hasattr(signal, "SIGTERM") and is_main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.set and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set, self.reason = True, signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (setup, evaluation): stop like Ctrl-C, but exit 0."""


def raise_terminated(signum, frame):
    raise Terminated


def is_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()
