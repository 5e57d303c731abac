"""The `rlcm` command line: clear errors for bad input, `rlcm sample` from a saved LoRA."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rlcm.commands.main import main
from rollout.models import load_pipeline
from tests.toys import toy_pipe_with_saved_lora


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


def test_sample_without_lora_draws_from_the_base_model_and_needs_model(capsys, tmp_path):
    out = tmp_path / "base.png"
    assert (
        main(["sample", "--model", "tiny", "--prompt", "a cat", "--steps", "4", "--seed", "3", "--out", str(out)]) == 0
    )
    expected = load_pipeline("tiny")(
        "a cat", num_inference_steps=4, guidance_scale=8.0, generator=torch.Generator().manual_seed(3)
    ).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    assert main(["sample", "--prompt", "a cat", "--out", str(tmp_path / "x.png")]) == 2
    assert "needs --lora (a trained checkpoint) or --model" in capsys.readouterr().err


def test_sample_writes_the_lora_policy_image(tmp_path):
    pipe = toy_pipe_with_saved_lora(tmp_path)
    (tmp_path / "rlcm_model.json").write_text(json.dumps({"model": "tiny", "model_seed": 0}))
    out = tmp_path / "cat.png"
    assert (
        main(["sample", "--lora", str(tmp_path), "--prompt", "a cat", "--steps", "4", "--seed", "3", "--out", str(out)])
        == 0
    )

    expected = pipe(
        "a cat", num_inference_steps=4, guidance_scale=8.0, generator=torch.Generator().manual_seed(3)
    ).images[0]
    written = np.asarray(Image.open(out))
    assert written.shape == (64, 64, 3)
    np.testing.assert_array_equal(written, np.asarray(expected))
    base = load_pipeline("tiny")(
        "a cat", num_inference_steps=4, guidance_scale=8.0, generator=torch.Generator().manual_seed(3)
    ).images[0]
    assert not np.array_equal(written, np.asarray(base)), "the LoRA must change the image"


# ---------------------------------------------------------------- errors before Ray, fast


def _run_cli(*args: str) -> tuple[int, str, bool]:
    """Run `rlcm` in a fresh interpreter; returns (exit code, stderr, whether torch got imported)."""
    import subprocess
    import sys

    code = (
        f"import sys; from rlcm.commands.main import main; rc = main({list(args)!r}); print('torch' in sys.modules); "
        "sys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stderr, done.stdout.strip().endswith("True")


def test_bad_set_value_is_reported_from_set_without_heavy_imports(tmp_path):
    rc, err, imported_torch = _run_cli(
        "train", "--output-dir", str(tmp_path / "r"), "--set", "train.learning_rate=fast"
    )
    assert rc == 2
    assert "train.learning_rate" in err and "(from --set train.learning_rate=fast)" in err
    assert not imported_torch, "a config error must not wait for torch/diffusers imports"


def test_unknown_divergence_names_key_and_choices(capsys, tmp_path):
    assert (
        main(["train", "--config", "rocm-tiny-cpu", "--output-dir", str(tmp_path / "r"), "--set", "rocm.divergence=tv"])
        == 2
    )
    err = capsys.readouterr().err
    assert "rocm.divergence" in err and "'kl'" in err and "'js'" in err


def test_rocm_with_a_non_differentiable_reward_is_a_config_error(capsys, tmp_path):
    args = [
        "train",
        "--config",
        "rocm-tiny-cpu",
        "--output-dir",
        str(tmp_path / "r"),
        "--set",
        "reward.name=jpeg_compressibility",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "reward.name" in err and "not differentiable" in err and "smoothness" in err


def test_async_needs_an_algorithm_that_learns_from_rollouts(capsys, tmp_path):
    assert (
        main(
            ["train", "--config", "rocm-tiny-cpu", "--output-dir", str(tmp_path / "r"), "--set", "scaleout.mode=async"]
        )
        == 2
    )
    assert (
        "scaleout.mode: async mode needs an algorithm that learns from rollouts; rocm trains on its own samples"
        in capsys.readouterr().err
    )


def test_an_option_of_another_algorithm_is_a_one_line_config_error(capsys, tmp_path):
    """`train.*` (RLCM's PPO section) under ROCM, or `rocm.*` under RLCM, names the key instead of being ignored."""
    assert (
        main(
            [
                "train",
                "--config",
                "rocm-tiny-cpu",
                "--output-dir",
                str(tmp_path / "a"),
                "--set",
                "train.learning_rate=1e-3",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert (
        "train.learning_rate: an option of algorithm rlcm, but algorithm is rocm (its options live under rocm.*)" in err
    )
    assert main(["train", "--output-dir", str(tmp_path / "b"), "--set", "rocm.lam=1"]) == 2
    assert (
        "rocm.lam: an option of algorithm rocm, but algorithm is rlcm (its options live under train.*)"
        in capsys.readouterr().err
    )


def test_unknown_reward_and_bad_lora_target_fail_before_ray(capsys, tmp_path, monkeypatch):
    import cluster.restarts

    monkeypatch.setattr(cluster.restarts, "train", lambda *a, **k: pytest.fail("must not start training"))
    assert main(["train", "--output-dir", str(tmp_path / "a"), "--set", "reward.name=jpeg_size"]) == 2
    assert "reward.name: unknown reward 'jpeg_size'" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "b"), "--set", "model.lora.target_modules=[to_qq]"]) == 2
    assert "model.lora.target_modules: ['to_qq'] match no UNet module" in capsys.readouterr().err
    assert main(["train", "--output-dir", str(tmp_path / "c"), "--set", "model.name=nobody/no-such-lcm"]) == 2
    assert "not in the local Hugging Face cache" in capsys.readouterr().err


def test_unwritable_output_dir_is_refused_before_ray(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    assert main(["train", "--output-dir", str(blocker / "run")]) == 2
    assert f"cannot write to {blocker / 'run'}" in capsys.readouterr().err


def test_full_disk_names_the_disk(tmp_path, monkeypatch):
    import errno
    import shutil

    from rlcm.runs.folder import disk_error

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1024))
    torch_failure = RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")
    error = disk_error(tmp_path, torch_failure)
    assert error.errno == errno.ENOSPC and f"the disk holding {tmp_path} is full (0 MiB free" in str(error)
    assert disk_error(tmp_path, OSError(errno.ENOSPC, "No space left on device")).errno == errno.ENOSPC


