"""DiffusionNFT (`nft`): one update against an independent fp64 recomputation on the LCM and DDIM toys, the soft
update of θ_old, the η schedule, config errors, and training, resume and the saved LoRA through `rlcm train`.

The reference is written here: advantages from the batch's statistics, r = clip(A/A_max, −1, 1)/2 + 1/2, x_t by the
scheduler's ᾱ, the clean predictions of two separate fp64 pipelines (one carrying θ, one θ_old: not the learner's
second peft adapter) and of one without a LoRA (the base), the loss by formula, its gradient by `torch.autograd.grad`,
the clip and AdamW by hand (`tests.test_learner_updates`), then θ_old ← η·θ_old + (1−η)·θ.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline
from safetensors.torch import load_file

from learner.algorithms.nft.learner import NFTLearnerSpec
from learner.algorithms.nft.loss import old_decay
from learner.algorithms.nft.settings import NFTSettings
from rlcm.config.schema import ConfigError, load_config
from rollout.models import build_tiny_pipeline
from rollout.policies.lcm import guidance_embedding, predict_denoised
from tests.test_learner_updates import (
    F64,
    LORA,
    PROMPTS,
    REWARDS,
    assert_same_update,
    behaviour_trajectory,
    lora_params,
    population_z,
    reference_pipes,
    step_adamw,
)
from tests.toys import assert_same_lora, lora_changes_stock_images, rows_of, train_cli

SETTINGS = dict(
    train_batch_size=2,
    grad_accum_steps=2,
    inner_epochs=2,  # 3 minibatches × 2 timesteps a pass: 12 calls, 3 optimizer steps of 4 calls
    timesteps_per_sample=2,
    adv_clip_max=0.9,  # |A| > 0.9 saturates r
    beta=0.7,
    max_grad_norm=1e-3,
    eta_rate=0.1,  # η = 0.3 after the 3 steps
    learning_rate=1e-3,
    adam_weight_decay=0.05,
    adam_epsilon=1e-5,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def randomize(params: list[torch.nn.Parameter], seed: int) -> list[torch.Tensor]:
    """fp64 LoRA weights, A and B random (so p_θ ≠ p_old ≠ p_base); returns their values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.data = torch.randn(p.shape, generator=generator, dtype=F64) * (0.05 if p.ndim == 2 else 0.02)
    return [p.detach().clone() for p in params]


def reference_prediction(pipe, traj, x_t, t, rows):
    """The clean prediction written out: the LCM's denoised output, or x̂0 = √ᾱ·x_t − √(1−ᾱ)·v̂ of the DDIM toy's
    conditional v."""
    embeds = traj.prompt_embeds[rows]
    if traj.negative_prompt_embeds is None:
        w = guidance_embedding(pipe, traj.guidance_scale, len(rows))
        return predict_denoised(pipe.unet, pipe.scheduler, x_t, t, embeds, w)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    v = pipe.unet(x_t, t, encoder_hidden_states=embeds, return_dict=False)[0]
    a = pipe.scheduler.alphas_cumprod.to(F64)[t].view(-1, 1, 1, 1)
    return a.sqrt() * x_t - (1 - a).sqrt() * v


def reference_update(model, traj, s, generator_state, theta0, old0):
    """θ and θ_old after one NFT update, from the formulas alone."""
    pipe, params, base = reference_pipes(model, theta0)
    old_pipe, _, _ = reference_pipes(model, old0)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(generator_state)
    n, T = len(traj), s.timesteps_per_sample
    x0 = traj.final_latents
    advantages = torch.as_tensor(population_z(REWARDS, 1e-6), dtype=F64)  # 2 per prompt < min_count: the batch's
    r = (advantages / s.adv_clip_max).clamp(-1, 1) / 2 + 0.5
    calls = []
    for _ in range(s.inner_epochs):
        order = torch.randperm(n, generator=generator)
        t = torch.randint(s.timestep_min, s.timestep_max + 1, (n, T), generator=generator)
        noise = torch.randn((n, T, *x0.shape[1:]), generator=generator).to(F64)
        for start in range(0, n, s.train_batch_size):
            rows = order[start : start + s.train_batch_size]
            calls += [(rows, t[rows, j], noise[rows, j]) for j in range(T)]

    def call_loss(rows, t, eps):
        a = pipe.scheduler.alphas_cumprod.to(F64)[t].view(-1, 1, 1, 1)
        x_t = a.sqrt() * x0[rows] + (1 - a).sqrt() * eps
        with torch.no_grad():
            p_old = reference_prediction(old_pipe, traj, x_t, t, rows)
            p_base = reference_prediction(base, traj, x_t, t, rows)
        p = reference_prediction(pipe, traj, x_t, t, rows)
        terms = []
        for implicit in ((1 - s.beta) * p_old + s.beta * p, (1 + s.beta) * p_old - s.beta * p):
            error = implicit - x0[rows]
            weight = error.detach().abs().mean(dim=(1, 2, 3)).clamp(min=1e-5)
            terms.append((error**2).mean(dim=(1, 2, 3)) / weight)
        policy = s.adv_clip_max * (r[rows] * terms[0] + (1 - r[rows]) * terms[1]) / s.beta
        return policy.mean() + s.kl_coef * ((p - p_base) ** 2).mean(dim=(1, 2, 3)).mean()

    window = s.grad_accum_steps * T
    state, norms = {}, []
    for w in range(0, len(calls), window):
        loss = sum(call_loss(*call) for call in calls[w : w + window]) / window
        norms.append(step_adamw(params, loss, state, s))
    theta = [p.detach().clone() for p in params]
    eta = min(s.eta_rate * len(norms), s.eta_max)
    return theta, [eta * o + (1 - eta) * p for o, p in zip(old0, theta)], norms


