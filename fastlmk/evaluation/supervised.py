"""The supervised upper bound: the evaluated model's detector architecture trained on the
annotations (a second, small training loop; no TPS pairs, no generator)."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from fastlmk.evaluation.protocol import collate


@dataclasses.dataclass(frozen=True)
class SupervisedSettings:
    """How the bound is trained: settings that suit supervised regression, on purpose NOT the
    unsupervised run's optimiser or temperature. The run's soft-argmax temperature can be a poor
    choice here: the cpu preset's 1.0 (a broad start for unsupervised learning) did not converge
    in 1,500 supervised steps (37 %); Adam with beta1 0 and weight decay (the paper's unsupervised
    settings) has no reason to suit a regression either."""

    batch_size: int = 32
    lr: float = 1e-3  # Adam learning rate
    betas: tuple[float, float] = (0.9, 0.999)  # Adam's defaults
    weight_decay: float = 0.0
    temperature: float | None = 0.1  # soft-argmax T (the paper's: sharp maps suit a supervised target); None = the run's
    grad_clip: float = 1.0  # gradient-norm clip


def supervised_model(model, num_landmarks: int, image_size: int, settings: SupervisedSettings):
    """The TrainConfig of the bound's detector: the evaluated run's (``model``; None = the
    defaults) architecture, width, soft-argmax mode and map std, with the annotations' landmark
    count, the data's image size and the settings' temperature."""
    from fastlmk.training.config import TrainConfig  # lazy: the model is not needed to evaluate points

    model = model or TrainConfig()
    temperature = model.temperature if settings.temperature is None else float(settings.temperature)
    return dataclasses.replace(model, num_landmarks=num_landmarks, image_size=image_size, temperature=temperature)


def describe(model, settings: SupervisedSettings, backend: str) -> dict:
    """The bound's set-up as recorded in eval.json ("supervised": {"config": ...})."""
    return {"arch": model.detector_arch, "width": model.detector_width, "mode": model.soft_argmax,
            "backend": backend, **dataclasses.asdict(settings), "betas": list(settings.betas),
            "temperature": model.temperature}


def train_supervised(train_set, steps: int, model=None, settings: SupervisedSettings = SupervisedSettings(),
                     backend: str = "auto", device="cpu", seed: int = 0, progress: bool = True,
                     num_workers: int = 0, history: list | None = None):
    """Train ``Detector.from_config(supervised_model(model, ...))`` on the annotations (upper bound).

    The loss is the MSE between the detector's soft-argmax points and the annotated landmarks
    (normalised coordinates), minimised with Adam and the ``settings`` (not the run's: see
    :class:`SupervisedSettings`); no augmentation. ``model``: the evaluated run's TrainConfig
    (its architecture is used). When a ``history`` list is given, the loss of every step is
    appended to it.

    Returns:
        The trained Detector, in eval mode, on ``device``.
    """
    from tqdm.auto import tqdm

    from fastlmk.training.model import Detector  # lazy: the model is not needed to evaluate points

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"fastlmk.evaluate.train_supervised: steps must be an int >= 1, got {steps!r}")
    device = torch.device(device)
    first = train_set[0]
    if "landmarks" not in first:
        raise ValueError("fastlmk.evaluate.train_supervised: train_set items have no 'landmarks'")
    cfg = supervised_model(model, int(first["landmarks"].shape[0]), int(first["image"].shape[-1]), settings)
    torch.manual_seed(seed)
    detector = Detector.from_config(cfg, backend=backend).to(device)
    opt = torch.optim.Adam(detector.parameters(), lr=settings.lr, betas=tuple(settings.betas),
                           weight_decay=settings.weight_decay)
    gen = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(train_set, batch_size=settings.batch_size, shuffle=True,
                                         drop_last=len(train_set) > settings.batch_size,
                                         generator=gen, num_workers=num_workers, collate_fn=collate,
                                         pin_memory=device.type == "cuda")
    detector.train()
    it = iter(loader)
    bar = tqdm(range(steps), desc="supervised", disable=not progress, leave=False)
    for _ in bar:
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        images = batch["image"].to(device, non_blocking=True)
        target = batch["landmarks"].to(device, non_blocking=True).float()
        loss = F.mse_loss(detector(images).points.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(detector.parameters(), settings.grad_clip)
        opt.step()
        loss_value = loss.item()  # note: a sync point, fine at this scale
        bar.set_postfix(loss=f"{loss_value:.2e}")
        if history is not None:
            history.append(loss_value)
    detector.eval()
    return detector
