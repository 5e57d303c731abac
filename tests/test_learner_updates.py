"""One learner update per algorithm against an independent recomputation (issue 29), fp64 on the toys.

Each test builds the learner as the driver does, gives its LoRA random B weights (θ ≠ base), takes ONE update
with ≥ 2 passes (PPO: inner_epochs; first-order: updates_per_epoch), gradient accumulation, advantage and ratio
clipping and an active grad-norm clip, and compares the LoRA after it with a recomputation written here: the
loss by formula from the policy's public Gaussians (`rollout.policy`, `rollout.ddim_policy`), the per-step KL
Δ²/(2σ²) against a pipeline that never had a LoRA, the gradient by `torch.autograd.grad` of one window's
summed loss, the global-norm clip and AdamW's formula by hand. The learner's generator state is read before
the update, so the reference draws the same shuffles, noise and truncations.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from learner.algorithms.ddpo.learner import DDPOLearnerSpec
from learner.algorithms.draft import AlignPropSettings, DRaFTSettings
from learner.algorithms.draft.learner import AlignPropLearnerSpec
from learner.algorithms.ddpo import DDPOSettings
from learner.algorithms.grpo import GRPOSettings
from learner.algorithms.grpo.learner import GRPOLearnerSpec
from learner.learner import LearnerSpec
from learner.rocm_learner import ROCMLearnerSpec
from learner.settings import PPOSettings, ROCMSettings
from rewards_service.differentiable import build_differentiable_reward
from rollout.ddim_policy import ddim_transition_gaussian
from rollout.lora import LoraSettings, add_lora
from rollout.models import load_pipeline
from rollout.policy import (
    encode_prompts, gaussian_log_prob, guidance_embedding, lcm_timesteps, predict_denoised, sample_trajectory, transition_gaussian,
    transition_mean_std,
)

F64 = torch.float64
LORA = LoraSettings(rank=2, alpha=4, target_modules=["to_q", "to_v", "conv_out"])
GUIDANCE = {"tiny": 8.0, "tiny-ddim": 5.0}  # DDIM: w > 1, classifier-free guidance on
ADAM = dict(learning_rate=1e-3, adam_weight_decay=0.05, adam_epsilon=1e-6)  # ε near the clipped gradients: the step sees their size


@pytest.fixture(autouse=True)
def _two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- the pieces every reference shares --------------------------------------------------------------------


def lora_params(unet: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in unet.parameters() if p.requires_grad]


def randomize_lora(learner, b_std: float) -> list[torch.Tensor]:
    """fp64 LoRA with random B of std `b_std` (so π_θ ≠ π_base); returns θ_0."""
    generator = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for name, p in learner.pipe.unet.named_parameters():
            if p.requires_grad:
                p.data = p.data.to(F64)
                if "lora_B" in name:
                    p.normal_(0.0, b_std, generator=generator)
    return [p.detach().clone() for p in learner.params]


def reference_pipes(model: str, theta0: list[torch.Tensor]):
    """A fresh fp64 pipeline with the LoRA set to θ_0, and one that never had a LoRA (the frozen base)."""
    pipe = load_pipeline(model, device="cpu", dtype=F64)
    add_lora(pipe.unet, LORA)
    params = lora_params(pipe.unet)
    with torch.no_grad():
        for p, value in zip(params, theta0):
            p.data = value.clone()
    return pipe, params, load_pipeline(model, device="cpu", dtype=F64)


def clip_and_adamw(params, grads, state: dict, max_grad_norm: float, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float):
    """g ← g·min(1, c/(‖g‖₂ + 1e-6)) over all parameters, then AdamW (decoupled decay, bias-corrected moments)."""
    norm = torch.sqrt(sum((g**2).sum() for g in grads))
    grads = [g * min(1.0, max_grad_norm / (float(norm) + 1e-6)) for g in grads]
    state["t"] = t = state.get("t", 0) + 1
    m = state.setdefault("m", [torch.zeros_like(p) for p in params])
    v = state.setdefault("v", [torch.zeros_like(p) for p in params])
    with torch.no_grad():
        for i, (p, g) in enumerate(zip(params, grads)):
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g**2
            m_hat, v_hat = m[i] / (1 - beta1**t), v[i] / (1 - beta2**t)
            p.mul_(1 - lr * weight_decay)
            p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
    return float(norm)


def step_adamw(params, loss, state, s) -> float:
    grads = torch.autograd.grad(loss, params)
    return clip_and_adamw(params, grads, state, s.max_grad_norm, s.learning_rate, s.adam_beta1, s.adam_beta2, s.adam_epsilon,
                          s.adam_weight_decay)


def kl_per_step(mean: torch.Tensor, mean_base: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(μ_base, σ²)) averaged over latent dims: mean of Δ²/(2σ²)."""
    return ((mean - mean_base) ** 2 / (2 * std**2)).reshape(mean.shape[0], -1).mean(dim=1)


