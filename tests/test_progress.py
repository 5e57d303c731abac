"""The console of a run: one line per epoch in logs (no bar off a terminal), tracking files written."""

from __future__ import annotations

import logging

from rlcm.config.schema import load_config
from rlcm.runs.progress import EpochProgress, gap_warning
from tests.test_plots_tracking import read_events

RLCM_ROW = {
    "epoch": 0,
    "algorithm": "rlcm",
    "reward_mean": -2.1,
    "reward_std": 0.1,
    "approx_kl": 0.012,
    "clipfrac": 0.25,
    "time_epoch_s": 5.5,
    "samples_seen": 16,
    "num_invalid": 0,
}


def test_one_line_per_epoch_with_the_key_numbers(tmp_path, capsys):
    progress = EpochProgress(tmp_path, load_config(None, ["run.epochs=3", "run.plots=false"]), start_epoch=0)
    progress.epoch_done(RLCM_ROW, None)
    progress.epoch_done({**RLCM_ROW, "epoch": 1, "skipped_update": True, "num_invalid": 16}, None)
    perf = {"perf_samples_per_s": 3.2, "perf_unet_images_per_s": 410.0, "perf_tflops_per_gpu": 306.0, "perf_mfu": 0.31}
    progress.epoch_done({**RLCM_ROW, "epoch": 2, **perf}, None)
    assert "samples/s=3.2, MFU=31%" in progress.bar.postfix
    progress.close()
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0] == "epoch 0/2  reward -2.1000 ± 0.1000  approx_kl 0.012  clipfrac 0.250  5.5 s/epoch  samples 16"
    assert "5.5 s/epoch  3.2 samples/s, 410 UNet images/s, MFU 31%  samples 16" in lines[2]
    assert (
        lines[1].startswith("epoch 1/2") and "update skipped (no valid reward)" in lines[1] and "16 invalid" in lines[1]
    )
    assert len(lines) == 3 and "rlcm train" not in err  # stderr is no terminal here: no progress bar in the log
    assert set(perf) <= set(read_events(tmp_path).Tags()["scalars"])  # the perf_* fields reach TensorBoard


def test_rocm_line_shows_divergence_objective_and_monitoring(tmp_path, capsys):
    progress = EpochProgress(
        tmp_path, load_config("rocm-tiny-cpu", ["run.tensorboard=false", "run.plots=false"]), start_epoch=4
    )
    row = {
        "epoch": 4,
        "algorithm": "rocm",
        "reward_mean": -0.05,
        "reward_std": 0.001,
        "divergence_mean": 0.185,
        "objective": -0.066,
        "monitor_reward_mean": -1.29,
        "time_epoch_s": 1.4,
        "samples_seen": 20,
        "num_invalid": 0,
    }
    progress.epoch_done(row, None)
    progress.close()
    assert capsys.readouterr().out.strip() == (
        "epoch 4/19  reward -0.0500 ± 0.0010  divergence 0.185  objective -0.0660  monitor -1.2900  1.4 s/epoch  "
        "samples 20"
    )


def test_log_prob_gap_above_the_clip_range_is_reported_once(tmp_path, caplog):
    progress = EpochProgress(
        tmp_path,
        load_config("grpo-tiny-cpu", ["run.tensorboard=false", "run.plots=false", "grpo.clip_range=1e-4"]),
        start_epoch=0,
    )
    row = {
        **RLCM_ROW,
        "algorithm": "grpo",
        "old_logprob_gap_max": 6e-4,
        "old_logprob_gap_median": 3e-5,
        "old_logprob_recomputed": False,
    }
    with caplog.at_level(logging.WARNING):
        progress.epoch_done(row, None)
        progress.epoch_done({**row, "epoch": 1}, None)
    progress.close()
    warnings = [r.getMessage() for r in caplog.records if "log-probs differ" in r.getMessage()]
    assert len(warnings) == 1 and "up to 0.0006" in warnings[0] and "grpo.recompute_old_log_probs=true" in warnings[0]
    assert gap_warning({**row, "old_logprob_gap_max": 5e-5}, 1e-4) is None
    assert "first PPO pass starts at ratio 1" in gap_warning({**row, "old_logprob_recomputed": True}, 1e-4)
