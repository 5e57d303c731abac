"""LoRA: the saved adapter loads in stock diffusers and reproduces the trained policy; alpha ≠ rank survives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import LatentConsistencyModelPipeline
from safetensors.torch import load_file

from learner.ppo.learner import LearnerSpec, PPOLearner
from learner.ppo.settings import PPOSettings
from rollout.lora import LORA_WEIGHTS_NAME, AdapterVersion, LoraSettings, add_lora, export_adapter, import_adapter
from rollout.models import build_tiny_pipeline
from rollout.policies import sample_trajectory
from rollout.worker import RolloutSpec, RolloutWorker

RANK, ALPHA = 4, 12.0  # scale 3: an alpha that silently fell back to rank would change the output
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out"]
PROMPTS = ["tench", "goldfish", "hen", "ostrich"]


def lora_settings(alpha: float = ALPHA) -> LoraSettings:
    return LoraSettings(rank=RANK, alpha=alpha, target_modules=TARGETS)


def sample(pipe, seed: int = 123):
    return sample_trajectory(pipe, PROMPTS, 8, 8.0, torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A learner after 3 real PPO updates (lr 1e-2, so lora_B moves away from its zero init), saved to disk."""
    torch.set_num_threads(2)
    ppo = PPOSettings(learning_rate=1e-2, clip_range=0.2, train_batch_size=4, grad_accum_steps=1)
    learner = PPOLearner(
        LearnerSpec(model="tiny", lora=lora_settings(), ppo=ppo, stat_buffer_size=16, stat_min_count=16, device="cpu")
    )
    for step in range(3):
        traj = sample_trajectory(learner.pipe, PROMPTS, 8, 8.0, torch.Generator().manual_seed(step))
        learner.train(traj, np.array([1.0, -1.0, 0.5, -0.5]))
    lora_b = [p for n, p in learner.pipe.unet.named_parameters() if "lora_B" in n]
    assert lora_b and max(p.abs().max().item() for p in lora_b) > 1e-3
    directory = tmp_path_factory.mktemp("lora")
    path = learner.save_lora(directory)
    return learner, directory, path


def test_saved_file_layout(trained):
    learner, directory, path = trained
    assert path == directory / LORA_WEIGHTS_NAME and path.is_file()
    tensors = load_file(str(path))
    assert all(k.startswith("unet.") for k in tensors)
    assert any(".conv1.lora_A" in k for k in tensors) and any(".to_q.lora_B" in k for k in tensors)
    assert all(t.dtype == torch.float32 for t in tensors.values())
    n_adapter = sum(p.numel() for n, p in learner.pipe.unet.named_parameters() if "lora_" in n)
    assert sum(t.numel() for t in tensors.values()) == n_adapter


def test_stock_pipeline_loads_and_reproduces_trained_policy(trained):
    learner, directory, _ = trained
    stock = build_tiny_pipeline(seed=0)
    assert type(stock) is LatentConsistencyModelPipeline
    stock.load_lora_weights(str(directory))

    configs = list(stock.unet.peft_config.values())
    assert len(configs) == 1
    assert configs[0].r == RANK and configs[0].lora_alpha == ALPHA

    ours, theirs = sample(learner.pipe), sample(stock)
    torch.testing.assert_close(theirs.latents, ours.latents, atol=1e-5, rtol=0)
    torch.testing.assert_close(theirs.log_probs, ours.log_probs, atol=1e-5, rtol=0)
    assert (theirs.images.int() - ours.images.int()).abs().max() <= 1

    # stock `pipe(...)` with the loaded LoRA gives the trained policy's images too
    out = stock(
        prompt=PROMPTS,
        num_inference_steps=8,
        guidance_scale=8.0,
        generator=torch.Generator().manual_seed(123),
        output_type="np",
    ).images
    stock_images = torch.tensor((out * 255).round().astype(np.uint8)).permute(0, 3, 1, 2)
    assert (stock_images.int() - ours.images.int()).abs().max() <= 1

    # guard: the adapter matters (the base model samples something else from the same noise)
    base = sample(build_tiny_pipeline(seed=0))
    assert (base.latents[:, -1] - ours.latents[:, -1]).abs().max() > 1e-2
    assert not torch.equal(base.images, ours.images)


