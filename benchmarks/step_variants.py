"""The CPU training step, today's against candidate speed-ups, interleaved in one process.

Every variant runs ``fastlmk.training.loop.train_step`` -- the step ``python -m fastlmk.train``
runs, data rendering included -- on the default preset's model and data (SynthFaces aligned, two
frames per item), each with its own model, optimizer and data stream. Round by round each variant
takes one step, so that load from other processes on a shared machine hits all of them alike; the
table gives the median seconds per step and the ratio to ``today`` in the same run.

    PYTHONPATH=. python benchmarks/step_variants.py [--rounds 12] [--threads 1] [--method intra]
        [--variants today,prefetch,contiguous,compile,reference,48px]

Variants (all start from the ``cpu`` preset):

* ``today``: the step as it is (eager, fused kernels, rendering inline; the model's weights in
  ``torch.channels_last``, ``memory_format="auto"`` on the CPU since 2026-12-07).
* ``prefetch``: the next batch rendered in a background thread while this step computes.
* ``contiguous``: the weights in the default (NCHW-contiguous) layout, the step before
  2026-12-07 (``memory_format="contiguous"``).
* ``compile``: ``torch.compile`` of the model (inductor on the CPU: fuses batch norm, ReLU and
  the other elementwise ops into generated C++ loops; compiled before the timed rounds).
* ``bf16``: the step under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (the losses stay float32;
  oneDNN's bf16 convolutions where the CPU has them).
* ``reference``: the same step with ``backend="reference"`` (the pure-PyTorch ops): the
  fused-vs-reference figure for a whole step.
* ``48px``: a smaller image (``--image-size 48``; the budget fit's rung until 2026-12-07), not the same computation.
* ``early32``, ``early40``, ``early48``: a step of the early phase of progressive resizing
  (``--early-size N``: the batch rendered at 64 px and resized to N before the pairs), what
  ``fastlmk.training.recipe.size_cost`` models; not the same computation.
* ``narrow`` (detector width 24, generator width 12), ``det24``, ``gen12``, ``res1`` (one generator
  residual block): cheaper models, candidates for a slower machine (not the same computation).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import queue
import statistics
import threading
import time

import torch

from fastlmk.training.config import preset, validate
from fastlmk.training.losses import FALLBACK, TrainingLoss
from fastlmk.training.loop import Processes, RandomStreams, batch_stream, memory_format, train_step, training_data
from fastlmk.training.model import LandmarkAutoencoder

VARIANTS = ("today", "prefetch", "contiguous", "compile", "bf16", "reference", "48px", "early32", "early40", "early48",
            "narrow", "det24", "gen12", "res1")
# the variants that are a config change: the reference ops, and cheaper models for a slower machine
# (not the same computation): a smaller image, narrower networks, a shallower generator
CONFIG_CHANGES = {"reference": dict(backend="reference"), "contiguous": dict(memory_format="contiguous"), "48px": dict(image_size=48),
                  # a step of the early phase (progressive resizing): rendered at 64 px, trained at N px
                  "early32": dict(early_size=32, early_share=0.5), "early40": dict(early_size=40, early_share=0.5),
                  "early48": dict(early_size=48, early_share=0.5),
                  "narrow": dict(detector_width=24, generator_width=12), "det24": dict(detector_width=24),
                  "gen12": dict(generator_width=12), "res1": dict(generator_res=1)}


def prefetched(batches, depth: int = 2):
    """Iterate ``batches`` in a background thread, ``depth`` batches ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)

    def fill():
        for b in batches:
            q.put(b)

    threading.Thread(target=fill, daemon=True).start()
    while True:
        yield q.get()


def make_variant(name: str, base, procs: Processes):
    """-> a function running one training step of variant ``name`` (returns the loss)."""
    cfg = dataclasses.replace(base, perceptual=FALLBACK, intra_warmup=base.intra_warmup)
    cfg = dataclasses.replace(cfg, **CONFIG_CHANGES.get(name, {}))
    validate(cfg)
    dataset, make_pairs = training_data(cfg, 1)
    torch.manual_seed(cfg.seed)
    model = LandmarkAutoencoder.from_config(cfg)
    model = model.to(memory_format=memory_format(cfg, procs.device))  # as train() lays it out
    objective = TrainingLoss.from_config(cfg)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
    streams = RandomStreams(cfg.seed, 0, procs.device)
    batches = batch_stream(dataset, cfg, procs, 0)
    if name == "prefetch":
        batches = prefetched(batches)
    forward = torch.compile(model) if name == "compile" else model
    step = {"n": 0}

    def run():
        batch = next(batches)
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()
        losses = train_step(cfg, model, forward, objective, optimizer, make_pairs, streams, batch, step["n"],
                            procs.device, autocast)[3]
        step["n"] += 1
        return losses["loss"].item()

    return run


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant (compile happens here)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--method", default="intra", choices=("intra", "inter-intra"),
                   help="the step timed: intra (the warm-up's) or inter-intra")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    names = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in names if v not in VARIANTS]
    if args.rounds < 2:  # p20 / p80 need two timings per variant (and one says nothing about the noise)
        raise SystemExit(f"error: --rounds must be >= 2, got {args.rounds}")
    if bad or "today" not in names:
        raise SystemExit(f"error: --variants must include today and be among {', '.join(VARIANTS)}, got {args.variants}")
    torch.set_num_threads(args.threads)
    base = preset("cpu")
    base = dataclasses.replace(base, intra_warmup=base.steps if args.method == "intra" else 0, threads=args.threads)
    procs = Processes(world=1, rank=0, local_rank=0, device=torch.device("cpu"), threads=args.threads)
    steps = {}
    for n in names:
        t0 = time.perf_counter()
        steps[n] = make_variant(n, base, procs)
        for _ in range(args.warmup):
            steps[n]()
        print(f"{n}: set up and {args.warmup} warm-up steps in {time.perf_counter() - t0:.1f} s", flush=True)
    times = {n: [] for n in names}
    for r in range(args.rounds):
        for n, s in steps.items():
            t0 = time.perf_counter()
            s()
            times[n].append(time.perf_counter() - t0)
    today = statistics.median(times["today"])
    print(f"\ncpu preset, {args.method} step, batch {base.batch_size}, K={base.num_landmarks}, {args.threads} thread(s), "
          f"{args.rounds} interleaved rounds")
    print("| variant | median s/step | p20 | p80 | time / today |")
    print("|---|---:|---:|---:|---:|")
    for n, ts in times.items():
        q = statistics.quantiles(ts, n=5)
        print(f"| {n} | {statistics.median(ts):.3f} | {q[0]:.3f} | {q[3]:.3f} | {statistics.median(ts) / today:.2f} |")


if __name__ == "__main__":
    main()
