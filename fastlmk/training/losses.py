"""Reconstruction losses: masked MSE plus a perceptual term (method.md section 2, step 5).

``loss = sum over reconstructions (x_rec, x) of  MSE_m(x_rec, x) + perceptual_m(x_rec, x)``,
weights 1, where ``m`` is the smooth border mask of the target view (from the pair maker) so
that the zero padding of the TPS warp is not learned.

Perceptual terms (``PERCEPTUAL``):

* ``"vgg"``: VGG16 (ImageNet) features at relu1_2, relu2_2, relu3_3, relu4_3, MSE per layer,
  summed [seed-code]. The weights come from a local torchvision ``vgg16`` state dict
  (``--vgg-weights PATH``); nothing is downloaded.
* fallbacks for when no VGG weights are at hand (docs/training.md has the measurement that
  chose the default): ``"none"`` (MSE only), ``"random-conv"`` (MSE of the features of a fixed,
  randomly initialised conv net), ``"ssim"`` (1 - SSIM, needs kornia), ``"laplacian"`` (L1 over
  the bands of a Laplacian pyramid, :func:`laplacian_pyramid`, plain torch: the default
  fallback needs no package beyond the declared dependencies).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import torch
import torch.nn as nn
import torch.nn.functional as F

from fastlmk.ops.reference import grid_coords  # pixel-centre coordinates, the soft-argmax's own
from fastlmk.training.config import PERCEPTUAL

if TYPE_CHECKING:
    from fastlmk.training.config import TrainConfig

FALLBACK = "laplacian"  # chosen by measurement, see docs/training.md

# torchvision vgg16().features up to relu4_3: index -> (in, out) of each conv; the others are
# ReLU / max-pool. Indices are kept so that the keys are features.N.weight / features.N.bias.
_VGG_CONVS = {0: (3, 64), 2: (64, 64), 5: (64, 128), 7: (128, 128), 10: (128, 256), 12: (256, 256),
              14: (256, 256), 17: (256, 512), 19: (512, 512), 21: (512, 512)}
_VGG_POOLS = (4, 9, 16)
_VGG_TAPS = (3, 8, 15, 22)  # relu1_2, relu2_2, relu3_3, relu4_3


def masked_mean(err: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``err`` (B, C, H, W) weighted by ``mask`` (B, 1, H', W') resized to H x W."""
    if mask is None:
        return err.mean()
    if mask.shape[-2:] != err.shape[-2:]:
        mask = F.adaptive_avg_pool2d(mask, err.shape[-2:])
    return (err * mask).sum() / (mask.sum() * err.shape[1]).clamp_min(1e-8)


# Burt & Adelson's 5-tap binomial filter [1, 4, 6, 4, 1] / 16; its outer product is the 5x5
# kernel of OpenCV's pyrDown / pyrUp and of kornia's pyramids.
_BINOMIAL5 = (1.0, 4.0, 6.0, 4.0, 1.0)


