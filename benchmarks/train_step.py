"""Training throughput: one full training step with the fused ops vs the pure-PyTorch reference.

A step = TPS pairs (2 warps + masks) -> derangement -> 2 detector passes (soft-argmax +
Gaussian maps) -> 4 generator passes -> masked MSE + perceptual -> backward -> clip -> Adam.
Both backends run the same step on the same batch with the same initial weights; the script
first checks that their losses agree, then times ``--repeats`` steps each (interleaved, after
warm-up) and reports the median with p20/p80, in images/s.

    PYTHONPATH=. python benchmarks/train_step.py [--preset cpu] [--threads 1] [--fused auto] [--flags]

Any other ``--key value`` is a TrainConfig override (e.g. ``--method intra``, ``--device cuda``,
``--compile``; on CUDA ``--amp`` (the default) runs the forward under bf16 autocast, as
``fastlmk.train`` does). :func:`make_step` is also what ``scripts/gpu_check.py`` times.
"""

import argparse
import contextlib
import dataclasses
import statistics
import time

import torch

from fastlmk.training.config import parse_args
from fastlmk.training.losses import FALLBACK, ReconstructionLoss
from fastlmk.training.model import LandmarkAutoencoder


def make_step(cfg, backend, images, device=None, amp=None, compile=None):
    """One training step of ``fastlmk.train`` as a function returning the loss (a float).

    ``device`` (default ``cfg.device``, "auto" = CUDA when present): where the model, the batch
    and the TPS draws live. ``amp`` (default ``cfg.amp``): bf16 autocast around the forward, on
    CUDA only (as in ``fastlmk.train``). ``compile`` (default ``cfg.compile``): ``torch.compile``
    of the model. ``step()`` reuses ``images`` (no data loading is timed); ``step(batch)`` trains
    on ``batch`` instead (same shape; e.g. images rendered on the device by the caller).
    """
    from fastlmk.data import TPSPairs

    if device is None:
        device = cfg.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    amp = cfg.amp if amp is None else amp
    compile = cfg.compile if compile is None else compile
    use_amp = amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else contextlib.nullcontext

    cfg = dataclasses.replace(cfg, backend=backend, perceptual=FALLBACK if cfg.perceptual == "auto" else cfg.perceptual)
    torch.manual_seed(cfg.seed)
    model = LandmarkAutoencoder.from_config(cfg).to(device)
    crit = ReconstructionLoss.from_config(cfg).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    pairs = TPSPairs(grid_size=cfg.tps_grid, mask_margin=cfg.mask_margin, backend=backend)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    gen_aux = torch.Generator().manual_seed(cfg.seed + 1)
    images = images.to(device)
    forward = torch.compile(model) if compile else model

    def step(batch=None):
        p = pairs(images if batch is None else batch, generator=gen)
        aux = model.begin_step(0, images.shape[0], gen_aux)
        with autocast():
            out = forward(p.x, p.x_prime, aux)
        loss = crit(out["targets"], {"x": p.mask, "x_prime": p.mask_prime})["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.detector.parameters(), cfg.grad_clip)
        torch.nn.utils.clip_grad_norm_(model.generator.parameters(), cfg.grad_clip)
        opt.step()
        return loss.item()  # a device sync: the step is complete when this returns

    return step


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--fused", default="auto", help="backend of the fused run (auto = the compiled kernels)")
    args, rest = p.parse_known_args()
    cfg, _ = parse_args(rest)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    from fastlmk.data import build_dataset

    ds = build_dataset(cfg.dataset, cfg.data_root or None, split="train", size=cfg.image_size)
    images = torch.stack([ds[i]["image"] for i in range(cfg.batch_size)])
    steps = {"reference": make_step(cfg, "reference", images), args.fused: make_step(cfg, args.fused, images)}
    first = {k: s() for k, s in steps.items()}  # same weights, same batch, same warps: same loss
    a, b = first.values()
    print(f"first-step loss: reference {first['reference']:.6f}, {args.fused} {first[args.fused]:.6f} "
          f"(rel. diff {abs(a - b) / abs(a):.1e})")
    assert abs(a - b) <= 1e-3 * abs(a), "backends disagree"
    for _ in range(args.warmup - 1):
        for s in steps.values():
            s()
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
        for k, s in steps.items():  # interleaved: machine-load drift hits both alike
            t0 = time.perf_counter()
            s()
            times[k].append(time.perf_counter() - t0)
    print(f"\npreset {cfg.preset}: {cfg.method}, {cfg.detector_arch} detector w{cfg.detector_width}, generator "
          f"w{cfg.generator_width}x{cfg.generator_res}, {cfg.image_size}px, K={cfg.num_landmarks}, batch {cfg.batch_size}, "
          f"threads {torch.get_num_threads()}, {args.repeats} steps each")
    print("| backend | step median (s) | p20 | p80 | images/s (median) |")
    print("|---|---|---|---|---|")
    for k, ts in times.items():
        q = statistics.quantiles(ts, n=5)
        med = statistics.median(ts)
        print(f"| {k} | {med:.3f} | {q[0]:.3f} | {q[3]:.3f} | {cfg.batch_size / med:.1f} |")
    ref, fused = (statistics.median(times[k]) for k in steps)
    print(f"speed-up of the fused ops: x{ref / fused:.2f}")


if __name__ == "__main__":
    main()