def assert_same_update(learner, theta0, reference):
    """The learner's LoRA change equals the reference's, up to fp64 rounding (and the learner's fp32 advantages)."""
    for p, start, expected in zip(learner.params, theta0, reference):
        delta, expected_delta = p.detach() - start, expected - start
        scale = expected_delta.abs().max().item()
        assert scale > 0
        torch.testing.assert_close(delta, expected_delta, rtol=1e-6, atol=1e-6 * scale)


# ---- PPO family: RLCM, GRPO (β > 0), DDPO (guidance) ---------------------------------------------------------

SIZE = 32  # pixels: 8×8 latents keep the toy UNet calls cheap
PROMPTS = ["a cat", "a cat", "a dog", "a dog", "a fox", "a fox"]  # 3 groups of 2 (GRPO); RLCM's tracker: the batch's statistics (2 < min_count)
REWARDS = np.array([0.3, 1.1, -0.4, 2.0, 0.9, 0.6])
PPO = dict(
    train_batch_size=2, grad_accum_steps=2, inner_epochs=2,  # 3 minibatches a pass, 6 in all: 3 optimizer steps, one spanning both passes
    clip_range=0.1, adv_clip_max=0.9, max_grad_norm=1e-3, **ADAM,
)


def behaviour_trajectory(model: str, num_steps: int):
    """Chains of the LoRA-free base (π_old ≠ π_θ0, so ratios start away from 1 and some are clipped)."""
    base = load_pipeline(model, device="cpu", dtype=F64)
    options = {"eta": 1.0} if model == "tiny-ddim" else {}
    return sample_trajectory(base, PROMPTS, num_steps, GUIDANCE[model], torch.Generator().manual_seed(5), height=SIZE, width=SIZE, **options)


def gaussian_of(pipe, traj, rows: torch.Tensor, k: torch.Tensor):
    """Mean and std of π_θ's action at step k[i] of chain rows[i], from the policy's public functions."""
    x, t, embeds = traj.latents[rows, k], traj.timesteps[k], traj.prompt_embeds[rows]
    if traj.negative_prompt_embeds is not None:
        return ddim_transition_gaussian(pipe.unet, pipe.scheduler, x, t, len(traj.timesteps), embeds, traj.negative_prompt_embeds[rows],
                                        traj.guidance_scale, traj.eta)
    w = guidance_embedding(pipe, traj.guidance_scale, len(rows))
    return transition_gaussian(pipe.unet, pipe.scheduler, x, t, traj.timesteps[k + 1], embeds, w)


