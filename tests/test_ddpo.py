"""DDPO: the DDIM policy against diffusers, the learner's timestep subset, config errors, learning and resume via `rlcm
train`."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline
from PIL import Image

from learner.algorithms.ddpo.learner import DDPOLearnerSpec
from rlcm.commands.main import main
from rlcm.config.schema import ConfigError, load_config
from rollout.lora import LoraSettings
from rollout.models import build_tiny_ddim_pipeline, load_pipeline
from rollout.policies import sample_trajectory
from rollout.policies.ddim import DDIMTransitions
from tests.toys import assert_same_lora, lora_changes_stock_images, rows_of, train_cli

PROMPTS = ["a cat", "a red fox"]
H, W = 4, 5.0


@pytest.fixture(scope="module")
def pipe_and_traj():
    torch.set_num_threads(2)
    pipe = build_tiny_ddim_pipeline()
    traj = sample_trajectory(pipe, PROMPTS, H, W, torch.Generator().manual_seed(3), eta=1.0)
    return pipe, traj


def test_trajectory_layout(pipe_and_traj):
    _, traj = pipe_and_traj
    assert traj.latents.shape == (2, H + 1, 4, 16, 16) and traj.log_probs.shape == (2, H)
    assert traj.negative_prompt_embeds.shape == traj.prompt_embeds.shape and traj.eta == 1.0
    assert traj.timesteps.tolist() == [999, 749, 499, 249]  # the toy's DDIMScheduler: trailing spacing
    both = type(traj).concat([traj, traj.select([1])])
    assert torch.equal(both.negative_prompt_embeds[2], traj.negative_prompt_embeds[1])


def test_log_probs_equal_direct_unet_calls_and_ddim_constants(pipe_and_traj):
    """log π(x_{k+1} | x_k) from the UNet called by hand (CFG on [negative, positive]) and DDIMScheduler's ᾱ table."""
    pipe, traj = pipe_and_traj
    s = pipe.scheduler
    alphas, final = s.alphas_cumprod.double(), s.final_alpha_cumprod.double()
    for k in range(H):
        x, t = traj.latents[:, k], int(traj.timesteps[k])
        with torch.no_grad():
            out = pipe.unet(
                torch.cat([x, x]), t, encoder_hidden_states=torch.cat([traj.negative_prompt_embeds, traj.prompt_embeds])
            ).sample
        v_u, v_c = out.double().chunk(2)
        v = v_u + W * (v_c - v_u)
        a_t = alphas[t]
        a_prev = alphas[t - 1000 // H] if t - 1000 // H >= 0 else final
        x0 = a_t.sqrt() * x.double() - (1 - a_t).sqrt() * v  # the toy predicts v, unclipped
        eps = (1 - a_t).sqrt() * x.double() + a_t.sqrt() * v
        sigma = ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()  # η = 1
        mean = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
        x_next = traj.latents[:, k + 1].double()
        log_prob = (-((x_next - mean) ** 2) / (2 * sigma**2) - sigma.log() - 0.5 * math.log(2 * math.pi)).mean(
            dim=(1, 2, 3)
        )
        assert (log_prob.float() - traj.log_probs[:, k]).abs().max().item() < 1e-4, k
    assert traj.log_probs.std() > 0.1  # not a constant: the actions' densities differ by step


def test_chain_equals_the_stock_pipeline_with_the_same_noise(pipe_and_traj):
    """Every state x_1 … x_H and the decoded image equal `pipe(...)` with the same generator seed and η."""
    pipe, traj = pipe_and_traj
    states = []

    def record(_pipe, _i, _t, kwargs):
        states.append(kwargs["latents"].clone())
        return kwargs

    images = pipe(
        PROMPTS,
        num_inference_steps=H,
        guidance_scale=W,
        eta=1.0,
        generator=torch.Generator().manual_seed(3),
        output_type="np",
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["latents"],
    ).images
    assert (torch.stack(states, dim=1) - traj.latents[:, 1:]).abs().max().item() < 1e-5
    stock = torch.from_numpy((np.asarray(images) * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)
    assert (stock.int() - traj.images.int()).abs().max().item() <= 1
    other_eta = sample_trajectory(pipe, PROMPTS, H, W, torch.Generator().manual_seed(3), eta=0.5)
    assert not torch.allclose(other_eta.latents[:, -1], traj.latents[:, -1])  # η reaches the chain


def _learner(seed: int = 0, **ppo):
    cfg = load_config("ddpo-tiny-cpu", [f"ddpo.{k}={v}" for k, v in ppo.items()])
    spec = DDPOLearnerSpec(
        model="tiny-ddim",
        lora=LoraSettings(rank=4, alpha=4),
        ppo=cfg.ddpo,
        stat_buffer_size=16,
        stat_min_count=16,
        seed=seed,
    )
    return spec.build()


def test_first_update_ratio_is_one_and_timestep_fraction_draws_a_seeded_subset(pipe_and_traj, monkeypatch):
    _, traj = pipe_and_traj
    calls: list[list[int]] = []
    gaussian = DDIMTransitions.gaussian

    def spy(self, unet, rows, k):
        calls.append(k.tolist())
        return gaussian(self, unet, rows, k)

    monkeypatch.setattr(DDIMTransitions, "gaussian", spy)
    steps = {}
    for run, seed in (("a", 0), ("b", 0), ("other seed", 3)):
        calls.clear()
        metrics = _learner(seed, timestep_fraction=0.5, train_batch_size=2, learning_rate=1e-3).train(
            traj, np.array([1.0, -1.0])
        )
        assert abs(metrics["ratio_min"] - 1) < 1e-5 and abs(metrics["ratio_max"] - 1) < 1e-5  # same weights, same math
        steps[run] = [tuple(c) for c in calls]
    assert len(steps["a"]) == 2  # ⌊0.5·4⌋ steps per sample, each call a minibatch of both samples
    assert all(len({call[i] for call in steps["a"]}) == 2 for i in range(2))  # distinct steps within a sample
    assert steps["a"] == steps["b"] and steps["a"] != steps["other seed"]  # the subset comes from the seeded generator


@pytest.mark.parametrize(
    "preset, accum, updates, buffer", [("ddpo-compression", 2, 4, 16), ("ddpo-aesthetic", 4, 2, 32)]
)
def test_gpu_presets_carry_ddpo_published_hyperparameters(preset, accum, updates, buffer):
    """ddpo-pytorch config/base.py + config/dgx.py: 50 steps, w 5, η 1, LoRA rank 4, lr 3e-4, clip 1e-4, adv clip 5,
    8 samples × 4 batches per GPU, train batch 4, all steps trained; 4 (compression) or 2 (aesthetic) updates per
    epoch."""
    cfg = load_config(preset)
    s, d = cfg.sampling, cfg.ddpo
    assert (cfg.algorithm, cfg.model.name, s.num_steps, s.guidance_scale, s.batch_size, s.batches_per_epoch) == (
        "ddpo",
        "runwayml/stable-diffusion-v1-5",
        50,
        5.0,
        8,
        4,
    )
    assert (d.eta, d.learning_rate, d.clip_range, d.adv_clip_max, d.timestep_fraction, d.max_grad_norm) == (
        1.0,
        3e-4,
        1e-4,
        5.0,
        1.0,
        1.0,
    )
    assert (cfg.model.lora.rank, d.train_batch_size, d.grad_accum_steps, cfg.stat_tracking.buffer_size) == (
        4,
        4,
        accum,
        buffer,
    )
    assert cfg.samples_per_epoch == 256 and cfg.optimizer_steps_per_epoch == updates


@pytest.mark.parametrize(
    "preset, overrides, message",
    [
        (
            "ddpo-tiny-cpu",
            ["model.name=tiny"],
            "model.name: 'tiny' is a LCM model but algorithm ddpo trains the DDIM sampler",
        ),
        ("ddpo-compression", ["model.name=SimianLuo/LCM_Dreamshaper_v7"], "is a LCM model but algorithm ddpo"),
        (
            "grpo-tiny-cpu",
            ["model.name=tiny-ddim"],
            "model.name: 'tiny-ddim' is a DDIM model but algorithm grpo trains the LCM sampler",
        ),
        ("tiny-cpu", ["model.name=runwayml/stable-diffusion-v1-5"], "is a DDIM model but algorithm rlcm"),
        ("rocm-tiny-cpu", ["model.name=random:runwayml/stable-diffusion-v1-5"], "is a DDIM model but algorithm rocm"),
        ("draft-tiny-cpu", ["model.name=tiny-ddim"], "is a DDIM model but algorithm draft"),
        ("alignprop-tiny-cpu", ["model.name=tiny-ddim"], "is a DDIM model but algorithm alignprop"),
        (
            "ddpo-tiny-cpu",
            ["train.learning_rate=1e-3"],
            "train.learning_rate: an option of algorithm rlcm, but algorithm is ddpo",
        ),
        ("ddpo-tiny-cpu", ["grpo.group_size=2"], "grpo.group_size: an option of algorithm grpo, but algorithm is ddpo"),
        ("ddpo-tiny-cpu", ["ddpo.eta=0"], "ddpo.eta: Input should be greater than 0"),
        ("ddpo-tiny-cpu", ["ddpo.timestep_fraction=0.5", "ddpo.shuffle_timesteps=false"], "set shuffle_timesteps true"),
    ],
)
def test_bad_config_is_one_line(preset, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(preset, overrides)


def test_config_error_from_the_cli_before_ray_and_missing_hub_model(capsys, tmp_path):
    assert (
        main(["train", "--config", "ddpo-tiny-cpu", "--output-dir", str(tmp_path / "r"), "--set", "model.name=tiny"])
        == 2
    )
    assert "is a LCM model but algorithm ddpo" in capsys.readouterr().err
    with pytest.raises(
        FileNotFoundError, match="could not load Stable Diffusion model 'runwayml/stable-diffusion-v1-5'.*offline"
    ):
        load_pipeline("runwayml/stable-diffusion-v1-5", device="cpu")


cli = functools.partial(train_cli, "ddpo-tiny-cpu")


@pytest.mark.slow
def test_ddpo_trains_through_rlcm_train_and_the_lora_loads(ray_local, tmp_path):
    """2 epochs through `rlcm train`; the LoRA loads in a stock StableDiffusionPipeline and changes its images.
    Whether DDPO learns from its reward beyond a random-reward control is benchmarks/bench_sign_test.py's question."""
    assert cli(tmp_path, "run", "run.epochs=2", "run.save_every=2") == 0
    rows = rows_of(tmp_path / "run")
    assert len(rows) == 2 and all(r["algorithm"] == "ddpo" for r in rows)

    pipe = build_tiny_ddim_pipeline()
    assert isinstance(pipe, StableDiffusionPipeline)
    assert lora_changes_stock_images(
        pipe, tmp_path / "run/checkpoints/epoch-0001", num_inference_steps=4, guidance_scale=W, eta=1.0
    )


@pytest.mark.slow
def test_ddpo_resumes_bitwise_equal_and_samples_with_its_eta(ray_local, tmp_path):
    sets = ["run.epochs=2", "sampling.num_steps=3", "ddpo.timestep_fraction=0.67"]
    assert cli(tmp_path, "full", *sets) == 0
    assert cli(tmp_path, "split", *sets[1:], "run.epochs=1", "run.save_every=1") == 0
    assert cli(tmp_path, "split", *sets, resume=True) == 0
    full, split = rows_of(tmp_path / "full"), rows_of(tmp_path / "split")
    assert [r["epoch"] for r in split] == [0, 1] and split[-1]["samples_seen"] == full[-1]["samples_seen"] == 128
    assert_same_lora(tmp_path / "full", tmp_path / "split")

    checkpoint = tmp_path / "full/checkpoints/epoch-0001"
    assert json.loads((checkpoint / "rlcm_model.json").read_text())["sampling"]["eta"] == 1.0
    out = tmp_path / "cat.png"
    assert main(["sample", "--lora", str(checkpoint), "--prompt", "a cat", "--seed", "3", "--out", str(out)]) == 0
    pipe = build_tiny_ddim_pipeline()
    pipe.load_lora_weights(str(checkpoint))
    expected = pipe(
        "a cat",
        num_inference_steps=3,
        guidance_scale=W,
        eta=1.0,
        height=32,
        width=32,
        generator=torch.Generator().manual_seed(3),
    ).images[0]
    np.testing.assert_array_equal(
        np.asarray(Image.open(out)), np.asarray(expected)
    )  # `rlcm sample` uses the recorded η and size (the preset's 32 px)
