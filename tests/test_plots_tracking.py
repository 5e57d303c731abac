"""Run tracking (TensorBoard event files read back with tensorboard's reader, W&B's missing-package error)
and the plots of a run's metrics.jsonl."""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np
import pytest
from PIL import Image

from rlcm.runs.plots import (
    add_plot_parser,
    diagnostic_panels,
    diagnostics_figure,
    plot_run,
    plot_runs,
    read_metrics,
    series,
    step_series,
    wall_clock_s,
)
from rlcm.runs.tracking import RunTracker, scalars


def rlcm_row(epoch: int, reward: float) -> dict:
    """A metrics row shaped like the driver's (RLCM)."""
    return {
        "epoch": epoch,
        "algorithm": "rlcm",
        "mode": "sync",
        "reward_mean": reward,
        "reward_std": 0.1,
        "samples_seen": 16 * (epoch + 1),
        "approx_kl": 1e-3 * (epoch + 1),
        "clipfrac": 0.05 * epoch,
        "skipped_update": False,
        "time_epoch_s": 5.0 + epoch,
        "behaviour_versions": [epoch],
        "reward_version": "1",
        "staleness_hist": {"0": 16 * (epoch + 1)},
        "rollout_actors": {"0": {"images": 16, "images_per_s": 6.0 + epoch}},
        "monitor_reward_mean": math.nan,
    }


def read_events(run_dir):
    event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0}
    )
    accumulator.Reload()
    return accumulator


def test_scalars_flattens_nested_and_skips_text_lists_nan():
    flat = scalars(rlcm_row(1, -2.0))
    assert (
        flat["rollout_actors/0/images_per_s"] == 7.0
        and flat["staleness_hist/0"] == 32.0
        and flat["skipped_update"] == 0.0
    )
    assert not {"algorithm", "mode", "reward_version", "behaviour_versions", "monitor_reward_mean"} & set(flat)


def test_tensorboard_scalars_and_grid_read_back(tmp_path):
    grid = np.random.default_rng(0).integers(0, 256, size=(40, 60, 3), dtype=np.uint8)
    tracker = RunTracker(tmp_path, config={"run": {"epochs": 3}})
    for epoch, reward in enumerate([-2.4, -2.1, -1.9]):
        tracker.log_epoch(rlcm_row(epoch, reward), grid if epoch != 1 else None)
    tracker.close()

    events = read_events(tmp_path)
    assert [(e.step, round(e.value, 6)) for e in events.Scalars("reward_mean")] == [(0, -2.4), (1, -2.1), (2, -1.9)]
    assert [e.value for e in events.Scalars("rollout_actors/0/images_per_s")] == [6.0, 7.0, 8.0]
    assert "algorithm" not in events.Tags()["scalars"] and "monitor_reward_mean" not in events.Tags()["scalars"]
    images = events.Images("samples")
    assert [i.step for i in images] == [0, 2] and (images[0].width, images[0].height) == (60, 40)


def test_resume_purges_the_steps_after_the_checkpoint(tmp_path):
    first = RunTracker(tmp_path)
    for epoch in range(4):
        first.log_epoch(rlcm_row(epoch, -2.0 + 0.1 * epoch))
    first.close()
    resumed = RunTracker(tmp_path, start_epoch=2)
    resumed.log_epoch(rlcm_row(2, -1.0))
    resumed.close()
    assert [(e.step, round(e.value, 6)) for e in read_events(tmp_path).Scalars("reward_mean")] == [
        (0, -2.0),
        (1, -1.9),
        (2, -1.0),
    ]


def test_bad_grid_and_missing_wandb_are_clear_errors(tmp_path, monkeypatch):
    tracker = RunTracker(tmp_path)
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        tracker.log_epoch(rlcm_row(0, -2.0), np.zeros((3, 8, 8), dtype=np.float32))
    tracker.close()
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'rlcm\[wandb\]'"):
        RunTracker(tmp_path, tensorboard=False, wandb=True)


def rocm_row(epoch: int, reward: float) -> dict:
    return {
        "epoch": epoch,
        "algorithm": "rocm",
        "reward_mean": reward,
        "reward_std": 0.05,
        "samples_seen": 8 * (epoch + 1),
        "time_epoch_s": 3.0,
        "divergence_mean": 0.01 * epoch,
        "objective": reward - 0.1 * epoch,
        "grad_norm": 1.0 / (epoch + 1),
        "monitor_reward_mean": reward - 0.2,
    }


def write_run(directory, rows, broken_tail: bool = False):
    directory.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (directory / "metrics.jsonl").write_text(text + ('{"epoch": 9, "rew' if broken_tail else ""))
    return directory


