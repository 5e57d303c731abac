"""What a new user trips on: help texts, checkpoints that remember how they were sampled, epoch counting, clean logs."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from rlcm.commands.main import build_parser, main, summary_line
from rlcm.config.schema import PRESETS, load_config
from rlcm.runs.checkpoint_record import read_record, write_record
from rlcm.runs.progress import epoch_line
from tests.toys import toy_pipe_with_saved_lora


def _subparser(name: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[name]


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_every_option_has_help_and_defaults_are_shown(command):
    parser = _subparser(command)
    bare = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not bare, f"rlcm {command} options without help: {bare}"
    text = parser.format_help()
    assert parser.description
    if command == "sample":
        assert "seed of the initial noise (default: 0)" in " ".join(text.split())
    else:
        assert "(default: 4)" in text and "(default: 8)" in text  # --seeds, --batch-size
    assert "the checkpoint's" in text  # steps and guidance come from the checkpoint unless given


def test_train_help_names_the_real_presets():
    config = next(a for a in _subparser("train")._actions if "--config" in a.option_strings)
    assert all(name in config.help for name in PRESETS) and "<reward>" not in config.help


def test_summary_and_progress_lines_number_epochs_as_the_files_do():
    rows = [
        {"epoch": e, "reward_mean": -2.0 + e / 10, "reward_std": 0.1, "time_epoch_s": 1.0, "samples_seen": 16 * (e + 1)}
        for e in range(20)
    ]
    assert summary_line(rows, 20) == "reward_mean -2.0000 (epoch 0/19) -> -0.1000 (epoch 19/19)"
    assert epoch_line(rows[0], 20).startswith("epoch 0/19") and epoch_line(rows[-1], 20).startswith("epoch 19/19")


@pytest.fixture(scope="module")
def rocm_checkpoint(tmp_path_factory):
    """A LoRA checkpoint whose record says what the rocm-tiny-cpu preset samples with: 4 steps."""
    directory = tmp_path_factory.mktemp("ckpt")
    pipe = toy_pipe_with_saved_lora(directory)
    write_record(directory, load_config("rocm-tiny-cpu"))
    return directory, pipe


def test_checkpoint_records_its_sampling_settings(rocm_checkpoint):
    directory, _ = rocm_checkpoint
    record = read_record(directory)
    assert (
        record["model"] == "tiny"
        and record["sampling"]["num_steps"] == 4
        and record["sampling"]["guidance_scale"] == 8.0
    )
    assert {"height", "width", "original_inference_steps"} <= set(record["sampling"])


def test_sample_uses_the_checkpoints_steps_and_says_so(rocm_checkpoint, tmp_path, capsys):
    directory, pipe = rocm_checkpoint
    out = tmp_path / "cat.png"
    assert main(["sample", "--lora", str(directory), "--prompt", "a cat", "--seed", "3", "--out", str(out)]) == 0
    assert (
        "4 steps, guidance 8, the model's default size: from the checkpoint's rlcm_model.json"
        in capsys.readouterr().out
    )
    expected = pipe(
        "a cat", num_inference_steps=4, guidance_scale=8.0, generator=torch.Generator().manual_seed(3)
    ).images[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), np.asarray(expected))
    assert main(["sample", "--lora", str(directory), "--prompt", "a cat", "--steps", "2", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "2 steps" in said and "except --steps as given" in said


def test_eval_uses_the_checkpoints_steps_and_draws_no_bar_into_a_log(rocm_checkpoint, tmp_path, capsys):
    from rlcm.evaluation.evaluate import evaluate
    from rlcm.evaluation.settings import EvalSettings

    directory, _ = rocm_checkpoint
    report = evaluate(
        EvalSettings(
            prompts=["a cat"], metrics=["jpeg_compressibility"], out=tmp_path / "eval", lora=directory, seeds=1
        )
    )
    captured = capsys.readouterr()
    assert (
        report["steps"] == 4 and "4 steps" in captured.out and "from the checkpoint's rlcm_model.json" in captured.out
    )
    assert "rlcm eval base" not in captured.err and "batch/s" not in captured.err  # stderr is not a terminal here
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["steps"] == 4


SAVE_LORA = """
import sys, torch
from rollout.lora import LoraSettings, add_lora, save_lora
from rollout.models import load_pipeline
torch.manual_seed(0)
pipe = load_pipeline("tiny")
settings = LoraSettings(
    rank=4, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2", "conv_out"]
)
add_lora(pipe.unet, settings)
save_lora(sys.argv[1], pipe.unet, settings)
"""


def test_lora_files_of_identical_runs_are_byte_identical(tmp_path):
    """Two processes with different string hashing (PYTHONHASHSEED) save the same adapter: the same bytes."""
    import os
    import subprocess
    import sys

    files = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        subprocess.run(
            [sys.executable, "-c", SAVE_LORA, str(out)], check=True, env={**os.environ, "PYTHONHASHSEED": hash_seed}
        )
        files.append((out / "pytorch_lora_weights.safetensors").read_bytes())
    assert files[0] == files[1]


def _run(directory, rows, reward: str, algorithm: str = "rlcm", monitor: str | None = None):
    directory.mkdir(parents=True)
    (directory / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (directory / "config.yaml").write_text(
        json.dumps({"algorithm": algorithm, "reward": {"name": reward, "monitor": monitor}})
    )
    return directory


def _rows(n: int, algorithm: str = "rlcm", start: float = -2.4, kl: float = 1e-3) -> list[dict]:
    return [
        {
            "epoch": e,
            "algorithm": algorithm,
            "reward_mean": start + 0.05 * e,
            "reward_std": 0.1,
            "samples_seen": 16 * (e + 1),
            "time_epoch_s": 5.0,
            "approx_kl": kl * 10.0**-e,
            "clipfrac": 0.01,
            "monitor_reward_mean": -2.5 + 0.08 * e,
            "monitor_reward_std": 0.05,
            "divergence_mean": 0.01,
            "objective": 0.0,
            "grad_norm": 1.0,
        }
        for e in range(n)
    ]


def _curves(ax) -> set[str]:
    return {line.get_label() for line in ax.get_lines()}


def test_runs_of_different_rewards_never_share_an_axis(tmp_path):
    from rlcm.runs.plots import comparison_figure

    rlcm = _run(tmp_path / "tiny-cpu", _rows(5), "jpeg_compressibility")
    rocm = _run(tmp_path / "rocm", _rows(5, "rocm", start=-0.3), "smoothness", "rocm", monitor="jpeg_compressibility")
    figure, warning = comparison_figure([rlcm, rocm])
    assert warning and "different rewards" in warning and "jpeg_compressibility" in warning and "smoothness" in warning
    for ax in figure.axes:
        assert len(_curves(ax)) == 1, _curves(ax)  # one run per axis here: each trains its own reward
        reward = "smoothness" if "rocm" in next(iter(_curves(ax))) else "jpeg_compressibility"
        assert reward in ax.get_ylabel()
    same, no_warning = comparison_figure([rlcm, _run(tmp_path / "again", _rows(5), "jpeg_compressibility")])
    assert no_warning is None and len(same.axes) == 2 and all(len(_curves(ax)) == 2 for ax in same.axes)


def test_rocm_reward_plot_keeps_the_monitor_on_its_own_axes_with_units(tmp_path):
    from rlcm.runs.plots import reward_figure

    figure = reward_figure(_rows(10, "rocm", start=-0.3), "rocm (rocm)", "smoothness", "jpeg_compressibility")
    monitor_axes = [ax for ax in figure.axes if "monitor_reward_mean" in _curves(ax)]
    assert len(monitor_axes) == 1 and "reward_mean" not in _curves(monitor_axes[0])
    assert "jpeg_compressibility (−JPEG size, kB)" in monitor_axes[0].get_ylabel()
    trained = [ax for ax in figure.axes if "reward_mean" in _curves(ax)]
    assert trained and all("smoothness (−10 · mean |∇image|)" in ax.get_ylabel() for ax in trained)
    rlcm = reward_figure(_rows(10), "tiny (rlcm)", "jpeg_compressibility", None)
    assert all("jpeg_compressibility (−JPEG size, kB)" in ax.get_ylabel() for ax in rlcm.axes)


def test_approx_kl_is_drawn_on_a_log_axis():
    from rlcm.runs.plots import diagnostics_figure

    figure = diagnostics_figure(_rows(8), "tiny (rlcm)")
    kl = next(ax for ax in figure.axes if "approx_kl" in _curves(ax))
    assert kl.get_yscale() == "log"


def test_sample_grid_has_a_title_with_epoch_and_reward(tmp_path):
    from rlcm.runs.grid import grid_title, save_sample_grid

    images = np.full((4, 16, 16, 3), 128, np.uint8)
    title = grid_title(4, 20, "jpeg_compressibility", [-1.5, -1.7, float("nan"), -1.6], "held-out monitor")
    assert title == "epoch 4/19 · held-out monitor jpeg_compressibility · mean -1.600 over 3 shown"
    plain = save_sample_grid(tmp_path / "a.png", images, ["p"] * 4, [0.0] * 4)
    titled = save_sample_grid(tmp_path / "b.png", images, ["p"] * 4, [0.0] * 4, title=title)
    assert titled.shape[0] > plain.shape[0] and (titled[:12] < 100).any()  # dark title text above the images


def test_rocm_monitor_batch_shows_distinct_held_out_prompts():
    """rocm-tiny-cpu: 10 prompts, monitor batches of 4. Holding out 10% (one prompt) drew it 4 times per grid."""
    from cluster.schedule import epoch_jobs
    from rlcm.config.prompts import holdout_split, load_prompts

    config = load_config("rocm-tiny-cpu")
    prompts = load_prompts(config.prompts.source, config.prompts.limit)
    train, held = holdout_split(prompts, min_held=config.sampling.batch_size)
    assert len(held) == 4 and not set(train) & set(held) and len(train) == 6
    for epoch in range(5):
        (job,) = epoch_jobs(held, 0, epoch, config.sampling.batch_size, 1, distinct=True)
        assert sorted(job.prompts) == sorted(held)
    assert holdout_split(["a", "b", "c"], min_held=4) == (["a", "b"], ["c"])  # never more than half


def test_gpu_preset_on_a_cpu_machine_fails_before_ray_and_leaves_no_config(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    started = ray.is_initialized()
    monkeypatch.setattr(
        ray, "is_initialized", lambda: False
    )  # as in a fresh `rlcm train` process (the suite shares one Ray)
    assert main(["train", "--config", "compression", "--output-dir", str(tmp_path / "run")]) == 2
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert (
        "does not fit on this machine (4 GPUs asked, this machine has 0" in err and "tiny-cpu" in err and len(err) < 400
    )
    assert not (tmp_path / "run" / "config.yaml").exists() and ray.is_initialized() == started


def test_output_dir_under_a_folder_that_cannot_hold_one_is_not_called_a_full_disk(capsys):
    assert main(["train", "--output-dir", "/proc/rlcm-test-out"]) == 2
    err = capsys.readouterr().err
    assert "cannot create /proc/rlcm-test-out: a parent folder is missing" in err and "full" not in err


def test_hub_model_is_checked_without_hf_hub_offline(monkeypatch):
    """With the hub allowed, a model that is neither cached nor fetchable is a config error before Ray (not only
    offline): one request, no retries, and the error names the command that fetches it."""
    import httpx
    import huggingface_hub

    from rlcm.commands.checks import model_config_dir
    from rlcm.config.schema import ConfigError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    asked, downloaded = [], []

    def unreachable(url, **kwargs):
        asked.append((url, kwargs["timeout"]))
        raise httpx.ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(httpx, "head", unreachable)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda *a, **k: downloaded.append(a))
    with pytest.raises(ConfigError) as refused:
        model_config_dir("someone/no-such-lcm")
    message = str(refused.value)
    assert "'someone/no-such-lcm' is not in the local Hugging Face cache and the hub did not give it" in message
    assert "Name or service not known" in message and "`hf download someone/no-such-lcm`" in message
    assert len(asked) == 1 and asked[0][0].endswith("/someone/no-such-lcm/resolve/main/model_index.json")
    assert asked[0][1] <= 5 and downloaded == []


def test_a_local_run_too_big_for_this_machine_names_the_keys_that_ask(monkeypatch):
    """Issue 28: `--set reward.num_cpus=4` on 2 cores was refused with advice to lower resources.*."""
    from rlcm.commands.checks import check_local_resources
    from rlcm.config.schema import ConfigError

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ConfigError) as refused:
        check_local_resources(load_config("tiny-cpu", ["reward.num_cpus=4"]))
    assert "CPUs asked, this machine has 2)" in str(refused.value)
    assert "or lower with --set reward.num_cpus (4 CPUs), " in str(refused.value)


def test_a_refused_start_leaves_no_run_folder(tmp_path, capsys, monkeypatch):
    """A pre-check that refuses (here: a hub model that is not cached, offline) runs before the run folder exists."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "run"
    assert main(["train", "--set", "model.name=nobody/no-such-lcm", "--output-dir", str(out)]) == 2
    assert "`hf download nobody/no-such-lcm`" in capsys.readouterr().err
    assert not out.exists()
