"""The training step's layout (TrainConfig.memory_format): channels_last on the CPU computes the
same step as the contiguous layout, to float32 rounding."""

import contextlib
import dataclasses

import pytest
import torch

from fastlmk.training.config import preset, validate
from fastlmk.training.losses import TrainingLoss
from fastlmk.training.loop import Processes, RandomStreams, batch_stream, memory_format, train_step, training_data
from fastlmk.training.model import LandmarkAutoencoder

torch.set_num_threads(1)


def test_auto_is_channels_last_on_the_cpu_only():
    cfg = preset("cpu")
    assert cfg.memory_format == "auto"
    assert memory_format(cfg, torch.device("cpu")) is torch.channels_last
    assert memory_format(cfg, torch.device("cuda")) is torch.contiguous_format  # not measured there
    for name, fmt in (("contiguous", torch.contiguous_format), ("channels_last", torch.channels_last)):
        assert memory_format(dataclasses.replace(cfg, memory_format=name), torch.device("cuda")) is fmt
    with pytest.raises(ValueError, match="memory_format must be one of"):
        validate(dataclasses.replace(cfg, memory_format="nhwc"))


@pytest.mark.parametrize("method", ["intra", "inter-intra"])
def test_channels_last_step_is_as_close_to_the_float64_step_as_the_contiguous_one(method):
    """The first step's gradient in each float32 layout against the same step in float64. At
    initialisation the step is ill-conditioned (every image's points start alike, so the
    equivariance term and BatchNorm over the maps subtract nearly equal numbers): float32 alone moves
    the gradient by ~0.4 %, in either layout; a layout bug would move it by far more."""
    base = dataclasses.replace(preset("cpu"), method=method, intra_warmup=0, batch_size=4, train_length=32,
                               perceptual="laplacian", detector_width=8, generator_width=8, generator_res=1)
    procs = Processes(world=1, rank=0, local_rank=0, device=torch.device("cpu"), threads=1)

    def first_gradient(layout, dtype):
        cfg = dataclasses.replace(base, memory_format=layout)
        dataset, make_pairs = training_data(cfg, 1)
        torch.manual_seed(0)
        model = LandmarkAutoencoder.from_config(cfg).to(dtype=dtype, memory_format=memory_format(cfg, procs.device))
        conv = next(p for p in model.parameters() if p.dim() == 4)
        assert conv.is_contiguous(memory_format=memory_format(cfg, procs.device))
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        batch = {k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
                 for k, v in next(batch_stream(dataset, cfg, procs, 0)).items()}
        train_step(cfg, model, model, TrainingLoss.from_config(cfg).to(dtype), optimizer, make_pairs,
                   RandomStreams(0, 0, procs.device), batch, 0, procs.device, contextlib.nullcontext())
        return torch.cat([p.grad.double().flatten() for p in model.parameters()])  # clipped, as the step uses it

    exact = first_gradient("contiguous", torch.float64)
    error = {layout: float((first_gradient(layout, torch.float32) - exact).norm() / exact.norm())
             for layout in ("contiguous", "channels_last")}
    assert error["contiguous"] < 1e-2, error
    assert error["channels_last"] < 1.5 * error["contiguous"] + 1e-5, error