def test_alpha_matters_so_the_round_trip_is_meaningful(trained):
    """The same weights under alpha = rank (scale 1 instead of 3) give a different policy."""
    learner, _, _ = trained
    wrong = build_tiny_pipeline(seed=0)
    add_lora(wrong.unet, lora_settings(alpha=float(RANK)))
    import_adapter(wrong.unet, learner.adapter())
    assert (sample(wrong).latents[:, -1] - sample(learner.pipe).latents[:, -1]).abs().max() > 1e-3


def test_rollout_worker_after_set_adapter_matches_learner(trained):
    learner, _, _ = trained
    worker = RolloutWorker(
        RolloutSpec(model="tiny", lora=lora_settings(), num_steps=8, guidance_scale=8.0, device="cpu")
    )
    adapter = learner.adapter()
    assert adapter.version == learner.version == 3
    assert worker.set_adapter(adapter) is True
    assert worker.set_adapter(adapter) is False  # same version: no reload
    got = worker.sample(PROMPTS, seed=123)
    want = sample(learner.pipe)
    torch.testing.assert_close(got.latents, want.latents, atol=1e-6, rtol=0)
    assert torch.equal(got.images, want.images) and got.policy_version == 3


def test_export_import_round_trip(trained):
    learner, _, _ = trained
    adapter = export_adapter(learner.pipe.unet, version=7)
    assert adapter.version == 7
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in adapter.state_dict.values())
    # exported tensors are copies: later training does not change them
    key = next(iter(adapter.state_dict))
    snapshot = adapter.state_dict[key].clone()

    other = build_tiny_pipeline(seed=0)
    torch.manual_seed(99)
    add_lora(other.unet, lora_settings())
    before = export_adapter(other.unet, 0).state_dict
    assert any(not torch.equal(before[k], adapter.state_dict[k]) for k in adapter.state_dict)
    import_adapter(other.unet, adapter)
    after = export_adapter(other.unet, 7).state_dict
    assert after.keys() == adapter.state_dict.keys()
    for k in after:
        assert torch.equal(after[k], adapter.state_dict[k]), k

    lora = [p for n, p in learner.pipe.unet.named_parameters() if "lora_" in n]
    weights = [p.detach().clone() for p in lora]
    with torch.no_grad():
        for p in lora:
            p.add_(1.0)  # the learner's weights move after the export
        assert torch.equal(adapter.state_dict[key], snapshot)
        for p, w in zip(lora, weights):
            p.copy_(w)  # the module's other tests use the trained learner


def test_import_into_mismatched_layout_raises(trained):
    learner, _, _ = trained
    attn_only = build_tiny_pipeline(seed=0)
    add_lora(attn_only.unet, LoraSettings(rank=RANK, alpha=ALPHA, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with pytest.raises(ValueError, match="lacks"):
        import_adapter(attn_only.unet, learner.adapter())


def test_bad_target_modules_raise():
    pipe = build_tiny_pipeline(seed=0)
    with pytest.raises(ValueError, match="target_modules"):
        add_lora(pipe.unet, LoraSettings(rank=2, alpha=2, target_modules=["no_such_layer"]))


def test_adapter_is_fp32_and_base_frozen():
    pipe = build_tiny_pipeline(seed=0)
    params = add_lora(pipe.unet, lora_settings())
    names = {n for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert params and all("lora_" in n for n in names)
    assert all(p.dtype == torch.float32 for p in params)
    assert len(params) == len(names)
    assert isinstance(export_adapter(pipe.unet, 0), AdapterVersion)