def reference_ppo(model, traj, advantages, s, generator_state, theta0, kl_coef=0.0, timestep_fraction=1.0):
    """θ after `inner_epochs` passes of clipped PPO (+ β·KL to the base), written out; returns (θ, pre-clip norms, clip fractions)."""
    pipe, params, base = reference_pipes(model, theta0)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(generator_state)
    n, steps = traj.log_probs.shape
    trained = max(1, int(steps * timestep_fraction))
    adv = torch.as_tensor(advantages, dtype=torch.float32).to(F64).clamp(-s.adv_clip_max, s.adv_clip_max)
    pieces = []  # one (rows, steps) list per backward the learner takes, in its order
    for _ in range(s.inner_epochs):
        order = torch.randperm(n, generator=generator)
        step_order = torch.stack([torch.randperm(steps, generator=generator) for _ in range(n)])
        for start in range(0, n, s.train_batch_size):
            rows = order[start : start + s.train_batch_size].tolist()
            pieces += [(torch.tensor(rows), step_order[rows, j]) for j in range(trained)]
    window = s.grad_accum_steps * trained
    assert len(pieces) % window == 0
    state, norms, clipped = {}, [], []

    def piece_loss(rows, k):
        """mean over the minibatch of max(−A·ρ, −A·clip(ρ, 1−ε, 1+ε)) + β·KL, ρ = π_θ/π_old of the recorded action."""
        mean, std = gaussian_of(pipe, traj, rows, k)
        ratio = torch.exp(gaussian_log_prob(traj.latents[rows, k + 1], mean, std) - traj.log_probs[rows, k])
        a = adv[rows]
        surrogate = torch.maximum(-a * ratio, -a * ratio.clamp(1 - s.clip_range, 1 + s.clip_range))
        clipped.extend(((ratio - 1).abs() > s.clip_range).tolist())
        if kl_coef:
            with torch.no_grad():
                mean_base, _ = gaussian_of(base, traj, rows, k)
            surrogate = surrogate + kl_coef * kl_per_step(mean, mean_base, std)
        return surrogate.mean()

    for w in range(0, len(pieces), window):
        loss = sum(piece_loss(*piece) for piece in pieces[w : w + window]) / window
        norms.append(step_adamw(params, loss, state, s))
    return [p.detach().clone() for p in params], norms, np.mean(clipped)


LORA_B_STD = {"tiny": 0.05, "tiny-ddim": 0.003}  # first-pass ratios π_θ0/π_base: some within 1 ± 0.1, some outside


def ppo_learner(spec_class, model: str, settings):
    spec = spec_class(model=model, lora=LORA, ppo=settings, stat_buffer_size=16, stat_min_count=16, seed=3, dtype=F64, device="cpu")
    learner = spec.build()
    return learner, randomize_lora(learner, LORA_B_STD[model])


def check_ppo(spec_class, model, settings, num_steps, advantages, kl_coef=0.0, timestep_fraction=1.0):
    traj = behaviour_trajectory(model, num_steps)
    learner, theta0 = ppo_learner(spec_class, model, settings)
    generator_state = learner.generator.get_state()
    metrics = learner.train_epoch(REWARDS, np.ones(len(PROMPTS), dtype=bool), traj)
    reference, norms, clipfrac = reference_ppo(model, traj, advantages, settings, generator_state, theta0, kl_coef, timestep_fraction)
    assert min(norms) > 10 * settings.max_grad_norm  # the clip is active at every step
    assert 0 < clipfrac < 1  # some ratios clipped, some not
    assert metrics["optimizer_steps"] == len(norms) == 3
    assert abs(metrics["grad_norm"] - np.mean(norms)) < 1e-6 * np.mean(norms)
    assert_same_update(learner, theta0, reference)
    return metrics


def population_z(values: np.ndarray, eps: float) -> np.ndarray:
    return (values - values.mean()) / (values.std() + eps)


def test_rlcm_update_equals_written_out_ppo():
    """Per-prompt advantages (2 rewards per prompt < min_count: the batch's statistics), clipped to ±0.9."""
    settings = PPOSettings(**PPO)
    advantages = population_z(REWARDS, 1e-6)
    assert np.abs(advantages).max() > settings.adv_clip_max  # the advantage clip matters
    check_ppo(LearnerSpec, "tiny", settings, 3, advantages)


def test_grpo_update_with_kl_to_base_equals_written_out_ppo():
    settings = GRPOSettings(**PPO, group_size=2, kl_coef=5.0)
    advantages = np.concatenate([population_z(group, settings.std_eps) for group in REWARDS.reshape(-1, 2)])
    metrics = check_ppo(GRPOLearnerSpec, "tiny", settings, 3, advantages, kl_coef=settings.kl_coef)
    assert metrics["kl_to_base"] > 0


def test_ddpo_update_with_guidance_and_timestep_subset_equals_written_out_ppo():
    """DDIM with CFG (w = 5, η = 1), a random 1 of 2 steps per sample (timestep_fraction 0.5), batch statistics."""
    settings = DDPOSettings(**PPO, timestep_fraction=0.5, per_prompt_stat_tracking=False)
    check_ppo(DDPOLearnerSpec, "tiny-ddim", settings, 2, population_z(REWARDS, 1e-8), timestep_fraction=0.5)
