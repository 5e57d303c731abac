"""GRPO on the LCM policy: group-relative advantages, same-noise groups, config errors, learning and resume through
`rlcm train`."""

from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline

from learner.algorithms.grpo.learner import group_advantages
from rlcm.commands.main import main
from rlcm.config.schema import ConfigError, load_config
from rollout.models import build_tiny_pipeline
from rollout.policies import sample_trajectory
from tests.toys import assert_same_lora, lora_changes_stock_images, rows_of, train_cli


def test_group_advantages_equal_a_hand_computation_and_invalid_groups_drop_whole():
    rewards = np.array([1.0, 2.0, 3.0, 6.0, 5.0, 5.0, 5.0, 5.0, 0.0, np.nan, 1.0, 2.0])
    valid = np.array([True] * 9 + [False] + [True] * 2)
    advantages, kept, dropped = group_advantages(rewards, valid, 4, 1e-4)
    # group 0: mean 3, population std √3.5; group 1: all equal -> 0; group 2 has an invalid reward -> dropped
    expected0 = (np.array([1.0, 2.0, 3.0, 6.0]) - 3.0) / (math.sqrt(3.5) + 1e-4)
    np.testing.assert_allclose(advantages[:4], expected0, rtol=1e-12)
    assert np.all(advantages[4:] == 0.0) and dropped == 1
    assert kept.tolist() == [True] * 8 + [False] * 4


def test_same_noise_groups_share_x0_only():
    pipe = build_tiny_pipeline()
    traj = sample_trajectory(
        pipe, ["a cat"] * 2 + ["a dog"] * 2, 3, 8.0, torch.Generator().manual_seed(0), noise_group_size=2
    )
    x0 = traj.latents[:, 0]
    assert torch.equal(x0[0], x0[1]) and torch.equal(x0[2], x0[3]) and not torch.equal(x0[0], x0[2])
    assert not torch.equal(traj.latents[0, 1], traj.latents[1, 1])  # the transitions' noise stays per sample


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["grpo.group_size=3"], "grpo.group_size: 3 does not divide sampling.batch_size=16"),
        (["train.learning_rate=1e-3"], "train.learning_rate: an option of algorithm rlcm, but algorithm is grpo"),
        (["rocm.lam=1"], "rocm.lam: an option of algorithm rocm, but algorithm is grpo"),
    ],
)
def test_bad_grpo_config_is_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("grpo-tiny-cpu", overrides)


def test_grpo_config_error_from_the_cli_before_ray(capsys, tmp_path):
    assert (
        main(["train", "--config", "grpo-tiny-cpu", "--output-dir", str(tmp_path / "r"), "--set", "grpo.group_size=3"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert any("grpo.group_size: 3 does not divide sampling.batch_size=16" in line for line in err)


cli = functools.partial(train_cli, "grpo-tiny-cpu")


@pytest.mark.slow
def test_grpo_trains_through_rlcm_train_and_the_lora_loads(ray_local, tmp_path):
    """2 epochs through `rlcm train`: the groups are real (4 per epoch), the LoRA loads in diffusers and changes its
    images. Whether GRPO learns from its reward beyond a random-reward control is benchmarks/bench_sign_test.py's
    question."""
    assert cli(tmp_path, "run", "run.epochs=2", "run.save_every=2") == 0
    rows = rows_of(tmp_path / "run")
    assert len(rows) == 2 and all(r["algorithm"] == "grpo" and r["groups_dropped"] == 0 for r in rows)

    pipe = build_tiny_pipeline()
    assert isinstance(pipe, LatentConsistencyModelPipeline)
    assert lora_changes_stock_images(pipe, tmp_path / "run/checkpoints/epoch-0001", num_inference_steps=4)


@pytest.mark.slow
def test_grpo_with_kl_and_same_noise_resumes_bitwise_equal(ray_local, tmp_path):
    sets = ["run.epochs=2", "sampling.num_steps=3", "grpo.kl_coef=0.5", "grpo.same_noise=true"]
    assert cli(tmp_path, "full", *sets) == 0
    assert cli(tmp_path, "split", *sets[1:], "run.epochs=1", "run.save_every=1") == 0
    assert cli(tmp_path, "split", *sets, resume=True) == 0
    full, split = rows_of(tmp_path / "full"), rows_of(tmp_path / "split")
    assert [r["epoch"] for r in split] == [0, 1] and split[-1]["samples_seen"] == full[-1]["samples_seen"] == 128
    assert all(r["kl_to_base"] > 0 and math.isfinite(r["kl_to_base"]) for r in full)  # β·KL to the base is in the loss
    assert_same_lora(tmp_path / "full", tmp_path / "split")
