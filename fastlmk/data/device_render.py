"""Render SynthFaces batches on the training device (a GPU) instead of in CPU DataLoader workers.

:func:`fastlmk.data.synth.render_faces` is vectorised PyTorch code over the batch: every drawing
step is an elementwise op on (B, S, S) tensors. Its parameters come from per-item seeded CPU
generators (cheap: two small draws per image), so only the pixels need to move: the parameters
are sampled on the CPU exactly as :meth:`SynthFaces.render` samples them, moved to ``device``,
and the renderer runs under ``torch.device(device)`` so that the few tensors it creates itself
(coordinate grids, colour constants) are made there too. The images are the same as the CPU
ones up to float rounding (``scripts/gpu_check.py`` measures the difference and the speed).

    from fastlmk.data import SynthFaces
    from fastlmk.data.device_render import DeviceBatches

    ds = SynthFaces("train", size=128)
    for batch in DeviceBatches(ds, batch_size=32, device="cuda", seed=0):
        images = batch["image"]          # (32, 3, 128, 128) on the GPU

Nothing in the training loop uses this yet; ``python -m fastlmk.train`` renders in DataLoader
workers (``--num-workers``).
"""

from __future__ import annotations

import torch

from fastlmk.data.synth import SynthFaces, render_faces

__all__ = ["render_on", "DeviceBatches"]


def render_on(dataset: SynthFaces, indices, device) -> dict:
    """Render ``indices`` of ``dataset`` on ``device``: the batched dict of
    :meth:`SynthFaces.render` (image, landmarks, landmarks_extra, subject, index), every tensor
    on ``device``."""
    device = torch.device(device)
    if isinstance(indices, torch.Tensor):
        indices = indices.reshape(-1).tolist()
    idx = dataset._check(indices)
    params = {k: v.to(device, non_blocking=True) for k, v in dataset.params(idx).items()}
    with torch.device(device):
        img, pts, extra = render_faces(params, dataset.size, dataset.clutter)
    return {
        "image": img,
        "landmarks": pts,
        "landmarks_extra": extra,
        "subject": torch.tensor([dataset.subject_of(i) for i in idx], dtype=torch.int64, device=device),
        "index": torch.tensor(idx, dtype=torch.int64, device=device),
    }


class DeviceBatches:
    """Endless shuffled batches of a SynthFaces data set, rendered on ``device``.

    Epoch ``e`` visits the data set in the order ``torch.randperm(len, generator seeded with
    seed + e)``, dropping the last incomplete batch (as ``fastlmk.train`` does with one process).
    """

    def __init__(self, dataset: SynthFaces, batch_size: int, device, seed: int = 0):
        if batch_size < 1 or batch_size > len(dataset):
            raise ValueError(f"DeviceBatches: batch_size must be in [1, {len(dataset)}], got {batch_size}")
        self.dataset, self.batch_size, self.device, self.seed = dataset, int(batch_size), torch.device(device), int(seed)

    def __iter__(self):
        epoch = 0
        while True:
            order = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + epoch))
            for start in range(0, len(order) - self.batch_size + 1, self.batch_size):
                yield render_on(self.dataset, order[start:start + self.batch_size], self.device)
            epoch += 1
