"""The `rlcm` command line: clear errors for bad input, `rlcm sample` from a saved LoRA."""

from __future__ import annotations

import json

import numpy as np
import torch
from PIL import Image

from cluster.cli import main
from rollout.lora import LoraSettings, add_lora, save_lora
from rollout.models import load_pipeline


def test_train_with_unknown_key_is_a_clear_error(capsys, tmp_path):
    assert main(["train", "--output-dir", str(tmp_path / "run"), "--set", "train.lr=1"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: unknown key" in err
    assert not (tmp_path / "run").exists()


def test_train_with_missing_config_file(capsys):
    assert main(["train", "--config", "no/such/file.yaml"]) == 2
    assert "neither a file nor a preset" in capsys.readouterr().err


def test_sample_without_lora_file(capsys, tmp_path):
    assert main(["sample", "--lora", str(tmp_path), "--prompt", "a cat", "--out", str(tmp_path / "x.png")]) == 2
    assert "pytorch_lora_weights.safetensors" in capsys.readouterr().err


def test_sample_writes_the_lora_policy_image(tmp_path):
    pipe = load_pipeline("tiny")
    settings = LoraSettings(rank=4, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv_out"])
    add_lora(pipe.unet, settings)
    with torch.no_grad():
        for name, param in pipe.unet.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.2, generator=torch.Generator().manual_seed(1))
    save_lora(tmp_path, pipe.unet, settings)
    (tmp_path / "rlcm_model.json").write_text(json.dumps({"model": "tiny", "model_seed": 0}))
    out = tmp_path / "cat.png"
    assert main(["sample", "--lora", str(tmp_path), "--prompt", "a cat", "--steps", "4", "--seed", "3", "--out", str(out)]) == 0

    expected = pipe("a cat", num_inference_steps=4, guidance_scale=8.0, generator=torch.Generator().manual_seed(3)).images[0]
    written = np.asarray(Image.open(out))
    assert written.shape == (64, 64, 3)
    np.testing.assert_array_equal(written, np.asarray(expected))
    base = load_pipeline("tiny")("a cat", num_inference_steps=4, guidance_scale=8.0, generator=torch.Generator().manual_seed(3)).images[0]
    assert not np.array_equal(written, np.asarray(base)), "the LoRA must change the image"
