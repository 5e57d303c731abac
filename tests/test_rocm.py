"""ROCM objective and update (learner/algorithms/rocm/objective.py) on the toy LCM with the smoothness reward.

The reference computations here are written out step by step without checkpointing, and take the
frozen base from a second pipeline that never had a LoRA, so they share no code path with `rocm_objective`.
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest
import torch

from learner.algorithms.rocm.learner import ROCMLearner, ROCMLearnerSpec
from learner.algorithms.rocm.objective import rocm_objective, rocm_update
from learner.algorithms.rocm.settings import ROCMSettings
from learner.divergences import gaussian_divergence
from learner.optim import build_optimizer
from rewards_service.registry import build_differentiable_reward
from rlcm.config.prompts import epoch_prompts, load_prompts
from rollout.lora import LoraSettings, add_lora
from rollout.models import load_pipeline
from rollout.policies import sample_trajectory
from rollout.policies.chain_math import encode_prompts
from rollout.policies.lcm import guidance_embedding, lcm_timesteps, predict_denoised, transition_mean_std

LORA = LoraSettings(rank=4, alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out"])
PROMPTS = ["a cat", "a dog"]
GUIDANCE = 8.0


def lora_pipe(lora_b_std: float = 0.05, dtype: torch.dtype = torch.float32):
    """The toy with a LoRA whose B weights are random (nonzero: θ ≠ base) unless `lora_b_std` is 0."""
    pipe = load_pipeline("tiny", device="cpu", dtype=dtype)
    torch.manual_seed(0)
    params = add_lora(pipe.unet, LORA)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, lora_b_std) if lora_b_std else param.zero_()
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    return pipe, params


def reward_fn():
    return build_differentiable_reward("smoothness")


def objective(pipe, seed=0, num_steps=3, divergence="kl", lam=0.5, **kwargs):
    gen = torch.Generator().manual_seed(seed)
    return rocm_objective(pipe, PROMPTS, num_steps, GUIDANCE, gen, reward_fn(), divergence, lam, **kwargs)


def lora_grads(params, out):
    for p in params:
        p.grad = None
    out["objective"].sum().backward()
    return [p.grad.clone() for p in params]


def reference_objective(pipe, base, num_steps, lam, seed=0, detach_through=0):
    """reward − lam·Σ KL, written out; states x_1 … x_{detach_through} are detached; base = a LoRA-free pipeline."""
    gen = torch.Generator().manual_seed(seed)
    timesteps = lcm_timesteps(pipe.scheduler, num_steps)
    with torch.no_grad():
        embeds = encode_prompts(pipe, PROMPTS)
    w = guidance_embedding(pipe, GUIDANCE, len(PROMPTS))
    shape = (len(PROMPTS), 4, 16, 16)
    noise = [torch.randn(shape, generator=gen) for _ in range(num_steps)]
    x, kl = noise[0], torch.zeros(len(PROMPTS))
    for k in range(num_steps):
        if 1 <= k <= detach_through:
            x = x.detach()
        t = timesteps[k].expand(len(PROMPTS))
        denoised = predict_denoised(pipe.unet, pipe.scheduler, x, t, embeds, w)
        if k == num_steps - 1:
            break
        t_next = timesteps[k + 1].expand(len(PROMPTS))
        mean, std = transition_mean_std(pipe.scheduler, denoised, t_next)
        mean_ref, _ = transition_mean_std(
            base.scheduler, predict_denoised(base.unet, base.scheduler, x, t, embeds, w), t_next
        )
        kl = kl + ((mean - mean_ref) ** 2 / (2 * std**2)).mean(dim=(1, 2, 3))
        x = mean + std * noise[k + 1]
    image = (pipe.vae.decode(denoised, return_dict=False)[0] / 2 + 0.5).clamp(0, 1)
    return reward_fn()(image, PROMPTS) - lam * kl


def test_chain_is_the_rollout_policy():
    pipe, _ = lora_pipe()
    out = objective(pipe, seed=3, num_steps=4)
    traj = sample_trajectory(pipe, PROMPTS, 4, GUIDANCE, torch.Generator().manual_seed(3))
    assert torch.equal(out["images"], traj.images)
    assert out["objective"].shape == out["reward"].shape == out["divergence"].shape == (2,)


@pytest.mark.parametrize("divergence", ["kl", "js"])
def test_checkpointed_equals_plain(divergence):
    pipe, params = lora_pipe()
    plain = objective(pipe, divergence=divergence, gradient_checkpointing=False)
    plain_grads = lora_grads(params, plain)
    checkpointed = objective(pipe, divergence=divergence, gradient_checkpointing=True)
    checkpointed_grads = lora_grads(params, checkpointed)
    assert torch.all(plain["divergence"] != 0)
    torch.testing.assert_close(checkpointed["objective"], plain["objective"], rtol=1e-6, atol=1e-7)
    for a, b in zip(checkpointed_grads, plain_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(p.requires_grad for p in params)


def test_matches_written_out_objective_with_lora_free_base():
    pipe, params = lora_pipe()
    base = load_pipeline("tiny", device="cpu")
    out = objective(pipe, num_steps=3, lam=0.5)
    grads = lora_grads(params, out)
    reference = reference_objective(pipe, base, 3, lam=0.5)
    reference_grads = lora_grads(params, {"objective": reference})
    torch.testing.assert_close(out["objective"], reference, rtol=1e-6, atol=1e-7)
    for a, b in zip(grads, reference_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_reference_is_the_base_model():
    pipe, _ = lora_pipe(lora_b_std=0.0)
    assert torch.equal(objective(pipe)["divergence"], torch.zeros(2))  # zero LoRA: θ = base
    pipe, _ = lora_pipe()
    base = load_pipeline("tiny", device="cpu")
    out = objective(pipe, num_steps=2, seed=5)  # one transition, at x_0 = noise: D_0 from first principles
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(2, 4, 16, 16, generator=gen)
    t, t_next = lcm_timesteps(pipe.scheduler, 2)
    embeds, w = encode_prompts(pipe, PROMPTS), guidance_embedding(pipe, GUIDANCE, 2)
    means = [
        transition_mean_std(
            p.scheduler, predict_denoised(p.unet, p.scheduler, x0, t.expand(2), embeds, w), t_next.expand(2)
        )
        for p in (pipe, base)
    ]
    expected = gaussian_divergence("kl", means[0][0], means[1][0], means[0][1])
    assert torch.all(expected > 0)
    torch.testing.assert_close(out["divergence"], expected, rtol=1e-5, atol=1e-8)


def test_guidance_embedding_reaches_checkpointed_calls():
    pipe, _ = lora_pipe()
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["timestep_cond"].clone()), with_kwargs=True
    )
    try:
        out = objective(pipe, num_steps=3, lam=0.5, gradient_checkpointing=True)
        out["objective"].sum().backward()
    finally:
        hook.remove()
    # 3 policy + 2 reference calls, all recomputed in backward but the reference at x_0 (noise, nothing to
    # differentiate)
    assert len(seen) == 5 + 4
    expected = guidance_embedding(pipe, GUIDANCE, 2)
    assert all(torch.equal(cond, expected) for cond in seen)
    other = rocm_objective(pipe, PROMPTS, 3, 2.0, torch.Generator().manual_seed(0), reward_fn(), "kl", 0.5)
    assert not torch.allclose(other["objective"], out["objective"])


def test_reference_calls_skipped_without_regularization():
    pipe, _ = lora_pipe()
    calls = []
    hook = pipe.unet.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        for divergence, lam in (("kl", 0.0), ("none", 1.0), ("kl", 1.0)):
            calls.clear()
            out = objective(pipe, num_steps=4, divergence=divergence, lam=lam, gradient_checkpointing=False)
            assert len(calls) == (7 if lam and divergence != "none" else 4)
            assert torch.all((out["divergence"] == 0) == (len(calls) == 4))
    finally:
        hook.remove()


def test_gradient_matches_finite_difference_fp64():
    """Central difference along a unit direction (half random, half the gradient so the derivative is large).

    The UNet, LoRA and policy math run in fp64 (rollout.policies.lcm computes in fp64 when the model is fp64).
    """
    pipe, params = lora_pipe(dtype=torch.float64)
    grads = lora_grads(params, objective(pipe, seed=1, num_steps=3, lam=0.5, gradient_checkpointing=True))
    grad_norm = torch.sqrt(sum((g**2).sum() for g in grads))
    size = sum(p.numel() for p in params)
    random = [
        torch.randn(p.shape, generator=torch.Generator().manual_seed(i), dtype=p.dtype) for i, p in enumerate(params)
    ]
    direction = [g / grad_norm + r / size**0.5 for g, r in zip(grads, random)]
    norm = torch.sqrt(sum((d**2).sum() for d in direction))
    direction = [d / norm for d in direction]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()

    def value_at(step):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(step * d)
            value = objective(pipe, seed=1, num_steps=3, lam=0.5)["objective"].sum().item()
            for p, d in zip(params, direction):
                p.sub_(step * d)
        return value

    step = 1e-5  # small: the smoothness reward has |·| kinks that a wide step would straddle
    numeric = (value_at(step) - value_at(-step)) / (2 * step)
    assert abs(analytic) > 0.1
    assert abs(numeric - analytic) < 1e-4 * abs(analytic), (numeric, analytic)


def test_truncation_detaches_states_before_last_k_transitions():
    pipe, params = lora_pipe()
    base = load_pipeline("tiny", device="cpu")
    full = lora_grads(params, objective(pipe, num_steps=4, lam=0.5))
    truncated = lora_grads(params, objective(pipe, num_steps=4, lam=0.5, truncate_steps=1))
    by_hand = lora_grads(params, {"objective": reference_objective(pipe, base, 4, lam=0.5, detach_through=2)})
    for a, b in zip(truncated, by_hand):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert not all(torch.allclose(a, b, rtol=1e-3) for a, b in zip(full, truncated))
    for lam in (0.0, 0.5):  # K ≥ H−1 transitions: nothing to detach
        untruncated = lora_grads(params, objective(pipe, num_steps=4, lam=lam))
        long_window = lora_grads(params, objective(pipe, num_steps=4, lam=lam, truncate_steps=3))
        for a, b in zip(untruncated, long_window):
            torch.testing.assert_close(a, b)


def test_gradient_flows_to_initial_noise():
    pipe, _ = lora_pipe()
    x0 = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(9), requires_grad=True)
    objective(pipe, num_steps=3, lam=0.5, latents=x0)["objective"].sum().backward()
    assert x0.grad is not None and x0.grad.abs().sum() > 0


def test_update_accumulates_and_reduces_before_clipping():
    pipe, params = lora_pipe()
    settings = ROCMSettings(lam=0.5, batch_size=1, grad_accum_steps=2, max_grad_norm=1e6, gradient_checkpointing=False)
    gen = torch.Generator().manual_seed(4)
    expected = [torch.zeros_like(p) for p in params]
    for prompt in PROMPTS:  # the same noise stream, one objective call per prompt
        out = rocm_objective(pipe, [prompt], 2, GUIDANCE, gen, reward_fn(), "kl", 0.5)
        for acc, g in zip(expected, lora_grads(params, out)):
            acc.sub_(g / 2)
    before = [p.detach().clone() for p in params]
    seen = []
    optimizer = build_optimizer(params, settings)
    metrics = rocm_update(
        pipe,
        optimizer,
        params,
        [[p] for p in PROMPTS],
        settings,
        2,
        GUIDANCE,
        torch.Generator().manual_seed(4),
        reward_fn(),
        reduce_gradients=lambda ps: seen.append([p.grad.clone() for p in ps]),
    )
    assert len(seen) == 1 and metrics["optimizer_steps"] == 1
    for a, b in zip(seen[0], expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert any(not torch.equal(p, q) for p, q in zip(params, before))
    assert metrics["divergence_kl"] == metrics["divergence_mean"] > 0
    assert metrics["objective"] == pytest.approx(metrics["reward_mean"] - 0.5 * metrics["divergence_mean"], rel=1e-5)


def test_bad_inputs_get_clear_errors():
    pipe, params = lora_pipe()
    with pytest.raises(ValueError, match="unknown divergence"):
        objective(pipe, divergence="tv")
    with pytest.raises(ValueError, match="truncate_steps"):
        objective(pipe, truncate_steps=0)
    settings = ROCMSettings(grad_accum_steps=2)
    with pytest.raises(ValueError, match="multiple of grad_accum_steps=2"):
        rocm_update(
            pipe, build_optimizer(params, settings), params, [["a cat"]], settings, 2, GUIDANCE, None, reward_fn()
        )


# ---- the learner ----------------------------------------------------------------------------------------------


def learner_spec(lam=0.1, divergence="kl", batch_size=4, num_steps=4, **rocm) -> ROCMLearnerSpec:
    """The `rocm-tiny-cpu`-like setting: toy LCM, smoothness reward, LoRA on attention and conv layers, lr 1e-2."""
    settings = ROCMSettings(
        divergence=divergence,
        lam=lam,
        learning_rate=1e-2,
        max_grad_norm=5.0,
        batch_size=batch_size,
        grad_accum_steps=1,
        **rocm,
    )
    return ROCMLearnerSpec(
        model="tiny",
        lora=LORA,
        rocm=settings,
        num_steps=num_steps,
        guidance_scale=GUIDANCE,
        reward_factory=functools.partial(build_differentiable_reward, "smoothness"),
        device="cpu",
    )


def train_epochs(learner: ROCMLearner, epochs: range) -> list[np.ndarray]:
    prompts = load_prompts("imagenet_animals", 8)
    rewards = []
    for epoch in epochs:
        metrics = learner.train(epoch_prompts(prompts, 0, epoch, learner.prompts_per_epoch))
        assert metrics["optimizer_steps"] == learner.spec.rocm.updates_per_epoch and np.isfinite(metrics["objective"])
        assert learner.version == epoch + 1
        rewards.append(learner.last_samples.rewards)
    return rewards


def kl_to_base(learner: ROCMLearner) -> float:
    """Σ_k KL to the base per chain on fixed noise and prompts, whatever the learner was trained with."""
    with torch.no_grad():
        out = rocm_objective(
            learner.pipe,
            load_prompts("imagenet_animals", 8),
            learner.spec.num_steps,
            GUIDANCE,
            torch.Generator().manual_seed(123),
            reward_fn(),
            "kl",
            1.0,
            gradient_checkpointing=False,
        )
    return float(out["divergence"].mean())


@pytest.mark.slow
def test_large_lam_stays_closer_to_the_base():
    free, held = ROCMLearner(learner_spec(lam=0.0)), ROCMLearner(learner_spec(lam=10.0))
    free_rewards, held_rewards = train_epochs(free, range(4)), train_epochs(held, range(4))
    assert kl_to_base(held) < 0.5 * kl_to_base(free)
    assert np.concatenate(held_rewards[-2:]).mean() < np.concatenate(free_rewards[-2:]).mean()


def test_resume_equals_uninterrupted(tmp_path):
    spec = learner_spec(batch_size=2, num_steps=2)
    straight = ROCMLearner(spec)
    train_epochs(straight, range(3))
    first = ROCMLearner(spec)
    train_epochs(first, range(2))
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = ROCMLearner(spec)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))
    assert resumed.version == 2
    train_epochs(resumed, range(2, 3))
    expected, actual = straight.adapter(), resumed.adapter()
    assert actual.version == expected.version == 3
    assert expected.state_dict.keys() == actual.state_dict.keys()
    assert all(torch.equal(expected.state_dict[k], actual.state_dict[k]) for k in expected.state_dict)


def test_ranks_share_the_initial_lora_not_the_noise():
    rank0, rank1 = ROCMLearner(learner_spec()), ROCMLearner(dataclasses.replace(learner_spec(), rank=1))
    a, b = rank0.adapter().state_dict, rank1.adapter().state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(rank0.generator.get_state(), rank1.generator.get_state())
    with pytest.raises(
        ValueError,
        match=r"batch_size x grad_accum_steps x updates_per_epoch = 4 x 1 x 1 = 4 prompts per learner, got 3",
    ):
        rank0.train(["a", "b", "c"])
