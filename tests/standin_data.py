"""A tiny stand-in for ``fastlmk.data`` (INTERFACES.md), used by the training tests only when
the real package is not importable (it is written on another branch). Same names and item
format; the images are simple procedural blob faces."""

from __future__ import annotations

import sys
import types
from typing import NamedTuple

import torch
from torch.utils.data import Dataset

import fastlmk


class TinyFaces(Dataset):
    """Dark ellipse 'faces' with two eyes, a nose and two mouth corners; deterministic per index."""

    def __init__(self, split="train", size=32, length=64, seed=0):
        self.split, self.size, self.length, self.seed = split, size, length, seed

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(self.seed * 7919 + (0 if self.split == "train" else 100003) + int(i))
        S = self.size
        c = (torch.rand(2, generator=g) - 0.5) * 0.2
        lm = torch.tensor([[-0.3, -0.25], [0.3, -0.25], [0.0, 0.05], [-0.22, 0.35], [0.22, 0.35]]) * (0.9 + 0.2 * torch.rand(1, generator=g)) + c
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, S), torch.linspace(-1, 1, S), indexing="ij")
        face = (((xs - c[0]) / 0.6) ** 2 + ((ys - c[1]) / 0.8) ** 2 < 1).float()
        skin = torch.rand(3, generator=g) * 0.4 + 0.4
        img = torch.full((3, S, S), 0.15) * (1 - face) + skin.view(3, 1, 1) * face
        for k, (x, y) in enumerate(lm):
            blob = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * 0.06 ** 2))
            img = img * (1 - blob) + blob * (0.05 if k != 2 else 0.9)
        return {"image": img.clamp(0, 1), "landmarks": lm.float(), "index": int(i)}


def build_dataset(name, root=None, split="train", size=128, **kw):
    valid = ("synth", "celeba", "mafl", "aflw_zhang", "aflw_thewlis", "folder")
    if name not in valid:
        raise ValueError(f"unknown dataset {name!r}; valid: {valid}")
    if name != "synth":
        raise FileNotFoundError(f"dataset root not found: {root}")
    return TinyFaces(split, size, kw.get("length") or 64)


class Pairs(NamedTuple):
    x: torch.Tensor
    x_prime: torch.Tensor
    tps: object
    tps_prime: object
    mask: torch.Tensor
    mask_prime: torch.Tensor


class TPSPairs:
    def __init__(self, grid_size=10, rotation_std=5.0, scale_std=0.1, translation_std=0.1, warp_std=0.001,
                 extra_warp_prob=0.5, extra_warp_std=(0.005, 0.01), mask_margin=0.1, backend="auto"):
        self.kw = dict(grid_size=grid_size, rotation_std=rotation_std, scale_std=scale_std,
                       translation_std=translation_std, warp_std=warp_std, extra_warp_prob=extra_warp_prob,
                       extra_warp_std=extra_warp_std)
        self.backend = backend

    def __call__(self, images, generator=None):
        B = images.shape[0]
        t1 = fastlmk.random_tps(B, generator=generator, device=images.device, **self.kw)
        t2 = fastlmk.random_tps(B, generator=generator, device=images.device, **self.kw)
        # the mask warped with the image: one warp per view (channel 3 = the valid region)
        both = torch.cat([images, images.new_ones(B, 1, *images.shape[-2:])], 1)
        w1, w2 = fastlmk.tps_warp(both, t1, backend=self.backend), fastlmk.tps_warp(both, t2, backend=self.backend)
        return Pairs(w1[:, :3], w2[:, :3], t1, t2, w1[:, 3:], w2[:, 3:])


def install() -> bool:
    """Register this module as ``fastlmk.data`` when the real one is missing. -> installed?"""
    try:
        __import__("fastlmk.data")
        return False
    except ImportError:
        mod = types.ModuleType("fastlmk.data")
        mod.build_dataset, mod.TPSPairs, mod.Pairs, mod.SynthFaces = build_dataset, TPSPairs, Pairs, TinyFaces
        sys.modules["fastlmk.data"] = mod
        fastlmk.data = mod
        return True
