"""Inference-time steering (best-of-N, FK) on the toy LCM, checked against the stock sampler and hand computations."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from rewards_service.client import InProcessRewardClient
from rewards_service.scorers.jpeg import JpegCompressibility
from rlcm.commands.main import main
from rollout.models import load_pipeline
from rollout.policies.chain_math import decode_images, draw_noise, encode_prompts, latent_shape
from rollout.policies.lcm import (
    guidance_embedding,
    lcm_timesteps,
    predict_denoised,
    sample_lcm_trajectory,
    transition_mean_std,
)
from rollout.steering.lcm import steer_lcm
from rollout.steering.particles import fk_potential, resample, resampling_weights
from rollout.steering.scoring import client_score
from tests.scores import brightness, jpeg, nhwc
from tests.toys import toy_pipe_with_saved_lora

PROMPTS = ["a cat", "a dog"]
GUIDANCE = 8.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny", device="cpu")


def test_best_of_n_picks_the_highest_of_the_same_independent_samples(pipe):
    particles, steps = 3, 3
    rows = [p for p in PROMPTS for _ in range(particles)]
    stock = sample_lcm_trajectory(pipe, rows, steps, GUIDANCE, torch.Generator().manual_seed(5)).images
    independent = torch.tensor(jpeg(nhwc(stock), rows), dtype=torch.float64).reshape(len(PROMPTS), particles)

    result = steer_lcm(pipe, PROMPTS, steps, GUIDANCE, torch.Generator().manual_seed(5), jpeg, particles)

    torch.testing.assert_close(result.particle_rewards, independent, rtol=0, atol=0)
    torch.testing.assert_close(result.rewards, independent.max(dim=1).values, rtol=0, atol=0)
    best = independent.argmax(dim=1) + torch.arange(len(PROMPTS)) * particles
    assert torch.equal(result.images, stock[best])
    assert result.compute == {
        "unet_evals_per_image": particles * steps,
        "reward_calls_per_image": 1 / len(PROMPTS),
        "images_scored_per_image": particles,
    }


def test_fk_without_resampling_is_best_of_n(pipe):
    best_of_n = steer_lcm(pipe, PROMPTS, 3, GUIDANCE, torch.Generator().manual_seed(2), jpeg, 3)
    fk = steer_lcm(pipe, PROMPTS, 3, GUIDANCE, torch.Generator().manual_seed(2), jpeg, 3, "fk", "max", 5.0, ())
    assert torch.equal(fk.images, best_of_n.images)
    assert torch.equal(fk.particle_rewards, best_of_n.particle_rewards)
    assert fk.compute == best_of_n.compute


def test_fk_resamples_every_particle_from_the_ancestor_the_weights_choose(pipe):
    """λ large and "current": the weights put all mass on the brightest x̂0_0, so every particle continues from it
    with its own noise ε_0; recomputed here step by step from the same noise."""
    particles, steps = 3, 2
    rows = [p for p in PROMPTS for _ in range(particles)]
    calls = []

    def recording(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        calls.append((len(images), list(prompts)))
        return brightness(images, prompts)

    generator = torch.Generator().manual_seed(7)
    result = steer_lcm(pipe, PROMPTS, steps, GUIDANCE, generator, recording, particles, "fk", "current", 1e9, [0])

    timesteps = lcm_timesteps(pipe.scheduler, steps)
    embeds, w = encode_prompts(pipe, rows), guidance_embedding(pipe, GUIDANCE, len(rows))
    x0, noise = draw_noise(torch.Generator().manual_seed(7), latent_shape(pipe, len(rows), None, None), steps, "cpu")
    t0, t1 = timesteps[0].expand(len(rows)), timesteps[1].expand(len(rows))
    denoised_0 = predict_denoised(pipe.unet, pipe.scheduler, x0 * pipe.scheduler.init_noise_sigma, t0, embeds, w)
    r0 = torch.tensor(brightness(nhwc(decode_images(pipe, denoised_0)), rows)).reshape(len(PROMPTS), particles)
    ancestor = (r0.argmax(dim=1) + torch.arange(len(PROMPTS)) * particles).repeat_interleave(particles)
    mean, std = transition_mean_std(pipe.scheduler, denoised_0[ancestor], t1)
    denoised_1 = predict_denoised(pipe.unet, pipe.scheduler, mean + std * noise[0], t1, embeds, w)
    final = decode_images(pipe, denoised_1)
    r1 = torch.tensor(brightness(nhwc(final), rows)).reshape(len(PROMPTS), particles)

    torch.testing.assert_close(result.particle_rewards, r1, rtol=0, atol=0)
    assert torch.equal(result.images, final[r1.argmax(dim=1) + torch.arange(len(PROMPTS)) * particles])
    assert calls == [(len(rows), rows), (len(rows), rows)], "one reward call per scored step, all particles in it"
    unsteered = steer_lcm(pipe, PROMPTS, steps, GUIDANCE, torch.Generator().manual_seed(7), brightness, particles)
    assert not torch.equal(result.particle_rewards, unsteered.particle_rewards), "resampling must move the particles"
    assert result.compute["reward_calls_per_image"] == 2 / len(PROMPTS)
    assert result.compute["images_scored_per_image"] == 2 * particles


@pytest.mark.parametrize("kind", ["diff", "max", "current"])
def test_resampling_weights_are_the_softmax_of_the_potentials_per_prompt(kind):
    now = [0.5, -1.0, 2.0, 0.0, 0.25, -0.5]
    prev = [1.0, -2.0, 0.5, 0.0, 1.0, 3.0]
    best_before = [3.0, -1.5, 0.0, -math.inf, 0.0, 1.0]
    lam = 0.7
    potential = {
        "diff": [math.exp(lam * (n - p)) for n, p in zip(now, prev)],
        "max": [math.exp(lam * max(b, n)) for n, b in zip(now, best_before)],
        "current": [math.exp(lam * n) for n in now],
    }[kind]
    by_hand = [[g / sum(potential[i : i + 3]) for g in potential[i : i + 3]] for i in (0, 3)]

    log_g = fk_potential(
        kind, torch.tensor(now, dtype=torch.float64), torch.tensor(prev, dtype=torch.float64),
        torch.tensor(best_before, dtype=torch.float64), lam,
    )  # fmt: skip
    torch.testing.assert_close(resampling_weights(log_g, 3), torch.tensor(by_hand, dtype=torch.float64))


def test_resample_draws_ancestors_within_each_prompt():
    certain = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    assert resample(certain, torch.Generator().manual_seed(0)).tolist() == [1, 1, 1, 5, 5, 5]
    weights = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.4, 0.0]], dtype=torch.float64)
    drawn = resample(weights, torch.Generator().manual_seed(3))
    expected = torch.multinomial(weights, 3, replacement=True, generator=torch.Generator().manual_seed(3))
    assert drawn.tolist() == (expected + torch.tensor([[0], [3]])).reshape(-1).tolist()


def test_a_reward_that_raises_mid_steering_is_a_clear_error(pipe):
    def flaky(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        flaky.calls += 1
        if flaky.calls == 2:
            raise ConnectionError("service at http://rewards:8000 went away")
        return brightness(images, prompts)

    flaky.calls = 0
    with pytest.raises(RuntimeError, match=r"^steering: the reward aesthetic failed at step 1: service at http"):
        steer_lcm(pipe, ["a cat"], 3, GUIDANCE, None, flaky, 2, "fk", "diff", 1.0, [0, 1], reward_name="aesthetic")


def test_a_nan_reward_is_a_clear_error_not_nan_particles(pipe):
    def nan(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        return np.array([0.0, math.nan])

    with pytest.raises(RuntimeError, match=r"^steering: the reward r failed at step 0: non-finite or invalid reward"):
        steer_lcm(pipe, ["a cat"], 2, GUIDANCE, None, nan, 2, "fk", "diff", 1.0, [0], reward_name="r")


def test_steer_lcm_refuses_a_ddim_model():
    with pytest.raises(ValueError, match="steer_lcm steers LCM models; this model samples with DDIMScheduler"):
        steer_lcm(load_pipeline("tiny-ddim", device="cpu"), ["a cat"], 2, GUIDANCE, None, jpeg, 2)


def test_cli_fk_writes_the_steered_image_and_prints_the_compute(tmp_path, capsys):
    pipe = toy_pipe_with_saved_lora(tmp_path)
    (tmp_path / "rlcm_model.json").write_text(json.dumps({"model": "tiny", "model_seed": 0}))
    out = tmp_path / "cat.png"
    argv = ["sample", "--lora", str(tmp_path), "--prompt", "a cat", "--steps", "2", "--out", str(out)]
    assert main([*argv, "--steer", "fk", "--particles", "2", "--seed", "4"]) == 0

    assert "compute per image: 4 UNet evaluations (2 particles x 2 steps), 2 reward calls scoring 4 images" in (
        capsys.readouterr().out
    )
    expected = steer_lcm(
        pipe,
        ["a cat"],
        2,
        GUIDANCE,
        torch.Generator().manual_seed(4),
        client_score(InProcessRewardClient(JpegCompressibility())),
        2,
        "fk",
        "diff",
        1.0,
        [0],
    )
    np.testing.assert_array_equal(np.asarray(Image.open(out)), nhwc(expected.images)[0])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--steer", "fk", "--particles", "0"], "--particles: must be at least 1"),
        (["--steer", "fk", "--resample-every", "-1"], "--resample-every: must be at least 0"),
        (["--steer", "best-of-n", "--lam", "2"], "--lam does not apply to --steer best-of-n"),
        (["--particles", "2"], "--particles does not apply to --steer none"),
        (["--service-url", "http://rewards:8000"], "--service-url does not apply to --steer none"),
    ],
)
def test_cli_bad_steering_options_exit_2(tmp_path, capsys, extra, message):
    argv = ["sample", "--lora", str(tmp_path), "--prompt", "x", "--out", str(tmp_path / "x.png"), *extra]
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    assert code == 2 and message in capsys.readouterr().err