@pytest.mark.parametrize("model, kl_coef", [("tiny", 0.5), ("tiny-ddim", 0.0)])
def test_update_and_soft_update_equal_an_independent_recomputation(model, kl_coef):
    settings = NFTSettings(**SETTINGS, kl_coef=kl_coef)
    traj = behaviour_trajectory(model, 3)
    spec = NFTLearnerSpec(
        model=model, lora=LORA, nft=settings, stat_buffer_size=16, stat_min_count=16, seed=3, dtype=F64, device="cpu"
    )
    learner = spec.build()
    theta0 = randomize(learner.params, 11)
    old0 = randomize(learner.old_params, 12)
    generator_state = learner.generator.get_state()
    metrics = learner.train_epoch(REWARDS, np.ones(len(PROMPTS), dtype=bool), traj)
    theta, old, norms = reference_update(model, traj, settings, generator_state, theta0, old0)
    assert min(norms) > 10 * settings.max_grad_norm  # the clip is active at every step
    assert_same_update(learner, theta0, theta)
    for p, expected in zip(learner.old_params, old):
        torch.testing.assert_close(p.detach(), expected, rtol=1e-9, atol=1e-12)
    assert metrics["optimizer_steps"] == len(norms) == 3 and metrics["eta"] == pytest.approx(0.3)
    assert abs(metrics["grad_norm"] - np.mean(norms)) < 1e-6 * np.mean(norms)
    assert (metrics.get("kl_to_base", 0) > 0) == (kl_coef > 0)


def test_eta_schedule_is_the_authors():
    """decay_type 1 (η ramps 0.001 a step to 0.5) and 2 (0 for 75 steps, then 0.0075 a step to 0.999)."""
    assert [old_decay(s, 0.001, 0.5) for s in (0, 100, 499, 2000)] == [0.0, 0.1, 0.499, 0.5]
    assert [old_decay(s, 0.0075, 0.999, 75) for s in (10, 75, 175, 400)] == pytest.approx([0.0, 0.0, 0.75, 0.999])


def test_theta_old_starts_as_theta_and_is_not_trained():
    learner = NFTLearnerSpec(
        model="tiny", lora=LORA, nft=NFTSettings(), stat_buffer_size=4, stat_min_count=4, device="cpu"
    ).build()
    assert all(torch.equal(o, p) for o, p in zip(learner.old_params, learner.params))
    assert not any(p.requires_grad for p in learner.old_params) and all(p.requires_grad for p in learner.params)
    assert {id(p) for p in lora_params(learner.pipe.unet)} == {id(p) for p in learner.params}


@pytest.mark.parametrize(
    "sets, key",
    [
        (["nft.beta=0"], "nft.beta"),
        (["nft.timestep_max=1000"], "nft.timestep_max"),
        (["nft.timestep_min=900", "nft.timestep_max=100"], "timestep_min (900) must not exceed"),
        (["nft.clip_range=0.2"], "nft.clip_range: unknown key"),
        (["train.learning_rate=1e-3"], "train.learning_rate: an option of algorithm rlcm"),
        (["nft.train_batch_size=5"], "nft.train_batch_size=5"),
    ],
)
def test_bad_config_is_an_error_naming_the_key(sets, key):
    with pytest.raises(ConfigError, match="nft|train") as error:
        load_config("nft-tiny-cpu", sets)
    assert key in str(error.value)


def test_runs_on_the_ddim_toy_with_its_eta():
    config = load_config("nft-tiny-cpu", ["model.name=tiny-ddim", "sampling.guidance_scale=1", "nft.ddim_eta=0.5"])
    assert config.algo.eta(config) == 0.5
    assert load_config("nft-tiny-cpu").algo.eta(load_config("nft-tiny-cpu")) is None


cli = functools.partial(train_cli, "nft-tiny-cpu")


@pytest.mark.slow
def test_resumes_bitwise_equal_and_the_lora_loads_in_diffusers(ray_local, tmp_path):
    """2 epochs straight vs 1 + resume 1 (θ_old, the tracker and the generator in the learner state): the same LoRA;
    the saved LoRA loads in a stock diffusers pipeline and changes its images."""
    sets = ["run.epochs=2", "sampling.batches_per_epoch=2", "nft.kl_coef=0.1", "nft.eta_rate=0.1"]
    assert cli(tmp_path, "full", *sets) == 0
    assert cli(tmp_path, "split", *sets[1:], "run.epochs=1", "run.save_every=1") == 0
    assert cli(tmp_path, "split", *sets, resume=True) == 0
    full, split = rows_of(tmp_path / "full"), rows_of(tmp_path / "split")
    assert [r["epoch"] for r in split] == [0, 1] and full[-1]["samples_seen"] == split[-1]["samples_seen"] == 64
    assert all(r["algorithm"] == "nft" and r["kl_to_base"] > 0 and r["eta"] > 0 for r in full)
    assert_same_lora(tmp_path / "full", tmp_path / "split")
    pipe = build_tiny_pipeline()
    assert isinstance(pipe, LatentConsistencyModelPipeline)
    assert lora_changes_stock_images(pipe, tmp_path / "full/checkpoints/epoch-0001", num_inference_steps=4)


def test_the_lora_state_has_no_old_adapter(tmp_path):
    """The saved file and the published adapter carry θ only (stock diffusers loads one adapter)."""
    learner = NFTLearnerSpec(
        model="tiny", lora=LORA, nft=NFTSettings(), stat_buffer_size=4, stat_min_count=4, device="cpu"
    ).build()
    for keys in (learner.adapter().state_dict.keys(), load_file(learner.save_lora(tmp_path / "lora")).keys()):
        assert keys and not any(".old." in k for k in keys)