def _pyramid_blur(x: torch.Tensor) -> torch.Tensor:
    """5x5 binomial blur of each channel of ``x`` (B, C, H, W), reflect border (same size)."""
    k = torch.tensor(_BINOMIAL5, dtype=x.dtype, device=x.device)
    kernel = (torch.outer(k, k) / 256.0).expand(x.shape[1], 1, 5, 5)  # (C, 1, 5, 5), depthwise
    return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel, groups=x.shape[1])


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list:
    """Laplacian pyramid of ``x`` (B, C, H, W): ``levels`` tensors, band ``i`` = Gaussian level
    ``i`` minus the expanded Gaussian level ``i + 1``, the last one the coarsest Gaussian level.

    Gaussian level ``i + 1`` = blur, then bilinear resize to half size (floor); expand = bilinear
    resize to double size, then blur (``align_corners=False``, reflect borders). Sides that are
    not powers of two (both), or not divisible by ``2 ** (levels - 1)``, are first reflect-padded
    at the bottom / right to the next power of two. This is the function of kornia's
    ``build_laplacian_pyramid`` (same defaults), in plain torch so that the default loss needs
    no extra package; tests/test_model.py checks the two agree.
    """
    if levels < 1:
        raise ValueError(f"levels must be >= 1, got {levels}")
    h, w = x.shape[-2:]
    pow2 = lambda n: n > 0 and n & (n - 1) == 0  # noqa: E731
    stride = 1 << (levels - 1)
    if not (pow2(h) or pow2(w)) or (levels > 1 and (h % stride or w % stride)):
        x = F.pad(x, (0, (1 << (w - 1).bit_length()) - w, 0, (1 << (h - 1).bit_length()) - h), mode="reflect")
    gauss = [x]
    for _ in range(levels - 1):
        g = gauss[-1]
        gauss.append(F.interpolate(_pyramid_blur(g), size=(g.shape[-2] // 2, g.shape[-1] // 2), mode="bilinear",
                                   align_corners=False))
    bands = [g - _pyramid_blur(F.interpolate(coarse, size=(2 * coarse.shape[-2], 2 * coarse.shape[-1]),
                                             mode="bilinear", align_corners=False))
             for g, coarse in zip(gauss, gauss[1:])]
    return bands + [gauss[-1]]


def masked_mse(x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    return masked_mean((x - y).square(), mask)


class VGG16Features(nn.Module):
    """VGG16 ``features[:23]`` as plain torch layers, inputs in [0, 1] (ImageNet normalisation
    inside). ``forward`` returns the relu1_2, relu2_2, relu3_3, relu4_3 activations."""

    def __init__(self):
        super().__init__()
        layers = []
        for i in range(_VGG_TAPS[-1] + 1):
            if i in _VGG_CONVS:
                layers.append(nn.Conv2d(*_VGG_CONVS[i], 3, padding=1))
            elif i in _VGG_POOLS:
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers.append(nn.ReLU(inplace=False))
        self.features = nn.Sequential(*layers)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)

    @classmethod
    def from_file(cls, path: str) -> "VGG16Features":
        """Load a torchvision vgg16 state dict (the ``classifier.*`` keys and later feature
        layers are ignored)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"--vgg-weights: no such file: {path}")
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - re-raised with the path
            raise ValueError(f"--vgg-weights: cannot read {path} as a torch state dict ({type(e).__name__}: {e})") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
        net = cls()
        want = net.state_dict()
        if not isinstance(sd, dict):
            raise ValueError(f"--vgg-weights: {path} holds a {type(sd).__name__}, not a state dict")
        missing = [k for k in want if k not in sd]
        if missing:
            raise ValueError(f"--vgg-weights: {path} is not a torchvision vgg16 state dict: missing {missing[:4]}"
                             f"{' ...' if len(missing) > 4 else ''}")
        for k, v in want.items():
            if sd[k].shape != v.shape:
                raise ValueError(f"--vgg-weights: {path}: {k} has shape {tuple(sd[k].shape)}, expected {tuple(v.shape)}")
        net.load_state_dict({k: sd[k] for k in want})
        return net

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean) / self.std
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _VGG_TAPS:
                out.append(x)
        return out


class RandomConvFeatures(nn.Module):
    """A fixed conv net with random (seeded, frozen) weights: three stages conv3x3 + ReLU +
    avg-pool, 32/64/128 channels; the feature loss compares the three stage outputs."""

    def __init__(self, seed: int = 1234):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.convs = nn.ModuleList()
        c_in = 3
        for c in (32, 64, 128):
            conv = nn.Conv2d(c_in, c, 3, padding=1)
            with torch.no_grad():  # He init from the fixed generator, independent of the global seed
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * (2.0 / (9 * c_in)) ** 0.5)
                conv.bias.zero_()
            self.convs.append(conv)
            c_in = c
        self.requires_grad_(False)

    def forward(self, x):
        out = []
        x = x - 0.5
        for conv in self.convs:
            x = F.relu(conv(x))
            out.append(x)
            x = F.avg_pool2d(x, 2)
        return out


class ReconstructionLoss(nn.Module):
    """``sum_i MSE_m(rec_i, target_i) + perceptual_m(rec_i, target_i)``.

    Args:
        perceptual: one of ``PERCEPTUAL``; ``"vgg"`` needs ``vgg_weights``.
        vgg_weights: path of a torchvision vgg16 state dict.
        perceptual_weight: weight of the perceptual term (1 in the seed code).
    """

    def __init__(self, perceptual: str = FALLBACK, vgg_weights: str | None = None, perceptual_weight: float = 1.0):
        super().__init__()
        if perceptual not in PERCEPTUAL:
            raise ValueError(f"perceptual must be one of {PERCEPTUAL}, got {perceptual!r}")
        if perceptual == "vgg" and not vgg_weights:
            raise ValueError("perceptual='vgg' needs --vgg-weights PATH (a torchvision vgg16 state dict)")
        self.kind, self.weight = perceptual, float(perceptual_weight)
        self.features = None
        if perceptual == "vgg":
            self.features = VGG16Features.from_file(vgg_weights)
        elif perceptual == "random-conv":
            self.features = RandomConvFeatures()

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> ReconstructionLoss:
        """The loss of a (validated) TrainConfig whose ``perceptual`` is resolved (not "auto")."""
        return cls(cfg.perceptual, cfg.vgg_weights or None, cfg.perceptual_weight)

    def perceptual(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if self.kind == "none":
            return x.new_zeros(())
        if self.features is not None:
            # feature MSE per layer, summed; mask resized (area) to each layer's resolution
            fx, fy = self.features(x), self.features(y)
            return sum(masked_mse(a, b, mask) for a, b in zip(fx, fy))
        if self.kind == "ssim":
            from kornia.metrics import ssim

            return masked_mean(1.0 - ssim(x, y, window_size=7, max_val=1.0), mask)
        # laplacian: L1 of each band of a Laplacian pyramid (finest band = edges) plus the
        # coarse residual, equal weights; 4 levels (64 px and up), fewer for smaller images
        levels = max(1, min(4, min(x.shape[-2:]).bit_length() - 3))
        px, py = laplacian_pyramid(x, levels), laplacian_pyramid(y, levels)
        return sum(masked_mean((a - b).abs(), mask) for a, b in zip(px, py))

    def forward(self, pairs, masks: dict | None = None) -> dict:
        """``pairs``: list of (reconstruction, target, which); ``masks[which]`` (B, 1, S, S) or
        None. Returns {"loss", "mse", "perceptual"} (scalars, float32)."""
        mse = perc = 0.0
        for rec, target, which in pairs:
            rec, target = rec.float(), target.float()  # precision: losses in float32 under autocast
            m = None if masks is None else masks.get(which)
            mse = mse + masked_mse(rec, target, m)
            perc = perc + self.perceptual(rec, target, m)
        perc = perc if torch.is_tensor(perc) else torch.zeros(())
        return {"loss": mse + self.weight * perc, "mse": mse, "perceptual": perc}


def equivariance_loss(mu: torch.Tensor, mu_prime: torch.Tensor, tps, tps_prime) -> torch.Tensor:
    """[ours, after Thewlis et al. 2017] ``mean |T(mu) - T'(mu')|^2`` over the batch and the K points.

    ``x = warp(I, T)`` samples the source image ``I`` at ``T(p)``, so a landmark found at ``mu`` on
    ``x`` sits at ``T(mu)`` in ``I``; the same landmark found on ``x'`` must land on the same spot.
    Unlike the reconstruction loss, which reaches the detector only through the generator, this
    gives the detector a direct gradient. Units: squared normalised coordinates ([-1, 1]).
    """
    import fastlmk

    p = fastlmk.tps_transform_points(mu.float(), tps)
    p_prime = fastlmk.tps_transform_points(mu_prime.float(), tps_prime)
    return (p - p_prime).square().sum(-1).mean()


def separation_loss(mu: torch.Tensor, std: float) -> torch.Tensor:
    """[ours, after Zhang et al. 2018] ``mean over i != j of exp(-|mu_i - mu_j|^2 / (2 std^2))``.

    Keeps the K points of an image apart (an equivariance term alone is satisfied by all points
    collapsing onto one trackable spot). ``mu``: (B, K, 2); ``std`` in normalised units."""
    K = mu.shape[1]
    if K < 2:
        return mu.new_zeros(())
    d2 = (mu.float()[:, :, None] - mu.float()[:, None]).square().sum(-1)  # (B, K, K)
    off = ~torch.eye(K, dtype=torch.bool, device=mu.device)
    return torch.exp(-d2[:, off] / (2 * std * std)).mean()


LOSS_TERMS = ("loss", "mse", "perceptual", "equivariance", "separation", "concentration")  # logged per step (log.csv, history)


def concentration_loss(heatmaps: torch.Tensor, temperature: float) -> torch.Tensor:
    """[ours, after Zhang et al. 2018] spread of each landmark's soft-argmax distribution:
    ``mean over (b, k) of var_x + var_y`` of ``softmax(heatmaps / T)`` over the map, coordinates
    in normalised units (pixel centres at -1 and +1, as :func:`fastlmk.soft_argmax`).

    A broad distribution puts its point at the centroid of a large region (it moves with the
    whole head); a concentrated one must sit on one local structure. ``heatmaps``: (B, K, h, w)
    logits."""
    B, K, h, w = heatmaps.shape
    p = torch.softmax(heatmaps.float().reshape(B, K, h * w) / temperature, -1).reshape(B, K, h, w)
    ys, xs = grid_coords(h, device=heatmaps.device), grid_coords(w, device=heatmaps.device)
    px, py = p.sum(2), p.sum(3)  # marginals (B, K, w), (B, K, h)
    var_x = (px * xs.square()).sum(-1) - (px * xs).sum(-1).square()
    var_y = (py * ys.square()).sum(-1) - (py * ys).sum(-1).square()
    return (var_x + var_y).mean()


class TrainingLoss(nn.Module):
    """The loss of one training step: the reconstruction loss of the method, plus the optional
    [ours] equivariance, separation and concentration terms (weight 0 = off, the paper's objective).

    ``forward(out, pairs)``: ``out`` is ``LandmarkAutoencoder.forward``'s dict, ``pairs`` the
    ``fastlmk.data.Pairs`` it ran on. Returns a dict of float32 scalars, one per ``LOSS_TERMS``
    (terms that are off are zeros), ``"loss"`` the weighted sum to minimise."""

    def __init__(self, reconstruction: ReconstructionLoss, equivariance_weight: float = 0.0,
                 separation_weight: float = 0.0, separation_std: float = 0.08,
                 concentration_weight: float = 0.0, temperature: float = 1.0):
        super().__init__()
        self.reconstruction = reconstruction
        self.equivariance_weight, self.separation_weight = equivariance_weight, separation_weight
        self.separation_std = separation_std
        self.concentration_weight, self.temperature = concentration_weight, temperature

    @classmethod
    def from_config(cls, cfg: TrainConfig) -> TrainingLoss:
        return cls(ReconstructionLoss.from_config(cfg), cfg.equivariance_weight, cfg.separation_weight,
                   cfg.separation_std, cfg.concentration_weight, cfg.temperature)

    def forward(self, out: dict, pairs) -> dict:
        losses = self.reconstruction(out["targets"], {"x": pairs.mask, "x_prime": pairs.mask_prime})
        device = losses["loss"].device
        losses["equivariance"] = losses["separation"] = losses["concentration"] = torch.zeros((), device=device)
        if self.equivariance_weight > 0:  # a direct signal for the detector [ours]
            if "mu_eq" in out:  # x and x' are two views: x' against another warp of its own source
                losses["equivariance"] = equivariance_loss(out["mu_eq"], out["mu_prime"], pairs.tps_eq, pairs.tps_prime)
            else:
                losses["equivariance"] = equivariance_loss(out["mu"], out["mu_prime"], pairs.tps, pairs.tps_prime)
            losses["loss"] = losses["loss"] + self.equivariance_weight * losses["equivariance"]
        if self.separation_weight > 0:  # keeps the points of an image apart [ours]
            losses["separation"] = sum(separation_loss(out[k], self.separation_std) for k in ("mu", "mu_prime", "mu_eq")
                                       if k in out)
            losses["loss"] = losses["loss"] + self.separation_weight * losses["separation"]
        if self.concentration_weight > 0:  # makes each heatmap peak on one spot [ours]
            losses["concentration"] = sum(concentration_loss(out[k], self.temperature)
                                          for k in ("heatmaps", "heatmaps_prime") if k in out)
            losses["loss"] = losses["loss"] + self.concentration_weight * losses["concentration"]
        return losses
