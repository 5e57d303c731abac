"""The opt-in speed settings (`model.compile`, `model.channels_last`) leave the update as it was, TF32 stays off
without CUDA, and `UNetMeter` counts the images through a UNet (the metrics rows' `perf_*` fields)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.ppo.learner import LearnerSpec, PPOLearner
from learner.ppo.settings import PPOSettings
from rollout.lora import LoraSettings
from rollout.models import load_pipeline
from rollout.policies import sample_trajectory
from rollout.speed import UNetMeter, enable_tf32

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def update_loss(**speed) -> float:
    """The loss of one PPO update of the toy whose LoRA (B drawn from a fixed seed) is not the base that sampled
    the batch: every ratio is away from 1, so the loss depends on each UNet call."""
    pipe = load_pipeline("tiny", device="cpu")
    trajectory = sample_trajectory(
        pipe, ["a cat", "a dog"], 3, 8.0, torch.Generator().manual_seed(0), height=32, width=32
    )
    settings = PPOSettings(train_batch_size=2, grad_accum_steps=1, clip_range=10.0)
    learner = PPOLearner(
        LearnerSpec(
            model="tiny",
            lora=LoraSettings(rank=4, alpha=4),
            ppo=settings,
            stat_buffer_size=2,
            stat_min_count=1,
            device="cpu",
            **speed,
        )
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in learner.pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05, generator=generator)
    return learner.train(trajectory, np.array([1.0, 0.5]))["loss"]


def test_channels_last_gives_the_same_loss():
    assert update_loss(channels_last=True) == pytest.approx(update_loss(), rel=1e-5)


@pytest.mark.slow  # about 40 s on 2 shared CPU cores, nearly all of it compiling the blocks' forward and backward
def test_compiled_toy_gives_the_same_loss():
    assert update_loss(compile=True) == pytest.approx(update_loss(), rel=1e-5)


def test_tf32_only_with_cuda():
    ampere = torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 8
    assert enable_tf32() is ampere


def test_meter_counts_unet_images_and_restarts():
    pipe = load_pipeline("tiny", device="cpu")
    meter = UNetMeter(pipe.unet)
    sample_trajectory(pipe, ["a cat"] * 3, 4, 8.0, torch.Generator().manual_seed(0), height=32, width=32)
    assert meter.take() == {"unet_images": 3 * 4}  # one call per step; no memory peak without a GPU
    assert meter.take() == {"unet_images": 0}
