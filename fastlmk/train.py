"""Train the landmark detector: ``python -m fastlmk.train [--flags]`` (docs/training.md).

One readable loop, top to bottom: config -> data -> model -> (resume) -> loop { TPS pairs,
auxiliary subjects, forward, loss, backward, clip, step, log, samples, checkpoint } -> evaluate.
Multi-GPU / multi-node: ``torchrun --nproc_per_node N -m fastlmk.train ...`` (DDP, detected from
RANK / WORLD_SIZE / LOCAL_RANK); only rank 0 writes files.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import signal
import sys
import time
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, DistributedSampler, Subset

from fastlmk.training import checkpoint as ckpt_io
from fastlmk.training.config import TrainConfig, parse_args, validate
from fastlmk.training.losses import FALLBACK, ReconstructionLoss, equivariance_loss, separation_loss
from fastlmk.training.model import Detector, Generator, LandmarkAutoencoder, derangement


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def _optional(module: str):
    """Import a module written by another part of the project, or None (warned once)."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        warnings.warn(f"{module} is not available ({e}); skipping what needs it", RuntimeWarning, stacklevel=2)
        return None


def _eval_sets(cfg: TrainConfig, build_dataset):
    """(train_set, test_set) with ground-truth landmarks for the final evaluation, or None."""
    name = cfg.eval_dataset or {"synth": "synth", "celeba": "mafl"}.get(cfg.dataset, cfg.dataset)
    if name == "folder":
        return None
    kw = {"size": cfg.image_size}
    if name == "synth":
        kw["pose"] = cfg.synth_pose
    train = build_dataset(name, cfg.data_root or None, split="train", **kw)
    test = build_dataset(name, cfg.data_root or None, split=cfg.eval_split, **kw)
    if cfg.eval_train_size and len(train) > cfg.eval_train_size:
        train = Subset(train, range(cfg.eval_train_size))
    if cfg.eval_test_size and len(test) > cfg.eval_test_size:
        test = Subset(test, range(cfg.eval_test_size))
    return train, test


class _StopFlag:
    """SIGINT / SIGTERM set a flag; the loop checkpoints at the end of the current step and
    exits. A second Ctrl-C interrupts at once."""

    def __init__(self):
        self.set, self.reason, self._old = False, "", {}

    def __enter__(self):
        if hasattr(signal, "SIGTERM") and _is_main_thread():
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


class _Terminated(KeyboardInterrupt):
    """SIGTERM outside the training loop (setup, evaluation): stop like Ctrl-C, but exit 0."""


def _raise_terminated(signum, frame):
    raise _Terminated


def _is_main_thread():
    import threading

    return threading.current_thread() is threading.main_thread()


