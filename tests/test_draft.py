"""DRaFT-K and AlignProp on the first-order machinery: the truncation each uses, reproducible K draws,
config errors, and learning + resume through `rlcm train` on the toy."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from diffusers import LatentConsistencyModelPipeline

from learner.algorithms.draft import AlignPropSettings
from learner.algorithms.draft.learner import AlignPropLearner, AlignPropLearnerSpec
from rewards_service.registry import build_differentiable_reward
from rlcm.commands.main import main
from rlcm.config.schema import ConfigError, load_config
from rollout.models import build_tiny_pipeline
from rollout.settings import LoraSettings
from tests.toys import assert_same_lora, lora_changes_stock_images, rows_of, train_cli


def alignprop(num_steps=5, **settings) -> AlignPropLearner:
    spec = AlignPropLearnerSpec(
        model="tiny",
        lora=LoraSettings(rank=4, alpha=4, target_modules=["to_q", "to_v"]),
        rocm=AlignPropSettings(
            batch_size=1, grad_accum_steps=2, learning_rate=1e-2, gradient_checkpointing=False, **settings
        ),
        num_steps=num_steps,
        guidance_scale=8.0,
        reward_factory=functools.partial(build_differentiable_reward, "smoothness"),
        device="cpu",
    )
    return AlignPropLearner(spec)


def test_alignprop_draws_k_per_call_from_the_seeded_generator_and_resumes_the_draws(tmp_path):
    learner = alignprop()
    draws = [learner.truncate_steps() for _ in range(40)]
    assert set(draws) == {1, 2, 3, 4}  # U{1, …, H−1}, H = 5
    twin = alignprop()
    assert [twin.truncate_steps() for _ in range(40)] == draws  # same seed, same K sequence
    narrow = alignprop(k_min=2, k_max=3)
    assert {narrow.truncate_steps() for _ in range(20)} == {2, 3}

    first, second = alignprop(num_steps=3), alignprop(num_steps=3)
    first.train(["a cat", "a dog"])
    torch.save(first.state_dict(), tmp_path / "state.pt")
    metrics = first.train(["a cat", "a dog"])
    second.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    again = second.train(["a cat", "a dog"])
    assert metrics["truncate_steps"] == again["truncate_steps"] and metrics["objective"] == again["objective"]
    a, b = first.adapter().state_dict, second.adapter().state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        ("draft-tiny-cpu", ["draft.truncate_steps=4"], "draft.truncate_steps: K=4 exceeds the H−1=3 transitions"),
        ("draft-tiny-cpu", ["rocm.lam=1"], "rocm.lam: an option of algorithm rocm, but algorithm is draft"),
        (
            "alignprop-tiny-cpu",
            ["alignprop.truncate_steps=2"],
            "alignprop: AlignProp draws K per call: remove truncate_steps",
        ),
        ("alignprop-tiny-cpu", ["alignprop.k_max=5"], "alignprop.k_max: K may be at most the H−1=3 transitions"),
        (
            "alignprop-tiny-cpu",
            ["draft.truncate_steps=1"],
            "draft.truncate_steps: an option of algorithm draft, but algorithm is alignprop",
        ),
        (
            "alignprop-tiny-cpu",
            ["scaleout.mode=async"],
            "async mode needs an algorithm that learns from rollouts; alignprop",
        ),
    ],
)
def test_bad_first_order_configs(preset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(preset, overrides)


def test_a_non_differentiable_reward_is_a_config_error_before_ray(capsys, tmp_path):
    args = [
        "train",
        "--config",
        "draft-tiny-cpu",
        "--output-dir",
        str(tmp_path / "r"),
        "--set",
        "reward.name=jpeg_compressibility",
    ]
    assert main(args) == 2
    assert "reward.name: 'jpeg_compressibility' is not differentiable, which draft needs" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["draft-tiny-cpu", "alignprop-tiny-cpu"])
def test_trains_through_rlcm_train_and_the_lora_loads(ray_local, tmp_path, preset):
    """Through the CLI; whether it learns from its reward is tests/test_learning.py's question."""
    assert train_cli(preset, tmp_path, "run", "run.epochs=4", "run.save_every=4") == 0
    rows = rows_of(tmp_path / "run")
    algorithm = preset.removesuffix("-tiny-cpu")
    assert len(rows) == 4 and all(r["algorithm"] == algorithm and math.isfinite(r["monitor_reward_mean"]) for r in rows)
    if algorithm == "draft":
        assert all(r["truncate_steps"] == 1 for r in rows)
    else:
        assert 1 <= min(r["truncate_steps"] for r in rows) and max(r["truncate_steps"] for r in rows) <= 3
    pipe = build_tiny_pipeline()
    assert isinstance(pipe, LatentConsistencyModelPipeline)
    assert lora_changes_stock_images(pipe, tmp_path / "run/checkpoints/epoch-0003", num_inference_steps=4)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["draft-tiny-cpu", "alignprop-tiny-cpu"])
def test_resume_through_the_cli_is_bitwise_equal(ray_local, tmp_path, preset):
    sets = ["sampling.num_steps=3", "draft.batch_size=2" if preset.startswith("draft") else "alignprop.batch_size=2"]
    assert train_cli(preset, tmp_path, "full", "run.epochs=2", *sets) == 0
    assert train_cli(preset, tmp_path, "split", "run.epochs=1", "run.save_every=1", *sets) == 0
    assert train_cli(preset, tmp_path, "split", "run.epochs=2", *sets, resume=True) == 0
    assert [r["epoch"] for r in rows_of(tmp_path / "split")] == [0, 1]
    assert_same_lora(tmp_path / "full", tmp_path / "split")