def test_resume_of_a_finished_run_exits_0_without_starting_actors(capsys, tmp_path, monkeypatch):
    import cluster.restarts

    monkeypatch.setattr(cluster.restarts, "train", lambda *a, **k: pytest.fail("must not start training"))
    checkpoint = tmp_path / "checkpoints" / "epoch-0019"
    checkpoint.mkdir(parents=True)
    (checkpoint / "driver_state.json").write_text(json.dumps({"epoch": 19, "samples_seen": 320, "policy_version": 20}))
    (tmp_path / "metrics.jsonl").write_text("")
    assert main(["train", "--output-dir", str(tmp_path), "--resume"]) == 0
    assert "is complete (its last epoch, epoch 19/19, is done)" in capsys.readouterr().out


def test_errors_from_inside_ray_become_one_line(ray_local):
    from rlcm.commands.main import explain

    @ray_local.remote
    def load_model():
        raise FileNotFoundError("model directory '/nope' does not exist; pass an existing diffusers folder")

    with pytest.raises(Exception) as caught:
        ray_local.get(load_model.remote())
    assert explain(caught.value) == "model directory '/nope' does not exist; pass an existing diffusers folder"

    @ray_local.remote
    class Broken:
        def __init__(self):
            raise ValueError("LoRA target_modules ['x'] do not fit this UNet")

        def ping(self):
            return 1

    with pytest.raises(Exception) as caught:
        ray_local.get(Broken.remote().ping.remote())
    assert explain(caught.value) == "ValueError: LoRA target_modules ['x'] do not fit this UNet"


def test_bad_numbers_on_other_subcommands_are_one_line(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--lora", str(tmp_path), "--prompt", "x", "--steps", "0", "--out", str(tmp_path / "x.png")])
    assert exit_.value.code == 2 and "--steps: must be at least 1" in capsys.readouterr().err
    assert (
        main(
            [
                "eval",
                "--prompts",
                "simple_animals",
                "--metrics",
                "jpeg_compressibility",
                "--seeds",
                "0",
                "--out",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert capsys.readouterr().err.strip() == "rlcm: error: seeds: Input should be greater than or equal to 1"
