"""Steering of the DDIM sampler on the toy Stable Diffusion model, and steering scored by a reward service that fails
mid-way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rewards_service.client import HttpRewardClient, RetryPolicy
from rlcm.commands.main import main
from rollout.models import load_pipeline
from rollout.policies.chain_math import decode_images, draw_noise, latent_shape
from rollout.policies.ddim import (
    ddim_prediction,
    ddim_step_mean_std,
    ddim_timesteps,
    encode_prompts_with_negative,
    guided_epsilon,
    previous_timestep,
    sample_ddim_trajectory,
)
from rollout.steering import steer
from rollout.steering.ddim import steer_ddim
from rollout.steering.scoring import client_score
from tests.scores import brightness, jpeg, nhwc
from tests.servers import failing_service

PROMPTS = ["a cat", "a dog"]
GUIDANCE = 4.0


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    return load_pipeline("tiny-ddim", device="cpu")


def test_ddim_best_of_n_picks_the_highest_of_the_same_independent_samples(pipe):
    particles, steps = 3, 3
    rows = [p for p in PROMPTS for _ in range(particles)]
    stock = sample_ddim_trajectory(pipe, rows, steps, GUIDANCE, torch.Generator().manual_seed(5), eta=1.0).images
    independent = torch.tensor(jpeg(nhwc(stock), rows), dtype=torch.float64).reshape(len(PROMPTS), particles)

    result = steer(pipe, PROMPTS, steps, GUIDANCE, torch.Generator().manual_seed(5), jpeg, particles)

    torch.testing.assert_close(result.particle_rewards, independent, rtol=0, atol=0)
    torch.testing.assert_close(result.rewards, independent.max(dim=1).values, rtol=0, atol=0)
    assert torch.equal(result.images, stock[independent.argmax(dim=1) + torch.arange(len(PROMPTS)) * particles])
    assert result.compute["unet_evals_per_image"] == particles * steps * 2, "guidance doubles the UNet batch"
    fk = steer_ddim(pipe, PROMPTS, steps, GUIDANCE, torch.Generator().manual_seed(5), jpeg, particles, "fk", "max")
    assert torch.equal(fk.images, result.images), "FK without resampling is best-of-N"


def test_ddim_fk_continues_every_particle_from_the_ancestor_the_weights_choose(pipe):
    """λ large, "current": all the weight on the brightest x̂0 of step 0; recomputed by hand from the same noise."""
    particles, steps = 3, 2
    rows = [p for p in PROMPTS for _ in range(particles)]
    calls = []

    def recording(images: np.ndarray, prompts: list[str]) -> np.ndarray:
        calls.append(len(images))
        return brightness(images, prompts)

    result = steer_ddim(
        pipe, PROMPTS, steps, GUIDANCE, torch.Generator().manual_seed(7), recording, particles, "fk", "current", 1e9,
        [0],
    )  # fmt: skip

    timesteps = ddim_timesteps(pipe.scheduler, steps)
    embeds, negative = encode_prompts_with_negative(pipe, rows)
    x, noise = draw_noise(torch.Generator().manual_seed(7), latent_shape(pipe, len(rows), None, None), steps + 1, "cpu")
    x = x * pipe.scheduler.init_noise_sigma
    for k in range(steps):
        t = timesteps[k].expand(len(rows))
        x0, eps = ddim_prediction(pipe.scheduler, guided_epsilon(pipe.unet, x, t, embeds, negative, GUIDANCE), x, t)
        if k == 0:
            r0 = torch.tensor(brightness(nhwc(decode_images(pipe, x0)), rows)).reshape(len(PROMPTS), particles)
            ancestor = (r0.argmax(dim=1) + torch.arange(len(PROMPTS)) * particles).repeat_interleave(particles)
            x0, eps = x0[ancestor], eps[ancestor]
        mean, std = ddim_step_mean_std(pipe.scheduler, x0, eps, t, previous_timestep(pipe.scheduler, t, steps), 1.0)
        x = mean + std * noise[k]
    final = decode_images(pipe, x)
    r1 = torch.tensor(brightness(nhwc(final), rows)).reshape(len(PROMPTS), particles)

    torch.testing.assert_close(result.particle_rewards, r1, rtol=0, atol=0)
    assert torch.equal(result.images, final[r1.argmax(dim=1) + torch.arange(len(PROMPTS)) * particles])
    assert calls == [len(rows), len(rows)], "one reward call per scored step, all particles in it"


def test_a_service_that_fails_mid_steering_is_an_error_naming_its_url():
    lcm = load_pipeline("tiny", device="cpu")
    with failing_service(after=1) as url:
        client = HttpRewardClient(url, "jpeg_compressibility", retry=RetryPolicy(max_attempts=2, backoff_s=0.01))
        try:
            with pytest.raises(RuntimeError) as caught:
                steer(lcm, ["a cat"], 3, 8.0, None, client_score(client), 2, "fk", "diff", 1.0, [0, 1],
                      reward_name="jpeg_compressibility")  # fmt: skip
        finally:
            client.close()
    message = str(caught.value)
    assert message.startswith(
        f"steering: the reward jpeg_compressibility failed at step 1: the reward service at {url} did not score 2 of "
        "2 particles (jpeg_compressibility): jpeg_compressibility failed after 2 attempt(s): HTTPStatusError"
    ), message
    assert "503" in message


def test_cli_sample_steered_by_a_failing_service_exits_2_naming_it(tmp_path, capsys):
    """DDIM steering from the command line, scored over HTTP by a service that stops answering after one request."""
    argv = ["sample", "--model", "tiny-ddim", "--prompt", "a cat", "--steps", "3", "--out", str(tmp_path / "cat.png")]
    with failing_service(after=1) as url:
        code = main([*argv, "--steer", "fk", "--particles", "2", "--service-url", url])
    err = capsys.readouterr().err
    assert code == 2
    assert f"steering: the reward jpeg_compressibility failed at step 1: the reward service at {url} did not" in err


def test_steer_names_the_schedulers_it_supports():
    class Euler:
        pass

    with pytest.raises(ValueError, match="steering supports models sampled with LCMScheduler, DDIMScheduler; this one"):
        steer(type("Pipe", (), {"scheduler": Euler()})(), ["a cat"], 2, 8.0, None, jpeg, 2)
