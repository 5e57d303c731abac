"""The LCM policy (docs/CONTRACTS.md, "The policy (RLCM and ROCM)") checked against independent computations.

Everything "expected" here is written out in the test from first principles: the scaled-linear
ᾱ schedule, the LCM boundary-condition scalings, the guidance embedding, a direct `pipe.unet(...)`
call and the Gaussian log-density by formula (float64 numpy). Only the UNet weights are shared.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler

from rollout.models import TOY_LCM_TIMESTEP_SCALING, build_tiny_pipeline
from rollout.policies import sample_trajectory
from rollout.policies.chain_math import clip_or_threshold
from rollout.policies.lcm import guidance_embedding, lcm_timesteps, transition_log_prob
from rollout.trajectory import Trajectory

H = 8
PROMPTS = ["a cat", "a dog", "a goldfish"]
EXPECTED_TIMESTEPS = [999, 879, 759, 639, 499, 379, 259, 139]


# ---------------------------------------------------------------- independent reference math


def alphas_cumprod_by_hand() -> np.ndarray:
    """ᾱ for the scaled_linear schedule (β from 0.00085 to 0.012 over 1000 steps), float64."""
    betas = np.linspace(math.sqrt(0.00085), math.sqrt(0.012), 1000, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def boundary_scalings_by_hand(t: int, timestep_scaling: float = 10.0, sigma_data: float = 0.5) -> tuple[float, float]:
    """LCM c_skip, c_out at discrete timestep t."""
    s = t * timestep_scaling
    return sigma_data**2 / (s**2 + sigma_data**2), s / math.sqrt(s**2 + sigma_data**2)


def guidance_embedding_by_hand(guidance_scale: float, dim: int, batch: int) -> torch.Tensor:
    """Sinusoidal embedding of w = guidance_scale − 1 (scaled by 1000), [sin | cos]."""
    w = (guidance_scale - 1.0) * 1000.0
    half = dim // 2
    freqs = np.exp(-np.arange(half) * math.log(10000.0) / (half - 1))
    emb = np.concatenate([np.sin(w * freqs), np.cos(w * freqs)])
    return torch.tensor(np.tile(emb, (batch, 1)), dtype=torch.float32)


def prompt_embeds_by_hand(pipe, prompts: list[str]) -> torch.Tensor:
    ids = pipe.tokenizer(
        prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        return pipe.text_encoder(ids)[0]


def denoised_by_hand(
    pipe, x: torch.Tensor, t: int, prompt_embeds: torch.Tensor, guidance_scale: float, prediction: str
) -> np.ndarray:
    """denoised = c_out·x̂0 + c_skip·x from a direct UNet call; float64 numpy."""
    a = alphas_cumprod_by_hand()[t]
    emb = guidance_embedding_by_hand(guidance_scale, pipe.unet.config.time_cond_proj_dim, x.shape[0])
    with torch.no_grad():
        out = pipe.unet(x, torch.full((x.shape[0],), t), encoder_hidden_states=prompt_embeds, timestep_cond=emb).sample
    out, xd = out.double().numpy(), x.double().numpy()
    if prediction == "sample":
        x0 = out
    elif prediction == "epsilon":
        x0 = (xd - math.sqrt(1 - a) * out) / math.sqrt(a)
    else:
        raise AssertionError(prediction)
    c_skip, c_out = boundary_scalings_by_hand(t, pipe.scheduler.config.timestep_scaling)
    return c_out * x0 + c_skip * xd


def log_probs_by_hand(pipe, traj: Trajectory, guidance_scale: float, prediction: str = "sample") -> np.ndarray:
    """[B, H-1] Gaussian log-density of x_{k+1} under N(√ᾱ_{k+1}·denoised_k, (1−ᾱ_{k+1})·I), mean over C·h·w."""
    abar = alphas_cumprod_by_hand()
    embeds = prompt_embeds_by_hand(pipe, traj.prompts)
    steps = len(EXPECTED_TIMESTEPS)
    out = np.zeros((len(traj.prompts), steps - 1))
    for k in range(steps - 1):
        t, t_next = EXPECTED_TIMESTEPS[k], EXPECTED_TIMESTEPS[k + 1]
        den = denoised_by_hand(pipe, traj.latents[:, k], t, embeds, guidance_scale, prediction)
        mean = math.sqrt(abar[t_next]) * den
        var = 1.0 - abar[t_next]
        x_next = traj.latents[:, k + 1].double().numpy()
        dens = -((x_next - mean) ** 2) / (2 * var) - 0.5 * math.log(2 * math.pi * var)
        out[:, k] = dens.reshape(dens.shape[0], -1).mean(axis=1)
    return out


def sample(pipe, seed: int = 0, guidance_scale: float = 8.0, prompts=PROMPTS, steps: int = H) -> Trajectory:
    return sample_trajectory(pipe, prompts, steps, guidance_scale, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    p = build_tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def traj(pipe):
    return sample(pipe)


# ---------------------------------------------------------------- tests


def test_trajectory_fields_shapes_and_dtypes(pipe, traj):
    b = len(PROMPTS)
    c = pipe.unet.config.in_channels
    s = pipe.unet.config.sample_size
    assert traj.prompts == PROMPTS and len(traj) == b
    assert traj.latents.dtype == torch.float32 and tuple(traj.latents.shape) == (b, H, c, s, s)
    assert traj.log_probs.dtype == torch.float32 and tuple(traj.log_probs.shape) == (b, H - 1)
    assert traj.images.dtype == torch.uint8 and tuple(traj.images.shape) == (b, 3, 4 * s, 4 * s) == (b, 3, 64, 64)
    assert traj.prompt_embeds.shape[0] == b and traj.prompt_embeds.ndim == 3
    assert not traj.timesteps.is_floating_point() and tuple(traj.timesteps.shape) == (H,)
    assert traj.guidance_scale == 8.0 and isinstance(traj.guidance_scale, float)
    assert torch.isfinite(traj.log_probs).all() and torch.isfinite(traj.latents).all()


def test_timesteps_h8_exact(pipe, traj):
    assert traj.timesteps.tolist() == EXPECTED_TIMESTEPS
    sched = LCMScheduler.from_config(pipe.scheduler.config)
    assert lcm_timesteps(sched, 8, 50).tolist() == EXPECTED_TIMESTEPS
    # and the library's ᾱ / boundary scalings agree with the hand formulas used below
    np.testing.assert_allclose(pipe.scheduler.alphas_cumprod.double().numpy(), alphas_cumprod_by_hand(), rtol=1e-5)
    for t in EXPECTED_TIMESTEPS:
        np.testing.assert_allclose(
            pipe.scheduler.get_scalings_for_boundary_condition_discrete(t),
            boundary_scalings_by_hand(t, TOY_LCM_TIMESTEP_SCALING),
            rtol=1e-6,
        )


def test_prompt_embeds_and_initial_noise(pipe, traj):
    torch.testing.assert_close(traj.prompt_embeds, prompt_embeds_by_hand(pipe, PROMPTS), atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(traj.latents[:, 0].shape, generator=g)
    torch.testing.assert_close(traj.latents[:, 0], x0, atol=0, rtol=0)


def test_actions_are_mean_plus_std_times_generator_noise(pipe, traj):
    """x_{k+1} = √ᾱ(τ_{k+1})·denoised_k + √(1−ᾱ(τ_{k+1}))·ε_k with ε_k the generator's next draws."""
    abar = alphas_cumprod_by_hand()
    embeds = prompt_embeds_by_hand(pipe, PROMPTS)
    g = torch.Generator().manual_seed(0)
    shape = traj.latents[:, 0].shape
    torch.randn(shape, generator=g)  # x_0
    for k in range(H - 1):
        noise = torch.randn(shape, generator=g).double().numpy()
        den = denoised_by_hand(pipe, traj.latents[:, k], EXPECTED_TIMESTEPS[k], embeds, 8.0, "sample")
        t_next = EXPECTED_TIMESTEPS[k + 1]
        expected = math.sqrt(abar[t_next]) * den + math.sqrt(1 - abar[t_next]) * noise
        np.testing.assert_allclose(traj.latents[:, k + 1].double().numpy(), expected, atol=2e-5, rtol=0)