def _rng_state(gen_pairs: torch.Generator, gen_aux: torch.Generator) -> dict:
    state = {"torch": torch.get_rng_state(), "pairs": gen_pairs.get_state(), "aux": gen_aux.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, gen_pairs: torch.Generator, gen_aux: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen_pairs.set_state(state["pairs"])
    gen_aux.set_state(state["aux"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def auto_threads() -> int:
    """CPU threads for ``threads=0``: the cores not already busy (cores minus the rounded 1-minute
    load average, at least 1). On a shared machine more torch threads than free cores make
    OpenMP's waiting threads spin against the neighbours: measured on the 2-core VM with one
    other busy process, 2 threads took 3.3-3.6 s per default step and 1 thread 1.3-1.5 s."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):  # not available on this platform
        busy = 0.0
    return max(1, min(cores, cores - int(round(busy))))


# --------------------------------------------------------------------------------------------
# run directories: a new run never writes into an existing directory; resuming writes only
# into a run directory that fastlmk made
# --------------------------------------------------------------------------------------------
RUN_MARKER = "fastlmk_run.json"  # written into every run directory fastlmk creates


def _is_run_dir(path: str) -> bool:
    """A directory fastlmk made: it has the marker (or, for runs made before the marker existed,
    both config.json and checkpoints/)."""
    return os.path.isfile(os.path.join(path, RUN_MARKER)) or (
        os.path.isfile(os.path.join(path, "config.json")) and os.path.isdir(os.path.join(path, "checkpoints")))


def _run_dir_of(checkpoint: str) -> str | None:
    """The run directory of a checkpoint ``<run>/checkpoints/step_*.pt``, or None when the file
    lies anywhere else (the user's own folder: never written into)."""
    p = os.path.abspath(checkpoint)
    folder, name = os.path.split(p)
    if os.path.basename(folder) != "checkpoints" or not (name.startswith("step_") and name.endswith(".pt")):
        return None
    run = os.path.dirname(folder)
    return run if _is_run_dir(run) else None


def _check_out_dir(out_dir: str) -> None:
    """--out-dir must be (or be creatable as) a writable directory: checked before anything is written."""
    path = os.path.abspath(out_dir or ".")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"--out-dir {out_dir}: exists and is not a directory")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ValueError(f"--out-dir {out_dir}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"--out-dir {out_dir}: {probe} is not writable")


def _plan_run_dir(cfg: TrainConfig, state: dict | None) -> tuple[str, bool]:
    """-> (run directory, whether it exists already and is continued). Raises ValueError (before
    anything is written) for an existing --run-name of a new run."""
    if state is not None:
        run = _run_dir_of(state["path"])
        if run is not None:
            return run, True
        print(f"note: {state['path']} is not inside a fastlmk run directory (<run>/checkpoints/step_*.pt); "
              "continuing in a new run directory, nothing is written next to the checkpoint", flush=True)
    _check_out_dir(cfg.out_dir)
    if cfg.run_name:
        run = os.path.join(cfg.out_dir, cfg.run_name)
        if os.path.exists(run):
            if state is None:
                raise ValueError(f"--run-name {cfg.run_name}: {run} already exists; continue that run with "
                                 f"--resume {run}, or choose another --run-name")
            return _default_run_dir(cfg), False
        return run, False
    return _default_run_dir(cfg), False


def _default_run_dir(cfg: TrainConfig) -> str:
    return os.path.join(cfg.out_dir, f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.dataset}-{cfg.method}")


def _create_run_dir(run_dir: str, unique: bool) -> str:
    """mkdir the run directory atomically (never one that exists); ``unique``: on a clash (two
    runs started in the same second) take the next free ``<name>-2``, ``-3``, ..."""
    os.makedirs(os.path.dirname(os.path.abspath(run_dir)), exist_ok=True)
    base, n = run_dir, 1
    while True:
        try:
            os.mkdir(run_dir)
            break
        except FileExistsError:
            if not unique:
                raise ValueError(f"run directory {run_dir} already exists (created by another process?); "
                                 "choose another --run-name") from None
            n += 1
            run_dir = f"{base}-{n}"
    with open(os.path.join(run_dir, RUN_MARKER), "w") as f:
        json.dump({"format": "fastlmk-run", "created": time.strftime("%Y-%m-%dT%H:%M:%S")}, f)
    return run_dir


def _check_finite_weights(model, step: int) -> None:
    """Never save non-finite weights as if they were a result."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise FloatingPointError(f"the weights are not finite after step {step} ({name}); not saving them. "
                                     "Earlier checkpoints are kept; lower --lr or check the data and config")


LOSS_TERMS = ("loss", "mse", "perceptual", "equivariance", "separation")  # logged per step (log.csv, history)


def _new_window() -> dict:
    """Running sums of the loss terms between two log rows, with the step count, start time and images."""
    return {**dict.fromkeys(LOSS_TERMS, 0.0), "n": 0, "t": time.time(), "images": 0}


def _fmt_time(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, resume: str | None = None, progress: bool = True) -> dict:
    """Train with ``cfg`` (continuing the checkpoint ``resume`` when given).

    Returns a summary dict: run_dir, step, history (list of logged rows), eval (dict or None),
    stopped ("" or why training stopped early), model (the trained LandmarkAutoencoder)."""
    # ---- distributed setup (torchrun sets RANK / WORLD_SIZE / LOCAL_RANK) ----
    validate(cfg)  # every user error is reported before anything is created or written
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    ddp = world > 1
    threads = cfg.threads or auto_threads()
    torch.set_num_threads(threads)
    if cfg.device == "auto":
        device = torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(cfg.device)
        if device.type == "cuda" and ddp:
            device = torch.device(f"cuda:{local_rank}")
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.deterministic = cfg.deterministic
        torch.backends.cudnn.benchmark = not cfg.deterministic
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if ddp and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    master = rank == 0
    use_amp = cfg.amp and device.type == "cuda"  # bf16 autocast; on the CPU: plain float32
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    # ---- resume: the checkpoint's config wins (the caller applied command-line changes) ----
    state = ckpt_io.load_checkpoint(resume) if resume else None
    if cfg.perceptual == "auto":  # (validated above: "vgg" only when the weights file exists)
        cfg = dataclasses.replace(cfg, perceptual="vgg" if cfg.vgg_weights else FALLBACK)
    run_dir, continued = _plan_run_dir(cfg, state) if master else ("", state is not None)

    # ---- data: images from the data set, pairs made on the training device ----
    from fastlmk.data import TPSPairs, build_dataset  # noqa: PLC0415 (the data package is heavy to import)

    extra = {"pose": cfg.synth_pose, "static_background": cfg.pairs == "views"} if cfg.dataset == "synth" else {}
    if cfg.dataset == "synth" and cfg.train_length:
        extra["length"] = cfg.train_length
    dataset = build_dataset(cfg.dataset, cfg.data_root or None, split="train", size=cfg.image_size, **extra)
    if cfg.pairs == "views":  # x and x' from two views of one subject [ours]
        from fastlmk.data import ViewPairs

        dataset = ViewPairs(dataset)
    if len(dataset) < cfg.batch_size * world:
        raise ValueError(f"dataset {cfg.dataset!r} has {len(dataset)} images, fewer than one global batch "
                         f"({cfg.batch_size} x {world} processes)")
    make_pairs = TPSPairs(grid_size=cfg.tps_grid, rotation_std=cfg.rotation_std, scale_std=cfg.scale_std,
                          translation_std=cfg.translation_std, warp_std=cfg.warp_std,
                          extra_warp_prob=cfg.extra_warp_prob, mask_margin=cfg.mask_margin, backend=cfg.backend)

    # ---- model: detector D, generator P; one Adam over both (method.md section 4) ----
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    detector = ckpt_io.build_detector(cfg.to_dict())
    generator = Generator(cfg.num_landmarks, cfg.generator_width, cfg.generator_res)
    model = LandmarkAutoencoder(detector, generator, cfg.method, points_of_x=cfg.equivariance_weight > 0).to(device)
    criterion = ReconstructionLoss(cfg.perceptual, cfg.vgg_weights or None, cfg.perceptual_weight).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.lr_decay_every, gamma=cfg.lr_decay)
    # random streams of the step: TPS warps (on the training device) and auxiliary subjects
    gen_pairs = torch.Generator(device=device).manual_seed(cfg.seed * 1009 + rank + 1)
    gen_aux = torch.Generator().manual_seed(cfg.seed * 1009 + rank + 7919)
    step = 0
    if state is not None:
        model.detector.load_state_dict(state["detector"])
        model.generator.load_state_dict(state["generator"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("world_size", 1) != world:
            raise ValueError(f"{state['path']} was written by {state.get('world_size', 1)} process(es); resume with "
                             f"as many (data order and random streams are per process), not {world}")
        _set_rng_state(state["rng"][rank] if ddp else state["rng"], gen_pairs, gen_aux)
        step = state["step"]
    if ddp:
        model = DDP(model, device_ids=[local_rank] if device.type == "cuda" else None)
    core = model.module if ddp else model  # the LandmarkAutoencoder, for state dicts and clipping
    forward = torch.compile(model) if cfg.compile else model

    # data order: DistributedSampler's per-epoch permutation (seeded); resuming skips the
    # batches already used in the current epoch at the index level (no image is loaded)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=cfg.seed, drop_last=True)
    per_epoch = len(sampler) // cfg.batch_size

    def batches(start_step):
        epoch, skip = divmod(start_step, per_epoch)
        while True:
            sampler.set_epoch(epoch)
            order = list(sampler)[skip * cfg.batch_size: per_epoch * cfg.batch_size]
            yield from DataLoader(dataset, batch_size=cfg.batch_size, sampler=order, drop_last=True,
                                  num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                  persistent_workers=False)
            epoch, skip = epoch + 1, 0

    # ---- run directory (rank 0 writes everything; planned and checked above) ----
    viz = _optional("fastlmk.viz") if master else None
    tb = None
    if master:
        if not continued:
            run_dir = _create_run_dir(run_dir, unique=not (cfg.run_name and state is None))
        ckpt_io.clean_temp_files(run_dir)
        os.makedirs(os.path.join(run_dir, "samples"), exist_ok=True)
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump(cfg.to_dict(), f, indent=2)
        log_path = os.path.join(run_dir, "log.csv")
        log_fields = ["step", *LOSS_TERMS, "lr", "images_per_s", "elapsed_s"]
        if not continued or not os.path.exists(log_path):
            with open(log_path, "w", newline="") as f:
                csv.writer(f).writerow(log_fields)
        else:  # drop rows logged after the checkpoint we continue from
            with open(log_path) as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= step]
            with open(log_path, "w", newline="") as f:
                w = csv.DictWriter(f, log_fields)
                w.writeheader()
                w.writerows(rows)
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                tb = SummaryWriter(os.path.join(run_dir, "tb"))
            except ImportError:
                warnings.warn("--tensorboard: the tensorboard package is not installed; logging to log.csv only")
        print(f"run directory: {run_dir}\n{world} process(es) on {device}, {cfg.method}, {cfg.detector_arch} detector, "
              f"K={cfg.num_landmarks}, {cfg.image_size}px, batch {cfg.batch_size}x{world}, perceptual={cfg.perceptual}, "
              f"backend={cfg.backend}{', bf16 autocast' if use_amp else ''}{', compiled' if cfg.compile else ''}"
              f"{f', {threads} CPU thread(s)' if device.type == 'cpu' else ''}; "
              f"step {step} -> {cfg.steps}", flush=True)

    def save(at_step):
        """All ranks call it (RNG states are gathered); rank 0 writes."""
        _check_finite_weights(core, at_step)
        rng = _rng_state(gen_pairs, gen_aux)
        if ddp:
            every = [None] * world
            dist.all_gather_object(every, rng)
            rng = every
        if master:
            ckpt_io.save_checkpoint(ckpt_io.checkpoint_path(run_dir, at_step), {
                "config": cfg.to_dict(), "step": at_step, "world_size": world,
                "detector": core.detector.state_dict(), "generator": core.generator.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng})
            ckpt_io.prune_checkpoints(run_dir, cfg.keep_last)

    def save_samples(at_step, images, out):
        if viz is None:
            return
        k = min(8, images["x"].shape[0])
        f = lambda t: t[:k].detach().float().cpu()  # noqa: E731
        if core.method == "intra":
            rows = [("x", images["x"], None), ("x'", images["x_prime"], out["mu_prime"]),
                    ("x^' = P(x, G(mu'))", out["x_hat_prime"], out["mu_prime"])]
        else:
            rows = [("x", images["x"], out["mu"]), ("x'", images["x_prime"], out["mu_prime"]),
                    ("x_a", out["x_aux"], out["mu_aux"]), ("x~ = P(x, G(mu_a))", out["x_tilde"], out["mu_aux"]),
                    ("x~' = P(x', G(mu_a))", out["x_tilde_prime"], out["mu_aux"]),
                    ("x^' = P(x~, G(mu'))", out["x_hat_prime"], out["mu_prime"]),
                    ("x^ = P(x~', G(mu))", out["x_hat"], out["mu"])]
        viz.save_grid([f(r[1]) for r in rows], os.path.join(run_dir, "samples", f"step_{at_step:08d}.png"),
                      points=[None if r[2] is None else f(r[2]) for r in rows], row_titles=[r[0] for r in rows])

    # ---- the loop ----
    model.train()
    history, t_start, stopped = [], time.time(), ""
    window = _new_window()
    start_step, t_first = step, time.time()
    bar = None
    if master and progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, unit="step", dynamic_ncols=True, file=sys.stdout)
    data_iter = batches(step)
    last = None
    with _StopFlag() as stop:
        while step < cfg.steps:
            batch = next(data_iter)
            images = batch["image"].to(device, non_blocking=True)  # (B, 3, S, S) in [0, 1]
            # 1. intra-subject pair: two random TPS warps of each image, with border masks
            second = batch["image2"].to(device, non_blocking=True) if "image2" in batch else None
            pairs = make_pairs(images, generator=gen_pairs, second=second)
            # 2. auxiliary subject: a derangement of the batch, drawn per step
            core.method = "intra" if step < cfg.intra_warmup else cfg.method  # optional intra warm-up [ours]
            aux = derangement(images.shape[0], gen_aux).to(device) if core.method == "inter-intra" else None
            # 3-4. detector and generator passes (fastlmk.training.model.LandmarkAutoencoder)
            with autocast:
                out = forward(pairs.x, pairs.x_prime, aux)
            # 5. loss: masked MSE + perceptual on each reconstruction, in float32
            losses = criterion(out["targets"], {"x": pairs.mask, "x_prime": pairs.mask_prime})
            losses["equivariance"] = losses["separation"] = torch.zeros((), device=device)
            if cfg.equivariance_weight > 0:  # optional direct signal for the detector [ours]
                losses["equivariance"] = equivariance_loss(out["mu"], out["mu_prime"], pairs.tps, pairs.tps_prime)
                losses["loss"] = losses["loss"] + cfg.equivariance_weight * losses["equivariance"]
            if cfg.separation_weight > 0:  # keeps the points of an image apart [ours]
                losses["separation"] = sum(separation_loss(out[k], cfg.separation_std) for k in ("mu", "mu_prime") if k in out)
                losses["loss"] = losses["loss"] + cfg.separation_weight * losses["separation"]
            optimizer.zero_grad(set_to_none=True)
            losses["loss"].backward()
            if cfg.grad_clip > 0:  # detector and generator clipped separately
                torch.nn.utils.clip_grad_norm_(core.detector.parameters(), cfg.grad_clip)
                torch.nn.utils.clip_grad_norm_(core.generator.parameters(), cfg.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1

            # ---- bookkeeping (note: .tolist() is a CPU-GPU sync point, once per step) ----
            values = torch.stack([losses[k].detach().float() for k in LOSS_TERMS]).tolist()
            if not math.isfinite(values[0]):
                raise FloatingPointError(f"loss is {values[0]} at step {step}; lower --lr or check the data")
            for k, v in zip(LOSS_TERMS, values):
                window[k] += v
            window["n"] += 1
            window["images"] += images.shape[0] * world
            if step - start_step == 1:
                t_first = time.time()
            if step - start_step == 6 and master:  # warm-up timing over steps 2..6 (the first allocates / compiles)
                per_step = (time.time() - t_first) / 5
                with torch.no_grad():
                    t0 = time.time()
                    core.detector.eval()
                    core.detector(pairs.x)
                    core.detector.train()
                    per_image_eval = (time.time() - t0) / images.shape[0]
                n_eval = (cfg.eval_train_size or 20000) + (cfg.eval_test_size or 5000) if cfg.eval else 0
                t_left = per_step * (cfg.steps - step)
                msg = (f"timing: {per_step:.2f} s/step ({cfg.batch_size * world / per_step:.1f} images/s) -> expected "
                       f"{_fmt_time(t_left)} of training + ~{_fmt_time(2 * per_image_eval * n_eval + 5)} of evaluation")
                cap = 60 * cfg.max_minutes - (time.time() - t_start)
                if cfg.max_minutes and t_left > cap:
                    msg += (f"; max_minutes={cfg.max_minutes:g} will stop training after about step "
                            f"{step + int(cap / per_step)} of {cfg.steps}")
                (bar.write if bar else print)(msg)
            if step % cfg.log_every == 0 or step == cfg.steps:
                dt = time.time() - window["t"]
                row = {"step": step, **{k: window[k] / window["n"] for k in LOSS_TERMS}, "lr": scheduler.get_last_lr()[0],
                       "images_per_s": window["images"] / max(dt, 1e-9), "elapsed_s": time.time() - t_start}
                history.append(row)
                if master:
                    with open(log_path, "a", newline="") as f:
                        csv.writer(f).writerow([f"{row[k]:.6g}" if isinstance(row[k], float) else row[k] for k in log_fields])
                    if tb is not None:
                        for k in ("loss", "mse", "perceptual", "lr", "images_per_s"):
                            tb.add_scalar(f"train/{k}", row[k], step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.1f}", refresh=False)
                window = _new_window()
            if bar is not None:
                bar.update(1)
            if master and cfg.sample_every and step % cfg.sample_every == 0:
                save_samples(step, {"x": pairs.x, "x_prime": pairs.x_prime}, out)
            last = (pairs, out)

            # ---- stop requests: signal or time limit, agreed by all ranks ----
            want_stop = stop.set or (cfg.max_minutes > 0 and time.time() - t_start > 60 * cfg.max_minutes)
            if ddp:
                flag = torch.tensor([float(want_stop)], device=device)
                dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # tiny; keeps the ranks in step
                want_stop = bool(flag.item())
            if want_stop and step < cfg.steps:
                stopped = stop.reason or (f"time limit ({cfg.max_minutes:g} min)" if cfg.max_minutes else "another rank stopped")
                break
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < cfg.steps:
                save(step)
    if bar is not None:
        bar.close()
    save(step)

    # ---- wrap-up: last samples, loss curve, evaluation (rank 0) ----
    result = {"run_dir": run_dir, "step": step, "history": history, "eval": None, "stopped": stopped, "model": core}
    if master:
        if last is not None:
            save_samples(step, {"x": last[0].x, "x_prime": last[0].x_prime}, last[1])
        if viz is not None and step < min(cfg.log_every, cfg.steps):  # stopped before the first log row
            print(f"no loss curve yet: log.csv gets a row every {cfg.log_every} steps", flush=True)
        elif viz is not None:
            viz.plot_losses(log_path, os.path.join(run_dir, "loss.png"))
        if tb is not None:
            tb.close()
        if stopped and stopped in ("SIGINT", "SIGTERM"):
            print(f"stopped by {stopped} at step {step}; checkpoint saved. Continue with: "
                  f"python -m fastlmk.train --resume {run_dir}", flush=True)
        elif cfg.eval:
            try:
                result["eval"] = evaluate(core.detector, cfg, run_dir, device)
            except KeyboardInterrupt as e:  # training is complete and saved; resuming re-runs the evaluation
                result["stopped"] = "SIGTERM" if isinstance(e, _Terminated) else "SIGINT"
                print(f"\nevaluation interrupted; checkpoint saved at step {step}. Evaluate with: "
                      f"python -m fastlmk.train --resume {run_dir}", flush=True)
    if ddp:
        dist.barrier()
    return result


def evaluate(detector: Detector, cfg: TrainConfig, run_dir: str, device) -> dict | None:
    """fastlmk.evaluate.evaluate_detector on the annotated splits; writes eval.json / eval.md."""
    ev = _optional("fastlmk.evaluate")
    if ev is None:
        return None
    from fastlmk.data import build_dataset

    sets = _eval_sets(cfg, build_dataset)
    if sets is None:
        print(f"no annotated evaluation set for dataset {cfg.dataset!r}; skipping the evaluation")
        return None
    detector.eval()
    t0 = time.time()
    result = ev.evaluate_detector(detector, sets[0], sets[1], device, out_dir=run_dir)
    if not os.path.exists(os.path.join(run_dir, "eval.json")):
        with open(os.path.join(run_dir, "eval.json"), "w") as f:
            json.dump(result, f, indent=2, default=str)
    print(f"evaluation ({_fmt_time(time.time() - t0)}) written to {run_dir}/eval.json and eval.md", flush=True)
    return result


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    cfg, resume = parse_args(argv, cuda=cuda)
    if resume:  # continue with the checkpoint's config, changed only by the keys given
        from fastlmk.training.config import apply_overrides

        state = ckpt_io.load_checkpoint(resume, fallback=True)
        base = apply_overrides(TrainConfig(), state["config"], where=state["path"])
        cfg, _ = parse_args(argv, cuda=cuda, base=base)
        resume = state["path"]  # the checkpoint actually loaded (a run directory's newest loadable one)
    old_sigterm = signal.signal(signal.SIGTERM, _raise_terminated) if _is_main_thread() else None
    try:
        result = train(cfg, resume=resume)
    except KeyboardInterrupt as e:  # a stop before the loop (nothing trained yet) or a second Ctrl-C
        print("\ninterrupted; no checkpoint of the current step was written (a run directory's last "
              "checkpoint, if any, continues with: python -m fastlmk.train --resume runs/<name>)", file=sys.stderr)
        return 0 if isinstance(e, _Terminated) else 130
    finally:
        if old_sigterm is not None:
            signal.signal(signal.SIGTERM, old_sigterm)
        if dist.is_initialized():
            dist.destroy_process_group()
    return 130 if result["stopped"] == "SIGINT" else 0  # 130: the shell's code for a Ctrl-C


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FloatingPointError, OSError) as e:  # a fault (NaN weights, disk full): earlier checkpoints stay
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
