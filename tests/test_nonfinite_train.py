"""A NaN loss does not reach the weights: the update is skipped and said, repeats stop the run, nothing NaN is saved.

The issue's run resumed from a corrupted checkpoint, trained on NaN for every later epoch and published and saved an
all-NaN LoRA (the manifest now refuses such a checkpoint before Ray: tests/test_integrity.py)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from cluster.trainer import Trainer
from learner.guards import NonFiniteError
from rlcm.config.schema import load_config

pytestmark = pytest.mark.slow  # end-to-end runs

FAST = [
    "sampling.batches_per_epoch=1",
    "run.sample_grid_every=100",
    "run.save_every=1",
    "run.tensorboard=false",
    "run.plots=false",
    "scaleout.control_poll_s=0.1",
]


def lora(root, epoch):
    return load_file(str(root / "checkpoints" / f"epoch-{epoch:04d}" / "pytorch_lora_weights.safetensors"))


def test_nan_loss_updates_are_skipped_and_repeats_stop_the_run(ray_local, tmp_path, capsys):
    config = load_config(None, [*FAST, "run.epochs=4", "faults.nan_loss_epochs=[1, 2]", "run.max_nonfinite_updates=2"])
    trainer = Trainer(config, tmp_path)
    try:
        with pytest.raises(
            NonFiniteError,
            match=r"2 updates in a row were skipped \(run.max_nonfinite_updates=2\) \(epoch 2: all \d+ steps",
        ):
            trainer.run()
    finally:
        trainer.shutdown()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert rows[0]["nonfinite_steps"] == 0 and rows[0]["grad_norm"] > 0
    assert rows[1]["nonfinite_steps"] == rows[1]["optimizer_steps"] > 0 and rows[1]["grad_norm"] is None  # strict JSON
    err = capsys.readouterr().err
    assert (
        f"rlcm: epoch 1: {int(rows[1]['optimizer_steps'])} of {int(rows[1]['optimizer_steps'])} optimizer steps skipped"
        in err
    )
    before, skipped, skipped_again = lora(tmp_path, 0), lora(tmp_path, 1), lora(tmp_path, 2)
    assert all(torch.isfinite(v).all() for v in skipped.values())
    assert all(
        torch.equal(before[k], skipped[k]) and torch.equal(before[k], skipped_again[k]) for k in before
    )  # not applied
