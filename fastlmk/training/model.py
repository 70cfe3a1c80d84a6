"""The networks of the method (method.md sections 2-3) and one training step.

* :class:`Detector` ``D``: image -> K heatmaps at S/4 -> soft-argmax points ``mu`` -> Gaussian
  maps ``G(mu)``. Two bodies: the paper's hourglass (FAN-style) and IMM's plain conv encoder
  (for the CPU).
* :class:`Generator` ``P``: (image, Gaussian maps) -> image with the appearance of the image and
  the geometry of the maps (StarGAN-like).
* :class:`LandmarkAutoencoder`: ``D`` and ``P`` together; its ``forward`` is the generator side
  of one training step, "inter-intra" (the seed paper) or "intra" (IMM/SAIC baseline). The loss
  is in :mod:`fastlmk.training.losses`, the loop in :mod:`fastlmk.training.loop`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

import fastlmk
from fastlmk.ops.soft_argmax import MODES as SOFT_ARGMAX_MODES
from fastlmk.training.config import ARCHS, METHODS, size_multiple

if TYPE_CHECKING:
    from fastlmk.training.config import TrainConfig


# --------------------------------------------------------------------------------------------
# Detector
# --------------------------------------------------------------------------------------------
class ConvBlock(nn.Module):
    """FAN's residual block: three pre-activation 3x3 convs of widths out/2, out/4, out/4 whose
    outputs are concatenated (multi-scale receptive field), plus the input (1x1 projected when
    the width changes)."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        c2, c4 = c_out // 2, c_out // 4
        self.bn1, self.conv1 = nn.BatchNorm2d(c_in), nn.Conv2d(c_in, c2, 3, padding=1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(c2), nn.Conv2d(c2, c4, 3, padding=1, bias=False)
        self.bn3, self.conv3 = nn.BatchNorm2d(c4), nn.Conv2d(c4, c_out - c2 - c4, 3, padding=1, bias=False)
        self.skip = None
        if c_in != c_out:
            self.skip = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(inplace=True), nn.Conv2d(c_in, c_out, 1, bias=False))

    def forward(self, x):
        a = self.conv1(F.relu(self.bn1(x)))
        b = self.conv2(F.relu(self.bn2(a)))
        c = self.conv3(F.relu(self.bn3(b)))
        return torch.cat([a, b, c], 1) + (x if self.skip is None else self.skip(x))


class Hourglass(nn.Module):
    """Recursive hourglass: ``out = up(inner(down(x))) + skip(x)``, ``depth`` halvings."""

    def __init__(self, depth: int, width: int):
        super().__init__()
        self.skip = ConvBlock(width, width)
        self.down = ConvBlock(width, width)
        self.inner = Hourglass(depth - 1, width) if depth > 1 else ConvBlock(width, width)
        self.up = ConvBlock(width, width)

    def forward(self, x):
        y = self.down(F.avg_pool2d(x, 2))
        y = self.up(self.inner(y))
        return self.skip(x) + F.interpolate(y, scale_factor=2, mode="nearest")


