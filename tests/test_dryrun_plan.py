"""`rlcm plan` (FLOPs against a hand count, every preset, clear errors) and `rlcm train --dry-run` at real
architectures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from rlcm.commands.dryrun import plan_dry_run
from rlcm.config.schema import PRESETS, ConfigError, load_config
from rlcm.planning.gpus import GPUS
from rlcm.planning.plan import plan
from rollout.samplers import is_toy

REAL_PRESETS = [p for p in PRESETS if not is_toy(load_config(p).model.name)]  # d3po-human runs the toy too


def hand_count(module: torch.nn.Module, run) -> int:
    """FLOPs (2 per multiply-add) of conv, linear and attention matmuls, counted from shapes with forward hooks."""
    from diffusers.models.attention_processor import Attention

    total = [0]

    def conv(m, args, out):
        total[0] += 2 * out.numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]

    def linear(m, args, out):
        total[0] += 2 * out.numel() * m.in_features

    def attention(m, args, kwargs, out):
        hidden = args[0]
        queries = hidden.shape[-2] * hidden.shape[-1] if hidden.ndim == 4 else hidden.shape[1]
        context = kwargs.get("encoder_hidden_states")
        keys = context.shape[1] if context is not None else queries
        total[0] += 2 * 2 * hidden.shape[0] * queries * keys * m.inner_dim  # Q·Kᵀ and A·V

    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(conv)
        elif isinstance(m, torch.nn.Linear):
            m.register_forward_hook(linear)
        elif isinstance(m, Attention):
            m.register_forward_hook(attention, with_kwargs=True)
    run()
    return total[0]


def test_plan_flops_match_a_hand_count_of_the_real_unet_and_vae():
    from rollout.architectures import _config, architecture_dir, meta_unet

    result = plan(load_config("compression"), "h100-80gb")
    latent = result["resolution"] // 8
    unet = meta_unet("random:SimianLuo/LCM_Dreamshaper_v7")
    with torch.device("meta"), torch.no_grad():
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_config(_config(architecture_dir("random:SimianLuo/LCM_Dreamshaper_v7"), "vae"))
        x = torch.randn(1, 4, latent, latent)
        unet_hand = hand_count(
            unet, lambda: unet(x, torch.tensor([500]), torch.randn(1, 77, 768), timestep_cond=torch.randn(1, 256))
        )
        vae_hand = hand_count(vae, lambda: vae.decode(x))
    assert abs(result["flops"]["unet_call"] / unet_hand - 1) < 0.10, (result["flops"]["unet_call"], unet_hand)
    assert abs(result["flops"]["vae_decode"] / vae_hand - 1) < 0.10, (result["flops"]["vae_decode"], vae_hand)
    assert 700e9 < unet_hand < 900e9  # the SD1.5 UNet at 512 px: ~0.4 TMAC per call


@pytest.mark.slow
def test_plan_memory_agrees_with_the_live_tensors_torch_profiler_measures():
    """The real UNet at 32 px on CPU: predicted (meta tensors) vs measured (profiler, live tensors) within 20%."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from benchmarks.validate_plan_memory import main

    rows = main([32], modes=("nograd", "train"))  # the chains: benchmarks/validate_plan_memory.py (too slow here)
    assert [r["mode"] for r in rows] == ["nograd", "train"]
    for r in rows:
        assert abs(r["error"]) <= 0.2, r
        assert r["allocator_peak_mb"] >= r["measured_mb"]  # scratch comes on top of the live tensors


@pytest.mark.slow
@pytest.mark.parametrize("gpu", ["h100-80gb", "l4-24gb"])
def test_plan_runs_for_every_real_preset(gpu):
    for preset in REAL_PRESETS:
        result = plan(load_config(preset), gpu)
        assert result["flops"]["per_sample"] > result["flops"]["unet_call"] * load_config(preset).sampling.num_steps
        assert {a["role"] for a in result["actors"]} >= {"rollout actor"}
        for actor in result["actors"]:
            assert actor["memory_bytes"] > 2 * result["parameters"]["unet"]  # at least the bf16 base weights
        assert result["samples_per_s"] > 0
        if result["update"]:  # PPO presets: pairs_per_call auto is what fits
            assert result["update"]["pairs_per_call"] == result["update"]["fitting_pairs_per_call"] > 1, preset


def test_plan_says_what_to_change_when_rocm_without_checkpointing_does_not_fit():
    result = plan(load_config("rocm-pickscore", ["rocm.gradient_checkpointing=false"]), "l4-24gb")
    learner = next(a for a in result["actors"] if a["role"].startswith("learner"))
    assert not learner["fits"]
    assert [item["set"] for item in result["advice"]] == [["rocm.gradient_checkpointing=true"]]
    kept = plan(load_config("rocm-pickscore"), "l4-24gb")
    assert next(a for a in kept["actors"] if a["role"].startswith("learner"))["fits"]


