"""fastlmk.data.device_render: SynthFaces rendered on a chosen device are the CPU images."""

import pytest
import torch

from fastlmk.data import SynthFaces
from fastlmk.data.device_render import DeviceBatches, render_on


def test_render_on_cpu_is_render():
    ds = SynthFaces("train", size=32, length=50)
    idx = [3, 0, 17, 49]
    want, got = ds.render(idx), render_on(ds, torch.tensor(idx), "cpu")
    for k in ("image", "landmarks", "landmarks_extra", "subject", "index"):
        assert torch.equal(got[k], want[k]), k


def test_device_batches_visit_a_permutation():
    ds = SynthFaces("test", size=16, length=10)
    it = iter(DeviceBatches(ds, batch_size=4, device="cpu", seed=1))
    seen = torch.cat([next(it)["index"] for _ in range(2)])  # 2 full batches per epoch (last 2 dropped)
    assert len(set(seen.tolist())) == 8 and next(it)["image"].shape == (4, 3, 16, 16)
    with pytest.raises(ValueError, match="batch_size"):
        DeviceBatches(ds, batch_size=11, device="cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_render_on_cuda_matches_the_cpu():
    ds = SynthFaces("train", size=64, length=64)
    want, got = ds.render(range(16)), render_on(ds, range(16), "cuda")
    assert got["image"].is_cuda and got["landmarks"].is_cuda
    assert (got["image"].cpu() - want["image"]).abs().max().item() < 2e-2  # anti-aliasing ramps: float rounding
    assert (got["image"].cpu() - want["image"]).abs().mean().item() < 1e-4
    assert torch.allclose(got["landmarks"].cpu(), want["landmarks"], atol=1e-5)