def test_log_probs_equal_independent_gaussian_density(pipe, traj):
    expected = log_probs_by_hand(pipe, traj, 8.0, "sample")
    np.testing.assert_allclose(traj.log_probs.double().numpy(), expected, atol=1e-5, rtol=0)
    # guard: a sum over latent dims (instead of the mean) or a missing normalizer would be far off
    assert np.abs(expected).max() < 10


def test_final_image_is_decoded_deterministic_denoised(pipe, traj):
    embeds = prompt_embeds_by_hand(pipe, PROMPTS)
    den = denoised_by_hand(pipe, traj.latents[:, H - 1], EXPECTED_TIMESTEPS[H - 1], embeds, 8.0, "sample")
    with torch.no_grad():
        img = pipe.vae.decode(
            torch.tensor(den, dtype=torch.float32) / pipe.vae.config.scaling_factor, return_dict=False
        )[0]
    expected = ((img.double() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    diff = (traj.images.int() - expected.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert traj.images.float().std() > 5  # not a constant image


def test_matches_stock_lcm_pipeline_call(pipe, traj):
    """The same seed through stock `pipe(...)` gives the same final latents: same chain, same noise draws."""
    out = pipe(
        prompt=PROMPTS,
        num_inference_steps=H,
        guidance_scale=8.0,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    stock = torch.tensor((out * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)
    diff = (traj.images.int() - stock.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3


CLIPPING = {
    # sample prediction: |x̂0| has median ~0.2 on the tiny model, so ±0.3 clips much of it
    "clip_sample": ("sample", {"clip_sample": True, "clip_sample_range": 0.3}),
    # epsilon prediction: x̂0 = (x − √(1−ᾱ)·ε)/√ᾱ is large early, so s lands above 1 (true dynamic thresholding)
    "thresholding": ("epsilon", {"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 4.0}),
}


def stock_chain(p, seed: int, steps: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Stock `pipe(...)`: the latents after each LCMScheduler.step (x_1 … x_{H-1}, then the output) and the np image."""
    after_step = []

    def record(pipeline, i, t, kwargs):
        after_step.append(kwargs["latents"].clone())
        return kwargs

    denoised = p(
        prompt=PROMPTS,
        num_inference_steps=steps,
        guidance_scale=8.0,
        generator=torch.Generator().manual_seed(seed),
        output_type="latent",
        callback_on_step_end=record,
    ).images
    with torch.no_grad():
        image = p.image_processor.postprocess(
            p.vae.decode(denoised / p.vae.config.scaling_factor, return_dict=False)[0], output_type="np"
        )
    return after_step, torch.tensor((image * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("case", sorted(CLIPPING))
def test_clip_sample_and_thresholding_match_stock_pipeline(case):
    """With the scheduler's clip_sample / thresholding on, every state and the image equal stock `pipe(...)`."""
    prediction, options = CLIPPING[case]
    p = build_tiny_pipeline(seed=0)
    p.set_progress_bar_config(disable=True)
    p.scheduler = LCMScheduler.from_config(p.scheduler.config, prediction_type=prediction)
    steps = 4  # half of H: the same math per step, half the CPU time
    plain = sample(p, seed=4, steps=steps)
    p.scheduler = LCMScheduler.from_config(p.scheduler.config, **options)
    traj = sample(p, seed=4, steps=steps)
    after_step, stock_image = stock_chain(p, seed=4, steps=steps)
    torch.testing.assert_close(traj.latents[:, 1:], torch.stack(after_step[:-1], dim=1), atol=1e-5, rtol=1e-5)
    diff = (traj.images.int() - stock_image.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-3
    assert (traj.latents - plain.latents).abs().max() > 1e-2  # the option changes the chain: the test discriminates
    # log π re-computed for samples at different steps in one batch (as PPO does) equals the sampled one: ratio 1
    k = torch.tensor([0, 1, steps - 2])
    rows = torch.arange(len(PROMPTS))
    with torch.no_grad():
        again = transition_log_prob(
            p.unet,
            p.scheduler,
            traj.latents[rows, k],
            traj.timesteps[k],
            traj.timesteps[k + 1],
            traj.latents[rows, k + 1],
            traj.prompt_embeds,
            guidance_embedding(p, 8.0, len(PROMPTS)),
        )
    torch.testing.assert_close(again, traj.log_probs[rows, k], atol=1e-5, rtol=0)


def test_clip_or_threshold_equals_lcm_scheduler_per_sample():
    """The x̂0 clamp against LCMScheduler's own, on a batch whose samples need different s (1 < s < max and s = max)."""
    x0 = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.5, 2.0, 9.0]).view(
        3, 1, 1, 1
    )
    base = build_tiny_pipeline(seed=0).scheduler.config
    thresholding = LCMScheduler.from_config(
        base, thresholding=True, dynamic_thresholding_ratio=0.9, sample_max_value=4.0
    )
    out = clip_or_threshold(x0, thresholding.config)
    torch.testing.assert_close(out, thresholding._threshold_sample(x0), atol=0, rtol=0)
    s = np.quantile(x0.abs().flatten(1).double().numpy(), 0.9, axis=1).clip(1, 4.0)  # by hand: s per sample
    assert 1 < s[1] < 4 and s[2] == 4.0
    np.testing.assert_allclose(
        out.double().numpy(),
        np.clip(x0.double().numpy(), -s[:, None, None, None], s[:, None, None, None]) / s[:, None, None, None],
        atol=1e-6,
    )
    clipping = LCMScheduler.from_config(base, clip_sample=True, clip_sample_range=0.3)
    torch.testing.assert_close(clip_or_threshold(x0, clipping.config), x0.clamp(-0.3, 0.3), atol=0, rtol=0)
    assert clip_or_threshold(x0, base) is x0


def test_one_unet_call_per_step(pipe):
    calls = []
    handle = pipe.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
    try:
        sample(pipe, seed=3)
        assert calls == [len(PROMPTS)] * H  # one batched call per step, no CFG doubling
        calls.clear()
        sample(pipe, seed=3, steps=4)
        assert calls == [len(PROMPTS)] * 4
    finally:
        handle.remove()


def test_epsilon_prediction_x0_math():
    p = build_tiny_pipeline(seed=0)
    p.scheduler = LCMScheduler.from_config(p.scheduler.config, prediction_type="epsilon")
    t_eps = sample(p, seed=1)
    expected = log_probs_by_hand(p, t_eps, 8.0, "epsilon")
    np.testing.assert_allclose(t_eps.log_probs.double().numpy(), expected, atol=1e-5, rtol=0)
    # the sample-prediction formula gives different numbers for this chain: the test discriminates
    wrong = log_probs_by_hand(p, t_eps, 8.0, "sample")
    assert np.abs(wrong - expected).max() > 1e-3
    embeds = prompt_embeds_by_hand(p, PROMPTS)
    den = denoised_by_hand(p, t_eps.latents[:, H - 1], EXPECTED_TIMESTEPS[H - 1], embeds, 8.0, "epsilon")
    with torch.no_grad():
        img = p.vae.decode(torch.tensor(den, dtype=torch.float32), return_dict=False)[0]
    expected_img = ((img.double() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    assert (t_eps.images.int() - expected_img.int()).abs().max() <= 1


def test_same_seed_same_trajectory(pipe, traj):
    again = sample(pipe, seed=0)
    assert torch.equal(again.latents, traj.latents)
    assert torch.equal(again.log_probs, traj.log_probs)
    assert torch.equal(again.images, traj.images)
    other = sample(pipe, seed=1)
    assert not torch.equal(other.latents, traj.latents)


def test_guidance_embedding_changes_output(pipe, traj):
    low = sample(pipe, seed=0, guidance_scale=2.0)
    assert torch.equal(low.latents[:, 0], traj.latents[:, 0])  # same initial noise
    assert (low.latents[:, 1:] - traj.latents[:, 1:]).abs().max() > 1e-3
    assert not torch.equal(low.images, traj.images)
    # and guidance 2 is itself exact under the hand-computed embedding of w = 1
    np.testing.assert_allclose(low.log_probs.double().numpy(), log_probs_by_hand(pipe, low, 2.0), atol=1e-5, rtol=0)


def test_h1_has_no_log_probs_and_h0_rejected(pipe):
    one = sample(pipe, seed=0, steps=1)
    assert tuple(one.log_probs.shape) == (len(PROMPTS), 0) and one.latents.shape[1] == 1
    with pytest.raises(ValueError):
        sample(pipe, seed=0, steps=0)
