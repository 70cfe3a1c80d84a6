"""Test helpers for the evaluation / detection tests: images with coloured blobs at known points,
and a tiny 'detector' that finds them exactly (so coordinate handling can be checked to a pixel);
and the tiny training config of the training tests.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch


def blob_image(height: int, width: int, centres_px, sigma: float) -> torch.Tensor:
    """(3, H, W) black image; channel c holds a Gaussian blob (peak 1) at centres_px[c] = (x, y)
    in pixels. Up to 3 blobs (one per channel)."""
    ys = torch.arange(height, dtype=torch.float64).view(height, 1)
    xs = torch.arange(width, dtype=torch.float64).view(1, width)
    img = torch.zeros(3, height, width, dtype=torch.float64)
    for c, (x, y) in enumerate(centres_px):
        img[c] = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2))
    return img.float()


class BlobDetector(torch.nn.Module):
    """Stand-in with the Detector contract: forward(images (B,3,S,S)) -> .points (B, 3, 2), the
    centroid (weights = channel value^4) of each colour channel, in normalised [-1, 1] coordinates
    (align_corners=True). Exact for symmetric blobs away from the border."""

    def __init__(self, image_size: int = 64):
        super().__init__()
        self.image_size = image_size
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # so .to()/.parameters() behave

    def forward(self, images):
        B, C, H, W = images.shape
        w = images.clamp(min=0).pow(4) + 1e-12  # (B, 3, H, W)
        gx = torch.linspace(-1, 1, W, device=images.device).view(1, 1, 1, W)
        gy = torch.linspace(-1, 1, H, device=images.device).view(1, 1, H, 1)
        tot = w.sum((2, 3))
        pts = torch.stack([(w * gx).sum((2, 3)) / tot, (w * gy).sum((2, 3)) / tot], dim=-1)
        return SimpleNamespace(points=pts + 0 * self.dummy, heatmaps=None, maps=None)


class BlobFaces(torch.utils.data.Dataset):
    """Annotated dataset in the fastlmk item format: 5 random landmarks near a mean face;
    the image shows blobs at the two eyes and the nose (channels R, G, B)."""

    MEAN = torch.tensor([[-0.4, -0.3], [0.4, -0.3], [0.0, 0.05], [-0.3, 0.4], [0.3, 0.4]])

    def __init__(self, n: int, size: int = 48, seed: int = 0, jitter: float = 0.08):
        g = torch.Generator().manual_seed(seed)
        # mouth corners follow the eyes/nose linearly, so 3 detected points determine all 5
        eyes_nose = self.MEAN[:3] + jitter * torch.randn(n, 3, 2, generator=g)
        mouth = torch.stack([eyes_nose[:, 2] + (self.MEAN[3] - self.MEAN[2]) + 0.5 * (eyes_nose[:, 0] - self.MEAN[0]),
                             eyes_nose[:, 2] + (self.MEAN[4] - self.MEAN[2]) + 0.5 * (eyes_nose[:, 1] - self.MEAN[1])], 1)
        self.landmarks = torch.cat([eyes_nose, mouth], 1)  # (n, 5, 2)
        self.size = size

    def __len__(self):
        return len(self.landmarks)

    def __getitem__(self, i):
        S = self.size
        px = (self.landmarks[i, :3] + 1) / 2 * (S - 1)
        return {"image": blob_image(S, S, px.tolist(), sigma=S / 24), "landmarks": self.landmarks[i], "index": i}


def tiny_checkpoint(path, num_landmarks: int = 4, image_size: int = 32, seed: int = 0):
    """A real fastlmk checkpoint (fastlmk.training.checkpoint format) of a randomly initialised small
    conv Detector. Returns (path, detector)."""
    from fastlmk.training.checkpoint import save_checkpoint
    from fastlmk.training.config import TrainConfig
    from fastlmk.training.model import Detector

    torch.manual_seed(seed)
    cfg = TrainConfig(num_landmarks=num_landmarks, detector_arch="conv", detector_width=8, image_size=image_size,
                      eval_train_size=0, eval_test_size=0)
    det = Detector.from_config(cfg).eval()
    save_checkpoint(str(path), {"config": cfg.to_dict(), "detector": det.state_dict(), "step": 0})
    return path, det


def tiny_train_config(tmp_path, name, **kw):
    """A TrainConfig that trains in well under a second per step on one core (one thread, so
    that runs compare bit for bit)."""
    from fastlmk.training.config import TrainConfig

    base = dict(image_size=32, batch_size=4, steps=6, detector_width=8, generator_width=8, generator_res=1,
                num_landmarks=4, log_every=1, sample_every=0, ckpt_every=3, keep_last=2, out_dir=str(tmp_path),
                run_name=name, eval=False, train_length=32, backend="reference", threads=1)
    base.update(kw)
    return TrainConfig(**base)
