"""One learner update per algorithm against an independent recomputation (issue 29), fp64 on the toys.

Each test builds the learner as the driver does, gives its LoRA random B weights (θ ≠ base), takes ONE update
with ≥ 2 passes (PPO: inner_epochs; first-order: updates_per_epoch), gradient accumulation, advantage and ratio
clipping and an active grad-norm clip, and compares the LoRA after it with a recomputation written here: the
loss by formula from the policy's public Gaussians (`rollout.policies.lcm`, `rollout.policies.ddim`), the per-step KL
Δ²/(2σ²) against a pipeline that never had a LoRA, the gradient by `torch.autograd.grad` of one window's
summed loss, the global-norm clip and AdamW's formula by hand. The learner's generator state is read before
the update, so the reference draws the same shuffles, noise and truncations.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import pytest
import torch

from learner.algorithms.ddpo import DDPOSettings
from learner.algorithms.ddpo.learner import DDPOLearnerSpec
from learner.algorithms.draft import AlignPropSettings, DRaFTSettings
from learner.algorithms.draft.learner import AlignPropLearnerSpec
from learner.algorithms.grpo import GRPOSettings
from learner.algorithms.grpo.learner import GRPOLearnerSpec
from learner.algorithms.rocm.learner import ROCMLearnerSpec
from learner.algorithms.rocm.settings import ROCMSettings
from learner.ppo.learner import LearnerSpec
from learner.ppo.settings import PPOSettings
from rewards_service.registry import build_differentiable_reward
from rollout.lora import LoraSettings, add_lora
from rollout.models import load_pipeline
from rollout.policies import sample_trajectory
from rollout.policies.chain_math import encode_prompts, gaussian_log_prob
from rollout.policies.ddim import ddim_transition_gaussian
from rollout.policies.lcm import (
    guidance_embedding,
    lcm_timesteps,
    predict_denoised,
    transition_gaussian,
    transition_mean_std,
)

F64 = torch.float64
LORA = LoraSettings(rank=2, alpha=4, target_modules=["to_q", "to_v", "conv_out"])
GUIDANCE = {"tiny": 8.0, "tiny-ddim": 5.0}  # DDIM: w > 1, classifier-free guidance on
ADAM = dict(
    learning_rate=1e-3, adam_weight_decay=0.05, adam_epsilon=1e-5
)  # ε near the clipped gradients (~2e-5 each): the step sees their size


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


def clip_and_adamw(
    params,
    grads,
    state: dict,
    max_grad_norm: float,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
):
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
    return clip_and_adamw(
        params,
        grads,
        state,
        s.max_grad_norm,
        s.learning_rate,
        s.adam_beta1,
        s.adam_beta2,
        s.adam_epsilon,
        s.adam_weight_decay,
    )


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
PROMPTS = [
    "a cat",
    "a cat",
    "a dog",
    "a dog",
    "a fox",
    "a fox",
]  # 3 groups of 2 (GRPO); RLCM's tracker: the batch's statistics (2 < min_count)
REWARDS = np.array([0.3, 1.1, -0.4, 2.0, 0.9, 0.6])
PPO = dict(
    train_batch_size=2,
    grad_accum_steps=2,
    inner_epochs=2,  # 3 minibatches a pass, 6 in all: 3 optimizer steps, one spanning both passes
    clip_range=0.1,
    adv_clip_max=0.9,
    max_grad_norm=1e-3,
    **ADAM,
)


@dataclass(frozen=True)
class PPOCase:
    """One PPO-family learner on its toy: its spec, model, settings class and settings beyond `PPO`, and H."""

    spec_class: type
    model: str
    settings_class: type[PPOSettings]
    extra: dict = field(default_factory=dict)
    num_steps: int = 3

    def settings(self, **overrides) -> PPOSettings:
        return self.settings_class(**PPO, **self.extra, **overrides)


PPO_CASES = {
    "rlcm": PPOCase(LearnerSpec, "tiny", PPOSettings),
    "grpo": PPOCase(GRPOLearnerSpec, "tiny", GRPOSettings, {"group_size": 2, "kl_coef": 5.0}),
    "ddpo": PPOCase(
        DDPOLearnerSpec, "tiny-ddim", DDPOSettings, {"timestep_fraction": 0.5, "per_prompt_stat_tracking": False}, 2
    ),
}


def behaviour_trajectory(model: str, num_steps: int):
    """Chains of the LoRA-free base (π_old ≠ π_θ0, so ratios start away from 1 and some are clipped)."""
    base = load_pipeline(model, device="cpu", dtype=F64)
    options = {"eta": 1.0} if model == "tiny-ddim" else {}
    return sample_trajectory(
        base, PROMPTS, num_steps, GUIDANCE[model], torch.Generator().manual_seed(5), height=SIZE, width=SIZE, **options
    )


def gaussian_of(pipe, traj, rows: torch.Tensor, k: torch.Tensor):
    """Mean and std of π_θ's action at step k[i] of chain rows[i], from the policy's public functions."""
    x, t, embeds = traj.latents[rows, k], traj.timesteps[k], traj.prompt_embeds[rows]
    if traj.negative_prompt_embeds is not None:
        return ddim_transition_gaussian(
            pipe.unet,
            pipe.scheduler,
            x,
            t,
            len(traj.timesteps),
            embeds,
            traj.negative_prompt_embeds[rows],
            traj.guidance_scale,
            traj.eta,
        )
    w = guidance_embedding(pipe, traj.guidance_scale, len(rows))
    return transition_gaussian(pipe.unet, pipe.scheduler, x, t, traj.timesteps[k + 1], embeds, w)


def reference_ppo(model, traj, advantages, s, generator_state, theta0, kl_coef=0.0, timestep_fraction=1.0):
    """θ after `inner_epochs` passes of clipped PPO (+ β·KL to the base), written out; returns (θ, pre-clip norms, clip
    fractions)."""
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


LORA_B_STD = {"tiny": 0.05, "tiny-ddim": 0.01}  # first-pass ratios π_θ0/π_base: some within 1 ± 0.1, some outside


def ppo_learner(spec_class, model: str, settings):
    spec = spec_class(
        model=model, lora=LORA, ppo=settings, stat_buffer_size=16, stat_min_count=16, seed=3, dtype=F64, device="cpu"
    )
    learner = spec.build()
    return learner, randomize_lora(learner, LORA_B_STD[model])


def check_ppo(case: PPOCase, settings, advantages, kl_coef=0.0, timestep_fraction=1.0):
    traj = behaviour_trajectory(case.model, case.num_steps)
    learner, theta0 = ppo_learner(case.spec_class, case.model, settings)
    generator_state = learner.generator.get_state()
    metrics = learner.train_epoch(REWARDS, np.ones(len(PROMPTS), dtype=bool), traj)
    reference, norms, clipfrac = reference_ppo(
        case.model, traj, advantages, settings, generator_state, theta0, kl_coef, timestep_fraction
    )
    assert min(norms) > 10 * settings.max_grad_norm  # the clip is active at every step
    assert 0 < clipfrac < 1  # some ratios clipped, some not
    assert_same_update(learner, theta0, reference)
    assert metrics["optimizer_steps"] == len(norms) == 3
    assert abs(metrics["grad_norm"] - np.mean(norms)) < 1e-6 * np.mean(norms)
    return metrics


def population_z(values: np.ndarray, eps: float) -> np.ndarray:
    return (values - values.mean()) / (values.std() + eps)


def test_rlcm_update_equals_written_out_ppo():
    """Per-prompt advantages (2 rewards per prompt < min_count: the batch's statistics), clipped to ±0.9."""
    settings = PPO_CASES["rlcm"].settings()
    advantages = population_z(REWARDS, 1e-6)
    assert np.abs(advantages).max() > settings.adv_clip_max  # the advantage clip matters
    check_ppo(PPO_CASES["rlcm"], settings, advantages)


def test_grpo_update_with_kl_to_base_equals_written_out_ppo():
    settings = PPO_CASES["grpo"].settings()
    advantages = np.concatenate([population_z(group, settings.std_eps) for group in REWARDS.reshape(-1, 2)])
    metrics = check_ppo(PPO_CASES["grpo"], settings, advantages, kl_coef=settings.kl_coef)
    assert metrics["kl_to_base"] > 0


def test_ddpo_update_with_guidance_and_timestep_subset_equals_written_out_ppo():
    """DDIM with CFG (w = 5, η = 1), a random 1 of 2 steps per sample (timestep_fraction 0.5), batch statistics."""
    settings = PPO_CASES["ddpo"].settings()
    check_ppo(PPO_CASES["ddpo"], settings, population_z(REWARDS, 1e-8), timestep_fraction=0.5)


# ---- first-order family: ROCM, DRaFT, AlignProp ----------------------------------------------------------------

FIRST_ORDER_PROMPTS = ["a cat", "a dog", "a fox", "a red fox"]
FIRST_ORDER = dict(
    batch_size=1, grad_accum_steps=2, updates_per_epoch=2, max_grad_norm=1e-3, **ADAM
)  # 4 objective calls, 2 steps


def reference_objective(
    pipe, base, prompts, generator, num_steps: int, lam: float, truncate: int | None
) -> torch.Tensor:
    """r(decode(denoised_{H−1})) − λ·Σ_k KL_k per chain, the LCM chain written out; x_1 … x_{H−1−K} detached under
    truncation K."""
    batch, scheduler = len(prompts), pipe.scheduler
    timesteps = lcm_timesteps(scheduler, num_steps)
    with torch.no_grad():
        embeds = encode_prompts(pipe, prompts)
    w = guidance_embedding(pipe, GUIDANCE["tiny"], batch)
    shape = (batch, 4, SIZE // 4, SIZE // 4)
    x = (
        torch.randn(shape, generator=generator) * scheduler.init_noise_sigma
    )  # x_0, then ε_0 … ε_{H−2}, as every sampler draws them
    noise = [torch.randn(shape, generator=generator) for _ in range(num_steps - 1)]
    divergence = torch.zeros(batch, dtype=F64)
    for k in range(num_steps):
        if truncate is not None and 1 <= k <= num_steps - 1 - truncate:
            x = x.detach()
        t = timesteps[k].expand(batch)
        denoised = predict_denoised(pipe.unet, scheduler, x, t, embeds, w)
        if k == num_steps - 1:
            break
        t_next = timesteps[k + 1].expand(batch)
        mean, std = transition_mean_std(scheduler, denoised, t_next)
        if lam:
            mean_base, _ = transition_mean_std(
                base.scheduler, predict_denoised(base.unet, base.scheduler, x, t, embeds, w), t_next
            )
            divergence = divergence + kl_per_step(mean, mean_base, std)
        x = mean + std * noise[k]
    image = (pipe.vae.decode(denoised / pipe.vae.config.scaling_factor, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    return build_differentiable_reward("smoothness")(image, prompts) - lam * divergence


def check_first_order(spec_class, settings, num_steps: int, lam: float, truncation):
    """One epoch of the learner against −mean objective / accum summed per window, clipped, AdamW;
    `truncation(generator)`: K per call."""
    spec = spec_class(
        model="tiny",
        lora=LORA,
        rocm=settings,
        num_steps=num_steps,
        guidance_scale=GUIDANCE["tiny"],
        reward_factory=functools.partial(build_differentiable_reward, "smoothness"),
        height=SIZE,
        width=SIZE,
        seed=3,
        dtype=F64,
        device="cpu",
    )
    learner = spec.build()
    theta0 = randomize_lora(learner, 0.05)
    generator = torch.Generator().manual_seed(0)
    generator.set_state(learner.generator.get_state())
    metrics = learner.train(FIRST_ORDER_PROMPTS)
    pipe, params, base = reference_pipes("tiny", theta0)
    state, norms, accum = {}, [], settings.grad_accum_steps
    calls = [
        FIRST_ORDER_PROMPTS[i : i + settings.batch_size]
        for i in range(0, len(FIRST_ORDER_PROMPTS), settings.batch_size)
    ]
    for w in range(0, len(calls), accum):
        loss = 0.0
        for prompts in calls[w : w + accum]:
            k = truncation(generator)
            loss = loss - reference_objective(pipe, base, prompts, generator, num_steps, lam, k).mean() / accum
        norms.append(step_adamw(params, loss, state, settings))
    assert min(norms) > 10 * settings.max_grad_norm  # the clip is active at every step
    assert_same_update(learner, theta0, [p.detach().clone() for p in params])
    assert metrics["optimizer_steps"] == len(norms) == 2
    assert abs(metrics["grad_norm"] - np.mean(norms)) < 1e-6 * np.mean(norms)
    return metrics


def test_rocm_update_equals_written_out_objective():
    settings = ROCMSettings(divergence="kl", lam=0.5, **FIRST_ORDER)
    metrics = check_first_order(ROCMLearnerSpec, settings, 3, 0.5, lambda generator: None)
    assert metrics["divergence_mean"] > 0


def test_draft_update_backpropagates_through_the_last_k_transitions():
    settings = DRaFTSettings(truncate_steps=1, **FIRST_ORDER)
    check_first_order(ROCMLearnerSpec, settings, 4, 0.0, lambda generator: 1)


def test_alignprop_update_draws_k_per_call_from_the_learner_generator():
    """K ~ U{1, …, 3} per objective call, drawn from the learner's generator before that call's noise; λ = 0.2."""
    settings = AlignPropSettings(k_min=1, k_max=3, lam=0.2, divergence="kl", **FIRST_ORDER)
    drawn = []

    def truncation(generator):
        drawn.append(int(torch.randint(1, 4, (1,), generator=generator)))
        return drawn[-1]

    metrics = check_first_order(AlignPropLearnerSpec, settings, 4, 0.2, truncation)
    assert metrics["truncate_steps"] == np.mean(drawn) and len(set(drawn)) > 1