def test_plan_and_dry_run_reject_what_they_cannot_do_in_one_line():
    with pytest.raises(ConfigError, match="unknown GPU kind"):
        plan(load_config("compression"), "tpu-v9")
    with pytest.raises(ConfigError, match="tiny toy"):
        plan(load_config("tiny-cpu"), "l4-24gb")
    with pytest.raises(ConfigError, match="no shipped architecture"):
        plan_dry_run(load_config("compression", ["model.name=someone/other-model"]))
    with pytest.raises(ConfigError, match="multiple of 8"):
        plan_dry_run(load_config("compression"), resolution=30)


def test_plan_json_from_the_cli(capsys):
    from rlcm.commands.main import main

    assert main(["plan", "--config", "compression", "--gpu", "a100-80gb", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["flops"]) >= {"unet_call", "vae_decode", "per_sample"}
    assert all(set(a) >= {"role", "memory_bytes", "fits"} for a in data["actors"])
    assert data["gpu_memory_bytes"] == GPUS["a100-80gb"].memory_bytes
    # 40 samples a learner: 20 minibatches × 7 steps = 140 minibatch calls, 14 an optimizer window; pairs_per_call auto
    # is a whole window (28 pairs, 14 calls) a UNet call: 10 training calls, and 10 recomputing π_old (bf16) first
    assert data["update"] == {
        "unet_calls": 20,
        "pairs_per_call": 28,
        "images_per_call": 28,
        "recompute_calls": 10,
        "fitting_pairs_per_call": 28,
        "auto": True,
    }
    assert main(["plan", "--config", "compression", "--gpu", "tpu"]) == 2  # one-line error, not a trace
    assert "unknown GPU kind 'tpu'" in capsys.readouterr().err


def test_dry_run_keeps_the_algorithm_and_maps_gpus_to_cpu():
    dry = plan_dry_run(load_config("rocm-pickscore"), 64)
    c = dry.config
    assert c.model.name == "random:SimianLuo/LCM_Dreamshaper_v7" and c.model.dtype == "bfloat16"
    assert c.algorithm == "rocm" and c.rocm.divergence == "kl" and c.rocm.gradient_checkpointing
    assert c.model.lora.target_modules == ["to_q", "to_k", "to_v", "to_out.0"] and c.model.lora.rank == 16
    assert c.resources.learner_gpus == 0 and c.resources.rollout_gpus == 0
    assert c.reward.options["model"].startswith("random:") and c.sampling.height == 64
    serve = plan_dry_run(load_config("aesthetic"), 64).serve
    assert serve["rewards"][0]["num_gpus"] == 0 and serve["rewards"][0]["options"]["clip_model"].startswith("random:")


def _dry_run(preset: str) -> str:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlcm.commands.main",
            "train",
            "--config",
            preset,
            "--dry-run",
            "--dry-run-resolution",
            "32",
            "--set",
            "sampling.num_steps=2",
            "--output-dir",
            f"/tmp/rlcm-test-dry-run-{preset}-{os.getpid()}",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


@pytest.mark.slow
def test_dry_run_of_an_rlcm_preset_at_full_architecture():
    stdout = _dry_run("compression")
    assert "dry run OK: compression ran end to end at full architecture (random weights, 32 px)" in stdout
    assert "peak memory learner" in stdout and "peak memory rollout actor" in stdout


@pytest.mark.slow
def test_dry_run_of_a_rocm_preset_at_full_architecture():
    stdout = _dry_run("rocm-clip_score")
    assert "dry run OK: rocm-clip_score ran end to end at full architecture (random weights, 32 px)" in stdout
    assert "reward clip_score: model=random:openai/clip-vit-large-patch14" in stdout


def test_shipped_clip_tokenizer_gives_openai_clip_ids():
    """The shipped BPE vocabulary builds CLIP's real tokenizer: OpenAI CLIP's ids for a known prompt, 77-token
    padding."""
    from rollout.architectures import clip_bpe_tokenizer

    tokenizer = clip_bpe_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer("a photo of a cat", padding="max_length").input_ids) == 77


def test_dry_run_rows_come_from_each_presets_log(tmp_path):
    from benchmarks.dry_run_table import rows_from_logs

    (tmp_path / "rocm-aesthetic.log").write_text(
        "peak memory learner: 4.20 GB\npeak memory all processes together: 8.10 GB; total time 12.5 s\n"
        "dry run OK: rocm-aesthetic ran end to end\nexit 0\n"
    )
    (tmp_path / "compression.log").write_text("loading\nrlcm: error: this run does not fit\nexit 2\n")
    (tmp_path / "notes.txt").write_text("not a log")
    assert rows_from_logs(tmp_path) == [
        "| compression |  |  |  | FAILED: rlcm: error: this run does not fit |",
        "| rocm-aesthetic | 12.5 s | learner 4.20 GB | 8.10 GB | OK |",
    ]