def hourglass_body(width: int, depth: int = 4) -> nn.Sequential:
    """FAN-style: stem conv7x7/2 -> ConvBlocks + avg-pool to S/4 -> hourglass -> ConvBlock ->
    1x1 conv + BN + ReLU. Output (B, width, S/4, S/4)."""
    stem = max(width // 4, 16)
    return nn.Sequential(
        nn.Conv2d(3, stem, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True),  # S/2
        ConvBlock(stem, width // 2), nn.AvgPool2d(2),  # S/4
        ConvBlock(width // 2, width // 2), ConvBlock(width // 2, width),
        Hourglass(depth, width),
        ConvBlock(width, width),
        nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
    )


def conv_body(width: int) -> nn.Sequential:
    """IMM's encoder: 8 conv + BN + ReLU layers (7x7 first, then 3x3), two stride-2 so that the
    output is at S/4 (IMM has three, for S/8). Output (B, 4*width, S/4, S/4)."""
    plan = [(3, width, 7, 1), (width, width, 3, 1),
            (width, 2 * width, 3, 2), (2 * width, 2 * width, 3, 1),
            (2 * width, 4 * width, 3, 2), (4 * width, 4 * width, 3, 1),
            (4 * width, 4 * width, 3, 1), (4 * width, 4 * width, 3, 1)]
    layers = []
    for c_in, c_out, k, s in plan:
        layers += [nn.Conv2d(c_in, c_out, k, stride=s, padding=k // 2, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DetectorOutput(NamedTuple):
    heatmaps: torch.Tensor  # (B, K, h, w) logits
    points: torch.Tensor  # (B, K, 2) mu, (x, y) in [-1, 1]
    maps: torch.Tensor  # (B, K, h, w) G(mu), Gaussian maps, peak 1


class Detector(nn.Module):
    """Landmark detector ``D``: ``mu = soft_argmax(D(x) / T)``, ``G(mu)`` Gaussian maps.

    Args:
        num_landmarks: K >= 1.
        arch: ``"hourglass"`` (paper, FAN-style, depth 4) or ``"conv"`` (IMM's 8-layer encoder).
        width: hourglass width (256 in the paper) or base width of the conv encoder (32).
        image_size: S; the maps are S/4 x S/4. The hourglass needs S divisible by 64.
        temperature: soft-argmax temperature T (0.1).
        std: Gaussian std in pixels of the S/4 map (0.5); converted to normalised units
            ``std * 2 / (h - 1)``.
        backend: backend of the fused ops (``"auto"``, ``"reference"``, ...).
        mode: soft-argmax mode, ``"spatial"`` (softmax over the whole map, the seed code) or
            ``"marginal"`` (IMM: average over one axis, 1-D softmax along the other).
    """

    def __init__(self, num_landmarks: int = 10, arch: str = "hourglass", width: int | None = None,
                 image_size: int = 128, temperature: float = 0.1, std: float | None = None,
                 backend: str = "auto", mode: str = "spatial"):
        super().__init__()
        if not isinstance(num_landmarks, int) or num_landmarks < 1:
            raise ValueError(f"Detector: num_landmarks must be an integer >= 1, got {num_landmarks!r}")
        if arch not in ARCHS:
            raise ValueError(f"Detector: arch must be one of {ARCHS}, got {arch!r}")
        mult = size_multiple(arch)
        if image_size < mult or image_size % mult:
            raise ValueError(f"Detector: image_size must be a positive multiple of {mult} for arch={arch!r}, got {image_size}")
        if mode not in SOFT_ARGMAX_MODES:
            raise ValueError(f"Detector: mode must be one of {SOFT_ARGMAX_MODES}, got {mode!r}")
        if width is None:
            width = 256 if arch == "hourglass" else 32
        if width < 8:
            raise ValueError(f"Detector: width must be >= 8, got {width}")
        self.num_landmarks, self.arch, self.width, self.image_size = num_landmarks, arch, width, image_size
        self.temperature, self.backend, self.mode = float(temperature), backend, mode
        self.map_size = image_size // 4  # h
        self.std_px = 0.5 if std is None else float(std)
        self.std = self.std_px * 2.0 / (self.map_size - 1)  # normalised units of [-1, 1]
        self.body = hourglass_body(width) if arch == "hourglass" else conv_body(width)
        c = width if arch == "hourglass" else 4 * width
        self.head = nn.Conv2d(c, num_landmarks, 1)  # 1x1 conv to the K heatmaps

    @classmethod
    def from_config(cls, cfg: TrainConfig, backend: str = "auto") -> Detector:
        """The detector a (validated) TrainConfig describes. ``backend`` is where it runs, a
        run-time choice: a checkpoint's config says how the model was trained, not where it runs."""
        return cls(num_landmarks=cfg.num_landmarks, arch=cfg.detector_arch, width=cfg.detector_width,
                   image_size=cfg.image_size, temperature=cfg.temperature, std=cfg.gaussian_std,
                   backend=backend, mode=cfg.soft_argmax)

    def render(self, points: torch.Tensor, h: int | None = None) -> torch.Tensor:
        """G(mu): (B, K, 2) -> (B, K, h, h) Gaussian maps; ``h`` defaults to S/4. At another map size
        (smaller training images) the std keeps its size in pixels of that map."""
        if h is None or h == self.map_size:
            return fastlmk.gaussian_heatmaps(points, self.map_size, self.map_size, self.std, backend=self.backend)
        return fastlmk.gaussian_heatmaps(points, h, h, self.std_px * 2.0 / (h - 1), backend=self.backend)

    def forward(self, images: torch.Tensor) -> DetectorOutput:
        """``images`` (B, 3, S, S). In training mode S may also be any smaller size the body takes
        (a multiple of 4, of 64 for the hourglass: progressive resizing, ``TrainConfig.early_size``);
        in eval mode it is the size the detector was built for."""
        mult = size_multiple(self.arch)
        s = images.shape[-1] if images.ndim == 4 else -1
        ok = s == self.image_size or (self.training and mult <= s < self.image_size and s % mult == 0)
        if not ok or images.shape[1] != 3 or images.shape[-2] != s:
            raise ValueError(f"Detector: expected images (B, 3, {self.image_size}, {self.image_size}), got {tuple(images.shape)}")
        heatmaps = self.head(self.body(images))  # (B, K, h, w)
        # precision: the bottleneck runs in float32 even under bf16 autocast (softmax of logits / 0.1)
        heatmaps = heatmaps.float()
        points = fastlmk.soft_argmax(heatmaps, self.temperature, self.mode, backend=self.backend)  # (B, K, 2)
        return DetectorOutput(heatmaps, points, self.render(points, heatmaps.shape[-1]))


# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------
class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.body(x)


class Generator(nn.Module):
    """Image generator ``P(image, maps)`` (StarGAN-like, method.md section 3).

    conv7x7 + BN + ReLU (width) -> two 4x4 stride-2 convs (2w, 4w) to S/4 -> concatenate the K
    Gaussian maps -> BN -> ``num_res`` residual blocks of width 4w+K -> two 4x4 stride-2
    transposed convs (2w, w) -> conv7x7 to 3 channels -> tanh, mapped to [0, 1].

    ``skip`` [ours]: U-Net skips, the encoder's S and S/2 features concatenated to the decoder's
    (detail of the appearance image reaches the output without the S/4 bottleneck; the geometry
    then leaks through them, so use it only with pairs whose two images share it, e.g.
    ``pairs='motion'`` with ``shared_warp``).
    """

    def __init__(self, num_landmarks: int = 10, width: int = 32, num_res: int = 6, skip: bool = False):
        super().__init__()
        if not isinstance(num_landmarks, int) or num_landmarks < 1:
            raise ValueError(f"Generator: num_landmarks must be an integer >= 1, got {num_landmarks!r}")
        w, c = width, 4 * width + num_landmarks

        def down(ci, co):
            return [nn.Conv2d(ci, co, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]

        def up(ci, co):
            return [nn.ConvTranspose2d(ci, co, 4, stride=2, padding=1, bias=False), nn.BatchNorm2d(co), nn.ReLU(inplace=True)]

        self.encode = nn.Sequential(
            nn.Conv2d(3, w, 7, padding=3, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            *down(w, 2 * w), *down(2 * w, 4 * w))  # (B, 4w, S/4, S/4)
        self.fuse = nn.BatchNorm2d(c)  # after concatenating the maps
        self.res = nn.Sequential(*[ResBlock(c) for _ in range(num_res)])
        k = 2 if skip else 1  # decoder inputs widen by the skipped features
        self.skip = bool(skip)
        self.decode = nn.Sequential(*up(c, 2 * w), *up(k * 2 * w, w), nn.Conv2d(k * w, 3, 7, padding=3))

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> Generator:
        return cls(cfg.num_landmarks, cfg.generator_width, cfg.generator_res, cfg.generator_skip)

    def forward(self, image: torch.Tensor, maps: torch.Tensor) -> torch.Tensor:
        e0 = self.encode[:3](image)  # (B, w, S, S)
        e1 = self.encode[3:6](e0)  # (B, 2w, S/2, S/2)
        f = self.encode[6:](e1)  # (B, 4w, h, w)
        if maps.shape[-2:] != f.shape[-2:]:
            raise ValueError(f"Generator: maps must be at S/4 = {tuple(f.shape[-2:])}, got {tuple(maps.shape[-2:])}")
        f = self.res(self.fuse(torch.cat([f, maps.to(f.dtype)], 1)))  # (B, 4w + K, h, w)
        d = self.decode[:3](f)  # (B, 2w, S/2, S/2)
        d = self.decode[3:6](torch.cat([d, e1], 1) if self.skip else d)  # (B, w, S, S)
        out = self.decode[6](torch.cat([d, e0], 1) if self.skip else d)
        return (torch.tanh(out) + 1) / 2  # (B, 3, S, S) in [0, 1]


# --------------------------------------------------------------------------------------------
# One training step (generator side)
# --------------------------------------------------------------------------------------------
def derangement(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A uniformly random permutation of 0..n-1 without fixed points (rejection sampling; on
    average e ~ 2.7 draws). ``a[i]`` is the auxiliary subject of sample ``i``."""
    if n < 2:
        raise ValueError(f"derangement: needs n >= 2 (no other subject in a batch of {n})")
    idx = torch.arange(n)
    while True:
        a = torch.randperm(n, generator=generator)
        if not bool((a == idx).any()):
            return a


def step_method(method: str, intra_warmup: int, step: int) -> str:
    """The objective of training step ``step`` (0-based): ``intra`` during the optional warm-up of
    ``intra_warmup`` steps [ours], then ``method``."""
    return "intra" if step < intra_warmup else method


class LandmarkAutoencoder(nn.Module):
    """Detector ``D`` and generator ``P`` trained together.

    ``forward(x, x_prime, aux)`` runs the method's passes and returns a dict of tensors with
    the reconstruction targets under ``"targets"``: a list of (reconstruction, target, which)
    with which in {"x", "x_prime"} (selects the border mask).

    inter-intra (method.md section 2), ``x_a = x[aux]`` another subject of the batch:
        mu = D(x), mu' = D(x'), mu_a = D(x_a)       (three detector passes; the third by indexing)
        x~  = P(x,   G(mu_a))    x re-posed to the auxiliary geometry
        x~' = P(x',  G(mu_a))    x' re-posed to the auxiliary geometry
        x^' = P(x~,  G(mu'))     forward path, back to x'
        x^  = P(x~', G(mu))      backward path, back to x
        loss on (x^, x) and (x^', x').
    intra (IMM / SAIC):  mu' = D(x'),  x^' = P(x, G(mu')),  loss on (x^', x').
    """

    def __init__(self, detector: Detector, generator: Generator, method: str = "inter-intra",
                 points_of_x: bool = False, intra_warmup: int = 0):
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.detector, self.generator, self.method = detector, generator, method
        # intra computes only mu' = D(x'); the equivariance term also needs mu = D(x) (one more pass)
        self.points_of_x = points_of_x
        self.trained_method, self.intra_warmup = method, intra_warmup  # [ours] intra for the first steps

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> LandmarkAutoencoder:
        """D and P of a (validated) TrainConfig, built in this order (the seed's draws are the same
        as ever); D runs on ``cfg.backend``."""
        detector = Detector.from_config(cfg, backend=cfg.backend)
        return cls(detector, Generator.from_config(cfg), cfg.method, points_of_x=cfg.equivariance_weight > 0,
                   intra_warmup=cfg.intra_warmup)

    def begin_step(self, step: int, batch_size: int, generator: torch.Generator | None = None) -> torch.Tensor | None:
        """Set up training step ``step`` (0-based): its objective (``intra`` during the optional
        warm-up [ours], then the method's) and its auxiliary subjects: a derangement of the batch
        drawn from ``generator`` for inter-intra, None for intra (nothing drawn). Pass the result
        to ``forward`` as ``aux``. (Drawn here, outside ``forward``, so that a compiled forward
        has no data-dependent loop.)"""
        self.method = step_method(self.trained_method, self.intra_warmup, step)
        return derangement(batch_size, generator) if self.method == "inter-intra" else None

    def sample_rows(self, x: torch.Tensor, x_prime: torch.Tensor, out: dict) -> list:
        """The rows of a sample grid of ``forward``'s output ``out`` for the current objective:
        (title, images (B, 3, S, S), points (B, K, 2) or None)."""
        if self.method == "intra":
            return [("x", x, None), ("x'", x_prime, out["mu_prime"]),
                    ("x^' = P(x, G(mu'))", out["x_hat_prime"], out["mu_prime"])]
        return [("x", x, out["mu"]), ("x'", x_prime, out["mu_prime"]),
                ("x_a", out["x_aux"], out["mu_aux"]), ("x~ = P(x, G(mu_a))", out["x_tilde"], out["mu_aux"]),
                ("x~' = P(x', G(mu_a))", out["x_tilde_prime"], out["mu_aux"]),
                ("x^' = P(x~, G(mu'))", out["x_hat_prime"], out["mu_prime"]),
                ("x^ = P(x~', G(mu))", out["x_hat"], out["mu"])]

    def forward(self, x: torch.Tensor, x_prime: torch.Tensor, aux: torch.Tensor | None = None,
                x_eq: torch.Tensor | None = None) -> dict:
        """``x_eq`` [ours]: another warp of x''s source image when x and x' are two views
        (``Pairs.x_eq``); its points ``mu_eq`` replace ``mu`` in the equivariance term."""
        D, P = self.detector, self.generator
        if self.method == "intra":
            d_p = D(x_prime)  # mu' = D(x')
            x_hat_p = P(x, d_p.maps)  # x^' = P(x, G(mu'))
            out = {"mu_prime": d_p.points, "heatmaps_prime": d_p.heatmaps, "x_hat_prime": x_hat_p, "targets": [(x_hat_p, x_prime, "x_prime")]}
            if x_eq is not None:
                out["mu_eq"] = D(x_eq).points
            elif self.points_of_x:
                out["mu"] = D(x).points
            return out
        if aux is None:
            raise ValueError("inter-intra needs aux, a derangement of the batch (begin_step draws it)")
        aux = aux.to(x.device)
        x_a = x[aux]  # auxiliary subject: another person of the batch
        # three detector passes. D(x_a) is D(x) re-indexed: every layer acts per sample except
        # BatchNorm, whose batch statistics do not depend on the order of the batch, so
        # D(x[a]) == D(x)[a] exactly, values and gradients (tests/test_model.py checks it);
        # indexing saves one pass.
        d, d_p = D(x), D(x_prime)
        mu, mu_p, mu_a = d.points, d_p.points, d.points[aux]  # mu = D(x), mu' = D(x'), mu_a = D(x_a)
        G_mu, G_mu_p, G_mu_a = d.maps, d_p.maps, d.maps[aux]
        # four generator passes (separate, as in the seed code: BatchNorm statistics per pass)
        x_tilde = P(x, G_mu_a)  # x~  = P(x,  G(mu_a)): x re-posed to the auxiliary geometry
        x_tilde_p = P(x_prime, G_mu_a)  # x~' = P(x', G(mu_a)): x' re-posed to the auxiliary geometry
        x_hat_p = P(x_tilde, G_mu_p)  # x^' = P(x~,  G(mu')): forward path, back to x'
        x_hat = P(x_tilde_p, G_mu)  # x^  = P(x~', G(mu)):  backward path, back to x
        out = {"mu": mu, "mu_prime": mu_p, "heatmaps": d.heatmaps, "heatmaps_prime": d_p.heatmaps, "mu_aux": mu_a, "x_aux": x_a,
               "x_tilde": x_tilde, "x_tilde_prime": x_tilde_p, "x_hat": x_hat, "x_hat_prime": x_hat_p,
               "targets": [(x_hat, x, "x"), (x_hat_p, x_prime, "x_prime")]}
        if x_eq is not None:
            out["mu_eq"] = D(x_eq).points
        return out