def test_plot_run_rlcm_and_rocm_nan_safe(tmp_path):
    rlcm_rows = [rlcm_row(e, -2.4 + 0.05 * e) for e in range(20)]
    rlcm_rows[3]["reward_mean"] = math.nan  # an epoch without valid rewards
    del rlcm_rows[5]["approx_kl"]
    rlcm = write_run(tmp_path / "compression", rlcm_rows, broken_tail=True)
    rocm = write_run(tmp_path / "rocm-kl", [rocm_row(e, -0.5 + 0.02 * e) for e in range(12)])

    paths = plot_run(rlcm)
    assert [p.name for p in paths] == ["reward.png", "diagnostics.png"] and all(
        p.parent == rlcm / "plots" for p in paths
    )
    assert [p.name for p in plot_run(rocm)] == ["reward.png", "diagnostics.png"]
    assert [k for k, _ in diagnostic_panels(read_metrics(rlcm))] == ["approx_kl", "clipfrac"]
    assert [k for k, _ in diagnostic_panels(read_metrics(rocm))] == ["divergence_mean", "objective", "grad_norm"]
    assert len(read_metrics(rlcm)) == 20
    xs, ys = series(read_metrics(rlcm), "approx_kl")
    assert 5 not in xs and len(xs) == 19
    np.testing.assert_allclose(wall_clock_s(read_metrics(rlcm)), np.cumsum([5.0 + e for e in range(20)]))

    comparison = plot_runs([rlcm, rocm], tmp_path / "cmp" / "time-to-reward.png")
    assert Image.open(comparison).size[0] > 600


def test_per_step_gap_is_a_series_per_step(tmp_path):
    """`old_logprob_gap_step` ({"k": gap}) is one curve per step k in diagnostics.png and one TensorBoard scalar per
    step."""
    rows = [
        {
            **rlcm_row(e, -2.0),
            "old_logprob_gap_step": {"0": 1e-5 * (e + 1), "1": 2e-5, "10": 0.0},
            "ratio_first_pass_max_dev": 0.0,
        }
        for e in range(3)
    ]
    del rows[1]["old_logprob_gap_step"]["1"]
    curves = step_series(rows, "old_logprob_gap_step")
    assert list(curves) == ["old_logprob_gap_step[0]", "old_logprob_gap_step[1]", "old_logprob_gap_step[10]"]
    np.testing.assert_allclose(curves["old_logprob_gap_step[0]"][1], [1e-5, 2e-5, 3e-5])
    assert list(curves["old_logprob_gap_step[1]"][0]) == [0.0, 2.0]
    panels = [k for k, _ in diagnostic_panels(rows)]
    assert panels == ["approx_kl", "clipfrac", "old_logprob_gap_step", "ratio_first_pass_max_dev"]
    figure = diagnostics_figure(rows, "run")
    assert len(figure.axes[2].get_lines()) == 3
    assert {"old_logprob_gap_step/0", "old_logprob_gap_step/10"} <= set(scalars(rows[0]))


def test_plot_errors_and_cli(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(tmp_path)
    write_run(tmp_path / "empty", [])
    with pytest.raises(ValueError, match="no metrics rows"):
        plot_run(tmp_path / "empty")
    parser = argparse.ArgumentParser()
    add_plot_parser(parser.add_subparsers(dest="command"))
    run = write_run(tmp_path / "a", [rlcm_row(e, -2.0) for e in range(3)])
    args = parser.parse_args(["plot", str(run), "--out", str(tmp_path / "all.png")])
    assert args.func(args) == 0
    assert (run / "plots" / "reward.png").is_file() and (tmp_path / "all.png").is_file()


def test_wandb_offline_run_keeps_its_id_on_resume(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = RunTracker(tmp_path, tensorboard=False, wandb=True, config={"run": {"epochs": 2}})
    tracker.log_epoch(rlcm_row(0, -2.0), np.zeros((8, 8, 3), dtype=np.uint8))
    tracker.close()
    run_id = (tmp_path / "wandb_run_id.txt").read_text()
    resumed = RunTracker(tmp_path, tensorboard=False, wandb=True, start_epoch=1)
    resumed.log_epoch(rlcm_row(1, -1.0))
    resumed.close()
    assert (tmp_path / "wandb_run_id.txt").read_text() == run_id
    assert len(list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))) >= 1


def test_rocm_lam_auto_draws_the_divergence_target():
    from rlcm.runs.plots import diagnostics_figure

    rows = [{**rocm_row(e, -0.5 + 0.02 * e), "lam": 0.1, "lam_divergence_target": 0.1} for e in range(6)]
    panel = diagnostics_figure(rows, "rocm").axes[0]
    target = [line for line in panel.get_lines() if line.get_label() == "lam_divergence_target"]
    assert len(target) == 1 and list(target[0].get_ydata()) == [0.1] * 6 and target[0].get_linestyle() == "--"
    assert not [
        line
        for line in diagnostics_figure([rocm_row(0, -0.5)], "rocm").axes[0].get_lines()
        if line.get_label() != "divergence_mean"
    ]
