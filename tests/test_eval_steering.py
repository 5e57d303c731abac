"""`rlcm eval --steer` on the toy: steered rows of the base and a tuned LoRA on the same seeds, with the sampling
compute per image, the training compute of the LoRA, and the plot of reward against compute."""

from __future__ import annotations

import json

import pytest

from rlcm.commands.main import main
from tests.toys import toy_pipe_with_saved_lora

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_eval_steer_writes_the_rows_with_compute_per_image(tmp_path, capsys):
    run = tmp_path / "run"
    lora = run / "checkpoints" / "epoch-0001"
    toy_pipe_with_saved_lora(lora)
    (lora / "rlcm_model.json").write_text(json.dumps({"model": "tiny", "model_seed": 0}))
    (run / "config.yaml").write_text("reward: {name: jpeg_compressibility}\nsampling: {num_steps: 2}\n")
    rows = [{"epoch": e, "samples_seen": 16 * (e + 1), "time_epoch_s": 1.5} for e in range(3)]
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\na dog\n")
    out = tmp_path / "eval"
    argv = ["eval", "--lora", str(lora), "--base", "--prompts", str(prompts), "--metrics", "jpeg_compressibility"]
    argv += ["--seeds", "1", "--steps", "2", "--batch-size", "2", "--out", str(out)]
    assert main([*argv, "--steer", "best-of-n,fk", "--particles", "1,2"]) == 0

    table = capsys.readouterr().out
    expected_rows = {
        "base": "2 + 0 = 2",
        "base + best-of-1": "2 + 1 = 3",
        "base + best-of-2": "4 + 2 = 6",
        "base + fk-1": "2 + 2 = 4",
        "base + fk-2": "4 + 4 = 8",
        "tuned": "2 + 0 = 2",
        "tuned + best-of-1": "2 + 1 = 3",
        "tuned + best-of-2": "4 + 2 = 6",
        "tuned + fk-2": "4 + 4 = 8",
    }
    lines = {}  # the first table's row of each label (the paired differences below repeat the labels)
    for line in table.splitlines():
        if line.startswith("| "):
            lines.setdefault(line.split(" | ")[0].removeprefix("| "), line)
    for label, compute in expected_rows.items():
        assert lines[label].endswith(f"| {compute} |"), lines[label]
    assert "Training compute of tuned: 2 epochs, 32 samples trained on (64 rollout UNet evaluations), 3 s" in table
    assert (out / "compute.png").is_file()

    report = json.loads((out / "eval.json").read_text())
    assert report["compute"]["base + fk-2"] == {
        "unet_evals_per_image": 4.0,
        "reward_calls_per_image": 2.0,
        "images_scored_per_image": 4.0,
        "total_per_image": 8.0,
    }
    for sample in report["samples"]:
        for model in ("base", "tuned"):
            one = sample[f"{model} + best-of-1"]["jpeg_compressibility"]
            assert one == sample[model]["jpeg_compressibility"], "1 particle = the stock sample"
    assert report["metrics"]["jpeg_compressibility"]["tuned + fk-2 − base"]["n"] == 2, "paired with the base"


def test_steering_options_without_steer_are_an_error(tmp_path, capsys):
    argv = ["eval", "--model", "tiny", "--prompts", "simple_animals", "--metrics", "jpeg_compressibility"]
    assert main([*argv, "--out", str(tmp_path), "--particles", "2"]) == 2
    assert "--particles apply to steered rows: pass --steer best-of-n and/or fk" in capsys.readouterr().err
