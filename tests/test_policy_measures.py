"""`learner.policy_measures` (the benchmark's KL to the base and diversity) against hand computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from learner.policy_measures import kl_to_base, pairwise_diversity
from rollout.lora import LoraSettings, add_lora
from rollout.models import build_tiny_ddim_pipeline, build_tiny_pipeline
from rollout.policies import sample_trajectory
from tests.test_policy import alphas_cumprod_by_hand, denoised_by_hand, prompt_embeds_by_hand

GUIDANCE = 8.0
TIMESTEPS = [999, 759, 499, 259]  # LCMScheduler, H = 4 of 50 original steps


def tuned(pipe):
    """`pipe` with a LoRA moved away from its (identity) init."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    params = add_lora(pipe.unet, LoraSettings(rank=4, alpha=4, target_modules=["to_q", "to_v", "conv1", "conv2"]))
    with torch.no_grad():
        for p in params:
            p.add_(0.2 * torch.randn_like(p))
    return pipe


@pytest.fixture(scope="module")
def tuned_pipe():
    return tuned(build_tiny_pipeline(seed=0))


def test_kl_to_base_equals_hand_computation(tuned_pipe):
    traj = sample_trajectory(tuned_pipe, ["a cat", "a dog"], len(TIMESTEPS), GUIDANCE, torch.Generator().manual_seed(3))
    abar, embeds, unet = alphas_cumprod_by_hand(), prompt_embeds_by_hand(tuned_pipe, traj.prompts), tuned_pipe.unet
    expected = np.zeros(2)
    for k in range(len(TIMESTEPS) - 1):
        t, t_next = TIMESTEPS[k], TIMESTEPS[k + 1]
        tuned = denoised_by_hand(tuned_pipe, traj.latents[:, k], t, embeds, GUIDANCE, "sample")
        unet.disable_adapters()
        base = denoised_by_hand(tuned_pipe, traj.latents[:, k], t, embeds, GUIDANCE, "sample")
        unet.enable_adapters()
        kl = abar[t_next] * (tuned - base) ** 2 / (2 * (1 - abar[t_next]))  # Δ²/(2σ²), Δ = √ᾱ·(d_θ − d_base)
        expected += kl.reshape(2, -1).mean(axis=1)
    got = kl_to_base(tuned_pipe, traj).numpy()
    assert expected.min() > 1e-4  # the perturbed LoRA really moved the policy
    np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_kl_to_base_of_a_ddim_policy_equals_ddim_scheduler_steps():
    """DDIM (DDPO's policy): the means from `DDIMScheduler.step` with zero noise on CFG-guided ε from direct UNet
    calls."""
    pipe, steps, guidance = tuned(build_tiny_ddim_pipeline()), 4, 5.0
    traj = sample_trajectory(pipe, ["a cat", "a red fox"], steps, guidance, torch.Generator().manual_seed(3), eta=1.0)
    scheduler, unet = pipe.scheduler, pipe.unet
    alphas, final = scheduler.alphas_cumprod.double(), scheduler.final_alpha_cumprod.double()
    embeds = torch.cat([traj.negative_prompt_embeds, traj.prompt_embeds])

    def mean(x, t):
        with torch.no_grad():
            eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=embeds).sample.chunk(2)
        eps = eps_u + guidance * (eps_c - eps_u)
        return scheduler.step(eps, t, x, eta=1.0, variance_noise=torch.zeros_like(x)).prev_sample.double()

    expected = np.zeros(2)
    for k in range(steps):
        x, t = traj.latents[:, k], int(traj.timesteps[k])
        tuned_mean = mean(x, t)
        unet.disable_adapters()
        base_mean = mean(x, t)
        unet.enable_adapters()
        a_t, a_prev = alphas[t], (alphas[t - 1000 // steps] if t - 1000 // steps >= 0 else final)
        variance = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)  # σ_t², η = 1
        expected += ((tuned_mean - base_mean) ** 2 / (2 * variance)).reshape(2, -1).mean(dim=1).numpy()
    got = kl_to_base(pipe, traj).numpy()
    assert expected.min() > 1e-4
    np.testing.assert_allclose(got, expected, rtol=1e-3)


def test_pairwise_diversity_equals_hand_computation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 3, 4, 5), dtype=np.uint8)  # 2 prompts × 3 noises
    per_prompt = []
    for group in (images[:3], images[3:]):
        pixels = group.astype(np.float64) / 255
        per_prompt.append(
            np.mean([math.sqrt(np.mean((pixels[i] - pixels[j]) ** 2)) for i, j in itertools.combinations(range(3), 2)])
        )
    assert pairwise_diversity(torch.from_numpy(images), 3) == pytest.approx(np.mean(per_prompt), rel=1e-12)
    same = torch.from_numpy(np.repeat(images[:1], 4, axis=0))
    assert pairwise_diversity(same, 2) == 0.0
    with pytest.raises(ValueError, match="multiple of 4"):
        pairwise_diversity(torch.from_numpy(images), 4)
